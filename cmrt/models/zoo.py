"""Small random-weight models: the one zoo the tests and the benchmarks both build from.

Specs of the tiny models (seconds to export), the consistency decoder at any width, and the
published OpenAI consistency-model UNets at their sizes, plus ``random_model`` to give any spec
seeded random weights. Nothing here is trained (``trained=False``); timing and parity need no
trained weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .load import LoadedModel
from .spec import ModelSpec
from .unet import UNet, UNetConfig

#: The consistency decoder's published widths, and the same depth at about a tenth of them.
OFFICIAL_DECODER_WIDTHS = (320, 640, 1024, 1024)
REDUCED_DECODER_WIDTHS = (32, 64, 64, 64)
TINY_DECODER_WIDTHS = (32, 32, 32, 32)
DECODER_LAYERS = 3  # the published decoder's blocks per level
#: Standard deviation of ``randomize``'s weights: small enough that activations stay finite through
#: a UNet, large enough that no layer is the identity or zero (as PyTorch's zero-initialized ones are).
WEIGHT_STD = 0.05


def decoder_spec(widths: Sequence[int] = TINY_DECODER_WIDTHS, layers: int = DECODER_LAYERS,
                 name: str = "decoder") -> ModelSpec:
    """A consistency-decoder spec: the published layout (7 → 6 channels, learned time embedding,
    1024 training timesteps, no attention) at any widths and depth."""
    unet = UNetConfig(in_channels=7, out_channels=6, block_out_channels=tuple(widths), layers_per_block=layers,
                      attention=(False,) * len(widths), mid_attention=False, time_embedding="learned",
                      num_train_timesteps=1024)
    return ModelSpec(kind="decoder", unet=unet, image_channels=3, clip=False, name=name, trained=False)


def tiny_decoder_spec(widths: Sequence[int] = TINY_DECODER_WIDTHS, layers: int = 1) -> ModelSpec:
    """The tiny decoder (widths 32 × 4, one block per level): exports in seconds."""
    return decoder_spec(widths, layers, name="tiny-decoder")


def tiny_cm_spec(num_classes: int | None = 10, channels: int = 3, size: int = 16) -> ModelSpec:
    """A tiny consistency model (16², widths 32/64, attention at the second level), class-conditional
    unless ``num_classes`` is None."""
    unet = UNetConfig(in_channels=channels, out_channels=channels, block_out_channels=(32, 64), layers_per_block=1,
                      attention=(False, True), attention_head_dim=32, num_classes=num_classes)
    return ModelSpec(kind="sampler", unet=unet, image_channels=channels, image_size=size,
                     num_classes=num_classes, name="tiny-cm", trained=False)


def openai_cm_spec(arch: str, grid_size: int = 40) -> ModelSpec:
    """A consistency-model spec of a published OpenAI architecture (``convert.OPENAI_ARCHS``)."""
    from .convert import OPENAI_ARCHS

    a = OPENAI_ARCHS[arch]
    return ModelSpec(kind="sampler", unet=a.unet, image_channels=a.unet.out_channels, image_size=a.image_size,
                     num_classes=a.unet.num_classes, grid_size=grid_size, name=arch, trained=False)


def randomize(module: torch.nn.Module, std: float = WEIGHT_STD, seed: int = 0) -> torch.nn.Module:
    """Give every parameter seeded N(0, std²) values (zero-initialized layers hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def random_model(spec: ModelSpec, seed: int = 0, std: float | None = WEIGHT_STD) -> LoadedModel:
    """``spec``'s UNet in eval mode with seeded random weights: every parameter N(0, std²)
    (``randomize``), or PyTorch's default initialization under ``torch.manual_seed(seed)`` when
    ``std`` is None (the benchmarks' choice: the initialization a fresh model has)."""
    if std is None:
        torch.manual_seed(seed)
        unet, how = UNet(spec.unet), f"random weights (seed {seed})"
    else:
        unet, how = randomize(UNet(spec.unet), std=std, seed=seed), f"random weights N(0, {std}²) (seed {seed})"
    return LoadedModel(spec, unet.eval(), {"path": how, "sha256": None, "format": "random"})
