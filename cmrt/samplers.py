"""Stateless fixed-step samplers, and their unrolled ``nn.Module`` forms that export to one graph.

Noise is always an argument: ``noise[0]`` makes the starting point and ``noise[i]`` (i ≥ 1) is
the fresh noise injected before evaluation i, so PyTorch, ONNX Runtime and TensorRT can be fed
the same draws.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import editing as E
from . import schedules as S
from .errors import ConfigError


def consistency_sample(denoiser: nn.Module, sigmas: Sequence[float], noise: Sequence[torch.Tensor],
                       class_labels: torch.Tensor | None = None, *, sigma_min: float = S.SIGMA_MIN,
                       clip: bool = True) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1).

    x = σ_0·ε_0; for each i: x0 = f(x, σ_i) (clamped); x = x0 + √(σ_{i+1}² − σ_min²)·ε_{i+1}.
    """
    return _multistep(denoiser, sigmas[0] * noise[0], sigmas, noise, class_labels, sigma_min, clip)


def _multistep(denoiser: nn.Module, x: torch.Tensor, sigmas: Sequence[float], noise: Sequence[torch.Tensor],
               class_labels: torch.Tensor | None, sigma_min: float, clip: bool, project=None) -> torch.Tensor:
    """From the starting point ``x``: for each i, (i > 0: x ← x + √(σ_i² − σ_min²)·noise[i]); then
    x ← f(x, σ_i), clamped when ``clip``, then ``project``ed when given."""
    for i, sigma in enumerate(sigmas):
        if i > 0:
            x = x + S.renoise_std(sigmas[i], sigma_min) * noise[i]
        x = denoiser(x, float(sigma), class_labels)
        if clip:
            x = x.clamp(-1.0, 1.0)
        if project is not None:
            x = project(x)
    return x


def edit_operators(task: str, image: torch.Tensor, *, mask: torch.Tensor | None = None,
                   factor: int | None = None):
    """The start y₀ and the projection P of an editing task (``cmrt.editing``), bound to its inputs.

    Returns:
        (y₀, P) with P a function x → P(x); P is None for tasks without a projection.
    """
    if task == "inpaint":
        return E.inpaint_start(image, mask), lambda x: E.inpaint_project(x, image, mask)
    if task == "colorize":
        return E.colorize_start(image), lambda x: E.colorize_project(x, image)
    if task == "superres":
        return E.superres_start(image, factor), lambda x: E.superres_project(x, image, factor)
    if task in ("stroke", "denoise"):
        return image, None
    raise ConfigError(f"unknown editing task {task!r}: choose one of {sorted(E.EDIT_TASKS)}")


def edit_sample(denoiser: nn.Module, task: str, image: torch.Tensor, sigmas: Sequence[float],
                noise: Sequence[torch.Tensor], *, mask: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, sigma_min: float = S.SIGMA_MIN, clip: bool = True,
                factor: int | None = None) -> torch.Tensor:
    """Zero-shot editing (Song et al. 2023, Alg. 4): the multistep sampler with a projection.

    x = y₀ + σ_1·n_0; for each i: (i > 1: x ← x + √(σ_i² − σ_min²)·n_{i−1}); x ← P(f(x, σ_i)),
    with f clamped to [-1, 1] when ``clip``. ``denoise`` is one evaluation f(image, σ_1), no noise.

    Args:
        denoiser: the consistency function f(x, σ, class_labels).
        task: "inpaint", "colorize", "superres", "stroke" or "denoise" (``cmrt.editing``).
        image: the task's known image: (B, C, H, W); colorize: the luma (B, 1, H, W); superres: the
            low-resolution image (B, C, H/p, W/p); denoise: the noisy image.
        sigmas: σ of every evaluation, descending (denoise: exactly one, the image's noise level).
        noise: one standard-normal (B, C, H, W) tensor per evaluation (denoise: none).
        mask: inpaint only, (B, 1, H, W), 1 = generate, 0 = keep.
        class_labels: (B,) labels of a class-conditional model.
        sigma_min: the model's σ_min (the re-noising uses √(σ² − σ_min²)).
        clip: clamp f's output to [-1, 1] (as sampling does).
        factor: superres only, the upsampling factor p.
    """
    start, project = edit_operators(task, image, mask=mask, factor=factor)
    x = start if task == "denoise" else start + sigmas[0] * noise[0]
    return _multistep(denoiser, x, sigmas, noise, class_labels, sigma_min, clip, project)


def _column(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast over x's (B, ...)."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def heun_step(denoiser: nn.Module, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """One Heun step of the PF-ODE dx/dσ = (x − D(x, σ))/σ from σ to σ_next (Euler where σ_next = 0;
    Karras et al. 2022, Alg. 1). ``sigma``/``sigma_next``: (B,) tensors."""
    d = (x - denoiser(x, sigma, labels)) / _column(sigma, x)
    h = _column(sigma_next - sigma, x)
    x_euler = x + h * d
    if bool((sigma_next == 0).all()):
        return x_euler
    d_next = (x_euler - denoiser(x_euler, sigma_next, labels)) / _column(sigma_next, x)
    return x + h * (d + d_next) / 2


def heun_sample(denoiser: nn.Module, noise: torch.Tensor, sigmas: Sequence[float],
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """EDM's deterministic sampler: x = σ_0·ε, then a Heun step between consecutive σ's (end the list
    with 0 for a final Euler step): 2·(len(sigmas) − 1) − 1 evaluations with a trailing 0."""
    x = noise * sigmas[0]
    b = x.shape[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = heun_step(denoiser, x, torch.full((b,), float(s)), torch.full((b,), float(s_next)), labels)
    return x


def decoder_condition(latents: torch.Tensor) -> torch.Tensor:
    """Unscaled SD latents (B, 4, h, w) → the decoder's conditioning (B, 4, 8h, 8w)."""
    return F.interpolate(S.normalize_latents(latents), scale_factor=float(S.DECODER_UPSCALE), mode="nearest")


def decoder_sample(denoiser: nn.Module, latents: torch.Tensor, timesteps: Sequence[int],
                   noise: Sequence[torch.Tensor], *, clip: bool = False) -> torch.Tensor:
    """Consistency-decoder sampling: before each evaluation x ← √ᾱ_t·x + √(1−ᾱ_t)·ε_i (x starts
    at 0), then x ← c_out·F + c_skip·x (clamped to [-1, 1] when ``clip``, as the original does)."""
    cond = decoder_condition(latents)
    x = None
    for i, t in enumerate(timesteps):
        s = S.decoder_scalings(int(t))
        eps = s["sqrt_one_minus_alpha_bar"] * noise[i]
        x = eps if x is None else s["sqrt_alpha_bar"] * x + eps
        x = denoiser(x, int(t), cond)
        if clip:
            x = x.clamp(-1.0, 1.0)
    return x


class UnrolledConsistencySampler(nn.Module):
    """``forward([class_labels,] noise_0, ..., noise_{k-1}) -> images`` with fixed σ's."""

    def __init__(self, denoiser: nn.Module, sigmas: Sequence[float], *, sigma_min: float = S.SIGMA_MIN,
                 clip: bool = True, conditional: bool = False) -> None:
        super().__init__()
        self.denoiser, self.sigmas = denoiser, [float(s) for s in sigmas]
        self.sigma_min, self.clip, self.conditional = sigma_min, clip, conditional

    @property
    def input_names(self) -> list[str]:
        return (["class_labels"] if self.conditional else []) + [f"noise_{i}" for i in range(len(self.sigmas))]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        labels, noise = (inputs[0], inputs[1:]) if self.conditional else (None, inputs)
        return consistency_sample(self.denoiser, self.sigmas, noise, labels, sigma_min=self.sigma_min, clip=self.clip)


class UnrolledDecoderSampler(nn.Module):
    """``forward(latents, noise_0, ..., noise_{k-1}) -> images`` with fixed timesteps."""

    def __init__(self, denoiser: nn.Module, timesteps: Sequence[int], *, clip: bool = False) -> None:
        super().__init__()
        self.denoiser, self.timesteps, self.clip = denoiser, [int(t) for t in timesteps], clip

    @property
    def input_names(self) -> list[str]:
        return ["latents"] + [f"noise_{i}" for i in range(len(self.timesteps))]

    def forward(self, latents: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return decoder_sample(self.denoiser, latents, self.timesteps, noise, clip=self.clip)


class UnrolledEditor(nn.Module):
    """``forward(image, [mask], [class_labels], noise_0, ..., noise_{k-1}) -> images`` with fixed σ's.

    The exported form of ``edit_sample`` for one task: the inputs in this order, ``mask`` for
    inpaint only, ``class_labels`` for class-conditional models, no noise for denoise.
    """

    def __init__(self, denoiser: nn.Module, task: str, sigmas: Sequence[float], *, sigma_min: float = S.SIGMA_MIN,
                 clip: bool = True, conditional: bool = False, factor: int | None = None) -> None:
        super().__init__()
        self.denoiser, self.task, self.sigmas = denoiser, task, [float(s) for s in sigmas]
        self.sigma_min, self.clip, self.conditional, self.factor = sigma_min, clip, conditional, factor
        self.edit = E.EDIT_TASKS[task]

    @property
    def input_names(self) -> list[str]:
        noise = [f"noise_{i}" for i in range(len(self.sigmas))] if self.edit.noise else []
        return ["image"] + (["mask"] if self.edit.mask else []) + (["class_labels"] if self.conditional else []) + noise

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        noise = [named[f"noise_{i}"] for i in range(len(self.sigmas))] if self.edit.noise else []
        return edit_sample(self.denoiser, self.task, named["image"], self.sigmas, noise, mask=named.get("mask"),
                           class_labels=named.get("class_labels"), sigma_min=self.sigma_min, clip=self.clip,
                           factor=self.factor)
