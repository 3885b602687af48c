"""The TensorRT backend: run a bundle's engine (``engine.tensorrt.plan`` or ``engine.tensorrt-rtx.plan``).

Import-cheap: nothing here imports TensorRT, CUDA or torch at module level. Opening the backend
checks, before touching the device, that the engine's library is installed, that a CUDA GPU is
visible, and that the engine was built by this library version for this GPU (from the facts
``cmrt build`` recorded in the manifest); any mismatch is refused with a message to rebuild.

Running: input shapes are set and device buffers (torch CUDA tensors) allocated once per shape,
tensor addresses bound, ``execute_async_v3`` launched on a stream; ``run_torch`` takes and returns
CUDA tensors without host copies; ``cuda_graph=True`` captures one CUDA graph per shape after a
warm-up run and replays it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle
from ..errors import BundleError, MissingDependencyError, require

#: Engine targets in the order a bundle's engines are tried (module, pip extra).
ENGINE_TARGETS = {"tensorrt": ("tensorrt", "trt"), "tensorrt-rtx": ("tensorrt_rtx", "trt-rtx")}
#: Compute capabilities TensorRT for RTX runs on (no Hopper).
RTX_SUPPORTED = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


# --- pure checks on recorded facts ------------------------------------------------------
def select_engine(bundle: Bundle, target: str | None = None) -> dict:
    """The engine record to run: the file the user pointed at, else ``target``'s, else the first
    whose library is installed (TensorRT, then TensorRT-RTX)."""
    engines = bundle.manifest.engines
    if not engines:
        raise BundleError(f"{bundle.path} has no TensorRT engine: build one with `cmrt build {bundle.path}`")
    if bundle.selected is not None and bundle.selected.endswith(".plan"):
        match = [e for e in engines.values() if e["file"] == bundle.selected]
        if match:
            return match[0]
    if target is not None:
        if target not in engines:
            raise BundleError(f"{bundle.path} has no {target} engine (it has {sorted(engines)}): "
                              f"build one with `cmrt build {bundle.path} --target {target}`")
        return engines[target]
    installed = [n for n in ENGINE_TARGETS if n in engines and importlib.util.find_spec(ENGINE_TARGETS[n][0])]
    candidates = installed or [n for n in ENGINE_TARGETS if n in engines] or list(engines)
    return engines[candidates[0]]


def compatibility_problem(record: dict, library_version: str, device: dict) -> str | None:
    """Why an engine cannot run here, or None. ``device``: {"name", "compute_capability"}.

    Engines load only on the library build and the GPU they were built for (TensorRT: the build
    GPU's compute capability; TensorRT-RTX: the capabilities asked at build time, or its portable
    set on a supported GPU).
    """
    target, built = record["target"], record["library_version"]
    rebuild = f"rebuild it here with `cmrt build BUNDLE --target {target}`"
    if built != library_version:
        return (f"the {target} engine {record['file']} was built with {record['library']} {built}, but "
                f"{library_version} is installed: {rebuild} (or install {record['library']}=={built})")
    cc = device["compute_capability"]
    ccs = record.get("compute_capabilities")
    if target == "tensorrt-rtx":
        if cc not in RTX_SUPPORTED:
            return (f"TensorRT for RTX does not run on {device['name']} (compute capability {cc}; it supports "
                    f"{', '.join(RTX_SUPPORTED)}, not Hopper): build with --target tensorrt instead")
        wanted = [_cc_from_enum(c) for c in ccs] if isinstance(ccs, list) else None
        if wanted is not None and cc not in wanted:
            return (f"the engine was built for compute capabilities {wanted}, this GPU ({device['name']}) is "
                    f"{cc}: rebuild with `cmrt build BUNDLE --target tensorrt-rtx --compute-capability {cc}`")
        return None
    if isinstance(ccs, list) and cc not in ccs:
        gpu = (record.get("gpu") or {}).get("name", "another GPU")
        return (f"the engine was built on {gpu} (compute capability {ccs[0]}), this GPU is {device['name']} "
                f"({cc}): {rebuild}")
    return None


def _cc_from_enum(name: str) -> str:
    digits = name.upper().removeprefix("SM")
    return f"{digits[:-1]}.{digits[-1]}"


def check_shapes(record: dict, feeds: dict[str, tuple[int, ...]]) -> None:
    """Refuse input shapes outside the engine's optimization profile, naming the range."""
    from ..errors import InputError

    profile = record["profiles"][0]
    for name, shape in feeds.items():
        if name not in profile:
            continue
        lo, hi = profile[name]["min"], profile[name]["max"]
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"{name} has shape {tuple(shape)}, outside the engine's profile {tuple(lo)}..{tuple(hi)}: "
                             "rebuild with a wider range (`cmrt build --max-batch/--max-latent ...`) or use "
                             "backend onnxruntime")


# --- the backend ------------------------------------------------------------------------
def _device() -> dict | None:
    from ..exporter.tensorrt import cuda_device

    return cuda_device()


def usable(bundle: Bundle) -> bool:
    """True when the bundle has an engine whose library is installed and which fits this GPU
    (used to pick the default backend; never raises for a missing library or GPU)."""
    if not bundle.manifest.engines:
        return False
    record = select_engine(bundle)
    module = ENGINE_TARGETS.get(record["target"], (None,))[0]
    if module is None or importlib.util.find_spec(module) is None or importlib.util.find_spec("torch") is None:
        return False
    device = _device()
    if device is None:
        return False
    version = getattr(importlib.import_module(module), "__version__", "")
    return compatibility_problem(record, version, device) is None


class TensorRTBackend:
    """A bundle's TensorRT or TensorRT-RTX engine on the current CUDA GPU.

    Args:
        bundle: an opened bundle with an engine (``cmrt build``).
        target: "tensorrt" or "tensorrt-rtx" (None: the selected file, else the installed library's).
        cuda_graph: capture and replay a CUDA graph per input shape.
    """

    precision = "fp16"

    def __init__(self, bundle: Bundle, *, target: str | None = None, cuda_graph: bool = False) -> None:
        self.record = select_engine(bundle, target)
        module, extra = ENGINE_TARGETS[self.record["target"]]
        self.trt = require(module, extra, f"running the {self.record['target']} engine")
        import torch

        device = _device()
        if device is None:
            raise MissingDependencyError(f"backend tensorrt needs an NVIDIA GPU and a CUDA build of torch; none is "
                                         f"visible: use backend onnxruntime, or `pip install 'cmrt[{extra}]'` "
                                         "on a GPU machine")
        problem = compatibility_problem(self.record, self.trt.__version__, device)
        if problem:
            raise BundleError(problem)
        self.name, self.torch, self.cuda_graph = self.record["target"], torch, cuda_graph
        self.engine = self._deserialize(bundle.path / self.record["file"])
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names]
        self.input_names = [n for n, i in zip(names, is_input) if i]
        self.output_names = [n for n, i in zip(names, is_input) if not i]
        self._shape: tuple | None = None
        self._buffers: dict[str, Any] = {}
        self._graph = None

    def _deserialize(self, path: Path):
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing: rebuild it with `cmrt build`")
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BundleError(f"{path} could not be loaded by {self.record['library']} {self.trt.__version__}: "
                              f"rebuild it here with `cmrt build {path.parent} --target {self.record['target']}`")
        return engine

    def _dtype(self, name: str):
        return getattr(self.torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name])

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes, allocate every buffer once for them, and bind the addresses."""
        torch = self.torch
        check_shapes(self.record, shapes)
        for name, shape in shapes.items():
            self.context.set_input_shape(name, shape)
            self._buffers[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            self._buffers[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
        for name, buf in self._buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._shape, self._graph = tuple(shapes.values()), None

    def _launch(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BundleError(f"{self.name} failed to run the engine (see the TensorRT log)")

    def _execute(self) -> None:
        if not self.cuda_graph:
            self._launch()
            return
        if self._graph is None:
            self._launch()  # warm-up: TensorRT allocates lazily on the first run
            self.stream.synchronize()
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                self._launch()
            self._graph = graph
        self._graph.replay()

    def run_torch(self, feeds: dict[str, Any]):
        """Run on torch tensors (CUDA tensors stay on the device); returns a float32 CUDA tensor."""
        torch = self.torch
        shapes = {n: tuple(feeds[n].shape) for n in self.input_names}
        if self._shape != tuple(shapes.values()):
            self._bind(shapes)
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                self._buffers[name].copy_(feeds[name], non_blocking=True)
            self._execute()
            out = self._buffers[OUTPUT_NAME].float().clone()
        self.stream.synchronize()
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in feeds.items()}
        return self.run_torch(tensors).cpu().numpy()


def open_tensorrt(bundle: Bundle) -> TensorRTBackend:
    """The ``BACKENDS["tensorrt"]`` factory."""
    return TensorRTBackend(bundle)
