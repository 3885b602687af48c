"""GroupNorm statistics in PyTorch: record every GroupNorm's per-group mean and variance in call
order, or normalize by given ones: the reference for the exported statistics and
shared-statistics graphs (``cmrt.graphs.norm_stats``), packed the same way, (N, 2, S):
``[:, 0]`` the means and ``[:, 1]`` the (biased) variances, norm after norm in call order."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def _group_stats(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.reshape(x.shape[0], norm.num_groups, -1)
    return xg.mean(-1), xg.var(-1, unbiased=False)


@contextlib.contextmanager
def recording(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every GroupNorm call in ``module`` appends its (N, 2, G) statistics to
    the yielded list, in call order (``pack`` joins them)."""
    found: list[torch.Tensor] = []

    def hook(norm, args, output):
        found.append(torch.stack(_group_stats(norm, args[0]), dim=1))

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.GroupNorm)]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def pack(recorded: list[torch.Tensor]) -> torch.Tensor:
    """Recorded (N, 2, G_k) statistics → one (N, 2, S) tensor."""
    return torch.cat(recorded, dim=2)


@contextlib.contextmanager
def shared(module: nn.Module, stats: torch.Tensor, *, variances: str = "shared") -> Iterator[None]:
    """Within the block, every GroupNorm call in ``module`` normalizes by the next norm's
    statistics in ``stats`` (N, 2, S) instead of its input's own: (x − mean)/√(var + ε), then
    its affine; ``variances`` "own": by the given means and its input's own variances. A pass
    must make exactly the calls the statistics were recorded from."""
    offset = 0

    def hook(norm, args, output):
        nonlocal offset
        x = args[0]
        g = norm.num_groups
        if offset + g > stats.shape[2]:
            raise ValueError(f"more GroupNorm calls than the {stats.shape[2]} statistics given")
        mean, var = (stats[:, i, offset:offset + g, None] for i in (0, 1))
        offset += g
        xg = x.reshape(x.shape[0], g, -1)
        if variances == "own":
            var = xg.var(-1, unbiased=False, keepdim=True)
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape_as(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y * norm.weight.view(shape) + norm.bias.view(shape) if norm.affine else y

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.GroupNorm)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["recording", "pack", "shared"]
