"""The Latent Consistency Model scheduler as pure functions, one per formula.

Each function matches diffusers' ``LCMScheduler`` (``schedulers/scheduling_lcm.py``, diffusers
0.42) and the LCM pipelines exactly, including where diffusers computes in float32 (the
cumulative alphas, their square roots) and where in Python floats (the boundary scalings):

- betas: scaled-linear (``sqrt`` spaced, squared), linear, or given; ᾱ = cumprod(1 − β) in float32.
- timesteps: ``k = T // original_steps``; the distillation grid ``(1..original_steps)·k − 1``,
  reversed; ``steps`` indices ``floor(linspace(0, len, steps, endpoint=False))`` of it.
- one step at t (prev: the next timestep, or the final alpha): x0 = (x − √(1−ᾱ_t)·ε)/√ᾱ_t;
  with s = timestep_scaling·t: c_skip = σ_d²/(s² + σ_d²), c_out = s/√(s² + σ_d²) (σ_d = 0.5);
  denoised = c_out·x0 + c_skip·x; before every step but the last, x = √ᾱ_prev·denoised + √(1−ᾱ_prev)·z.
- guidance embedding (full LCM): w = guidance_scale − 1, ×1000, sinusoidal (sin half, then cos).
- classifier-free guidance (LCM-LoRA): ε = ε_u + g·(ε_c − ε_u).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

SIGMA_DATA = 0.5  # LCMScheduler.get_scalings_for_boundary_condition_discrete
GUIDANCE_EMBED_SCALE = 1000.0  # get_guidance_scale_embedding: w * 1000
GUIDANCE_EMBED_MAX_PERIOD = 10000.0
#: LCMScheduler's constructor defaults (a scheduler_config.json may leave any of them out).
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "original_inference_steps": 50, "clip_sample": False, "clip_sample_range": 1.0,
    "set_alpha_to_one": True, "prediction_type": "epsilon", "thresholding": False, "timestep_scaling": 10.0,
    "rescale_betas_zero_snr": False,
}


def betas(num_train_timesteps: int, beta_start: float, beta_end: float, schedule: str,
          trained: list[float] | None = None) -> torch.Tensor:
    """β_1..β_T in float32 (``scaled_linear``: linspace of √β, squared; ``linear``; or given)."""
    if trained is not None:
        return torch.tensor(trained, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    raise ValueError(f"beta_schedule {schedule!r} is not supported (scaled_linear, linear, or trained_betas)")


def alphas_cumprod(b: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{i≤t} (1 − β_i), float32 as diffusers computes it."""
    return torch.cumprod(1.0 - b, dim=0)


def lcm_timesteps(steps: int, num_train_timesteps: int, original_steps: int) -> list[int]:
    """The LCM inference timesteps (``LCMScheduler.set_timesteps(steps)``, strength 1)."""
    import numpy as np

    k = num_train_timesteps // original_steps
    origin = (np.arange(1, original_steps + 1) * k - 1)[::-1]
    if not 1 <= steps <= original_steps:
        raise ValueError(f"steps must be in [1, {original_steps}] (the scheduler's original_inference_steps)")
    idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in origin[idx]]


def boundary_scalings(t: int, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at discrete timestep t, in Python floats as diffusers computes them."""
    s = t * timestep_scaling
    return SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2), s / (s**2 + SIGMA_DATA**2) ** 0.5


def predicted_x0(x: torch.Tensor, eps: torch.Tensor, sqrt_alpha: torch.Tensor,
                 sqrt_one_minus_alpha: torch.Tensor) -> torch.Tensor:
    """x0 from an ε-prediction: (x − √(1−ᾱ)·ε)/√ᾱ."""
    return (x - sqrt_one_minus_alpha * eps) / sqrt_alpha


def denoised(x0: torch.Tensor, x: torch.Tensor, c_skip: float, c_out: float) -> torch.Tensor:
    """The consistency boundary condition: c_out·x0 + c_skip·x."""
    return c_out * x0 + c_skip * x


def renoise(d: torch.Tensor, noise: torch.Tensor, sqrt_alpha_prev: torch.Tensor,
            sqrt_one_minus_alpha_prev: torch.Tensor) -> torch.Tensor:
    """The next step's input: √ᾱ_prev·denoised + √(1−ᾱ_prev)·z."""
    return sqrt_alpha_prev * d + sqrt_one_minus_alpha_prev * noise


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The w-embedding of full LCMs: (B,) guidance weights → (B, dim), sin half then cos,
    frequencies exp(−i·log(10000)/(half−1)), zero-padded when dim is odd."""
    w = w * GUIDANCE_EMBED_SCALE
    half = dim // 2
    freq = torch.log(torch.tensor(GUIDANCE_EMBED_MAX_PERIOD)) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -freq)
    emb = w.to(torch.float32)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """ε_u + g·(ε_c − ε_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class LCMStep:
    """The constants of one unrolled step: its timestep, √ᾱ_t and √(1−ᾱ_t) (float32), the
    boundary scalings, and the next step's √ᾱ_prev and √(1−ᾱ_prev) (None for the last step)."""

    t: int
    sqrt_alpha: float
    sqrt_one_minus_alpha: float
    c_skip: float
    c_out: float
    sqrt_alpha_prev: float | None
    sqrt_one_minus_alpha_prev: float | None


@dataclass(frozen=True)
class LCMConfig:
    """The scheduler settings the unrolled sampler needs (an ``LCMScheduler`` config)."""

    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    original_inference_steps: int
    set_alpha_to_one: bool
    timestep_scaling: float
    prediction_type: str
    trained_betas: tuple[float, ...] | None = None

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> "LCMConfig":
        """From a ``scheduler_config.json`` (any scheduler's: LCM's own defaults fill the rest,
        as ``LCMScheduler.from_config`` does). Settings the unrolled sampler does not implement
        are refused."""
        c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if k in SCHEDULER_DEFAULTS}}
        unsupported = [k for k in ("clip_sample", "thresholding", "rescale_betas_zero_snr") if c[k]]
        if unsupported or c["prediction_type"] != "epsilon":
            raise ValueError(f"scheduler settings not supported by the LCM export: "
                             f"{unsupported or ['prediction_type=' + str(c['prediction_type'])]}")
        tb = c["trained_betas"]
        return cls(int(c["num_train_timesteps"]), float(c["beta_start"]), float(c["beta_end"]),
                   str(c["beta_schedule"]), int(c["original_inference_steps"]), bool(c["set_alpha_to_one"]),
                   float(c["timestep_scaling"]), str(c["prediction_type"]), None if tb is None else tuple(tb))


def lcm_steps(config: LCMConfig, steps: int) -> list[LCMStep]:
    """The constants of every step of a ``steps``-step LCM sampler."""
    ac = alphas_cumprod(betas(config.num_train_timesteps, config.beta_start, config.beta_end, config.beta_schedule,
                              None if config.trained_betas is None else list(config.trained_betas)))
    final = torch.tensor(1.0) if config.set_alpha_to_one else ac[0]
    ts = lcm_timesteps(steps, config.num_train_timesteps, config.original_inference_steps)
    out = []
    for i, t in enumerate(ts):
        a = ac[t]
        prev = None
        if i + 1 < len(ts):
            prev = ac[ts[i + 1]] if ts[i + 1] >= 0 else final
        c_skip, c_out = boundary_scalings(t, config.timestep_scaling)
        out.append(LCMStep(t, float(a.sqrt()), float((1 - a).sqrt()), c_skip, c_out,
                           None if prev is None else float(prev.sqrt()),
                           None if prev is None else float((1 - prev).sqrt())))
    return out


__all__ = ["LCMConfig", "LCMStep", "lcm_steps", "betas", "alphas_cumprod", "lcm_timesteps", "boundary_scalings",
           "predicted_x0", "denoised", "renoise", "guidance_embedding", "classifier_free_guidance", "SIGMA_DATA"]

