"""Where the tiles of a tiled decode go: pure functions on shapes.

The latent canvas (h, w) is cut into a grid of equal, overlapping tiles no larger than ``tile``
latent pixels a side and overlapping their neighbours by at least ``overlap`` (``axis_spans``,
``layout``); ``choose_tile`` picks the layout a decode uses from the user's ``tile`` or
``max_pixels`` and the backend's shape limits (``cmrt.runtime.limits.ShapeLimits``); ``crop``
cuts a tile's region out of a canvas-sized array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError
from ..limits import ShapeLimits

#: Default overlap between neighbouring tiles, latent pixels (chosen by ``benchmarks/tiling.py``).
DEFAULT_OVERLAP = 4


#: The smallest tile: the decoder UNet halves the latent three times at the official depth.
MIN_TILE = 4


#: The overlap ``norm="canvas"`` needs and uses by default: half of it (1 latent pixel, 1 pixel at
#: the decoder UNet's coarsest layer) must cover the reach of the graph between two GroupNorms
#: (one 3×3 convolution), so that the halo exchange keeps every tile exact
#: (``cmrt.runtime.tiled.layer_sync``; with 1 the tiled decode is 53 dB from the untiled one, with 2
#: it is equal to rounding).
CANVAS_OVERLAP = 2


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


def crop(array: Any, tile: Tile, upscale: int = 1) -> Any:
    """A contiguous copy of a tile's region of a (B, C, H, W) numpy array or torch tensor
    (``upscale``: the array's pixels per latent pixel)."""
    r, c = tile.image_index(upscale)
    region = array[:, :, r, c]
    return region.contiguous() if hasattr(region, "contiguous") else np.ascontiguousarray(region)


def default_overlap(tile: int) -> int:
    """``DEFAULT_OVERLAP``, or less where the tile is too small for it (under half the tile)."""
    return min(DEFAULT_OVERLAP, (tile - 1) // 2)


def tile_for_pixels(max_pixels: int, upscale: int) -> int:
    """The largest square tile (latent pixels) whose output has at most ``max_pixels`` pixels
    (an int ≥ 0, checked by ``TiledOptions``)."""
    side = math.isqrt(int(max_pixels)) // upscale
    if side < MIN_TILE:
        raise InputError(f"max_pixels={max_pixels} allows tiles smaller than {MIN_TILE} latent pixels "
                         f"({(upscale * MIN_TILE) ** 2} output pixels): raise it")
    return side


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


def canvas_layout(plan: TileLayout, overlap: int | None, tile: int | None, max_pixels: int | None,
                  limits: ShapeLimits, upscale: int) -> TileLayout:
    """The layout of a ``norm="canvas"`` decode: ``plan``'s tiles with ``CANVAS_OVERLAP`` where the
    user gave no overlap (a user's overlap under it is refused by ``TiledOptions``)."""
    if overlap is None and (tile or max_pixels):
        return choose_tile(plan.height, plan.width, tile=tile, overlap=CANVAS_OVERLAP, max_pixels=max_pixels,
                           limits=limits, upscale=upscale)
    return plan
