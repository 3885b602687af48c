"""``Decoder``: a consistency decoder bundle run as SD-VAE latents → images, whole or tiled
(``cmrt.runtime.tiled``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..bundle import Bundle
from . import tiled
from .backends import Backend
from .inputs import as_float32, check_max_batch, check_shape, is_torch, return_like
from .runner import Runner
from .tiled import NormGraphs, TiledOptions


class Decoder(Runner):
    """A consistency decoder bundle: SD 1.x/2.x latents → images.

    Args:
        engine: a bundle folder made by ``cmrt export``, or a graph/engine file inside one.
        backend: "onnxruntime" (default; CUDA when present), "onnxruntime-cpu", "onnxruntime-cuda",
            or "tensorrt" (when installed); or an opened backend (``backends.OnnxRuntimeBackend(graph,
            cpu_arena=False)``), which the runner then owns and closes.
        max_batch: the largest batch one backend run gets (None: the backend's limit, if any);
            larger batches run in chunks with the same results.
    """

    kind = "decoder"

    def __init__(self, engine: str | Path | Bundle, *, backend: str | Backend | None = None,
                 max_batch: int | None = None) -> None:
        super().__init__(engine, backend=backend, max_batch=max_batch)
        self._graphs = NormGraphs(self.bundle, lambda: self.backend)  # the shared-statistics graphs, opened on use

    @property
    def _norm_backends(self) -> dict[str, Backend]:
        """The shared-statistics graphs' backends opened so far (what ``close`` frees)."""
        return self._graphs.backends

    @property
    def _layer_sync(self):
        """``norm="canvas"``'s segments, once opened (what ``close`` frees)."""
        return self._graphs.layer_sync

    def close(self) -> None:
        """Free the backend's session or engine (and the shared-statistics sessions, if opened);
        later calls raise ``RunnerClosedError``. Idempotent."""
        self._graphs.close()
        super().close()

    def decode(self, latents: Any, *, seed: int | None = None, noise: Sequence[Any] | None = None,
               tile: int | None = None, overlap: int | None = None, max_pixels: int | None = None,
               max_batch: int | None = None, norm: str | None = None, stats_factor: int | None = None,
               spill: bool | str | Path | None = None):
        """Decode unscaled SD-VAE latents (B, 4, h, w) into images (B, 3, 8h, 8w) in [-1, 1].

        The noise of every step is drawn for the whole batch and canvas first; tiles and batch
        chunks get their parts of it, so a tiled or chunked call is a deterministic function of
        the seed, and a call that fits in one tile and one chunk equals the plain call.

        Args:
            latents: numpy array or torch tensor (``latent_dist.mean``, not multiplied by 0.18215).
            seed: draws the noise of every step from ``torch.Generator().manual_seed(seed)``.
            noise: explicit noise, one (B, 3, 8h, 8w) standard-normal tensor per step.
            tile: decode in tiles of at most ``tile``×``tile`` latent pixels (8·tile image pixels),
                blended across their overlaps (``cmrt.runtime.tiled``). None: one tile, unless
                ``max_pixels`` or the engine's largest latent shape asks for smaller ones.
            overlap: latent pixels shared by neighbouring tiles (default ``tiled.DEFAULT_OVERLAP``);
                less than half of the tile.
            max_pixels: with ``tile`` None, the largest tile output (pixels per image) to allow:
                picks the largest square tile within it.
            max_batch: the largest batch one backend run gets (None: the runner's).
            norm: how GroupNorm normalizes a tiled decode: "canvas" (every tile by the whole
                full-resolution canvas's statistics, measured layer by layer across the tiles,
                ``cmrt.runtime.tiled.layer_sync``: the untiled decode to rounding; overlap ≥
                ``tiled.CANVAS_OVERLAP``, its default), "shared" (by the means and variances of
                one untiled pass over the canvas downscaled by ``stats_factor``), "shared-means"
                (by those means and its own variances), "tile" (each tile by its own
                statistics), or None: "canvas" when the bundle and backend allow it and the call is
                tiled ("shared" if ``overlap`` is under ``CANVAS_OVERLAP`` or ``stats_factor`` is
                given), else "tile". All but
                "tile" need a bundle exported with ``--tile-stats`` and its FP32 graph on ONNX
                Runtime. A shared mode on a call that fits in one tile still runs the statistics
                pass (with ``stats_factor=1`` it equals the plain call); "canvas" there is the
                plain call.
            stats_factor: the statistics pass's downscale factor (default: the bundle's,
                ``tiled.DEFAULT_STATS_FACTOR``); its canvas has 1/factor² of the pixels.
            spill: ``norm="canvas"`` only: keep the tiles' activations between layers in files
                rather than in memory (True: a temporary folder; a path: a temporary folder inside
                that existing folder), removed when the call returns. Memory then holds one
                tile's run and the output; time grows by the file traffic. A call that fits in
                one tile runs the plain graph and has nothing to spill.
        """
        options = TiledOptions.check(tile=tile, overlap=overlap, norm=norm, stats_factor=stats_factor, spill=spill,
                                     max_pixels=max_pixels)
        max_batch = check_max_batch(max_batch)
        feeds = self.feeds(latents, seed=seed, noise=noise)
        m = self.bundle.manifest
        call = tiled.Call(run=lambda f, backend: self._run_chunked(f, max_batch, backend),
                          parts=lambda batch: self._batch_parts(batch, max_batch), graphs=self._graphs,
                          limits=self.limits, upscale=m.latent.upscale, noise_names=tuple(m.noise_names))
        return return_like(tiled.decode(feeds, options, call), latents if is_torch(latents) else None)

    def feeds(self, latents: Any, *, seed: int | None = None, noise: Sequence[Any] | None = None) -> dict[str, Any]:
        """The checked graph inputs of ``decode`` with the same arguments, noise drawn (for the
        whole canvas), not run.

        A server (``cmrt.serve``) prepares each request this way and runs requests of one latent
        size as one batch: every request keeps its own seeded noise.

        Returns:
            graph input name → float32 array (a CUDA tensor stays one): ``latents``, ``noise_i``.
        """
        z = as_float32(latents, "latents")
        m = self.bundle.manifest
        check_shape(z, "latents", (None, m.latent.channels, None, None))
        up = m.latent.upscale
        shape = (z.shape[0], m.image.channels, up * z.shape[2], up * z.shape[3])
        noise_arrays = self._noise(noise, self._generator(seed, noise), shape)
        return {"latents": z} | dict(zip(m.noise_names, noise_arrays))
