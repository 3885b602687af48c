"""ONNX Runtime, one room: a graph opened as a session with cmrt's latency options, run on named
numpy inputs. ``cmrt.runtime.backends`` registers it (``onnxruntime``, ``-cpu``, ``-cuda``); the
OpenVINO backend's checks time against it (``cmrt.runtime.openvino``), so it lives apart from that
registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import OUTPUT_NAME
from ..errors import BundleError, MissingDependencyError, RunnerClosedError, require
from .inputs import as_float32_output
from .limits import ShapeLimits
from .threads import default_threads


#: ONNX Runtime's CPU memory arena on, memory patterns off: measured with ``benchmarks/memory.py``
#: (``benchmarks/RESULTS.md``, "Memory": "Peak memory against resolution"), the lowest peak RSS of
#: the four settings for tiled decodes and equal to the best untiled up to 512², at no measurable
#: cost in time (paired rounds at 256²).
CPU_ARENA = True
MEM_PATTERN = False
def session_options(threads: int | None = None, *, cpu_arena: bool = CPU_ARENA, mem_pattern: bool = MEM_PATTERN):
    """ONNX Runtime options for latency: all graph optimizations, sequential execution, spinning
    intra-op threads (``threads``, else ``default_threads()``: one per physical core unless
    ``$CMRT_THREADS``) that stop spinning when a run ends; the CPU arena and memory patterns as
    measured for peak memory (``CPU_ARENA``, ``MEM_PATTERN``).

    Stopping the spin matters whenever anything else computes between runs: a second cmrt object,
    PyTorch (the UNet of a Stable Diffusion pipeline before ``decode``): with ONNX Runtime's default,
    idle workers keep spinning and slowed such neighbours 2.5× here (``benchmarks/interleaved.py``).
    """
    ort = require("onnxruntime", "onnxruntime", "running a graph")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or default_threads()
    so.enable_mem_pattern = mem_pattern
    so.enable_cpu_mem_arena = cpu_arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 4  # fatal only: load failures become one-line BundleErrors, not a log dump
    return so


class OnnxRuntimeBackend:
    """A graph on ONNX Runtime. ``device``: "cpu", "cuda", or "auto" (CUDA when its provider is
    present); ``output``: the graph output ``run`` returns (default ``images``).

    ``InferenceSession.run`` is thread-safe, so one backend serves concurrent calls.
    """

    thread_safe = True
    limits = ShapeLimits()  # the graph's batch and latent axes are dynamic

    def __init__(self, graph: str | Path, *, device: str = "auto", threads: int | None = None,
                 precision: str = "fp32", cpu_arena: bool = CPU_ARENA, mem_pattern: bool = MEM_PATTERN,
                 output: str = OUTPUT_NAME) -> None:
        ort = require("onnxruntime", "onnxruntime", "running a graph")
        available = ort.get_available_providers()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise MissingDependencyError("backend onnxruntime-cuda needs onnxruntime-gpu and a CUDA GPU: "
                                         "`pip install onnxruntime-gpu`, or use backend onnxruntime-cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            options = session_options(threads, cpu_arena=cpu_arena, mem_pattern=mem_pattern)
            self.session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (non-standard) exception types
            raise BundleError(f"{graph} could not be loaded by ONNX Runtime ({str(exc).splitlines()[0]}): "
                              "re-export the bundle") from None
        self.name, self.precision, self.graph = f"onnxruntime-{device}", precision, Path(graph)
        self.device, self.output, self.threads = device, output, threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self.session
        if session is None:
            raise RunnerClosedError(f"the ONNX Runtime session of {self.graph} was closed")
        feeds = {k: _as_graph_dtype(v, self._input_types.get(k)) for k, v in feeds.items()}
        return np.asarray(session.run([self.output], feeds)[0], dtype=np.float32)

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph by name (float outputs as float32)."""
        session = self.session
        if session is None:
            raise RunnerClosedError(f"the ONNX Runtime session of {self.graph} was closed")
        feeds = {k: _as_graph_dtype(v, self._input_types.get(k)) for k, v in feeds.items()}
        return {name: as_float32_output(v) for name, v in zip(self.output_names, session.run(None, feeds))}

    def open_like(self, graph: str | Path, *, output: str = OUTPUT_NAME) -> "OnnxRuntimeBackend":
        """Another FP32 graph on this backend's device and threads (a bundle's shared-statistics
        graphs, ``cmrt.runtime.tiled.graphs``)."""
        return OnnxRuntimeBackend(graph, device=self.device, threads=self.threads, output=output)

    def close(self) -> None:
        """Free the session (its weights and arenas)."""
        self.session = None


def _as_graph_dtype(value: np.ndarray, ort_type: str | None) -> np.ndarray:
    """Float feeds in the graph's float type (an FP16-I/O graph takes float16)."""
    if ort_type == "tensor(float16)" and value.dtype == np.float32:
        return value.astype(np.float16)
    return value


__all__ = ["OnnxRuntimeBackend", "session_options", "CPU_ARENA", "MEM_PATTERN"]
