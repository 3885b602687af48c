"""Zero-shot editing with a consistency model: one projection per task, each a pure function.

Song et al. 2023 ("Consistency Models", Algorithm 4) edit an image with the same few-step sampler
as generation, applying a projection P onto the images that agree with the known part after every
evaluation of the consistency function f. With σ_1 > … > σ_K, the model's σ_min and standard
normal noise n_0 … n_{K-1}:

    x = y₀ + σ_1·n_0
    for i = 1 … K:  (i > 1: x ← x + √(σ_i² − σ_min²)·n_{i−1});  x ← P(f(x, σ_i))

Every function here works on torch tensors (B, C, H, W) in [-1, 1] and, where noted, on numpy
arrays; none draws noise or holds state. The editor that uses them is
``cmrt.samplers.edit_sample``; its exported form is ``cmrt.samplers.UnrolledEditor``.

The tasks and their known parts (images in [-1, 1]):

- ``inpaint``: image y (B, C, H, W), mask m (B, 1, H, W), **1 = generate, 0 = keep**
  (diffusers' convention). P(x) = (1−m)·y + m·x; y₀ = (1−m)·y.
- ``colorize``: the luma g = 0.2989 R + 0.5870 G + 0.1140 B (B, 1, H, W) of an RGB image. With
  v the luma weights and q = v/‖v‖: P(x) = x + q·(g/‖v‖ − qᵀx) per pixel; y₀ = q·g/‖v‖. This is
  OpenAI's orthogonal-basis projection (``iterative_colorization``) in closed form.
- ``superres``: the low-resolution image L (B, C, H/p, W/p). With U = nearest upsampling ×p and
  A = p×p average pooling: P(x) = x − U(A(x)) + U(L); y₀ = U(L). OpenAI's patch-basis projection
  (``iterative_superres``) in closed form.
- ``stroke`` (stroke-guided generation, SDEdit): a rough painting y; y₀ = y, P = identity; a
  first σ well below σ_max sets how far the result may move from the strokes.
- ``denoise``: a noisy image y at a known σ: one evaluation, f(y, σ), no noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

#: ITU-R BT.601 luma weights of R, G, B (as OpenAI's ``iterative_colorization``).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
LUMA_NORM = math.sqrt(sum(w * w for w in LUMA_WEIGHTS))  # ‖v‖
RGB = 3


@dataclass(frozen=True)
class EditTask:
    """What an editing task's graph takes besides ``image`` (and ``class_labels``).

    Attributes:
        name: the task name (``--task``).
        mask: takes a ``mask`` input (inpaint).
        noise: takes ``noise_i`` inputs (every task but denoise, which is one evaluation).
    """

    name: str
    mask: bool = False
    noise: bool = True


#: Every editing task, by name. ``sample`` (plain generation) is not an editing task.
EDIT_TASKS: dict[str, EditTask] = {t.name: t for t in (
    EditTask("inpaint", mask=True), EditTask("colorize"), EditTask("superres"), EditTask("stroke"),
    EditTask("denoise", noise=False),
)}


# --- inpainting ------------------------------------------------------------------------------
def inpaint_start(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """y₀ = (1 − m)·y: the kept pixels, zero where the mask generates."""
    return (1 - mask) * image


def inpaint_project(x: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """P(x) = (1 − m)·y + m·x: the kept pixels (m = 0) are exactly the image's."""
    return (1 - mask) * image + mask * x


# --- colorization ----------------------------------------------------------------------------
def luma(rgb: Any) -> Any:
    """g = 0.2989 R + 0.5870 G + 0.1140 B of (B, 3, H, W) images, as (B, 1, H, W) (torch or numpy)."""
    r, g, b = LUMA_WEIGHTS
    return r * rgb[:, 0:1] + g * rgb[:, 1:2] + b * rgb[:, 2:3]


def _luma_direction(x: torch.Tensor) -> torch.Tensor:
    """q = v/‖v‖ shaped (1, 3, 1, 1) in x's dtype and device."""
    return torch.tensor([w / LUMA_NORM for w in LUMA_WEIGHTS], dtype=x.dtype, device=x.device).view(1, RGB, 1, 1)


def colorize_start(gray: torch.Tensor) -> torch.Tensor:
    """y₀ = q·g/‖v‖: the gray image's luma along q, nothing in the two chroma directions."""
    return _luma_direction(gray) * (gray / LUMA_NORM)


def colorize_project(x: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """P(x) = x + q·(g/‖v‖ − qᵀx): x's chroma with the luma replaced by g, per pixel."""
    q = _luma_direction(x)
    along = (q * x).sum(dim=1, keepdim=True)  # qᵀx, (B, 1, H, W)
    return x + q * (gray / LUMA_NORM - along)


# --- super-resolution ------------------------------------------------------------------------
def block_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    """A: p×p average pooling, (B, C, H, W) → (B, C, H/p, W/p)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """U: nearest upsampling ×p, (B, C, h, w) → (B, C, h·p, w·p)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h, 1, w, 1).expand(b, c, h, factor, w, factor).reshape(b, c, h * factor, w * factor)


def superres_start(low: torch.Tensor, factor: int) -> torch.Tensor:
    """y₀ = U(L)."""
    return upsample_nearest(low, factor)


def superres_project(x: torch.Tensor, low: torch.Tensor, factor: int) -> torch.Tensor:
    """P(x) = x − U(A(x)) + U(L): x's detail inside each block, the block means of L."""
    return x - upsample_nearest(block_mean(x, factor) - low, factor)


# --- interpolation -----------------------------------------------------------------------------
def slerp(z1: Any, z2: Any, t: float) -> Any:
    """Spherical interpolation of two noise tensors (torch or numpy, same shape), per batch item.

    ``t`` = 0 gives ``z1``, 1 gives ``z2``; in between, the angle between the flattened items is
    interpolated, so the result keeps the norm a standard-normal draw has (a straight line would
    shrink it). Feed the result to ``Sampler.sample(noise=[...])``.

    Args:
        z1: noise (B, ...) (torch tensor or numpy array).
        z2: noise of the same shape and kind.
        t: the position, usually in [0, 1].
    """
    as_numpy = not isinstance(z1, torch.Tensor)
    a = torch.as_tensor(z1, dtype=torch.float64)
    b = torch.as_tensor(z2, dtype=torch.float64)
    if a.shape != b.shape:
        from .errors import InputError

        raise InputError(f"slerp needs z1 and z2 of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6  # (anti)parallel: fall back to the straight line
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * theta) / torch.where(parallel, 1.0, sin))
    wb = torch.where(parallel, torch.full_like(theta, float(t)), torch.sin(t * theta) / torch.where(parallel, 1.0, sin))
    out = (wa * fa + wb * fb).reshape(a.shape)
    if as_numpy:
        return out.numpy().astype(getattr(z1, "dtype", "float32"))
    return out.to(z1.dtype)
