"""Exponential moving averages of network weights (the EMA model, cd's target network θ⁻)."""

from __future__ import annotations

import torch
from torch import nn


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
