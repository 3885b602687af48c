"""Tiled decoding: where the tiles go, what each one is fed, and how their outputs are blended.

Pure functions on shapes and numpy arrays; ``cmrt.runtime.api.Decoder`` runs them.

The latent canvas (h, w) is cut into a grid of equal, overlapping tiles no larger than ``tile``
latent pixels a side and overlapping their neighbours by at least ``overlap``. Every tile runs
the bundle's whole fixed-step sampler on its crop of the latents and on its crop of each step's
noise (drawn once for the whole output canvas, exactly as an untiled call draws it), and the
outputs are blended with weights that ramp linearly across each overlap and sum to one
everywhere; a canvas that fits in one tile is one tile whose weight is one, so that call *is*
the untiled call. Whole-sampler tiles rather than per-evaluation fusion: the two gave images of
equal quality (``benchmarks/RESULTS.md``, "Tiled decoding": "Which tiling technique"), and
whole-sampler tiles need one graph on any backend.

What tiling does not preserve is GroupNorm: a tile normalizes by its own statistics, and its tone
drifts from the untiled decode's. With a bundle exported with ``--tile-stats``, a tiled decode
can share statistics instead (``norm="shared"``): one untiled pass of the statistics graph over
the canvas downscaled by ``stats_factor`` (``stats_canvas``: block means of the latents, the
canvas's own noise pooled to unit variance) records every GroupNorm's per-group mean and variance,
and every tile runs the shared-statistics graph with them (``cmrt.exporter.norm_stats``);
``norm="shared-means"`` shares only the means. ``norm="canvas"`` (the default for such a bundle)
runs the shared-statistics graph cut at its norms, layer by layer across all tiles, with the
statistics of the full-resolution canvas and a halo exchange between the tiles' overlaps: the
untiled decode to rounding (``cmrt.runtime.layer_sync``). What each mode gains and costs against
the untiled decode, photo by photo, is measured by ``benchmarks/tiling.py`` (``benchmarks/RESULTS.md``,
"Tiled decoding": "Shared GroupNorm statistics from a downscaled pass"): "shared" lifts the photos
with large smooth regions and costs a fine regular texture; "shared-means" gains less.

The weights are separable (a row ramp times a column ramp) and each axis's ramps already sum to
one, so no canvas-sized weight accumulator is needed: peak memory is the output canvas, the
noise, and one tile's run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import InputError, InputTypeError

#: Default overlap between neighbouring tiles, latent pixels (chosen by ``benchmarks/tiling.py``).
DEFAULT_OVERLAP = 4
#: The smallest tile: the decoder UNet halves the latent three times at the official depth.
MIN_TILE = 4
#: How a tiled decode normalizes: "tile" (each tile by its own GroupNorm statistics), "shared"
#: (every tile by means and variances measured once on the canvas downscaled by ``stats_factor``)
#: "shared-means" (those means, each tile's own variances) or "canvas" (every tile by the whole
#: full-resolution canvas's statistics, measured layer by layer across the tiles:
#: ``cmrt.runtime.layer_sync``).
NORM_MODES = ("tile", "shared", "shared-means", "canvas")
#: The default downscale factor of the shared-statistics pass (chosen by ``benchmarks/tiling.py``:
#: ``benchmarks/RESULTS.md``, "Tiled decoding": "Shared GroupNorm statistics from a downscaled pass").
DEFAULT_STATS_FACTOR = 2


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis, in latent pixels: [start, start + size)."""

    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Tile:
    """A tile of the latent canvas: its row and column spans."""

    rows: Span
    cols: Span

    def latent_index(self) -> tuple[slice, slice]:
        """Index of the tile in a (..., h, w) latent array."""
        return slice(self.rows.start, self.rows.stop), slice(self.cols.start, self.cols.stop)

    def image_index(self, upscale: int) -> tuple[slice, slice]:
        """Index of the tile in a (..., upscale·h, upscale·w) image array."""
        r, c = self.rows, self.cols
        return (slice(upscale * r.start, upscale * r.stop), slice(upscale * c.start, upscale * c.stop))


@dataclass(frozen=True)
class TileLayout:
    """The tiles of an (height, width) latent canvas.

    Attributes:
        height: canvas rows (latent pixels).
        width: canvas columns (latent pixels).
        row_spans: the tile rows' spans.
        col_spans: the tile columns' spans.
        overlap: the overlap asked for (the actual overlaps are at least this).
    """

    height: int
    width: int
    row_spans: tuple[Span, ...]
    col_spans: tuple[Span, ...]
    overlap: int

    @property
    def tiles(self) -> tuple[Tile, ...]:
        """Row-major tiles."""
        return tuple(Tile(r, c) for r in self.row_spans for c in self.col_spans)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, cols) of every tile (all tiles have the same shape)."""
        return self.row_spans[0].size, self.col_spans[0].size

    @property
    def single(self) -> bool:
        return len(self.row_spans) == len(self.col_spans) == 1

    @property
    def work_ratio(self) -> float:
        """Latent pixels run over canvas pixels (≥ 1): the compute overhead of the overlaps."""
        return len(self.tiles) * self.tile_shape[0] * self.tile_shape[1] / (self.height * self.width)


def axis_spans(length: int, tile: int, overlap: int) -> tuple[Span, ...]:
    """Equal spans covering [0, length), each at most ``tile`` long, neighbours overlapping by
    at least ``overlap``: the fewest tiles that fit, then the smallest equal size, spread evenly.

    Args:
        length: the axis length (latent pixels).
        tile: the largest span.
        overlap: the smallest overlap of neighbouring spans (< tile / 2, checked by ``check_tiling``).
    """
    if length <= tile:
        return (Span(0, length),)
    n = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (n - 1) * overlap) / n))
    step = (length - size) / (n - 1)
    return tuple(Span(round(i * step), size) for i in range(n))


def layout(height: int, width: int, tile: int | tuple[int, int], overlap: int) -> TileLayout:
    """The tile layout of an (height, width) latent canvas (see ``axis_spans``)."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    return TileLayout(height, width, axis_spans(height, th, overlap), axis_spans(width, tw, overlap), overlap)


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


def crop(array: Any, tile: Tile, upscale: int = 1) -> Any:
    """A contiguous copy of a tile's region of a (B, C, H, W) numpy array or torch tensor
    (``upscale``: the array's pixels per latent pixel)."""
    r, c = tile.image_index(upscale)
    region = array[:, :, r, c]
    return region.contiguous() if hasattr(region, "contiguous") else np.ascontiguousarray(region)


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


def _stats_windows(length: int, factor: int, upscale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis of ``length`` latent pixels: the starts and sizes of the latent blocks of
    ``factor`` pixels (the last one shorter where ``factor`` does not divide ``length``), and of
    the image windows that make ``upscale`` image pixels out of each block (each window as long
    as its block)."""
    starts = np.arange(0, length, factor)
    sizes = np.minimum(starts + factor, length) - starts
    image_starts = (upscale * starts[:, None] + np.arange(upscale)[None, :] * sizes[:, None]).ravel()
    return starts, sizes, image_starts, np.repeat(sizes, upscale)


def _block_sums(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.add.reduceat(np.add.reduceat(x, rows, axis=2), cols, axis=3)


def stats_canvas(latents: np.ndarray, noise: list[np.ndarray], factor: int,
                 upscale: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The downscaled canvas a shared-statistics decode measures its GroupNorm statistics on.

    The latents are area-downscaled by ``factor`` (each latent block's mean; a canvas side that
    ``factor`` does not divide ends in a shorter block), to ⌈h/f⌉×⌈w/f⌉. Each step's noise is the
    full canvas's noise pooled over the same areas, each window's sum divided by the square root
    of its size: still exactly standard normal per pixel, and a function of the call's own noise
    (no second draw, so a seeded call and a call given ``noise`` agree). ``factor`` 1 returns
    the inputs' values.

    Args:
        latents: (B, 4, h, w) latents.
        noise: per step, (B, C, upscale·h, upscale·w) standard-normal noise.
        factor: the downscale factor (≥ 1).
        upscale: image pixels per latent pixel.
    """
    h, w = latents.shape[2:]
    r0, rn, ri, rin = _stats_windows(h, factor, upscale)
    c0, cn, ci, cin = _stats_windows(w, factor, upscale)
    low = _block_sums(latents.astype(np.float64), r0, c0) / np.outer(rn, cn)
    scale = np.sqrt(np.outer(rin, cin))
    pooled = [_block_sums(n.astype(np.float64), ri, ci) / scale for n in noise]
    return low.astype(np.float32), [n.astype(np.float32) for n in pooled]


def chunks(batch: int, size: int | None) -> list[slice]:
    """Slices of [0, batch) of at most ``size`` items each (None: one slice)."""
    if size is None or batch <= size:
        return [slice(0, batch)]
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


def check_max_batch(value: Any, name: str = "max_batch") -> int | None:
    """None, or an int ≥ 1 (``InputTypeError``/``InputError`` naming the argument)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name} must be ≥ 1, got {value}")
    return int(value)


def chunk_size(*caps: int | None, limits: "ShapeLimits | None" = None) -> int | None:
    """The largest batch one backend run gets: the smallest of the given caps and the backend's max batch."""
    found = [c for c in caps if c is not None]
    if limits is not None and limits.batch is not None:
        found.append(limits.batch[1])
    return min(found) if found else None


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int (latent pixels), got {type(value).__name__}")
    return int(value)


def check_tiling(tile: Any, overlap: Any) -> tuple[int | None, int | None]:
    """Validate the user's ``tile`` and ``overlap`` (latent pixels); returns them as ints (None
    where not given). ``InputTypeError``/``InputError`` name the argument."""
    overlap_ = None if overlap is None else _as_int(overlap, "overlap")
    if overlap_ is not None and overlap_ < 0:
        raise InputError(f"overlap must be ≥ 0 latent pixels, got {overlap_}")
    if tile is None:
        return None, overlap_
    tile_ = _as_int(tile, "tile")
    if tile_ < MIN_TILE:
        raise InputError(f"tile must be at least {MIN_TILE} latent pixels ({8 * MIN_TILE} image pixels), got {tile_}")
    if overlap_ is not None and 2 * overlap_ >= tile_:
        raise InputError(f"overlap ({overlap_}) must be less than half of tile ({tile_}): pass a smaller overlap "
                         "or a larger tile")
    return tile_, overlap_


def check_norm(norm: Any, stats_factor: Any) -> tuple[str | None, int | None]:
    """Validate the user's ``norm`` (None or one of ``NORM_MODES``) and ``stats_factor`` (None or
    an int ≥ 1); ``InputTypeError``/``InputError`` name the argument."""
    if norm is not None and norm not in NORM_MODES:
        raise InputError(f"norm must be one of {', '.join(map(repr, NORM_MODES))} (or None: canvas when the bundle "
                         f"has the graphs), got {norm!r}")
    if stats_factor is None:
        return norm, None
    if isinstance(stats_factor, bool) or not isinstance(stats_factor, (int, np.integer)):
        raise InputTypeError(f"stats_factor must be an int (the statistics pass's downscale factor), "
                             f"got {type(stats_factor).__name__}")
    if stats_factor < 1:
        raise InputError(f"stats_factor must be ≥ 1, got {stats_factor}")
    if norm in ("tile", "canvas"):
        why = "measures no statistics" if norm == "tile" else "measures them on the full-resolution canvas"
        raise InputError(f"stats_factor applies to norm='shared' or 'shared-means' only (norm={norm!r} {why})")
    return norm, int(stats_factor)


#: The overlap ``norm="canvas"`` needs and uses by default: half of it (1 latent pixel, 1 pixel at
#: the decoder UNet's coarsest layer) must cover the reach of the graph between two GroupNorms
#: (one 3×3 convolution), so that the halo exchange keeps every tile exact
#: (``cmrt.runtime.layer_sync``; with 1 it is not, with 2 it is the untiled decode to rounding:
#: ``benchmarks/RESULTS.md``, "Tiled decoding": "Layer-synchronous tiles").
CANVAS_OVERLAP = 2


def canvas_layout(plan: TileLayout, overlap: int | None, tile: int | None, max_pixels: int | None,
                  limits: ShapeLimits, upscale: int) -> TileLayout:
    """The layout of a ``norm="canvas"`` decode: ``plan``'s tiles with ``CANVAS_OVERLAP`` where the
    user gave no overlap.

    Raises:
        InputError: the user's overlap is under ``CANVAS_OVERLAP``.
    """
    if overlap is None:
        return choose_tile(plan.height, plan.width, tile=tile, overlap=CANVAS_OVERLAP, max_pixels=max_pixels,
                           limits=limits, upscale=upscale) if tile or max_pixels else plan
    if overlap < CANVAS_OVERLAP:
        raise InputError(f"norm='canvas' needs overlap ≥ {CANVAS_OVERLAP} latent pixels (its tiles exchange their "
                         f"edges), got overlap={overlap}: pass a larger overlap or leave it out")
    return plan


def check_spill(spill: Any, mode: str) -> "Path | None":
    """Validate the user's ``spill`` (None/False, True, or an existing folder) for a decode whose
    norm is ``mode``: the folder to make the spill folder in (True: the system's temporary
    folder), or None. ``InputTypeError``/``InputError`` name the argument."""
    import tempfile
    from pathlib import Path

    if spill is None or spill is False:
        return None
    if mode != "canvas":
        raise InputError(f"spill applies to norm='canvas' only (this decode runs norm={mode!r}): pass norm='canvas' "
                         "or leave spill out")
    if spill is True:
        return Path(tempfile.gettempdir())
    if not isinstance(spill, (str, Path)) or isinstance(spill, bool):
        raise InputTypeError(f"spill must be True or a folder path, got {type(spill).__name__}")
    folder = Path(spill)
    if not folder.is_dir():
        raise InputError(f"spill={str(spill)!r} is not an existing folder: create it or pass spill=True")
    return folder


def default_overlap(tile: int) -> int:
    """``DEFAULT_OVERLAP``, or less where the tile is too small for it (under half the tile)."""
    return min(DEFAULT_OVERLAP, (tile - 1) // 2)


def tile_for_pixels(max_pixels: Any, upscale: int) -> int:
    """The largest square tile (latent pixels) whose output has at most ``max_pixels`` pixels."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise InputTypeError(f"max_pixels must be an int (output pixels per tile), got {type(max_pixels).__name__}")
    side = math.isqrt(int(max_pixels)) // upscale
    if side < MIN_TILE:
        raise InputError(f"max_pixels={max_pixels} allows tiles smaller than {MIN_TILE} latent pixels "
                         f"({(upscale * MIN_TILE) ** 2} output pixels): raise it")
    return side


@dataclass(frozen=True)
class ShapeLimits:
    """What one backend run accepts: batch and latent (rows, cols) ranges; None = unbounded.

    Attributes:
        batch: (min, max) batch size, or None.
        latent_min: the smallest (rows, cols), or None.
        latent_max: the largest (rows, cols), or None.
    """

    batch: tuple[int, int] | None = None
    latent_min: tuple[int, int] | None = None
    latent_max: tuple[int, int] | None = None


def choose_tile(height: int, width: int, *, tile: int | None, overlap: int | None, max_pixels: int | None,
                limits: ShapeLimits, upscale: int) -> TileLayout:
    """The layout a decode uses: the user's ``tile``, else one from ``max_pixels``, else (when the
    canvas exceeds the backend's largest latent shape) the largest tile its profile allows, else
    the whole canvas as one tile. ``overlap`` None: ``default_overlap`` of the tile. Every tile
    must lie within the backend's latent range.

    Raises:
        InputError: the user's tile, overlap or max_pixels gives tiles outside the backend's
            range, or no tile the range allows leaves room for the overlap.
    """
    asked = "tile" if tile is not None else "max_pixels" if max_pixels is not None else None
    if tile is None and max_pixels is not None:
        tile = tile_for_pixels(max_pixels, upscale)
    hi = limits.latent_max
    if tile is None and hi is not None and (height > hi[0] or width > hi[1]):
        tile = min(hi[0], hi[1])
        asked = "engine"
    if tile is None or (height <= tile and width <= tile):
        result = layout(height, width, (height, width), 0)
    else:
        overlap = default_overlap(tile) if overlap is None else overlap
        if 2 * overlap >= tile:
            name = {"max_pixels": f"max_pixels={max_pixels}", "engine": f"the engine's largest latent shape {hi}"}
            raise InputError(f"{name.get(asked, 'tile')} gives tiles of {tile} latent pixels, too small for "
                             f"overlap {overlap}: pass a smaller overlap")
        result = layout(height, width, tile, overlap)
    _check_in_range(result, limits, None if asked == "engine" else asked)
    return result


def _check_in_range(result: TileLayout, limits: ShapeLimits, asked: str | None) -> None:
    shape = result.tile_shape
    lo, hi = limits.latent_min, limits.latent_max
    too_big = hi is not None and (shape[0] > hi[0] or shape[1] > hi[1])
    too_small = lo is not None and (shape[0] < lo[0] or shape[1] < lo[1])
    if not (too_big or too_small):
        return
    where = f"the engine's latent range {lo}..{hi}"
    if asked is not None:
        raise InputError(f"{asked} gives tiles of {shape} latent pixels, outside {where}: choose a {asked} "
                         "within it, or rebuild the engine (`cmrt build --min-latent/--max-latent`)")
    raise InputError(f"latents of {result.height}×{result.width} give tiles of {shape}, outside {where}: "
                     "pass tile=, or rebuild the engine (`cmrt build --min-latent/--max-latent`)")
