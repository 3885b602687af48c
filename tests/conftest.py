"""Shared fixtures: tiny models from ``cmrt.models.zoo``, and the bundles the tests share, exported
once per test run from one table (``SHARED_BUNDLES``).

Under pytest-xdist every worker is its own process, so session fixtures would export once per
worker. ``shared_bundle`` exports once per *run* instead: into a folder all workers of this run
share (the xdist-documented ``getbasetemp().parent``), guarded by a file lock. The traced
network graphs are cached the same way (``CMRT_CACHE_DIR`` points into that folder), so every
export of an architecture after the first costs only the sampler's trace and the parity check.
Nothing is shared between runs: each run tests the code as it is.

Threads: each xdist worker gets its share of the cores for PyTorch and ONNX Runtime (one each for
two workers on two cores), set before torch starts and inherited by the processes tests start
(``OMP_NUM_THREADS``, cmrt's ``CMRT_THREADS``): workers that each spin one thread per core
would oversubscribe the machine.
"""

from __future__ import annotations

import os


def _threads_per_worker() -> int | None:
    """This worker's share of the CPUs (None outside pytest-xdist: the libraries' defaults)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 1:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // workers)


THREADS = _threads_per_worker()
if THREADS is not None:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    os.environ["CMRT_THREADS"] = str(THREADS)  # cmrt.runtime.backends.default_threads

from dataclasses import dataclass, field  # noqa: E402  (after the thread settings: torch reads them)
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

from cmrt.models.load import LoadedModel  # noqa: E402
from cmrt.models.zoo import randomize, random_model, tiny_cm_spec, tiny_decoder_spec  # noqa: E402,F401

if THREADS is not None:
    torch.set_num_threads(THREADS)

# The suite runs as on a CPU without native BF16 (``cmrt.runtime.openvino.cpu_flags``' seam): exports
# record no OpenVINO parity and runners keep ONNX Runtime FP32 by default on any machine;
# tests/runtime/test_openvino.py sets the flags itself.
os.environ.setdefault("CMRT_CPU_FLAGS", "")


def _run_root(factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every worker of this test run (and by nothing else)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _network_cache(tmp_path_factory):
    """Traced network graphs shared by this run's workers (never the user's own cache)."""
    previous = os.environ.get("CMRT_CACHE_DIR")
    os.environ["CMRT_CACHE_DIR"] = str(_run_root(tmp_path_factory) / "cmrt-cache")
    yield
    if previous is None:
        os.environ.pop("CMRT_CACHE_DIR", None)
    else:
        os.environ["CMRT_CACHE_DIR"] = previous


def run_shared(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object], done: str) -> Path:
    """The folder ``make(folder)`` fills, made once per test run (whichever worker comes first;
    the others wait for it) and shared by every worker. ``done``: the file that marks it made."""
    root = _run_root(factory) / "shared"
    root.mkdir(exist_ok=True)
    out = root / name
    with FileLock(str(out) + ".lock"):
        if not (out / done).is_file():
            make(out)
    return out


def shared_bundle(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]):
    """The bundle ``make(out)`` exports, made once per test run and opened by every worker."""
    from cmrt.bundle import Bundle

    return Bundle.open(run_shared(factory, name, make, "cmrt.json"))


def loaded(spec, seed: int = 0) -> LoadedModel:
    """``spec`` with seeded N(0, 0.05²) weights (``cmrt.models.zoo.random_model``)."""
    return random_model(spec, seed=seed)


def tiny_cm() -> LoadedModel:
    """The tiny RGB class-conditional CM with attention (the same weights every time)."""
    return loaded(tiny_cm_spec())


def tiny_decoder() -> LoadedModel:
    """The tiny consistency decoder (the same weights every time)."""
    return loaded(tiny_decoder_spec())


@pytest.fixture(scope="session")
def cm_model() -> LoadedModel:
    return loaded(tiny_cm_spec())


@pytest.fixture(scope="session")
def decoder_model() -> LoadedModel:
    return loaded(tiny_decoder_spec())


def _export(model: LoadedModel, **options):
    from cmrt import export

    return lambda out: export(out=out, model=model, **options)


@dataclass(frozen=True)
class SharedBundle:
    """A bundle the tests share: its folder in the run's shared root (a served model takes its
    name), the model it exports and ``cmrt.export``'s options."""

    folder: str
    model: Callable[[], LoadedModel]
    options: dict = field(default_factory=dict)
    doc: str = ""


EDIT_FACTOR = 4
#: fixture name → bundle. Every shared bundle of the tests, each a session fixture of that name,
#: exported once per run by whichever worker needs it first.
SHARED_BUNDLES: dict[str, SharedBundle] = {
    "cm_bundle": SharedBundle("cm2", tiny_cm, dict(steps=2), "A class-conditional tiny CM exported at 2 steps."),
    "decoder_bundle": SharedBundle("dec2", tiny_decoder, dict(steps=2),
                                   "A tiny consistency decoder exported at its published 2 steps."),
    "dec16": SharedBundle("dec16", tiny_decoder, dict(steps=2, precision="fp16"),
                          "The tiny decoder at 2 steps with an FP16 graph (the FP16 and engine tests)."),
    "cm16": SharedBundle("cm16", tiny_cm, dict(steps=2, precision="fp16"),
                         "The tiny class-conditional CM with attention at 2 steps with an FP16 graph."),
    "stats_bundle": SharedBundle("dec2-stats", tiny_decoder, dict(steps=2, tile_stats=True),
                                 "The tiny decoder (``decoder_bundle``'s weights) exported with ``tile_stats``."),
    # editing graphs of the tiny RGB CM: one per task, the step counts spread over the tasks (every task
    # at every K is tested at the PyTorch level, tests/editing/test_edit_sample.py); the inpainting
    # bundle also carries the FP16 graph that the FP16 and engine tests use.
    "edit_inpaint": SharedBundle("edit_inpaint", tiny_cm, dict(task="inpaint", steps=2, precision="fp16")),
    "edit_colorize": SharedBundle("edit_colorize", tiny_cm, dict(task="colorize", steps=3)),
    "edit_superres": SharedBundle("edit_superres", tiny_cm, dict(task="superres", factor=EDIT_FACTOR, steps=1)),
    "edit_stroke": SharedBundle("edit_stroke", tiny_cm, dict(task="stroke", steps=2)),
    "edit_denoise": SharedBundle("edit_denoise", tiny_cm, dict(task="denoise", sigmas=[0.5])),
}


def export_shared(factory: pytest.TempPathFactory, name: str):
    """The bundle ``SHARED_BUNDLES[name]``, exported once per test run."""
    from cmrt import export

    entry = SHARED_BUNDLES[name]
    return shared_bundle(factory, entry.folder, lambda out: export(out=out, model=entry.model(), **entry.options))


def _bundle_fixture(name: str):
    def bundle(tmp_path_factory):
        return export_shared(tmp_path_factory, name)
    bundle.__doc__ = SHARED_BUNDLES[name].doc or f"The shared bundle {SHARED_BUNDLES[name].folder}."
    return pytest.fixture(scope="session", name=name)(bundle)


for _name in SHARED_BUNDLES:
    globals()[_name] = _bundle_fixture(_name)


@pytest.fixture
def bundle_copy(tmp_path):
    """A writable copy of a shared bundle (tests that change files must not touch the shared one)."""
    import shutil

    def copy(bundle, name: str = "copy"):
        from cmrt.bundle import Bundle

        dest = tmp_path / name
        shutil.copytree(bundle.path, dest)
        return Bundle.open(dest)
    return copy


def timed_as(bundle, speedup: float, key: str = "openvino-bf16/avx512-bf16"):
    """The bundle with its backend record ``key`` (already written by a real check) stating
    ``speedup`` against ONNX Runtime FP32: the timing the default choice reads, set by a test that
    is about the choice (the tiny test models' real timings sit near 1×). Returns the bundle reopened."""
    from dataclasses import replace

    from cmrt.bundle import Bundle

    rec = bundle.manifest.backends[key]
    bundle.update(backends={**bundle.manifest.backends, key: replace(rec, speed=replace(rec.speed, speedup=speedup))})
    return Bundle.open(bundle.path)
