"""Consistency parameterizations: a backbone F wrapped into a denoiser x0 = c_skip·x + c_out·F(c_in·x, t)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import schedules as S
from .spec import ModelSpec
from .unet import UNet


def _as_column(v, x: torch.Tensor):
    """A float, or a (B,) tensor reshaped to broadcast over (B, C, H, W)."""
    if isinstance(v, torch.Tensor):
        return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return v


class KarrasDenoiser(nn.Module):
    """Consistency-model (boundary=True) or EDM (boundary=False) preconditioning.

    ``forward(x, sigma, class_labels)``: sigma is a Python float (fixed, as in an exported
    sampler: the scalings and the time input fold into constants) or a (B,) tensor (training).
    """

    def __init__(self, unet: UNet, *, sigma_data: float = S.SIGMA_DATA, sigma_min: float = S.SIGMA_MIN,
                 boundary: bool = True) -> None:
        super().__init__()
        self.unet, self.sigma_data, self.sigma_min, self.boundary = unet, sigma_data, sigma_min, boundary

    def scalings(self, sigma):
        if self.boundary:
            return S.cm_scalings(sigma, self.sigma_data, self.sigma_min)
        return S.edm_scalings(sigma, self.sigma_data)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        c_skip, c_out, c_in = (_as_column(c, x) for c in self.scalings(sigma))
        t = S.cm_time_input(sigma)
        t = t.to(x.dtype) if isinstance(t, torch.Tensor) else torch.tensor([t], dtype=x.dtype, device=x.device)
        out = self.unet(c_in * x, t, class_labels)
        return c_skip * x + c_out * out[:, : x.shape[1]]


class DecoderDenoiser(nn.Module):
    """The consistency decoder's parameterization at a fixed integer timestep t.

    ``forward(x_t, t, cond)``: cond is the normalized, ×8-upsampled latent (B, 4, H, W).
    """

    def __init__(self, unet: UNet, *, sigma_data: float = S.SIGMA_DATA) -> None:
        super().__init__()
        self.unet, self.sigma_data = unet, sigma_data

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor):  # training: per-sample (B,) timesteps, scalings looked up
            s = {k: _as_column(v.to(x_t.device)[t], x_t) for k, v in _decoder_table(self.sigma_data).items()}
            t_in = t.long()
        else:  # export: a fixed int t folds the scalings into constants
            s = S.decoder_scalings(t, self.sigma_data)
            t_in = torch.tensor([t], dtype=torch.long, device=x_t.device)
        out = self.unet(torch.cat([s["c_in"] * x_t, cond], dim=1), t_in)[:, : x_t.shape[1]]
        return s["c_out"] * out + s["c_skip"] * x_t


@functools.lru_cache(maxsize=4)
def _decoder_table(sigma_data: float) -> dict[str, torch.Tensor]:
    """``decoder_scalings`` of every timestep 0..1023 as float32 tables (for per-sample training t)."""
    rows = [S.decoder_scalings(t, sigma_data) for t in range(S.DECODER_T)]
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float32) for k in rows[0]}


def build_denoiser(spec: ModelSpec, unet: UNet | None = None) -> nn.Module:
    """The denoiser of a spec, around ``unet`` (a fresh one when None)."""
    unet = unet if unet is not None else UNet(spec.unet)
    if spec.kind == "decoder":
        return DecoderDenoiser(unet, sigma_data=spec.sigma_data)
    return KarrasDenoiser(unet, sigma_data=spec.sigma_data, sigma_min=spec.sigma_min)
