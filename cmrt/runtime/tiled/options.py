"""The options of a tiled decode (``Decoder.decode``'s ``tile``, ``overlap``, ``norm``,
``stats_factor``, ``spill`` and ``max_pixels``) as one object, checked once: each argument's type
and range, and every rule between them. What the bundle and backend allow (``norm=None``'s
resolution, the graphs a mode needs) is decided by ``strategies.choose``, which calls
``TiledOptions.resolve`` with the mode it picked."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, InputTypeError
from .layout import CANVAS_OVERLAP, MIN_TILE

#: How a tiled decode normalizes: "tile" (each tile by its own GroupNorm statistics), "shared"
#: (every tile by means and variances measured once on the canvas downscaled by ``stats_factor``)
#: "shared-means" (those means, each tile's own variances) or "canvas" (every tile by the whole
#: full-resolution canvas's statistics, measured layer by layer across the tiles:
#: ``cmrt.runtime.tiled.layer_sync``).
NORM_MODES = ("tile", "shared", "shared-means", "canvas")
#: The default downscale factor of the shared-statistics pass (chosen by ``benchmarks/tiling.py``:
#: ``benchmarks/RESULTS.md``, "Tiled decoding": "Shared GroupNorm statistics from a downscaled pass").
DEFAULT_STATS_FACTOR = 2


@dataclass(frozen=True)
class TiledOptions:
    """A tiled decode's options, checked (``check``); see ``Decoder.decode`` for their meaning.

    Attributes:
        tile: the largest tile side (latent pixels), or None.
        overlap: the smallest overlap of neighbouring tiles (latent pixels), or None (the mode's default).
        norm: one of ``NORM_MODES``, or None (resolved by ``strategies.choose``).
        stats_factor: the statistics pass's downscale factor, or None (the bundle's).
        spill: the folder to make ``norm="canvas"``'s spill folder in, or None (in memory).
        max_pixels: the largest tile output (pixels per image) with ``tile`` None, or None.
    """

    tile: int | None = None
    overlap: int | None = None
    norm: str | None = None
    stats_factor: int | None = None
    spill: Path | None = None
    max_pixels: int | None = None

    @classmethod
    def check(cls, *, tile: Any = None, overlap: Any = None, norm: Any = None, stats_factor: Any = None,
              spill: Any = None, max_pixels: Any = None) -> "TiledOptions":
        """The user's arguments checked; ``InputTypeError``/``InputError`` name the argument."""
        overlap_ = None if overlap is None else _as_int(overlap, "overlap", "latent pixels")
        if overlap_ is not None and overlap_ < 0:
            raise InputError(f"overlap must be ≥ 0 latent pixels, got {overlap_}")
        tile_ = None if tile is None else _as_int(tile, "tile", "latent pixels")
        if tile_ is not None and tile_ < MIN_TILE:
            raise InputError(f"tile must be at least {MIN_TILE} latent pixels ({8 * MIN_TILE} image pixels), "
                             f"got {tile_}")
        if tile_ is not None and overlap_ is not None and 2 * overlap_ >= tile_:
            raise InputError(f"overlap ({overlap_}) must be less than half of tile ({tile_}): pass a smaller overlap "
                             "or a larger tile")
        if norm is not None and norm not in NORM_MODES:
            raise InputError(f"norm must be one of {', '.join(map(repr, NORM_MODES))} (or None: canvas when the "
                             f"bundle has the graphs), got {norm!r}")
        factor = None if stats_factor is None else _as_int(stats_factor, "stats_factor",
                                                           "the statistics pass's downscale factor")
        if factor is not None and factor < 1:
            raise InputError(f"stats_factor must be ≥ 1, got {factor}")
        if factor is not None and norm in ("tile", "canvas"):
            why = "measures no statistics" if norm == "tile" else "measures them on the full-resolution canvas"
            raise InputError(f"stats_factor applies to norm='shared' or 'shared-means' only (norm={norm!r} {why})")
        if norm == "canvas" and overlap_ is not None and overlap_ < CANVAS_OVERLAP:
            raise InputError(f"norm='canvas' needs overlap ≥ {CANVAS_OVERLAP} latent pixels (its tiles exchange "
                             f"their edges), got overlap={overlap_}: pass a larger overlap or leave it out")
        pixels = None if max_pixels is None else _as_int(max_pixels, "max_pixels", "output pixels per tile")
        if pixels is not None and pixels < 0:
            raise InputError(f"max_pixels must be ≥ 0 output pixels per tile, got {pixels}")
        return cls(tile_, overlap_, norm, factor, _spill_folder(spill, norm), pixels)

    def resolve(self, mode: str) -> "TiledOptions":
        """These options for the decode ``mode`` that ``norm`` resolved to (``strategies.choose``):
        ``spill`` needs ``"canvas"``."""
        if self.spill is not None and mode != "canvas":
            raise _spill_needs_canvas(mode)
        return replace(self, norm=mode)


def _as_int(value: Any, name: str, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int ({unit}), got {type(value).__name__}")
    return int(value)


def _spill_needs_canvas(mode: str) -> InputError:
    return InputError(f"spill applies to norm='canvas' only (this decode runs norm={mode!r}): pass norm='canvas' "
                      "or leave spill out")


def _spill_folder(spill: Any, norm: str | None) -> Path | None:
    """The folder to make the spill folder in (True: the system's temporary folder), or None
    (None/False); a ``norm`` other than "canvas" (or None) takes none."""
    if spill is None or spill is False:
        return None
    if norm is not None and norm != "canvas":
        raise _spill_needs_canvas(norm)
    if spill is True:
        return Path(tempfile.gettempdir())
    if not isinstance(spill, (str, Path)):
        raise InputTypeError(f"spill must be True or a folder path, got {type(spill).__name__}")
    folder = Path(spill)
    if not folder.is_dir():
        raise InputError(f"spill={str(spill)!r} is not an existing folder: create it or pass spill=True")
    return folder
