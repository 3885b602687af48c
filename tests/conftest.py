"""Shared fixtures: tiny models built in the test, and bundles exported once per session."""

from __future__ import annotations

import pytest
import torch

from cmrt.models.load import LoadedModel
from cmrt.models.spec import ModelSpec
from cmrt.models.unet import UNet, UNetConfig


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


@pytest.fixture(scope="session")
def cm_bundle(cm_model, tmp_path_factory):
    """A class-conditional tiny CM exported at 2 steps."""
    from cmrt.exporter.api import export

    return export(out=tmp_path_factory.mktemp("b") / "cm2", steps=2, model=cm_model)


@pytest.fixture(scope="session")
def decoder_bundle(decoder_model, tmp_path_factory):
    """A tiny consistency decoder exported at its published 2 steps."""
    from cmrt.exporter.api import export

    return export(out=tmp_path_factory.mktemp("b") / "dec2", steps=2, model=decoder_model)


@pytest.fixture(scope="session")
def dec16(tmp_path_factory):
    """The tiny decoder exported at 2 steps with an FP16 graph (shared by the FP16 and engine tests)."""
    from cmrt.exporter.api import export

    return export(out=tmp_path_factory.mktemp("fp16") / "decoder", steps=2, model=loaded(tiny_decoder_spec()),
                  precision="fp16")


@pytest.fixture(scope="session")
def cm16(tmp_path_factory):
    """The tiny class-conditional CM with attention exported at 2 steps with an FP16 graph."""
    from cmrt.exporter.api import export

    return export(out=tmp_path_factory.mktemp("fp16") / "cm", steps=2, model=loaded(tiny_cm_spec()),
                  precision="fp16")
