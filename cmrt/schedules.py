"""The consistency math, each formula written once as a pure function.

Consistency models (Song et al. 2023; openai/consistency_models): the Karras σ grid, the
boundary-condition scalings and the network's time input. The consistency decoder
(openai/consistencydecoder): a cosine VP schedule over 1024 steps in VE coordinates, its
scalings, its timesteps and its latent normalization. The EDM scalings (no boundary term)
serve the diffusion teacher.

Functions take Python floats or torch tensors (elementwise) unless said otherwise; decoder
tables are float64 numpy arrays, converted where they are used.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError

# --- consistency models -------------------------------------------------------------
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0
TIME_SCALE = 250.0  # the network's time input is 250·ln(σ) (EDM c_noise = ln(σ)/4, × 1000)
LOG_EPS = 1e-44  # added inside the log, as the reference implementations do


def karras_sigma(ramp, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """σ at position ``ramp`` ∈ [0, 1] of the Karras grid (0 → σ_max, 1 → σ_min)."""
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> np.ndarray:
    """The N-point Karras grid, descending from σ_max to σ_min (float64)."""
    if n < 2:
        raise ConfigError(f"a Karras grid needs at least 2 points (--grid), got {n}")
    return karras_sigma(np.arange(n, dtype=np.float64) / (n - 1), sigma_min, sigma_max, rho)


def sigmas_from_indices(indices: Sequence[int], n: int, sigma_min: float = SIGMA_MIN,
                        sigma_max: float = SIGMA_MAX, rho: float = RHO) -> list[float]:
    """σ's of the given grid indices (0 = σ_max) on the N-point Karras grid, as the
    original ``ts=0,22,39`` and diffusers' ``timesteps=[22, 0]`` select them."""
    return [float(karras_sigma(i / (n - 1), sigma_min, sigma_max, rho)) for i in indices]


def default_cm_sigmas(steps: int, n: int = 40, sigma_min: float = SIGMA_MIN,
                      sigma_max: float = SIGMA_MAX, rho: float = RHO) -> list[float]:
    """cmrt's documented default spacing for ``--steps N`` on an N-point Karras grid.

    It is diffusers' ``CMStochasticIterativeScheduler.set_timesteps(num_inference_steps=steps)``
    rule: indices ``i·(n // steps)`` for i = 0..steps-1 (so 1 step is σ_max, 2 steps on the
    40-point CD grid are indices 0 and 20).
    """
    if steps < 1:
        raise ConfigError(f"--steps must be ≥ 1, got {steps}")
    if steps > n:
        raise ConfigError(f"--steps {steps} exceeds the {n}-point Karras grid: choose at most {n} steps, "
                          f"a larger --grid, or explicit --sigmas")
    ratio = n // steps
    return sigmas_from_indices([i * ratio for i in range(steps)], n, sigma_min, sigma_max, rho)


#: Where stroke-guided generation (SDEdit) starts by default: well below σ_max, so the result keeps
#: the painting's layout and colours while the model makes it realistic (the issue suggests 2–10).
STROKE_SIGMA_START = 5.0


def default_edit_sigmas(task: str, steps: int, n: int = 40, sigma_min: float = SIGMA_MIN,
                        sigma_max: float = SIGMA_MAX, rho: float = RHO) -> list[float]:
    """cmrt's documented default σ's of an editing task for ``--steps N`` alone.

    inpaint, colorize and superres start from noise at σ_max and use the sampling spacing
    (``default_cm_sigmas``), so ``--steps N`` edits with the σ's ``--steps N`` samples with; stroke
    uses the same spacing on an N-point Karras grid from ``STROKE_SIGMA_START`` down to σ_min.
    denoise has no default: its one σ is the input's noise level (``--sigmas``).
    """
    if task == "stroke":
        return default_cm_sigmas(steps, n, sigma_min, min(STROKE_SIGMA_START, sigma_max), rho)
    return default_cm_sigmas(steps, n, sigma_min, sigma_max, rho)


def _sqrt(x):
    return x ** 0.5


def cm_scalings(sigma, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
    """Boundary-condition scalings (c_skip, c_out, c_in): f(x, σ_min) = x exactly."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / _sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / _sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def edm_scalings(sigma, sigma_data: float = SIGMA_DATA):
    """EDM preconditioning scalings (c_skip, c_out, c_in), without the boundary term."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / _sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / _sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def cm_time_input(sigma):
    """The network's time input 250·ln(σ + 1e-44)."""
    if isinstance(sigma, torch.Tensor):
        return TIME_SCALE * torch.log(sigma + LOG_EPS)
    return TIME_SCALE * math.log(sigma + LOG_EPS)


def renoise_std(sigma_next: float, sigma_min: float = SIGMA_MIN) -> float:
    """Std of the noise added to x0 before evaluating at σ_next: √(σ_next² − σ_min²)."""
    return math.sqrt(max(sigma_next**2 - sigma_min**2, 0.0))


# --- consistency decoder --------------------------------------------------------------
DECODER_T = 1024  # training timesteps of the cosine VP schedule
DECODER_DISTILLED_STEPS = 64  # timesteps are rounded to multiples of 1024 / 64 = 16
DECODER_TIMESTEPS = (1008, 512)  # the published 2-step schedule
DECODER_MAX_BETA = 0.999
LATENT_SCALE = 0.18215  # SD 1.x/2.x VAE scaling factor
LATENT_MEANS = (0.38862467, 0.02253063, 0.07381133, -0.0171294)
LATENT_STDS = (0.9654121, 1.0440036, 0.76147926, 0.77022034)
LATENT_CHANNELS = 4
DECODER_UPSCALE = 8


def cosine_alpha_bar(s) -> float:
    """The cosine schedule's continuous ᾱ(s), s ∈ [0, 1]: cos²((s + 0.008)/1.008 · π/2)."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def decoder_alphas_cumprod(n: int = DECODER_T, max_beta: float = DECODER_MAX_BETA) -> np.ndarray:
    """ᾱ_t = Π_{i≤t}(1 − β_i) with β_i = min(1 − ᾱ((i+1)/n)/ᾱ(i/n), max_beta), float64."""
    betas = np.array([min(1.0 - cosine_alpha_bar((i + 1) / n) / cosine_alpha_bar(i / n), max_beta)
                      for i in range(n)])
    return np.cumprod(1.0 - betas)


def decoder_sigma(t: int) -> float:
    """VE-equivalent σ_t = √(1/ᾱ_t − 1) of decoder timestep t."""
    return math.sqrt(1.0 / decoder_alphas_cumprod()[t] - 1.0)


def decoder_scalings(t: int, sigma_data: float = SIGMA_DATA) -> dict[str, float]:
    """Scalings of decoder timestep t: √ᾱ, √(1−ᾱ) (VP noising) and c_skip, c_out, c_in.

    They are the EDM scalings of the VE variable x/√ᾱ, with the 1/√ᾱ factor folded into
    c_skip and c_in and no σ_min term.
    """
    if not 0 <= t < DECODER_T:
        raise ConfigError(f"decoder timestep must be in [0, {DECODER_T}) (--timesteps), got {t}")
    abar = float(decoder_alphas_cumprod()[t])
    sigma = math.sqrt(1.0 / abar - 1.0)
    c_skip, c_out, c_in = edm_scalings(sigma, sigma_data)
    return {"sqrt_alpha_bar": math.sqrt(abar), "sqrt_one_minus_alpha_bar": math.sqrt(1.0 - abar),
            "c_skip": c_skip / math.sqrt(abar), "c_out": c_out, "c_in": c_in / math.sqrt(abar)}


def round_decoder_timestep(index: int, n: int = DECODER_T, distilled: int = DECODER_DISTILLED_STEPS) -> int:
    """Round a timestep index up to the distilled grid (multiples of n/distilled, in [space, n−space])."""
    space = n // distilled
    t = (index // space + 1) * space
    return min(t, n - space)


def decoder_timesteps(steps: int) -> list[int]:
    """Timesteps of an N-step decoder schedule: fractions 1, 1 − 1/N, ... of the 1023 range,
    rounded as the original does. 1 step → [1008]; 2 steps → [1008, 512] (the published ones)."""
    if steps < 1:
        raise ConfigError(f"--steps must be ≥ 1, got {steps}")
    fractions = [1.0 - k / steps for k in range(steps)]
    ts = [round_decoder_timestep(int((DECODER_T - 1) * f)) for f in fractions]
    if len(set(ts)) != len(ts):
        raise ConfigError(f"--steps {steps} does not fit the decoder's {DECODER_DISTILLED_STEPS}-step grid: "
                          f"choose at most {DECODER_DISTILLED_STEPS - 1} steps, or explicit --timesteps")
    return ts


def normalize_latents(z: torch.Tensor) -> torch.Tensor:
    """SD-VAE latent (unscaled) → the decoder's conditioning: (z·0.18215 − mean_c)/std_c."""
    means = torch.tensor(LATENT_MEANS, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    stds = torch.tensor(LATENT_STDS, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    return (z * LATENT_SCALE - means) / stds


def denormalize_latents(n: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize_latents``: the decoder's normalized conditioning → unscaled SD-convention latents."""
    means = torch.tensor(LATENT_MEANS, dtype=n.dtype, device=n.device).view(1, -1, 1, 1)
    stds = torch.tensor(LATENT_STDS, dtype=n.dtype, device=n.device).view(1, -1, 1, 1)
    return (n * stds + means) / LATENT_SCALE
