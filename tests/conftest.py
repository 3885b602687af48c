"""Shared fixtures: tiny models built in the test, and bundles exported once per test run.

Under pytest-xdist every worker is its own process, so session fixtures would export once per
worker. ``shared_bundle`` exports once per *run* instead: into a folder all workers of this run
share (the xdist-documented ``getbasetemp().parent``), guarded by a file lock. The traced
network graphs are cached the same way (``CMRT_CACHE_DIR`` points into that folder), so every
export of an architecture after the first costs only the sampler's trace and the parity check.
Nothing is shared between runs: each run tests the code as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from filelock import FileLock

from cmrt.models.load import LoadedModel
from cmrt.models.spec import ModelSpec
from cmrt.models.unet import UNet, UNetConfig

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


def randomize(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (zero-initialized layers hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_cm_spec(num_classes: int | None = 10, channels: int = 3, size: int = 16) -> ModelSpec:
    unet = UNetConfig(in_channels=channels, out_channels=channels, block_out_channels=(32, 64), layers_per_block=1,
                      attention=(False, True), attention_head_dim=32, num_classes=num_classes)
    return ModelSpec(kind="sampler", unet=unet, image_channels=channels, image_size=size,
                     num_classes=num_classes, name="tiny-cm", trained=False)


def tiny_decoder_spec(widths=(32, 32, 32, 32), layers: int = 1) -> ModelSpec:
    unet = UNetConfig(in_channels=7, out_channels=6, block_out_channels=tuple(widths), layers_per_block=layers,
                      attention=(False,) * len(widths), mid_attention=False, time_embedding="learned",
                      num_train_timesteps=1024)
    return ModelSpec(kind="decoder", unet=unet, image_channels=3, clip=False, name="tiny-decoder", trained=False)


def loaded(spec: ModelSpec, seed: int = 0) -> LoadedModel:
    unet = randomize(UNet(spec.unet), seed=seed).eval()
    return LoadedModel(spec, unet, {"path": "<built in test>", "sha256": None, "format": "test"})


@pytest.fixture(scope="session")
def cm_model() -> LoadedModel:
    return loaded(tiny_cm_spec())


@pytest.fixture(scope="session")
def decoder_model() -> LoadedModel:
    return loaded(tiny_decoder_spec())


def _export(model: LoadedModel, **options):
    from cmrt import export

    return lambda out: export(out=out, model=model, **options)


@pytest.fixture(scope="session")
def cm_bundle(cm_model, tmp_path_factory):
    """A class-conditional tiny CM exported at 2 steps."""
    return shared_bundle(tmp_path_factory, "cm2", _export(cm_model, steps=2))


@pytest.fixture(scope="session")
def decoder_bundle(decoder_model, tmp_path_factory):
    """A tiny consistency decoder exported at its published 2 steps."""
    return shared_bundle(tmp_path_factory, "dec2", _export(decoder_model, steps=2))


@pytest.fixture(scope="session")
def dec16(tmp_path_factory):
    """The tiny decoder exported at 2 steps with an FP16 graph (shared by the FP16 and engine tests)."""
    return shared_bundle(tmp_path_factory, "dec16", _export(loaded(tiny_decoder_spec()), steps=2, precision="fp16"))


@pytest.fixture(scope="session")
def cm16(tmp_path_factory):
    """The tiny class-conditional CM with attention exported at 2 steps with an FP16 graph."""
    return shared_bundle(tmp_path_factory, "cm16", _export(loaded(tiny_cm_spec()), steps=2, precision="fp16"))


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
