"""Training losses: the EDM teacher, consistency training (iCT), consistency distillation, the decoder.

Every formula comes from ``cmrt.schedules`` through the denoisers (``KarrasDenoiser`` with the CM
boundary scalings or the EDM ones, ``DecoderDenoiser``); here live only the sampling of σ's, the
targets and the distances. Randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import schedules as S
from ..samplers import heun_step

# EDM (Karras et al. 2022): lognormal σ for the diffusion teacher.
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2
# iCT (Song & Dhariwal 2023): lognormal σ-index sampling, discretization doubling 10 → 1280.
ICT_P_MEAN, ICT_P_STD = -1.1, 2.0
ICT_S0, ICT_S1 = 10, 1280
HUBER_C_PER_SQRT_DIM = 0.00054  # pseudo-Huber c = 0.00054·√d
CD_GRID = 18  # CM paper, CIFAR-10 distillation


def _randn(shape, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _column(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def pseudo_huber(diff: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """Per-sample √(‖d‖² + c²) − c; c defaults to 0.00054·√(dimension)."""
    flat = diff.reshape(diff.shape[0], -1)
    c = HUBER_C_PER_SQRT_DIM * math.sqrt(flat.shape[1]) if c is None else c
    return torch.sqrt(flat.pow(2).sum(1) + c * c) - c


def l2(diff: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference."""
    return diff.reshape(diff.shape[0], -1).pow(2).mean(1)


DISTANCES = {"pseudo_huber": pseudo_huber, "l2": l2}


# --- EDM teacher ------------------------------------------------------------------------
def edm_loss(denoiser: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
             *, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD, sigma_data: float = S.SIGMA_DATA) -> torch.Tensor:
    """EDM denoising loss: ln σ ~ N(p_mean, p_std²), weight λ(σ) = (σ² + sd²)/(σ·sd)²."""
    sigma = (_randn((x0.shape[0],), x0, generator) * p_std + p_mean).exp()
    noise = _randn(x0.shape, x0, generator)
    denoised = denoiser(x0 + _column(sigma, x0) * noise, sigma, labels)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight * l2(denoised - x0)).mean()


# --- consistency training (iCT) -----------------------------------------------------------
def ct_discretization(step: int, total_steps: int, s0: int = ICT_S0, s1: int = ICT_S1) -> int:
    """iCT's curriculum N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋."""
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def ascending_grid(n: int, sigma_min: float = S.SIGMA_MIN, sigma_max: float = S.SIGMA_MAX) -> torch.Tensor:
    """The N-point Karras grid ascending from σ_min to σ_max (iCT's indexing), float64."""
    return torch.from_numpy(np.ascontiguousarray(S.karras_sigmas(n, sigma_min, sigma_max)[::-1]))


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = ICT_P_MEAN, p_std: float = ICT_P_STD) -> torch.Tensor:
    """p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2·P_std)) − erf((ln σ_i − P_mean)/(√2·P_std)), i = 0..N−2."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


@dataclass(frozen=True)
class CTPair:
    """One consistency-training pair: σ_i < σ_{i+1} per sample and the iCT weight 1/(σ_{i+1} − σ_i)."""

    sigma: torch.Tensor
    sigma_next: torch.Tensor
    weight: torch.Tensor


def ct_pairs(batch: int, n: int, generator: torch.Generator, *, sigma_min: float = S.SIGMA_MIN,
             sigma_max: float = S.SIGMA_MAX, p_mean: float = ICT_P_MEAN, p_std: float = ICT_P_STD) -> CTPair:
    """Draw adjacent σ pairs on the N-point grid with lognormal index sampling."""
    grid = ascending_grid(n, sigma_min, sigma_max)
    probs = lognormal_index_probs(grid, p_mean, p_std).float()
    i = torch.multinomial(probs.to(generator.device), batch, replacement=True, generator=generator).cpu()
    lo, hi = grid[i].float(), grid[i + 1].float()
    return CTPair(lo, hi, 1.0 / (hi - lo))


def ct_loss(model: nn.Module, target: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None,
            generator: torch.Generator, *, n: int, sigma_min: float = S.SIGMA_MIN, sigma_max: float = S.SIGMA_MAX,
            distance: str = "pseudo_huber") -> torch.Tensor:
    """Improved consistency training: d(f_θ(x + σ_{i+1}z, σ_{i+1}), sg f_θ(x + σ_i z, σ_i)) / (σ_{i+1} − σ_i).

    ``target`` is the same network (no EMA; iCT) used without gradient.
    """
    pair = ct_pairs(x0.shape[0], n, generator, sigma_min=sigma_min, sigma_max=sigma_max)
    lo, hi = pair.sigma.to(x0.device), pair.sigma_next.to(x0.device)
    z = _randn(x0.shape, x0, generator)
    student = model(x0 + _column(hi, x0) * z, hi, labels)
    with torch.no_grad():
        tgt = target(x0 + _column(lo, x0) * z, lo, labels)
    return (pair.weight.to(x0.device) * DISTANCES[distance](student - tgt)).mean()


# --- consistency distillation -------------------------------------------------------------
def cd_loss(model: nn.Module, target: nn.Module, teacher: nn.Module, x0: torch.Tensor,
            labels: torch.Tensor | None, generator: torch.Generator, *, n: int = CD_GRID,
            sigma_min: float = S.SIGMA_MIN, sigma_max: float = S.SIGMA_MAX, distance: str = "l2") -> torch.Tensor:
    """Consistency distillation: d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)), x̂_n a teacher Heun step.

    ``target`` is the EMA network θ⁻; ``teacher`` an EDM denoiser; n uniform on the N-point grid.
    """
    grid = ascending_grid(n, sigma_min, sigma_max)
    i = torch.randint(0, n - 1, (x0.shape[0],), generator=generator, device=generator.device).cpu()
    lo, hi = grid[i].float().to(x0.device), grid[i + 1].float().to(x0.device)
    x_hi = x0 + _column(hi, x0) * _randn(x0.shape, x0, generator)
    with torch.no_grad():
        x_lo = heun_step(teacher, x_hi, hi, lo, labels)
        tgt = target(x_lo, lo, labels)
    return DISTANCES[distance](model(x_hi, hi, labels) - tgt).mean()


# --- consistency decoder -------------------------------------------------------------------
def decoder_grid(n: int) -> torch.Tensor:
    """N distinct timesteps (ascending, from 0) on the decoder's distilled grid, the multiples of 1024/64
    that its exported timesteps lie on (1008 and 512 for odd N): every learned time-table row that
    export uses gets trained. N is capped at the grid's 64 points."""
    space = S.DECODER_T // S.DECODER_DISTILLED_STEPS
    points = min(n, S.DECODER_DISTILLED_STEPS)
    return torch.linspace(0, S.DECODER_DISTILLED_STEPS - 1, points).round().long().unique() * space


def vp_noise(x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·z, the decoder's VP noising, per-sample t."""
    abar = torch.as_tensor(S.decoder_alphas_cumprod(), dtype=torch.float32, device=x0.device)[t]
    return _column(abar.sqrt(), x0) * x0 + _column((1 - abar).sqrt(), x0) * z


def decoder_loss(model: nn.Module, target: nn.Module, x0: torch.Tensor, cond: torch.Tensor,
                 generator: torch.Generator, *, n: int, denoise_weight: float = 0.0,
                 distance: str = "pseudo_huber") -> torch.Tensor:
    """Consistency training of a decoder on its own cosine schedule and parameterization.

    d(f_θ(x_{t'}, t', c), sg f_θ(x_t, t, c)) for adjacent t < t' on an N-point grid, plus
    ``denoise_weight``·d(f_θ(x_{t'}, t', c), x0), which anchors the short chains on little compute.
    """
    grid = decoder_grid(n)
    j = torch.randint(1, len(grid), (x0.shape[0],), generator=generator, device=generator.device).cpu()
    t_lo, t_hi = grid[j - 1].to(x0.device), grid[j].to(x0.device)
    z = _randn(x0.shape, x0, generator)
    student = model(vp_noise(x0, t_hi, z), t_hi, cond)
    with torch.no_grad():
        tgt = target(vp_noise(x0, t_lo, z), t_lo, cond)
    dist = DISTANCES[distance]
    return (dist(student - tgt) + denoise_weight * dist(student - x0)).mean()
