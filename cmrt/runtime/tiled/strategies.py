"""How a tiled decode normalizes: one strategy object per normalization mode, behind one interface
(``Strategy.decode(feeds, plan, call)``), and ``choose``, which picks the one a decode runs.

- ``PerTile`` ("tile"): every tile runs the bundle's whole fixed-step sampler on its crops and
  normalizes by its own GroupNorm statistics; the outputs are blended (``blend.run_tiled``). Its
  tone drifts from the untiled decode's.
- ``SharedStatistics`` ("shared", "shared-means"): one untiled pass of the statistics graph over
  the canvas downscaled by ``stats_factor`` (``stats_canvas``: block means of the latents, the
  canvas's own noise pooled to unit variance) records every GroupNorm's per-group mean and
  variance; every tile then runs the shared-statistics graph with them ("shared-means": only the
  means, each tile keeping its own variances), blended as above.
- ``Canvas`` ("canvas"): the shared-statistics graph cut at its norms and run layer by layer
  across all tiles, with the full-resolution canvas's statistics and a halo exchange between the
  tiles' overlaps (``layer_sync``): the untiled decode to rounding.

Whole-sampler tiles rather than per-evaluation fusion: the two gave images of equal quality
(``benchmarks/RESULTS.md``, "Tiled decoding": "Which tiling technique"), and whole-sampler tiles
need one graph on any backend. What each mode gains and costs against the untiled decode, photo
by photo, is measured by ``benchmarks/tiling.py`` (``benchmarks/RESULTS.md``, "Tiled decoding":
"Shared GroupNorm statistics from a downscaled pass"): "shared" lifts the photos with large
smooth regions and costs a fine regular texture; "shared-means" gains less.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ...bundle import OUTPUT_NAME
from ...errors import InputError
from ..backends import Backend
from ..inputs import host
from ..limits import ShapeLimits
from .blend import run_tiled
from .graphs import NormGraphs
from .layout import CANVAS_OVERLAP, TileLayout, canvas_layout
from .options import TiledOptions


@dataclass(frozen=True)
class Call:
    """One decode call as a strategy sees it.

    Attributes:
        run: ``run(feeds, backend)`` runs whole-batch feeds on ``backend`` (None: the runner's
            own) in batch chunks and joins the outputs.
        parts: the batch chunks one backend run gets, for a batch of the given size.
        graphs: the bundle's shared-statistics graphs, opened on use.
        limits: what one backend run accepts.
        upscale: image pixels per latent pixel.
        noise_names: the noise inputs, in step order.
    """

    run: Callable[[dict[str, Any], Backend | None], Any]
    parts: Callable[[int], list[slice]]
    graphs: NormGraphs
    limits: ShapeLimits
    upscale: int
    noise_names: tuple[str, ...]


class Strategy(Protocol):
    """A normalization mode: decodes the whole-canvas ``feeds`` (``latents`` (B, 4, h, w) and every
    step's ``noise_i`` (B, C, s·h, s·w)) on the tiles of ``plan``; returns (B, C, s·h, s·w)."""

    name: str

    def decode(self, feeds: dict[str, Any], plan: TileLayout, call: Call) -> Any: ...


def _blended(run: Callable[[dict[str, Any]], Any], feeds: dict[str, Any], plan: TileLayout, call: Call) -> Any:
    """Whole-sampler tiles: ``run`` on every tile's crops of ``feeds``, blended (one tile: ``run`` on ``feeds``)."""
    names = call.noise_names
    z, noise = feeds["latents"], [feeds[n] for n in names]

    def tile(z_part, noise_parts):
        return run({"latents": z_part} | dict(zip(names, noise_parts)))

    return tile(z, noise) if plan.single else run_tiled(tile, z, noise, plan, call.upscale)


@dataclass(frozen=True)
class PerTile:
    """``norm="tile"``: every tile normalized by its own statistics."""

    name: str = "tile"

    def decode(self, feeds: dict[str, Any], plan: TileLayout, call: Call) -> Any:
        return _blended(lambda f: call.run(f, None), feeds, plan, call)


@dataclass(frozen=True)
class SharedStatistics:
    """``norm="shared"`` / ``"shared-means"``: every tile normalized by the statistics (or only the
    means) of one untiled pass over the canvas downscaled by ``factor``."""

    name: str
    factor: int

    def decode(self, feeds: dict[str, Any], plan: TileLayout, call: Call) -> Any:
        extra = {call.graphs.record.tensor: self.statistics(feeds, call)}
        backend = call.graphs.backend(self.name)
        return _blended(lambda f: call.run(f | extra, backend), feeds, plan, call)

    def statistics(self, feeds: dict[str, Any], call: Call) -> Any:
        """Every GroupNorm's statistics from one untiled pass over the canvas downscaled by
        ``factor`` (``stats_canvas``): (B, 2, S)."""
        names = call.noise_names
        low, pooled = stats_canvas(host(feeds["latents"]), [host(feeds[n]) for n in names], self.factor, call.upscale)
        return call.run({"latents": low} | dict(zip(names, pooled)), call.graphs.backend("statistics"))


@dataclass(frozen=True)
class Canvas:
    """``norm="canvas"``: layer-synchronous tiles, every norm by the whole canvas's statistics
    (``layer_sync``), batch chunk by batch chunk (the statistics are per image, so chunks change
    nothing). A call that fits in one tile is the plain call.

    Attributes:
        options: the decode's options (for the layout with ``CANVAS_OVERLAP``).
    """

    options: TiledOptions
    name: str = "canvas"

    def decode(self, feeds: dict[str, Any], plan: TileLayout, call: Call) -> Any:
        if plan.single:
            return call.run(feeds, None)
        o = self.options
        plan = canvas_layout(plan, o.overlap, o.tile, o.max_pixels, call.limits, call.upscale)
        graphs = call.graphs.segments()
        on_host = {k: host(v) for k, v in feeds.items()}
        outs = []
        for part in call.parts(on_host["latents"].shape[0]):
            chunk = {k: v[part] for k, v in on_host.items()}
            if o.spill is None:
                outs.append(graphs.run(chunk, plan, OUTPUT_NAME))
                continue
            with tempfile.TemporaryDirectory(prefix="cmrt-spill-", dir=o.spill) as folder:
                outs.append(graphs.run(chunk, plan, OUTPUT_NAME, spill=Path(folder)))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


def choose(options: TiledOptions, plan: TileLayout, graphs: NormGraphs) -> Strategy:
    """The strategy a decode runs: ``options.norm``, checked against the bundle and backend, or
    for None "canvas" when the bundle and backend allow it and the call is tiled ("shared" if
    the overlap is under ``CANVAS_OVERLAP`` or ``stats_factor`` is given), else "tile".

    Raises:
        InputError: the mode needs the shared-statistics graphs, which the bundle lacks or the
            backend cannot run; or ``spill`` with a mode other than "canvas".
    """
    mode = _mode(options, plan, graphs)
    options = options.resolve(mode)
    if mode == "tile":
        return PerTile()
    if mode == "canvas":
        return Canvas(options)
    return SharedStatistics(mode, options.stats_factor or graphs.record.factor)


def _mode(options: TiledOptions, plan: TileLayout, graphs: NormGraphs) -> str:
    norm = options.norm
    if norm == "tile":
        return norm
    record, usable = graphs.record, graphs.usable()
    if norm is None:
        if record is None or not usable or plan.single:
            return "tile"
        small = options.overlap is not None and options.overlap < CANVAS_OVERLAP
        return "shared" if small or options.stats_factor is not None else "canvas"
    if record is None:
        raise InputError(f"norm={norm!r} needs the shared-statistics graphs, which {graphs.bundle.path} lacks: "
                         "re-export it with `cmrt export --tile-stats` (or pass norm='tile')")
    if not usable:
        backend = graphs.main()
        raise InputError(f"norm={norm!r} runs the FP32 graphs on ONNX Runtime; this Decoder runs "
                         f"{backend.name} [{backend.precision}]: open it with backend='onnxruntime' on the "
                         "bundle folder, or pass norm='tile' (there are no FP16 or TensorRT shared-statistics "
                         "graphs)")
    return norm


# --- the statistics pass's canvas -------------------------------------------------------------
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
