"""Random graph inputs for parity checks and calibration, in the graph's input order."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import editing as E
from .. import schedules as S
from ..bundle import Task
from ..models.spec import ModelSpec

PARITY_BATCH = 2
PARITY_LATENT_HW = (4, 6)  # decoder parity inputs: 32×48 images (non-square; cheap for the 620M decoder)
PARITY_SEED = 0
#: Editing parity images: a smooth random field on a coarse grid, bilinearly upsampled and scaled
#: so that part of it saturates at ±1, as real images do.
IMAGE_GRID = 4
IMAGE_GAIN = 1.5
#: Inpainting parity masks: one box per image whose sides span this fraction range of the image.
MASK_SIDE = (0.4, 0.7)


def parity_inputs(spec: ModelSpec, steps: int, *, task: Task | None = None, sigmas: Sequence[float] | None = None,
                  batch: int = PARITY_BATCH, latent_hw: tuple[int, int] = PARITY_LATENT_HW,
                  seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """Realistic-scale SD latents (normalizing to N(0, 1)), editing inputs (images in [-1, 1],
    0/1 box masks, low-resolution or gray images), class labels, then standard-normal noise per
    step, from ``torch.Generator().manual_seed(seed)``.

    Args:
        spec: the model.
        steps: network evaluations (one noise input each, but none for denoise).
        task: the bundle's task; an editing task adds its image (and mask) inputs.
        sigmas: the schedule's σ's (denoise: its input is an image noisy at σ_1).
        batch: batch size.
        latent_hw: decoder latent size.
        seed: the generator's seed.
    """
    g = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    edit = E.EDIT_TASKS.get(task.name) if task is not None else None
    if spec.kind == "decoder":
        h, w = latent_hw
        feeds["latents"] = S.denormalize_latents(torch.randn(batch, S.LATENT_CHANNELS, h, w, generator=g))
        shape = (batch, spec.image_channels, S.DECODER_UPSCALE * h, S.DECODER_UPSCALE * w)
    else:
        shape = (batch, spec.image_channels, spec.image_size, spec.image_size)
        if edit is not None:
            feeds |= edit_inputs(task, shape, g, sigma=sigmas[0] if sigmas else None)
        if spec.num_classes is not None:
            feeds["class_labels"] = torch.randint(0, spec.num_classes, (batch,), generator=g)
    if edit is None or edit.noise:
        for i in range(steps):
            feeds[f"noise_{i}"] = torch.randn(shape, generator=g)
    return feeds


def smooth_images(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1]: a smooth random field, partly saturated (``IMAGE_GRID``, ``IMAGE_GAIN``)."""
    b, c, h, w = shape
    coarse = torch.randn(b, c, IMAGE_GRID, IMAGE_GRID, generator=g)
    return (IMAGE_GAIN * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)).clamp(-1, 1)


def box_masks(batch: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) masks of 0s with one box of 1s each (``MASK_SIDE`` of each side)."""
    mask = torch.zeros(batch, 1, h, w)
    lo, hi = MASK_SIDE
    for i in range(batch):
        bh, bw = (max(1, int(n * (lo + (hi - lo) * float(torch.rand((), generator=g))))) for n in (h, w))
        top = int(torch.randint(0, h - bh + 1, (), generator=g))
        left = int(torch.randint(0, w - bw + 1, (), generator=g))
        mask[i, :, top:top + bh, left:left + bw] = 1.0
    return mask


def edit_inputs(task: Task, shape: tuple[int, ...], g: torch.Generator, *,
                sigma: float | None = None) -> dict[str, torch.Tensor]:
    """The ``image`` (and ``mask``) input of an editing task for output images of ``shape``."""
    b, _c, h, w = shape
    images = smooth_images(shape, g)
    if task.name == "inpaint":
        return {"image": images, "mask": box_masks(b, h, w, g)}
    if task.name == "colorize":
        return {"image": E.luma(images)}
    if task.name == "superres":
        return {"image": E.block_mean(images, task.factor)}
    if task.name == "denoise":
        return {"image": images + sigma * torch.randn(shape, generator=g)}
    return {"image": images}  # stroke: a painting
