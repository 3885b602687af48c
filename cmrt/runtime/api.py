"""``Decoder``, ``Sampler`` and ``Editor``: input checks + noise (seeded, in step order) + arrays in/out
around a backend. numpy in → numpy out; torch in → torch out (on the input's device)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle
from ..errors import BundleError, InputError, InputTypeError, RunnerClosedError
from . import tiling
from .backends import Backend, OnnxRuntimeBackend, open_backend
from .tiling import ShapeLimits

_FLOAT_KINDS = "fiu"  # numpy dtype kinds that cast to float32 (float, signed, unsigned int)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy array from numpy or torch input; anything else is a TypeError that says so."""
    if _is_torch(x):
        import torch

        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InputTypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _is_device_tensor(x: Any) -> bool:
    return _is_torch(x) and getattr(x, "is_cuda", False)


def _device_float32(x: Any, name: str):
    """Checks of a CUDA tensor done on the device (no host copy); returns it as float32."""
    import torch

    if x.dtype == torch.bool or x.is_complex():
        raise InputTypeError(f"{name} has dtype {x.dtype}, which cannot be used as float32 image data")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}): pass at least one item")
    x = x.detach().float().contiguous()
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf: check the upstream model or its dtype")
    return x


def as_float32(x: Any, name: str):
    """A contiguous float32 array (a CUDA tensor stays a CUDA tensor), checked for emptiness and NaN/Inf."""
    if _is_device_tensor(x):
        return _device_float32(x, name)
    a = _to_numpy(x, name)
    if a.dtype.kind not in _FLOAT_KINDS or a.dtype == np.bool_:
        raise InputTypeError(f"{name} has dtype {a.dtype}, which cannot be used as float32 image data: "
                             "pass a float (or integer) array")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape}): pass at least one item")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or Inf: check the upstream model or its dtype")
    return a


def _check_shape(a: np.ndarray, name: str, expected: tuple) -> None:
    """``expected`` has ints or None (any) per axis."""
    if a.ndim != len(expected):
        raise InputError(f"{name} must have rank {len(expected)} with shape {_fmt(expected)}, got shape {a.shape}")
    for axis, (got, want) in enumerate(zip(a.shape, expected)):
        if want is not None and got != want:
            raise InputError(f"{name} must have shape {_fmt(expected)}; axis {axis} is {got}, expected {want}")


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def generator(seed: int | None):
    """``torch.Generator().manual_seed(seed)``, or a freshly seeded one when seed is None."""
    import torch

    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(_check_seed(seed))
    return g


def draw_noise(shape: tuple, steps: int, g) -> list[np.ndarray]:
    """One whole-batch standard-normal tensor per step, in step order, from generator ``g``."""
    import torch

    return [torch.randn(shape, generator=g).numpy() for _ in range(steps)]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise InputError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def _return_like(a: Any, like: Any):
    if _is_torch(a):  # a device backend returned a tensor on the inputs' GPU: no host copy
        return a
    if like is None:
        return a
    import torch

    return torch.from_numpy(a).to(like.device)


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else x


_RUNNER_CLASSES = {"sampler": "Sampler", "decoder": "Decoder", "editor": "Editor"}


class _Runner:
    """A bundle opened on a backend. The lifecycle: construction opens the backend (session or
    engine), ``close()`` frees it (also on leaving a ``with`` block); a closed runner refuses calls.
    Calls from several threads are safe: they run concurrently where the backend allows it and
    one at a time otherwise."""

    kind = ""

    def __init__(self, engine: str | Path | Bundle, *, backend: str | Backend | None = None,
                 max_batch: int | None = None) -> None:
        self.max_batch = tiling.check_max_batch(max_batch)
        self.bundle = Bundle.open(engine)
        m = self.bundle.manifest
        if m.kind != self.kind:
            raise BundleError(f"{self.bundle.path} holds {'an' if m.kind[:1] in 'aeiou' else 'a'} {m.kind} bundle: open it with "
                              f"cmrt.{_RUNNER_CLASSES.get(m.kind, m.kind)}")
        self._backend: Backend | None = open_backend(self.bundle, backend)
        self._lock = threading.Lock()
        self.steps = m.steps

    @property
    def backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            raise RunnerClosedError(f"this {type(self).__name__} was closed: open a new one on {self.bundle.path}")
        return backend

    @property
    def limits(self) -> ShapeLimits:
        """The batch and latent shapes one backend run accepts (an engine's profile; else unbounded)."""
        return getattr(self.backend, "limits", None) or ShapeLimits()

    @property
    def closed(self) -> bool:
        return self._backend is None

    def close(self) -> None:
        """Free the backend's session or engine; later calls raise ``RunnerClosedError``. Idempotent."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def __enter__(self):
        self.backend  # noqa: B018  (a closed runner cannot be re-entered)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _noise(self, noise: Sequence[Any] | None, g, shape: tuple) -> list[np.ndarray]:
        if noise is None:
            return draw_noise(shape, self.steps, g)
        if isinstance(noise, (np.ndarray,)) or _is_torch(noise) or not isinstance(noise, Sequence):
            raise InputTypeError(f"noise must be a list of {self.steps} arrays (one per step), "
                                 f"got {type(noise).__name__}")
        if len(noise) != self.steps:
            raise InputError(f"this bundle runs {self.steps} steps and needs {self.steps} noise tensors, "
                             f"got {len(noise)}")
        arrays = [as_float32(n, f"noise[{i}]") for i, n in enumerate(noise)]
        for i, a in enumerate(arrays):
            _check_shape(a, f"noise[{i}]", shape)
        return arrays

    def _generator(self, seed: int | None, noise: Sequence[Any] | None):
        if seed is not None and noise is not None:
            raise InputError("pass either seed or noise, not both")
        return generator(seed)

    def _run_chunked(self, feeds: dict[str, Any], max_batch: int | None, backend: Backend | None = None):
        """Run the batch in chunks of at most the smallest of ``max_batch``, the runner's
        ``max_batch`` and the backend's largest batch, and join the results: every input is
        already drawn for the whole batch, so the result equals one call's. ``backend``: another
        backend of this runner (default: its own)."""
        size = tiling.chunk_size(max_batch, self.max_batch, limits=self.limits)
        batch = next(iter(feeds.values())).shape[0]
        parts = tiling.chunks(batch, size)
        if len(parts) == 1:
            return self._run(feeds, backend)
        outs = [self._run({k: v[part] for k, v in feeds.items()}, backend) for part in parts]
        if _is_torch(outs[0]):
            import torch

            return torch.cat(outs)
        return np.concatenate(outs)

    def _run(self, feeds: dict[str, Any], backend: Backend | None = None):
        """CUDA tensors go to a device backend's ``run_torch`` without host copies (seeded noise,
        drawn on the CPU generator for parity with PyTorch/diffusers, is copied up); else numpy."""
        backend = backend or self.backend
        if backend.thread_safe:
            return self._call(backend, feeds)
        with self._lock:
            return self._call(backend, feeds)

    @staticmethod
    def _call(backend: Backend, feeds: dict[str, Any]):
        on_device = [v for v in feeds.values() if _is_device_tensor(v)]
        if on_device and hasattr(backend, "run_torch"):
            import torch

            dev = on_device[0].device
            return backend.run_torch({k: torch.as_tensor(v, device=dev) for k, v in feeds.items()})
        return backend.run({k: _host(v) for k, v in feeds.items()})


class Decoder(_Runner):
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
        self._norm_backends: dict[str, Backend] = {}  # "statistics" and the norm modes' graphs, opened on use
        self._layer_sync = None  # norm="canvas": the shared graph's segments, opened on use

    def close(self) -> None:
        """Free the backend's session or engine (and the shared-statistics sessions, if opened);
        later calls raise ``RunnerClosedError``. Idempotent."""
        with self._lock:
            extra, self._norm_backends = self._norm_backends, {}
            synced, self._layer_sync = self._layer_sync, None
        for b in extra.values():
            b.close()
        if synced is not None:
            synced.close()
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
                blended across their overlaps (``cmrt.runtime.tiling``). None: one tile, unless
                ``max_pixels`` or the engine's largest latent shape asks for smaller ones.
            overlap: latent pixels shared by neighbouring tiles (default ``tiling.DEFAULT_OVERLAP``);
                less than half of the tile.
            max_pixels: with ``tile`` None, the largest tile output (pixels per image) to allow:
                picks the largest square tile within it.
            max_batch: the largest batch one backend run gets (None: the runner's).
            norm: how GroupNorm normalizes a tiled decode: "canvas" (every tile by the whole
                full-resolution canvas's statistics, measured layer by layer across the tiles,
                ``cmrt.runtime.layer_sync``: the untiled decode to rounding; overlap ≥
                ``tiling.CANVAS_OVERLAP``, its default), "shared" (by the means and variances of
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
                ``tiling.DEFAULT_STATS_FACTOR``); its canvas has 1/factor² of the pixels.
            spill: ``norm="canvas"`` only: keep the tiles' activations between layers in files
                rather than in memory (True: a temporary folder; a path: a temporary folder inside
                that existing folder), removed when the call returns. Memory then holds one
                tile's run and the output; time grows by the file traffic. A call that fits in
                one tile runs the plain graph and has nothing to spill.
        """
        like = latents if _is_torch(latents) else None
        tile_, overlap_ = tiling.check_tiling(tile, overlap)
        norm_, factor_ = tiling.check_norm(norm, stats_factor)
        max_batch = tiling.check_max_batch(max_batch)
        feeds = self.feeds(latents, seed=seed, noise=noise)
        z, names = feeds["latents"], self.bundle.manifest.noise_names
        up = self.bundle.manifest.latent.upscale
        plan = tiling.choose_tile(z.shape[2], z.shape[3], tile=tile_, overlap=overlap_, max_pixels=max_pixels,
                                  limits=self.limits, upscale=up)
        noise_arrays = [feeds[n] for n in names]
        extra, backend = {}, None
        mode = self._norm_mode(norm_, plan, overlap_, factor_)
        spill_ = tiling.check_spill(spill, mode)
        if mode == "canvas" and not plan.single:
            plan = tiling.canvas_layout(plan, overlap_, tile_, max_pixels, self.limits, up)
            out = self._decode_layer_sync({"latents": z} | dict(zip(names, noise_arrays)), plan, max_batch, spill_)
            return _return_like(out, like)
        if mode in ("shared", "shared-means"):
            record = self.bundle.manifest.norm_stats
            backend = self._norm_backend(mode)
            stats = self._norm_stats(z, noise_arrays, factor_ or record.factor, max_batch)
            extra = {record.tensor: stats}

        def run(z_part, noise_parts):
            return self._run_chunked({"latents": z_part} | dict(zip(names, noise_parts)) | extra, max_batch, backend)

        out = run(z, noise_arrays) if plan.single else tiling.run_tiled(run, z, noise_arrays, plan, up)
        return _return_like(out, like)

    def _decode_layer_sync(self, feeds: dict[str, Any], plan: tiling.TileLayout, max_batch: int | None,
                           spill: Path | None):
        """``norm="canvas"``: the layer-synchronous tiled decode (``cmrt.runtime.layer_sync``), batch
        chunk by batch chunk (the statistics are per image, so chunks change nothing)."""
        with self._lock:
            if self._layer_sync is None:
                from .layer_sync import LayerSyncGraphs

                record, main = self.bundle.manifest.norm_stats, self.backend
                self._layer_sync = LayerSyncGraphs.open(self.bundle.path / record.shared_graph.file, main.graph,
                                                        upscale=self.bundle.manifest.latent.upscale,
                                                        device=main.device, threads=main.threads)
            graphs = self._layer_sync
        host = {k: _host(v) for k, v in feeds.items()}
        size = tiling.chunk_size(max_batch, self.max_batch, limits=self.limits)
        parts = tiling.chunks(host["latents"].shape[0], size)
        outs = []
        for part in parts:
            if spill is None:
                outs.append(graphs.run({k: v[part] for k, v in host.items()}, plan, OUTPUT_NAME))
                continue
            with tempfile.TemporaryDirectory(prefix="cmrt-spill-", dir=spill) as folder:
                outs.append(graphs.run({k: v[part] for k, v in host.items()}, plan, OUTPUT_NAME, spill=Path(folder)))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _norm_mode(self, norm: str | None, plan: tiling.TileLayout, overlap: int | None,
                   stats_factor: int | None) -> str:
        """The ``norm`` this decode runs (see ``decode``), checked against the bundle and backend."""
        if norm == "tile":
            return norm
        record, backend = self.bundle.manifest.norm_stats, self.backend
        usable = (isinstance(backend, OnnxRuntimeBackend) and backend.precision == "fp32") or getattr(
            backend, "norm_graphs_on_onnxruntime", False)  # OpenVINO: the norm modes' FP32 graphs run on ORT
        if norm is None:
            if record is None or not usable or plan.single:
                return "tile"
            small = overlap is not None and overlap < tiling.CANVAS_OVERLAP
            return "shared" if small or stats_factor is not None else "canvas"
        if record is None:
            raise InputError(f"norm={norm!r} needs the shared-statistics graphs, which {self.bundle.path} lacks: "
                             "re-export it with `cmrt export --tile-stats` (or pass norm='tile')")
        if not usable:
            raise InputError(f"norm={norm!r} runs the FP32 graphs on ONNX Runtime; this Decoder runs "
                             f"{backend.name} [{backend.precision}]: open it with backend='onnxruntime' on the "
                             "bundle folder, or pass norm='tile' (there are no FP16 or TensorRT shared-statistics "
                             "graphs)")
        return norm

    def _norm_backend(self, graph: str) -> Backend:
        """``graph`` ("statistics", "shared" or "shared-means") of the bundle's ``norm_stats`` on the
        runner's ONNX Runtime device and threads, opened on first use."""
        with self._lock:
            if graph not in self._norm_backends:
                record, main = self.bundle.manifest.norm_stats, self.backend
                file = {"statistics": record.stats_graph, "shared": record.shared_graph,
                        "shared-means": record.means_graph}[graph].file
                output = {"output": record.tensor} if graph == "statistics" else {}
                self._norm_backends[graph] = OnnxRuntimeBackend(self.bundle.path / file, device=main.device,
                                                                threads=main.threads, **output)
            return self._norm_backends[graph]

    def _norm_stats(self, z: Any, noise: list[Any], factor: int, max_batch: int | None):
        """Every GroupNorm's statistics from one untiled pass over the canvas downscaled by ``factor``
        (``tiling.stats_canvas``): (B, 2, S)."""
        names = self.bundle.manifest.noise_names
        low, pooled = tiling.stats_canvas(_host(z), [_host(n) for n in noise], factor,
                                          self.bundle.manifest.latent.upscale)
        return self._run_chunked({"latents": low} | dict(zip(names, pooled)), max_batch,
                                 self._norm_backend("statistics"))

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
        _check_shape(z, "latents", (None, m.latent.channels, None, None))
        up = m.latent.upscale
        shape = (z.shape[0], m.image.channels, up * z.shape[2], up * z.shape[3])
        noise_arrays = self._noise(noise, self._generator(seed, noise), shape)
        return {"latents": z} | dict(zip(m.noise_names, noise_arrays))


class Sampler(_Runner):
    """A consistency-model bundle: (class labels,) noise → images in [-1, 1].

    Args:
        engine: a bundle folder made by ``cmrt export``, or a graph/engine file inside one.
        backend: as for ``Decoder``.
        max_batch: as for ``Decoder``.
    """

    kind = "sampler"

    @property
    def num_classes(self) -> int | None:
        return self.bundle.manifest.num_classes

    def sample(self, batch_size: int | None = None, *, class_labels: Any = None, seed: int | None = None,
               noise: Sequence[Any] | None = None, max_batch: int | None = None):
        """Sample images (B, C, H, W) in [-1, 1].

        Args:
            batch_size: number of images (default: from labels or noise, else 1).
            class_labels: (B,) ints in [0, num_classes), or one int for the whole batch; drawn from
                the seed (after the noise) when the model is class-conditional and none are given.
            seed: seeds the noise (and labels) with ``torch.Generator().manual_seed(seed)``.
            noise: explicit noise, one (B, C, H, W) standard-normal tensor per step.
            max_batch: the largest batch one backend run gets (None: the runner's); the noise and
                labels are drawn for the whole batch first, so chunks do not change the result.
        """
        max_batch = tiling.check_max_batch(max_batch)
        like = next((x for x in (class_labels, *(noise or ())) if _is_torch(x)), None)
        feeds = self.feeds(batch_size, class_labels=class_labels, seed=seed, noise=noise)
        return _return_like(self._run_chunked(feeds, max_batch), like)

    def feeds(self, batch_size: int | None = None, *, class_labels: Any = None, seed: int | None = None,
              noise: Sequence[Any] | None = None) -> dict[str, Any]:
        """The checked graph inputs of ``sample`` with the same arguments, noise (and labels)
        drawn, not run: what a server merges across requests before one backend run.

        Returns:
            graph input name → array: ``class_labels`` (int64, class-conditional models), ``noise_i``.
        """
        img = self.bundle.manifest.image
        batch = self._batch_size(batch_size, class_labels, noise)
        shape = (batch, img.channels, img.height, img.width)
        feeds: dict[str, np.ndarray] = {}
        g = self._generator(seed, noise)
        noise_arrays = self._noise(noise, g, shape)  # noise first, in step order, then labels
        if self.num_classes is not None:
            feeds["class_labels"] = self._labels(class_labels, batch, g)
        elif class_labels is not None:
            raise InputError("this model is unconditional: do not pass class_labels")
        return feeds | dict(zip(self.bundle.manifest.noise_names, noise_arrays))

    def _batch_size(self, batch_size, class_labels, noise) -> int:
        candidates = {}
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
                raise InputTypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
            candidates["batch_size"] = int(batch_size)
        labels = None if class_labels is None else _labels_array(class_labels)
        if labels is not None and labels.ndim == 1:
            candidates["class_labels"] = len(labels)
        if noise is not None and isinstance(noise, Sequence) and len(noise) and hasattr(noise[0], "shape"):
            candidates["noise[0]"] = int(noise[0].shape[0]) if len(noise[0].shape) else 0
        if len(set(candidates.values())) > 1:
            raise InputError(f"batch sizes disagree: {candidates}")
        batch = next(iter(candidates.values()), 1)
        if batch < 1:
            raise InputError(f"batch size must be ≥ 1, got {batch}")
        return batch

    def _labels(self, class_labels: Any, batch: int, g) -> np.ndarray:
        return checked_labels(class_labels, batch, self.num_classes, g)


def checked_labels(class_labels: Any, batch: int, num_classes: int, g) -> np.ndarray:
    """(B,) int64 labels: the given ones checked (one int is broadcast), or drawn from ``g``."""
    if class_labels is None:
        import torch

        return torch.randint(0, num_classes, (batch,), generator=g).numpy()
    labels = _labels_array(class_labels)
    if labels.dtype.kind not in "iu":
        raise InputTypeError(f"class_labels must be integers, got dtype {labels.dtype}")
    labels = np.broadcast_to(labels, (batch,)) if labels.ndim == 0 else labels
    if labels.ndim != 1:
        raise InputError(f"class_labels must be one int or shape (B,), got shape {labels.shape}")
    if len(labels) != batch:
        raise InputError(f"class_labels has {len(labels)} labels for a batch of {batch}: pass one per image "
                         "(or one int for all)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"class_labels must lie in [0, {num_classes}), got values "
                         f"{labels.min()}..{labels.max()}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _labels_array(x: Any) -> np.ndarray:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return np.asarray(x, dtype=np.int64)
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    return _to_numpy(x, "class_labels")


#: How far outside [-1, 1] an editing image may lie before it is refused: rounding of resampled or
#: 8-bit images (half an 8-bit level is 0.004), not a different value range such as [0, 1] or [0, 255].
IMAGE_MARGIN = 1e-2


class Editor(_Runner):
    """An editing bundle (``cmrt export --task inpaint|colorize|superres|stroke|denoise``):
    image (+ mask) → edited images in [-1, 1].

    Args:
        engine: a bundle folder made by ``cmrt export --task ...``, or a graph/engine file inside one.
        backend: as for ``Decoder``.
        max_batch: as for ``Decoder``.
    """

    kind = "editor"

    @property
    def task(self) -> str:
        """The bundle's task: "inpaint", "colorize", "superres", "stroke" or "denoise"."""
        return self.bundle.manifest.task.name

    @property
    def num_classes(self) -> int | None:
        return self.bundle.manifest.num_classes

    def edit(self, image: Any, *, mask: Any = None, class_labels: Any = None, seed: int | None = None,
             noise: Sequence[Any] | None = None, max_batch: int | None = None):
        """Edit images; returns (B, C, H, W) in [-1, 1] (the model's size).

        Args:
            image: numpy array or torch tensor in [-1, 1]: inpaint and stroke (B, C, H, W); colorize
                the gray luma (B, 1, H, W) or an RGB image (B, 3, H, W), reduced to its luma;
                superres the low-resolution (B, C, H/p, W/p); denoise the noisy (B, C, H, W) image
                (any range).
            mask: inpaint only: (B, 1, H, W) in [0, 1], 1 = generate, 0 = keep.
            class_labels: (B,) ints in [0, num_classes), or one int; drawn from the seed (after the
                noise) when the model is class-conditional and none are given.
            seed: seeds the noise (and labels) with ``torch.Generator().manual_seed(seed)``.
            noise: explicit noise, one (B, C, H, W) standard-normal tensor per step (denoise: none).
            max_batch: the largest batch one backend run gets (None: the runner's); the noise and
                labels are drawn for the whole batch first, so chunks do not change the result.
        """
        max_batch = tiling.check_max_batch(max_batch)
        like = next((x for x in (image, mask, class_labels, *_items(noise)) if _is_torch(x)), None)
        feeds = self.feeds(image, mask=mask, class_labels=class_labels, seed=seed, noise=noise)
        return _return_like(self._run_chunked(feeds, max_batch), like)

    def feeds(self, image: Any, *, mask: Any = None, class_labels: Any = None, seed: int | None = None,
              noise: Sequence[Any] | None = None) -> dict[str, Any]:
        """The checked graph inputs of ``edit`` with the same arguments, noise (and labels) drawn,
        not run: what a server (``cmrt.serve``) merges across requests before one backend run.

        Returns:
            graph input name → array, in the graph's input order.
        """
        from ..editing import EDIT_TASKS

        edit = EDIT_TASKS[self.task]
        m = self.bundle.manifest
        feeds: dict[str, Any] = {"image": self._image(image)}
        batch = int(feeds["image"].shape[0])
        if edit.mask:
            feeds["mask"] = self._mask(mask, batch)
        elif mask is not None:
            raise InputError(f"this bundle's task is {self.task}, which takes no mask: drop mask= (or export "
                             "an inpainting bundle with `cmrt export --task inpaint`)")
        g = self._generator(seed, noise)
        shape = (batch, m.image.channels, m.image.height, m.image.width)
        if edit.noise:
            feeds |= dict(zip(m.noise_names, self._noise(noise, g, shape)))  # noise first, then labels
        elif noise is not None:
            raise InputError("denoise is one evaluation of the model and takes no noise: drop noise=")
        if self.num_classes is not None:
            feeds["class_labels"] = checked_labels(class_labels, batch, self.num_classes, g)
        elif class_labels is not None:
            raise InputError("this model is unconditional: do not pass class_labels")
        return {name: feeds[name] for name in m.input_names}

    def _input_shape(self, name: str) -> tuple:
        spec = next(i for i in self.bundle.manifest.inputs if i.name == name)
        return (None, *(int(d) for d in spec.shape[1:]))

    def _image(self, image: Any):
        """The ``image`` input checked: shape, values in [-1, 1] (denoise: any), RGB → luma for colorize."""
        from ..editing import RGB, luma

        a = as_float32(image, "image")
        if self.task != "denoise":  # a noisy image leaves [-1, 1] by design
            lo, hi = float(a.min()), float(a.max())
            if lo < -1 - IMAGE_MARGIN or hi > 1 + IMAGE_MARGIN:
                raise InputError(f"image values must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}]: map 8-bit images "
                                 "with x / 127.5 - 1 (and [0, 1] images with 2x - 1)")
        if self.task == "colorize" and a.ndim == 4 and a.shape[1] == RGB:
            a = luma(a)
            a = a if _is_torch(a) else np.ascontiguousarray(a, dtype=np.float32)
        expected = self._input_shape("image")
        if a.ndim != 4 or tuple(a.shape[1:]) != expected[1:]:
            raise InputError(f"image must have shape {_fmt(expected)} for this {self._what()} bundle, "
                             f"got shape {tuple(a.shape)}")
        return a

    def _what(self) -> str:
        t = self.bundle.manifest.task
        return f"superres ×{t.factor}" if t.name == "superres" else t.name

    def _mask(self, mask: Any, batch: int):
        if mask is None:
            raise InputError("inpainting needs mask= (B, 1, H, W) in [0, 1]: 1 = generate, 0 = keep")
        a = as_float32(mask, "mask")
        _check_shape(a, "mask", (batch, *self._input_shape("mask")[1:]))
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"mask values must lie in [0, 1] (1 = generate, 0 = keep), got [{lo:.4g}, {hi:.4g}]")
        return a


def _items(noise: Any) -> tuple:
    """The items of a noise list (anything else: none, to be refused by ``_Runner._noise``)."""
    return tuple(noise) if isinstance(noise, (list, tuple)) else ()
