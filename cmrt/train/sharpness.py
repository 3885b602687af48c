"""Sharpness of decoded images, for the decoder evaluations (``eval``, ``photo_eval``)."""

from __future__ import annotations

import torch


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute finite-difference gradient (a blur measure: lower = blurrier)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().reshape(x.shape[0], -1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().reshape(x.shape[0], -1).mean(1)
    return (dx + dy) / 2
