"""Serving fixtures: a real Triton server (PyTriton's tritonserver) on the tiny decoder and sampler
bundles, started once per module, always stopped.

The server runs its models in the serving environment (numpy<2 + PyTriton): ``$CMRT_SERVE_PYTHON``,
which ``make test`` sets to ``.venv-serve/bin/python`` (``make serve-env``); outside ``make test``
the well-known ``.venv-serve`` is used when present, else the server tests skip with the reason.
The client side (tritonclient, the in-process references) runs here, in the test environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmrt.serve.repository import RepositoryOptions, write_repository
from cmrt.serve.server import SERVE_PYTHON_ENV

from tests.serve.helpers import MAX_BATCH, QUEUE_DELAY_US, START_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
WELL_KNOWN = ROOT / ".venv-serve" / "bin" / "python"


def find_serve_python() -> Path | None:
    env = os.environ.get(SERVE_PYTHON_ENV)
    if env:
        return Path(env)  # set (by make test): it must work, a broken one fails the tests
    return WELL_KNOWN if WELL_KNOWN.exists() else None


@pytest.fixture(scope="session")
def serve_python() -> Path:
    py = find_serve_python()
    if py is None:
        pytest.skip(f"no serving environment: ${SERVE_PYTHON_ENV} is unset and {WELL_KNOWN} is absent "
                    "(run `make serve-env`, or `make test`, which makes it)")
    return py


@pytest.fixture(scope="module")
def repo(cm_bundle, decoder_bundle, edit_inpaint, tmp_path_factory) -> Path:
    """A repository (plain models included) on the tiny sampler ``cm2``, decoder ``dec2`` and
    inpainting editor ``edit_inpaint``."""
    out = tmp_path_factory.mktemp("triton") / "models"
    options = RepositoryOptions(max_batch=MAX_BATCH, max_queue_delay_us=QUEUE_DELAY_US)
    write_repository([cm_bundle.path, decoder_bundle.path, edit_inpaint.path], out, options=options)
    return out


@pytest.fixture(scope="module")
def server(repo, serve_python):
    """One real server on the repository's cmrt models (the plain ONNX models cannot load here:
    PyTriton's Triton has no onnxruntime backend)."""
    from cmrt.serve.server import TritonServer

    s = TritonServer(repo, python=serve_python, models=["cm2", "dec2", "edit_inpaint"])
    try:
        s.start(timeout_s=START_TIMEOUT_S)
        yield s
    finally:
        s.stop()
