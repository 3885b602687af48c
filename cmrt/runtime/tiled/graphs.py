"""The bundle's shared-statistics graphs (``cmrt export --tile-stats``) as a decode uses them: the
statistics, shared and shared-means graphs, on the runner's own backend (``Backend.open_like``:
ONNX Runtime on its device and threads, OpenVINO in its precision), and the shared graph cut at
its norms for ``norm="canvas"`` (``layer_sync.LayerSyncGraphs``: on ONNX Runtime, where OpenVINO
keeps them, ``OpenVinoBackend.segments_on_onnxruntime``); each opened on first use, all closed with
the runner."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from ...bundle import Bundle, NormStatsRecord
from ..backends import Backend, OnnxRuntimeBackend

if TYPE_CHECKING:
    from .layer_sync import LayerSyncGraphs


class NormGraphs:
    """A decoder bundle's shared-statistics graphs, opened on use.

    Attributes:
        backends: graph name ("statistics", "shared", "shared-means") → its opened backend.
        layer_sync: the segments of the shared graph, once a ``norm="canvas"`` decode opened them.
    """

    def __init__(self, bundle: Bundle, main: Callable[[], Backend]) -> None:
        """``main``: the runner's own backend (raising ``RunnerClosedError`` once it is closed)."""
        self.bundle, self.main = bundle, main
        self.backends: dict[str, Backend] = {}
        self.layer_sync: LayerSyncGraphs | None = None
        self._lock = threading.Lock()

    @property
    def record(self) -> NormStatsRecord | None:
        return self.bundle.manifest.norm_stats

    def usable(self) -> bool:
        """Whether the runner's backend can run these FP32 graphs: ONNX Runtime on an FP32 graph,
        or OpenVINO (which reads FP32 graphs and computes in its own precision); not TensorRT nor an
        FP16 graph (there are no FP16 shared-statistics graphs)."""
        backend = self.main()
        if isinstance(backend, OnnxRuntimeBackend):
            return backend.precision == "fp32"
        return callable(getattr(backend, "open_like", None))

    def backend(self, graph: str) -> Backend:
        """``graph`` ("statistics", "shared" or "shared-means") on the runner's own backend
        (``open_like``), opened on first use."""
        with self._lock:
            if graph not in self.backends:
                record, main = self.record, self.main()
                output = {"output": record.tensor} if graph == "statistics" else {}
                self.backends[graph] = main.open_like(self.bundle.path / record.graphs()[graph].file, **output)
            return self.backends[graph]

    def segments(self) -> "LayerSyncGraphs":
        """The shared graph cut at its norms, one session per segment, opened on first use: on ONNX
        Runtime (the runner's device and threads, one shared arena), also for a backend that keeps
        them there (``segments_on_onnxruntime``: OpenVINO, where they measured slower), else on the
        runner's backend (``open_like``)."""
        with self._lock:
            if self.layer_sync is None:
                from .layer_sync import LayerSyncGraphs

                main = self.main()
                on_ort = isinstance(main, OnnxRuntimeBackend) or getattr(main, "segments_on_onnxruntime", False)
                opener = None if on_ort else main.open_like
                self.layer_sync = LayerSyncGraphs.open(self.bundle.path / self.record.shared_graph.file, main.graph,
                                                       upscale=self.bundle.manifest.latent.upscale,
                                                       device=main.device, threads=main.threads, open_like=opener)
            return self.layer_sync

    def close(self) -> None:
        """Free every opened graph's session. Idempotent."""
        with self._lock:
            opened, self.backends = self.backends, {}
            synced, self.layer_sync = self.layer_sync, None
        for b in opened.values():
            b.close()
        if synced is not None:
            synced.close()
