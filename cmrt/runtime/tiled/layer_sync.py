"""Layer-synchronous tiled decoding: every GroupNorm of every tile normalized by the statistics of
the whole canvas at that layer, as the untiled decode normalizes.

A whole-sampler tile cannot see the rest of the canvas, so its norms use its own statistics
(``norm="tile"``) or statistics measured beforehand on a downscaled canvas (``"shared"``); both
drift from the untiled decode (``benchmarks/RESULTS.md``, "Tiled decoding"). Here the bundle's
shared-statistics graph is cut at its norms (``cmrt.graphs.segments``) and run
segment by segment: segment k on every tile (each segment also measures, in the graph, its norm's
input over the part of the tile the tile owns), then norm k's per-group mean and variance over the
whole canvas joined from those parts (``combine``: every canvas pixel counted once), then segment
k + 1 with them. After each segment the tiles exchange their overlaps: each takes, where a
neighbour owns the pixels, the neighbour's values, which replaces what it computed from zero
padding at its edge before any later segment reads it. With an overlap whose half covers one
segment's reach at every resolution (``layout.CANVAS_OVERLAP``) the tiled decode is the untiled
decode to rounding (``benchmarks/RESULTS.md``, "Tiled decoding": "Layer-synchronous tiles").

What it costs: every tile's live tensors (the UNet's skip connections among them) are held
between segments, so memory grows with the canvas (about two thirds of an untiled decode), unless
they are spilled to files (``spill``: then one tile's run and the output); time is the tiles' work,
one ONNX Runtime call per tile and segment, and the statistics' extra pass (1.3–1.5× the untiled
decode in memory, 2.4× spilled, on this project's CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, RunnerClosedError, require
from ... import graphs as NS
from ..backends import session_options
from .layout import MIN_TILE, Span, TileLayout, crop


def owned(spans: tuple[Span, ...], scale: Fraction) -> list[tuple[int, int]]:
    """Per span, the [lo, hi) it owns of an axis at ``scale`` pixels per latent pixel: the owned
    intervals split every overlap at its middle and tile the axis, each inside its span.

    Raises:
        BundleError: a span edge falls between pixels at this scale (a layer coarser than the latents).
    """
    edges = [scale * s.start for s in spans] + [scale * spans[-1].stop]
    if any(e.denominator != 1 for e in edges):
        raise BundleError(f"a layer at {scale} pixels per latent pixel does not align with the tiles: the graph is "
                          "not a decoder UNet this runner knows")
    cuts = [0]
    for a, b in zip(spans, spans[1:]):
        lo, hi = int(scale * b.start), int(scale * a.stop)
        cuts.append(lo + max(hi - lo, 0) // 2)
    cuts.append(int(scale * spans[-1].stop))
    return list(zip(cuts[:-1], cuts[1:]))


def combine(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """Per-group statistics of a canvas from its tiles' owned parts: each part's (N, G) mean,
    (N, G) sum of squared deviations from it, and element count, joined exactly (Chan et al.'s
    parallel formula, in float64); returns (N, 2, G) means and (biased) variances."""
    count, mean, m2 = 0.0, None, None
    for m, d, n in parts:
        m, d = m.astype(np.float64), d.astype(np.float64)
        if mean is None:
            count, mean, m2 = n, m, d
            continue
        total = count + n
        delta = m - mean
        mean = mean + delta * (n / total)
        m2 = m2 + d + delta ** 2 * (count * n / total)
        count = total
    return np.stack([mean, m2 / count], axis=1).astype(np.float32)


@dataclass(frozen=True)
class _Exchange:
    """What a tile takes from its neighbours at one scale: (from tile, rows, cols) in the tile's
    own coordinates and in the neighbour's; and the part the tile owns."""

    copies: tuple[tuple[int, int, slice, slice, slice, slice], ...]  # (to, from, rows_to, cols_to, rows_from, cols_from)
    owned: tuple[tuple[int, int, int, int], ...]  # per tile (r0, r1, c0, c1) in its own coordinates


def _exchange(layout: TileLayout, scale: Fraction) -> _Exchange:
    rows, cols = owned(layout.row_spans, scale), owned(layout.col_spans, scale)
    tiles = layout.tiles
    at = {t: (layout.row_spans.index(t.rows), layout.col_spans.index(t.cols)) for t in tiles}
    copies, mine = [], []
    for a, ta in enumerate(tiles):
        ya, xa = int(scale * ta.rows.start), int(scale * ta.cols.start)
        ha, wa = int(scale * ta.rows.size), int(scale * ta.cols.size)
        ri, ci = at[ta]
        mine.append((rows[ri][0] - ya, rows[ri][1] - ya, cols[ci][0] - xa, cols[ci][1] - xa))
        for b, tb in enumerate(tiles):
            if b == a:
                continue
            (r0, r1), (c0, c1) = rows[at[tb][0]], cols[at[tb][1]]
            r0, r1, c0, c1 = max(r0, ya), min(r1, ya + ha), max(c0, xa), min(c1, xa + wa)
            if r0 >= r1 or c0 >= c1:
                continue
            yb, xb = int(scale * tb.rows.start), int(scale * tb.cols.start)
            copies.append((a, b, slice(r0 - ya, r1 - ya), slice(c0 - xa, c1 - xa),
                           slice(r0 - yb, r1 - yb), slice(c0 - xb, c1 - xb)))
    return _Exchange(tuple(copies), tuple(mine))


_ARENA: list = []  # the process's shared CPU arena, registered once


def _shared_arena(ort) -> None:
    """Register one CPU arena with ONNX Runtime's environment, for the segment sessions (which
    opt in with ``session.use_env_allocators``). With an arena per session, each of the dozens of
    segments would keep its own high-water mark; with none, every run maps fresh pages and its
    convolutions ran 1.5× slower (measured on the natural-image decoder's segments)."""
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _ARENA.append(info)


class _OrtSegment:
    """One segment's ONNX Runtime session, run as the other backends' segments are
    (``run_outputs(feeds, names)``)."""

    def __init__(self, session) -> None:
        self.session = session

    def run_outputs(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        return self.session.run(names, feeds)


@dataclass
class LayerSyncGraphs:
    """The segments of a bundle's shared-statistics graph and one session each (``sessions``:
    objects with ``run_outputs(feeds, names)``: ONNX Runtime sessions or the runner's backend)."""

    segments: list
    sessions: list = field(default_factory=list)
    norm_inputs: tuple[tuple[Fraction, int], ...] = ()  # per norm: its input's scale and channels (``probe``)
    groups: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()

    @classmethod
    def open(cls, shared_graph: Path, main_graph: Path, *, upscale: int, device: str = "cpu",
             threads: int | None = None, open_like=None) -> "LayerSyncGraphs":
        """Cut ``shared_graph`` (its weights in ``main_graph``'s folder) at its norms and open a
        session per segment: with ``open_like`` (a runner backend's, e.g. OpenVINO's), a backend of
        that kind per segment; else an ONNX Runtime session on ``device`` ("cpu" or "cuda"), all on
        one CPU arena (``_shared_arena``)."""
        onnx = require("onnx", "onnx", "layer-synchronous tiled decoding")

        base = main_graph.parent
        norms = NS.find_norms(onnx.load(str(main_graph), load_external_data=False), base)
        shared = onnx.load(str(shared_graph), load_external_data=False)
        parts = NS.segments(shared, norms, base)
        if open_like is not None:
            sessions = [open_like(p.model.SerializeToString(), output=p.outputs[0],
                                  label=f"{shared_graph.name} segment {i}") for i, p in enumerate(parts)]
        else:
            sessions = _ort_sessions(parts, device, threads)
        for p in parts:  # the weights now live in the sessions
            p.model.Clear()
        groups = tuple(n.groups for n in norms)
        graphs = cls(parts, sessions, groups=groups,
                     offsets=tuple(np.cumsum((0,) + groups[:-1]).tolist()))
        graphs.norm_inputs = graphs.probe(upscale)
        return graphs

    def probe(self, upscale: int, side: int = 2 * MIN_TILE) -> tuple[tuple[Fraction, int], ...]:
        """Every norm input's scale (pixels per latent pixel) and channels, from one run of all
        segments on a blank ``side``² latent tile (before any owned window is known)."""
        held = {"latents": np.zeros((1, 4, side, side), np.float32)}
        found: dict[int, tuple[Fraction, int]] = {}
        stats = np.zeros((1, 2, sum(self.groups)), np.float32)
        stats[:, 1] = 1.0
        full = (np.zeros(2, np.int64), np.full(2, 2 ** 62, np.int64))
        for part, session in zip(self.segments, self.sessions):
            for x in part.inputs:
                if x.startswith("noise_") and x not in held:
                    held[x] = np.zeros((1, 3, upscale * side, upscale * side), np.float32)
            feeds = {x: (stats if x == "norm_stats" else held[x]) for x in part.inputs}
            if part.norm is not None:
                feeds |= {NS.OWNED_STARTS: full[0], NS.OWNED_ENDS: full[1]}
            held.update(zip(part.outputs, session.run_outputs(feeds, list(part.outputs))))
            if part.norm is not None:
                x = held[part.spatial]
                found[part.norm] = (Fraction(x.shape[2], side), int(x.shape[1]))
        return tuple(found[k] for k in range(len(self.groups)))

    def close(self) -> None:
        sessions, self.sessions = self.sessions, []
        for s in sessions:
            if hasattr(s, "close"):  # a runner backend (ONNX Runtime sessions free with their last reference)
                s.close()

    def run(self, inputs: dict[str, np.ndarray], layout: TileLayout, output: str,
            spill: Path | None = None) -> np.ndarray:
        """The layer-synchronous tiled decode of one batch: ``inputs`` the sampler's whole-canvas
        feeds (``latents`` (B, 4, h, w), ``noise_i`` (B, C, s·h, s·w)); returns ``output``'s canvas.

        Each tile keeps its own copy of every tensor a later segment reads. After each segment, a
        halo exchange: every spatial (N, C, s·rows, s·cols) tensor it output gets, in the parts of
        its overlaps that a neighbour owns (``owned``), the neighbour's pixels; those are the
        pixels a tile computes from zero padding instead of its neighbour's. While every
        segment's reach (its convolutions' radius) stays within half the overlap at every
        resolution (``layout.CANVAS_OVERLAP``), every tile is the untiled decode's crop to rounding.
        Norm k's statistics are joined from each tile's owned part (``combine``).

        ``spill``: an empty folder to keep the tiles' spatial tensors in (raw files, read back
        when a segment needs them) instead of in memory: memory then holds one tile's run and
        the output canvas; the files are removed as they are used up.
        """
        if not self.sessions:
            raise RunnerClosedError("the layer-synchronous sessions were closed")
        tiles = layout.tiles
        th, tw = layout.tile_shape
        batch = inputs["latents"].shape[0]
        stats = np.zeros((batch, 2, sum(self.groups)), np.float32)
        exchanges: dict[Fraction, _Exchange] = {}
        store = _Store(len(tiles), th, tw, spill)
        for i, t in enumerate(tiles):
            for k, v in inputs.items():
                store.put(i, k, crop(v, t, v.shape[2] // layout.height))
        for j, (part, session) in enumerate(zip(self.segments, self.sessions)):
            found = []
            window = self._window(part, layout, exchanges) if part.norm is not None else None
            for i, own in enumerate(window or [None] * len(tiles)):
                feeds = {x: (stats if x == "norm_stats" else store.get(i, x)) for x in part.inputs}
                names = list(part.outputs)
                if own is not None:
                    feeds |= {NS.OWNED_STARTS: own[0], NS.OWNED_ENDS: own[1]}
                    names += [NS.OWNED_MEAN, NS.OWNED_M2]
                values = session.run_outputs(feeds, names)
                del feeds
                for name, value in zip(part.outputs, values):
                    store.put(i, name, value)
                if own is not None:
                    found.append((values[-2], values[-1], own[2]))
                del values
            for name in part.outputs:
                if name in store.scale:
                    store.exchange(name, self._exchange(layout, store.scale[name], exchanges))
            if part.norm is not None:
                k = part.norm
                stats[:, :, self.offsets[k]:self.offsets[k] + self.groups[k]] = combine(found)
            store.drop(lambda x: x != output and part.last_use.get(x, j) <= j)
        canvas = _assemble([store.get(i, output) for i in range(len(tiles))], layout, exchanges)
        store.drop(lambda x: True)
        return canvas

    @staticmethod
    def _exchange(layout: TileLayout, scale: Fraction, cache: dict) -> "_Exchange":
        if scale not in cache:
            cache[scale] = _exchange(layout, scale)
        return cache[scale]

    def _window(self, part, layout: TileLayout, cache: dict) -> list:
        """Per tile, (starts, ends, elements per group) of its owned window of ``part``'s norm input."""
        scale, channels = self.norm_inputs[part.norm]
        per_group = channels // self.groups[part.norm]
        return [(np.array([r0, c0], np.int64), np.array([r1, c1], np.int64), (r1 - r0) * (c1 - c0) * per_group)
                for r0, r1, c0, c1 in self._exchange(layout, scale, cache).owned]


def _ort_sessions(parts: list, device: str, threads: int | None) -> list[_OrtSegment]:
    ort = require("onnxruntime", "onnxruntime", "layer-synchronous tiled decoding")
    options = session_options(threads)
    options.add_session_config_entry("session.use_env_allocators", "1")
    _shared_arena(ort)
    providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
    return [_OrtSegment(ort.InferenceSession(p.model.SerializeToString(), options, providers=providers)) for p in parts]


class _Store:
    """Every tile's tensors between segments: in memory, or with ``spill`` a folder, the spatial
    ones as raw files (``scale``: spatial tensor → pixels per latent pixel; ``layout``: a spilled
    tensor's shape and dtype)."""

    def __init__(self, tiles: int, th: int, tw: int, spill: Path | None) -> None:
        self.held: list[dict[str, Any]] = [{} for _ in range(tiles)]
        self.th, self.tw, self.spill = th, tw, spill
        self.scale: dict[str, Fraction] = {}
        self.layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def _file(self, i: int, name: str) -> Path:
        return self.spill / f"{i}-{name}.raw"

    def put(self, i: int, name: str, value: np.ndarray) -> None:
        scale = _spatial_scale(value, self.th, self.tw)
        if scale is not None:
            self.scale[name] = scale
        if scale is not None and self.spill is not None:
            self.layout[name] = (value.shape, value.dtype)
            np.ascontiguousarray(value).tofile(self._file(i, name))
            self.held[i][name] = None
        else:
            self.held[i][name] = value

    def get(self, i: int, name: str) -> np.ndarray:
        value = self.held[i][name]
        if value is not None:
            return value
        shape, dtype = self.layout[name]
        return np.fromfile(self._file(i, name), dtype).reshape(shape)

    def _mapped(self, i: int, name: str, mode: str) -> np.memmap:
        shape, dtype = self.layout[name]
        return np.memmap(self._file(i, name), dtype, mode, shape=shape)

    def exchange(self, name: str, plan: "_Exchange") -> None:
        """Copy the neighbours' owned pixels into each tile's overlaps (on the files in place)."""
        if self.spill is None:
            for a, b, ra, ca, rb, cb in plan.copies:
                self.held[a][name][:, :, ra, ca] = self.held[b][name][:, :, rb, cb]
            return
        by_tile: dict[int, list] = {}
        for copy in plan.copies:
            by_tile.setdefault(copy[0], []).append(copy)
        for a, copies in by_tile.items():  # a tile and one neighbour mapped at a time
            mine = self._mapped(a, name, "r+")
            for _, b, ra, ca, rb, cb in copies:
                theirs = self._mapped(b, name, "r")
                mine[:, :, ra, ca] = theirs[:, :, rb, cb]
                del theirs
            del mine  # unmapped: the writes stay in the page cache, where the next read finds them

    def drop(self, done) -> None:
        for i, h in enumerate(self.held):
            for x in [x for x in h if done(x)]:
                if h.pop(x) is None:
                    self._file(i, x).unlink()


def _spatial_scale(value: np.ndarray, th: int, tw: int) -> Fraction | None:
    """The pixels per latent pixel of a tile's (N, C, s·th, s·tw) float output, or None (a shape
    tensor, a per-sample vector)."""
    if value.ndim != 4 or value.dtype.kind != "f":
        return None
    s = Fraction(value.shape[2], th)
    return s if s * tw == value.shape[3] and s >= 1 else None


def _assemble(outs: list[np.ndarray], layout: TileLayout, exchanges: dict) -> np.ndarray:
    """The canvas of the tiles' outputs, each tile's owned part."""
    scale = _spatial_scale(outs[0], *layout.tile_shape)
    ex = exchanges.get(scale) or _exchange(layout, scale)
    canvas = np.empty(outs[0].shape[:2] + (int(scale * layout.height), int(scale * layout.width)), outs[0].dtype)
    for t, out, (r0, r1, c0, c1) in zip(layout.tiles, outs, ex.owned):
        y, x = int(scale * t.rows.start), int(scale * t.cols.start)
        canvas[:, :, y + r0:y + r1, x + c0:x + c1] = out[:, :, r0:r1, c0:c1]
    return canvas


__all__ = ["LayerSyncGraphs", "owned", "combine"]
