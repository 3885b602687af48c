"""Random graph inputs for parity checks and calibration, in the graph's input order."""

from __future__ import annotations

import torch

from .. import schedules as S
from ..models.spec import ModelSpec

PARITY_BATCH = 2
PARITY_LATENT_HW = (4, 6)  # decoder parity inputs: 32×48 images (non-square; cheap for the 620M decoder)
PARITY_SEED = 0


def parity_inputs(spec: ModelSpec, steps: int, *, batch: int = PARITY_BATCH,
                  latent_hw: tuple[int, int] = PARITY_LATENT_HW, seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """Realistic-scale SD latents (normalizing to N(0, 1)) or class labels, then standard-normal
    noise per step, from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    if spec.kind == "decoder":
        h, w = latent_hw
        feeds["latents"] = S.denormalize_latents(torch.randn(batch, S.LATENT_CHANNELS, h, w, generator=g))
        shape = (batch, spec.image_channels, S.DECODER_UPSCALE * h, S.DECODER_UPSCALE * w)
    else:
        if spec.num_classes is not None:
            feeds["class_labels"] = torch.randint(0, spec.num_classes, (batch,), generator=g)
        shape = (batch, spec.image_channels, spec.image_size, spec.image_size)
    for i in range(steps):
        feeds[f"noise_{i}"] = torch.randn(shape, generator=g)
    return feeds
