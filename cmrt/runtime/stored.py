"""A bundle's stored parity inputs run on a backend and compared with the stored PyTorch outputs:
the one measurement `cmrt check` and a backend's own parity record both take."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle
from ..parity import ParityReport, compare


@dataclass(frozen=True)
class StoredRun:
    """What one run of the stored inputs gave: the comparison, the run's time and its outputs."""

    report: ParityReport
    seconds: float
    actual: dict[str, np.ndarray]


def run_stored_inputs(bundle: Bundle, backend: Any) -> StoredRun:
    """Run ``backend`` on ``bundle``'s stored parity inputs, then close it; compare its output with
    the stored PyTorch outputs under the tolerances of the backend's precision."""
    try:
        inputs, expected = bundle.parity_data()
    except BaseException:
        backend.close()
        raise
    return run_stored(backend, inputs, expected, lambda feeds: {OUTPUT_NAME: backend.run(feeds)})


def run_stored(backend: Any, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
               call: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None, *,
               tier: str | None = None) -> StoredRun:
    """Run ``backend`` on stored ``inputs`` (``call``, default its ``run_all``: every output by
    name), then close it; compare with the ``expected`` PyTorch outputs under ``tier`` (default:
    the backend's precision; a pipeline stage's feature outputs have their own tiers)."""
    try:
        t0 = time.perf_counter()
        actual = (call or backend.run_all)(inputs)
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    report = compare(actual, expected, backend=backend.name, precision=tier or backend.precision)
    return StoredRun(report, seconds, actual)
