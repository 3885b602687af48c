"""Tiled decoding: a canvas decoded tile by tile, in the memory of one tile.

The latent canvas is cut into equal, overlapping tiles (``layout``: pure functions on shapes);
every tile runs the bundle's whole fixed-step sampler on its crop of the latents and of each
step's noise (drawn once for the whole output canvas, exactly as an untiled call draws it), and
the outputs are blended with weights that sum to one everywhere (``blend``). What tiling does not
preserve is GroupNorm: how the tiles normalize is a strategy, one per mode (``strategies``:
"tile", "shared", "shared-means", "canvas"; "canvas" runs ``layer_sync``), picked from the checked
options (``options.TiledOptions``) and what the bundle and backend allow. The shared-statistics
graphs the modes other than "tile" run are opened on use (``graphs.NormGraphs``).

``decode`` is the entry point (``cmrt.runtime.decoder.Decoder.decode`` delegates to it). The
names below are re-exported for callers that use the package as one namespace.
"""

from __future__ import annotations

from typing import Any

from ..limits import ShapeLimits, chunk_size, chunks
from .blend import axis_weights, blend_weights, run_tiled
from .graphs import NormGraphs
from .layout import (CANVAS_OVERLAP, DEFAULT_OVERLAP, MIN_TILE, Span, Tile, TileLayout, axis_spans, canvas_layout,
                     choose_tile, crop, default_overlap, layout, tile_for_pixels)
from .options import DEFAULT_STATS_FACTOR, NORM_MODES, TiledOptions
from .strategies import Call, Canvas, PerTile, SharedStatistics, Strategy, choose, stats_canvas


def decode(feeds: dict[str, Any], options: TiledOptions, call: Call) -> Any:
    """Decode the whole-canvas ``feeds`` (``latents`` and every step's noise) as ``options`` ask:
    the layout from ``tile`` / ``max_pixels`` and the backend's limits, then the strategy of the
    normalization mode (``strategies.choose``)."""
    z = feeds["latents"]
    plan = choose_tile(z.shape[2], z.shape[3], tile=options.tile, overlap=options.overlap,
                       max_pixels=options.max_pixels, limits=call.limits, upscale=call.upscale)
    return choose(options, plan, call.graphs).decode(feeds, plan, call)


__all__ = ["decode", "TiledOptions", "Call", "Strategy", "PerTile", "SharedStatistics", "Canvas", "choose",
           "NormGraphs", "Span", "Tile", "TileLayout", "axis_spans", "layout", "choose_tile", "canvas_layout", "crop",
           "default_overlap", "tile_for_pixels", "axis_weights", "blend_weights", "run_tiled", "stats_canvas",
           "ShapeLimits", "chunk_size", "chunks", "MIN_TILE", "DEFAULT_OVERLAP", "CANVAS_OVERLAP", "NORM_MODES",
           "DEFAULT_STATS_FACTOR"]
