"""How the tiles' outputs are blended: weights that ramp linearly across each overlap and sum to
one everywhere, and ``run_tiled``, which runs the whole fixed-step sampler tile by tile and blends.

The weights are separable (a row ramp times a column ramp) and each axis's ramps already sum to
one, so no canvas-sized weight accumulator is needed: peak memory is the output canvas, the
noise, and one tile's run. A canvas that fits in one tile is one tile whose weight is one, so
that call *is* the untiled call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .layout import Span, Tile, TileLayout, crop


def axis_weights(spans: tuple[Span, ...], upscale: int) -> list[np.ndarray]:
    """Per span, float32 weights over its ``upscale·size`` image pixels: linear ramps across each
    overlap with a neighbour (0 at the span's own edge, rising inward), 1 elsewhere; normalized so
    that at every pixel of the axis the spans' weights sum to exactly one."""
    length = upscale * spans[-1].stop
    raw = []
    for i, s in enumerate(spans):
        w = np.ones(upscale * s.size, np.float64)
        d = np.arange(upscale * s.size, dtype=np.float64) + 0.5  # distance from the span's start
        if i > 0:  # ramp up across the overlap with the previous span (none when they only touch)
            w = np.minimum(w, _ramp(d, upscale * (spans[i - 1].stop - s.start)))
        if i < len(spans) - 1:  # ramp down across the overlap with the next span
            w = np.minimum(w, _ramp(d[::-1], upscale * (s.stop - spans[i + 1].start)))
        raw.append(w)
    total = np.zeros(length, np.float64)
    for s, w in zip(spans, raw):
        total[upscale * s.start: upscale * s.stop] += w
    return [(w / total[upscale * s.start: upscale * s.stop]).astype(np.float32) for s, w in zip(spans, raw)]


def _ramp(distance: np.ndarray, width: int) -> np.ndarray:
    """distance / width, capped at 1; a zero-width overlap (touching tiles) has no ramp."""
    return np.minimum(distance / width, 1.0) if width > 0 else np.ones_like(distance)


def blend_weights(layout_: TileLayout, upscale: int) -> dict[Tile, np.ndarray]:
    """Each tile's (upscale·rows, upscale·cols) weights: its row ramp times its column ramp. They
    sum to one at every output pixel, because each axis's do."""
    rows = dict(zip(layout_.row_spans, axis_weights(layout_.row_spans, upscale)))
    cols = dict(zip(layout_.col_spans, axis_weights(layout_.col_spans, upscale)))
    return {t: np.outer(rows[t.rows], cols[t.cols]) for t in layout_.tiles}


def _zeros_like(like: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(shape, np.float32)
    import torch

    return torch.zeros(shape, dtype=torch.float32, device=like.device)


def _as_like(weights: np.ndarray, like: Any) -> Any:
    if isinstance(like, np.ndarray):
        return weights
    import torch

    return torch.from_numpy(weights).to(like.device)


def run_tiled(run: Callable[[Any, list[Any]], Any], latents: Any, noise: list[Any], layout_: TileLayout,
              upscale: int) -> Any:
    """Decode tile by tile and blend: ``run(latent_crop, noise_crops)`` is the whole fixed-step
    sampler on one tile; returns the (B, C, upscale·h, upscale·w) canvas (numpy or torch, as
    ``run`` returns).

    Args:
        run: runs the sampler on a (B, 4, rows, cols) latent crop and the per-step noise crops.
        latents: the whole latent canvas (B, 4, h, w).
        noise: per step, the noise of the whole output canvas (B, C, upscale·h, upscale·w).
        layout_: the tiles (``choose_tile``).
        upscale: image pixels per latent pixel.
    """
    rows = dict(zip(layout_.row_spans, axis_weights(layout_.row_spans, upscale)))
    cols = dict(zip(layout_.col_spans, axis_weights(layout_.col_spans, upscale)))
    canvas = None
    for tile in layout_.tiles:
        out = run(crop(latents, tile), [crop(n, tile, upscale) for n in noise])
        if canvas is None:
            b, c = out.shape[:2]
            canvas = _zeros_like(out, (b, c, upscale * layout_.height, upscale * layout_.width))
        r, k = tile.image_index(upscale)
        canvas[:, :, r, k] += out * _as_like(np.outer(rows[tile.rows], cols[tile.cols]), out)
    return canvas

