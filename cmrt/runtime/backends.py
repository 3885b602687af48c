"""Backends: run a bundle's graph or engine on named numpy inputs. Loader/runner split: opening a
backend builds the session once; ``run`` only feeds it."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError, ConfigError
from .limits import ShapeLimits
from .ort import CPU_ARENA, MEM_PATTERN, OnnxRuntimeBackend, session_options  # noqa: F401  (registered here)
from .threads import THREADS_ENV, default_threads  # noqa: F401  (one home, shared with the OpenVINO backend)


class Backend(Protocol):
    """What runners need of a backend. ``thread_safe``: ``run`` may be called from several threads
    at once (else the runner serializes calls); ``limits``: the batch and latent shapes one run
    accepts (an engine's optimization profile), which runners chunk and tile to.

    ``run`` returns the bundle's one output; the stages of a pipeline bundle have several inputs
    and some several outputs, so their backends also have ``run_all``: every output by name
    (float outputs as float32). ONNX Runtime, OpenVINO and TensorRT backends have both."""

    name: str  # e.g. "onnxruntime-cpu"
    precision: str  # "fp32" or "fp16": which tolerances apply
    input_names: list[str]
    thread_safe: bool
    limits: ShapeLimits

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _ort(device: str) -> Callable[[Bundle], Backend]:
    def make(bundle: Bundle) -> Backend:
        graph = bundle.graph_path()
        if bundle.precision_of(graph) == "int8":
            raise ConfigError(f"{graph.name} is an OpenVINO INT8 model, which ONNX Runtime does not read: use "
                              "backend='openvino-int8'")
        return OnnxRuntimeBackend(graph, device=device, precision=bundle.precision_of(graph))
    return make


def engine_limits(record) -> ShapeLimits:
    """The ``ShapeLimits`` of an engine's (first) optimization profile (``cmrt.tensorrt.profile_limits``)."""
    from ..tensorrt import profile_limits

    return ShapeLimits(**profile_limits(record))


def _tensorrt(bundle: Bundle) -> Backend:
    from ..tensorrt import open_tensorrt  # imports no TensorRT until the backend is opened

    backend = open_tensorrt(bundle)
    backend.limits = engine_limits(backend.record)  # what runners chunk batches and tile latents to
    return backend


def _openvino(name: str) -> Callable[[Bundle], Backend]:
    def make(bundle: Bundle) -> Backend:
        from .openvino import open_openvino  # imports no OpenVINO until the backend is opened

        return open_openvino(bundle, name)
    return make


#: Backend name → factory(bundle). Other backends (TensorRT) register here.
BACKENDS: dict[str, Callable[[Bundle], Backend]] = {
    "onnxruntime": _ort("auto"),
    "onnxruntime-cpu": _ort("cpu"),
    "onnxruntime-cuda": _ort("cuda"),
    "tensorrt": _tensorrt,
    "openvino": _openvino("openvino"),
    "openvino-bf16": _openvino("openvino-bf16"),
    "openvino-f32": _openvino("openvino-f32"),
    "openvino-int8": _openvino("openvino-int8"),  # the default only where it holds BF16's tier (openvino.int8_default)
}


def default_backend_name(bundle: Bundle) -> str:
    """TensorRT when the user pointed at an engine, or when the bundle's engine can run here
    (library installed, GPU it was built for); else, on a CPU with native BF16, the fastest CPU
    backend whose recorded parity passed on a CPU of its class and that was timed faster there
    (``openvino.default_choice``: the INT8 model where it holds BF16's tier and beat BF16, else
    OpenVINO BF16 where it beat ONNX Runtime FP32); else ONNX Runtime. Pointed at the INT8 model:
    its only backend."""
    if bundle.selected is not None and bundle.selected.endswith(".plan"):
        return "tensorrt"
    int8 = bundle.manifest.graphs.get("int8")
    if int8 is not None and bundle.selected == int8.file:  # pointed at the INT8 model: its only backend
        return "openvino-int8"
    if bundle.selected is None and bundle.manifest.engines:
        from ..tensorrt import usable

        if usable(bundle):  # an engine, its library and a GPU it was built for are all here
            return "tensorrt"
    from .openvino import default_choice

    return default_choice(bundle) or "onnxruntime"


def open_backend(bundle: Bundle, name: "str | Backend | None" = None) -> Backend:
    """Open the named backend (None: the default) on a bundle, or take an already opened one
    (e.g. an ``OnnxRuntimeBackend`` with other session settings), and check it against the manifest."""
    if name is not None and not isinstance(name, str):
        backend = name
    else:
        name = name or default_backend_name(bundle)
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
        backend = BACKENDS[name](bundle)
    expected = bundle.manifest.input_names
    if sorted(backend.input_names) != sorted(expected):
        backend.close()
        raise BundleError(f"{bundle.path}: the graph's inputs {backend.input_names} do not match the "
                          f"manifest's {expected}: the bundle was modified; re-export it")
    return backend
