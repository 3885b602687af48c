"""``Runner``: the base of the runners (``Sampler``, ``Decoder``, ``Editor``): a bundle opened on a
backend, its lifecycle (``close``, the context manager, a closed runner's errors), batches run in
chunks of at most ``max_batch``, and calls from several threads made safe."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError, RunnerClosedError
from .backends import Backend, open_backend
from .inputs import call_generator, check_max_batch, host, is_device_tensor, is_torch, step_noise
from .limits import ShapeLimits, chunk_size, chunks

#: Bundle kind → the runner class that opens it (named in the error for a bundle of another kind).
RUNNER_CLASSES = {"sampler": "Sampler", "decoder": "Decoder", "editor": "Editor"}


class Runner:
    """A bundle opened on a backend. The lifecycle: construction opens the backend (session or
    engine), ``close()`` frees it (also on leaving a ``with`` block); a closed runner refuses calls.
    Calls from several threads are safe: they run concurrently where the backend allows it and
    one at a time otherwise.

    A subclass sets ``kind`` (the bundle kind it opens) and builds its feeds with ``_noise`` and
    ``_generator``; ``_run_chunked`` runs them.
    """

    kind = ""

    def __init__(self, engine: str | Path | Bundle, *, backend: str | Backend | None = None,
                 max_batch: int | None = None) -> None:
        self.max_batch = check_max_batch(max_batch)
        self.bundle = Bundle.open(engine)
        m = self.bundle.manifest
        if m.kind != self.kind:
            raise BundleError(f"{self.bundle.path} holds {'an' if m.kind[:1] in 'aeiou' else 'a'} {m.kind} bundle: open it with "
                              f"cmrt.{RUNNER_CLASSES.get(m.kind, m.kind)}")
        self._backend: Backend | None = open_backend(self.bundle, backend)
        self._lock = threading.Lock()
        self.steps = m.steps

    # --- lifecycle ----------------------------------------------------------------------------
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

    # --- inputs -------------------------------------------------------------------------------
    def _noise(self, noise: Sequence[Any] | None, g, shape: tuple) -> list[np.ndarray]:
        """Every step's noise of ``shape``: drawn from ``g``, or the user's ``noise`` checked."""
        return step_noise(noise, self.steps, g, shape)

    @staticmethod
    def _generator(seed: int | None, noise: Sequence[Any] | None):
        return call_generator(seed, noise)

    # --- running ------------------------------------------------------------------------------
    def _batch_parts(self, batch: int, max_batch: int | None) -> list[slice]:
        """The chunks of a batch: at most the smallest of ``max_batch``, the runner's
        ``max_batch`` and the backend's largest batch each."""
        return chunks(batch, chunk_size(max_batch, self.max_batch, limits=self.limits))

    def _run_chunked(self, feeds: dict[str, Any], max_batch: int | None, backend: Backend | None = None):
        """Run the batch in chunks (``_batch_parts``) and join the results: every input is
        already drawn for the whole batch, so the result equals one call's. ``backend``: another
        backend of this runner (default: its own)."""
        parts = self._batch_parts(next(iter(feeds.values())).shape[0], max_batch)
        if len(parts) == 1:
            return self._run(feeds, backend)
        outs = [self._run({k: v[part] for k, v in feeds.items()}, backend) for part in parts]
        if is_torch(outs[0]):
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
        on_device = [v for v in feeds.values() if is_device_tensor(v)]
        if on_device and hasattr(backend, "run_torch"):
            import torch

            dev = on_device[0].device
            return backend.run_torch({k: torch.as_tensor(v, device=dev) for k, v in feeds.items()})
        return backend.run({k: host(v) for k, v in feeds.items()})
