"""The intra-op thread count every CPU backend (ONNX Runtime, OpenVINO) defaults to."""

from __future__ import annotations

import os

from ..errors import ConfigError

#: The intra-op thread count of every session that is not given one (unset: one per physical core).
#: Parallel processes on one machine set it (the tests: one per pytest-xdist worker's share of the cores).
THREADS_ENV = "CMRT_THREADS"


def default_threads() -> int:
    """``$CMRT_THREADS`` if set, else 0 (ONNX Runtime's choice: one thread per physical core)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r}: give a whole number of threads ≥ 1, or unset it")
    return int(text)
