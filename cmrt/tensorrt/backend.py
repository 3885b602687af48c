"""The TensorRT backend: run a bundle's engine (``engine.tensorrt.plan`` or ``engine.tensorrt-rtx.plan``).

Import-cheap: nothing here imports TensorRT, CUDA or torch at module level. Opening the backend
checks, before touching the device, that the engine's library is installed, that a CUDA GPU is
visible, and that the engine was built by this library version for this GPU (from the facts
``cmrt build`` recorded in the manifest, ``targets.compatibility_problem``); any mismatch is
refused with a message to rebuild.

Running (the TensorRT calls sit behind the seam in ``cmrt.tensorrt.seam``): a TensorRT-RTX engine
is checked with ``get_engine_validity`` before it is deserialized, and its context is created from
a runtime config that carries the runtime cache stored beside the engine
(``engine.tensorrt-rtx.cache``, ``cmrt.tensorrt.runtime_cache``: saved after the JIT compile at
open and again at close). Per input shape, device buffers (torch CUDA tensors) are allocated once
and bound (a few shapes are kept), ``execute_async_v3`` runs on the backend's stream, ordered after
the caller's current stream; ``run_torch`` takes and returns CUDA tensors without host copies.
``cuda_graph=True``: TensorRT-RTX captures graphs itself; with TensorRT cmrt captures one per shape
after a warm-up run. The contract is written out in ``docs/precision-and-tensorrt.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle, EngineRecord, RuntimeCache
from ..errors import BundleError, InputError, MissingDependencyError
from . import seam
from .runtime_cache import runtime_cache_blob, save_runtime_cache
from .targets import TARGETS, compatibility_problem, cuda_device, load_library

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


# --- pure checks on recorded facts ------------------------------------------------------
def select_engine(bundle: Bundle, target: str | None = None) -> EngineRecord:
    """The engine record to run: the file the user pointed at, else ``target``'s, else the first
    whose library is installed (TensorRT, then TensorRT-RTX)."""
    engines = bundle.manifest.engines
    if not engines:
        raise BundleError(f"{bundle.path} has no TensorRT engine: build one with `cmrt build {bundle.path}`")
    if bundle.selected is not None and bundle.selected.endswith(".plan"):
        match = [e for e in engines.values() if e.file == bundle.selected]
        if match:
            return match[0]
    if target is not None:
        if target not in engines:
            raise BundleError(f"{bundle.path} has no {target} engine (it has {sorted(engines)}): "
                              f"build one with `cmrt build {bundle.path} --target {target}`")
        return engines[target]
    installed = [n for n in TARGETS if n in engines and importlib.util.find_spec(TARGETS[n].module)]
    candidates = installed or [n for n in TARGETS if n in engines] or list(engines)
    return engines[candidates[0]]


def check_shapes(record: EngineRecord, feeds: dict[str, tuple[int, ...]]) -> None:
    """Refuse input shapes outside the engine's optimization profile, naming the range."""
    profile = record.profiles[0]
    for name, shape in feeds.items():
        if name not in profile:
            continue
        lo, hi = profile[name].min, profile[name].max
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"{name} has shape {tuple(shape)}, outside the engine's profile {tuple(lo)}..{tuple(hi)}: "
                             "rebuild with a wider range (`cmrt build --max-batch/--max-latent ...`) or use "
                             "backend onnxruntime")


def profile_limits(record: EngineRecord) -> dict[str, tuple[int, int] | None]:
    """The batch and latent ranges of an engine's (first) optimization profile, as the runtime's
    ``ShapeLimits`` fields (``batch``, ``latent_min``, ``latent_max``; None: unbounded): what a
    runner chunks batches and tiles latents to. A sampler's profile bounds the batch only."""
    profile = record.profiles[0]
    if "latents" in profile:
        r = profile["latents"]
        return {"batch": (r.min[0], r.max[0]), "latent_min": (r.min[2], r.min[3]), "latent_max": (r.max[2], r.max[3])}
    first = next((profile[n] for n in sorted(profile) if n.startswith("noise_")), None)
    return {"batch": None if first is None else (first.min[0], first.max[0]), "latent_min": None, "latent_max": None}


# --- the backend ------------------------------------------------------------------------
def usable(bundle: Bundle) -> bool:
    """True when the bundle has an engine whose library is installed and which fits this GPU
    (used to pick the default backend; never raises for a missing library or GPU)."""
    return bool(bundle.manifest.engines) and record_usable(select_engine(bundle))


def record_usable(record) -> bool:
    """True when engine ``record``'s library is installed and the engine fits this GPU (a
    bundle's engine or a pipeline stage's; never raises for a missing library or GPU)."""
    module = TARGETS[record.target].module if record.target in TARGETS else None
    if module is None or importlib.util.find_spec(module) is None or importlib.util.find_spec("torch") is None:
        return False
    device = cuda_device()
    if device is None:
        return False
    version = getattr(importlib.import_module(module), "__version__", "")
    return compatibility_problem(record, version, device) is None


class TensorRTBackend:
    """A bundle's TensorRT or TensorRT-RTX engine on one CUDA GPU.

    The GPU is the one current when the backend is opened; the stream, the engine, the context
    and every buffer live on it, and every run happens under it, whatever device is current then.
    Runs are ordered after the caller's current stream and outputs are handed back recorded on it
    (see ``docs/precision-and-tensorrt.md``).

    Args:
        bundle: an opened bundle with an engine (``cmrt build``).
        target: "tensorrt" or "tensorrt-rtx" (None: the selected file, else the installed library's).
        cuda_graph: run with CUDA graphs: TensorRT-RTX captures them itself per shape
            (``WHOLE_GRAPH_CAPTURE``); with TensorRT cmrt captures one per input shape after a
            warm-up run (up to ``MAX_CACHED_SHAPES``) and falls back to plain runs if capture fails.
    """

    precision = "fp16"
    thread_safe = False  # one execution context with bound buffers: runners serialize calls
    #: The runtime's ``ShapeLimits`` of the engine's profile: set by the runtime's backend registry
    #: (``cmrt.runtime.backends``, from ``profile_limits``); None: runners do not chunk or tile for it.
    limits = None
    #: The TensorRT-RTX runtime cache is kept beside the engine (False: a pipeline stage's engine).
    persist_cache = True
    #: The output ``run`` returns (a pipeline stage's first output; ``run_all`` returns every one).
    output = OUTPUT_NAME

    def __init__(self, bundle: Bundle, *, target: str | None = None, cuda_graph: bool = False) -> None:
        self._open(bundle.path, select_engine(bundle, target), bundle.manifest.input_names, [OUTPUT_NAME],
                   cuda_graph=cuda_graph, persist_cache=True)

    @classmethod
    def for_stage(cls, folder: Path, record: EngineRecord, inputs: list[str], outputs: list[str], *,
                  cuda_graph: bool = False) -> "TensorRTBackend":
        """A pipeline bundle stage's engine (``cmrt.tensorrt.stages``): ``inputs``/``outputs``, the
        stage's tensor names, checked against the engine's. Its TensorRT-RTX runtime cache is not
        kept on disk (the JIT compiles at each open): ``pipeline.json`` has no record for it yet."""
        self = cls.__new__(cls)
        self._open(Path(folder), record, inputs, outputs, cuda_graph=cuda_graph, persist_cache=False)
        return self

    def _open(self, folder: Path, record: EngineRecord, inputs: list[str], outputs: list[str], *,
              cuda_graph: bool, persist_cache: bool) -> None:
        self.record, self.persist_cache = record, persist_cache
        self.output = outputs[0]
        target = TARGETS[self.record.target]
        self.trt = load_library(target, f"running the {target.name} engine")
        import torch

        device = cuda_device()
        if device is None:
            raise MissingDependencyError(f"backend tensorrt needs an NVIDIA GPU and a CUDA build of torch; none is "
                                         f"visible: use backend onnxruntime, or `pip install 'cmrt[{target.extra}]'` "
                                         "on a GPU machine")
        problem = compatibility_problem(self.record, self.trt.__version__, device)
        if problem:
            raise BundleError(problem)
        self.name, self.torch, self.cuda_graph = self.record.target, torch, cuda_graph
        self.bundle_path, self.gpu = folder, device
        self.device = torch.device("cuda", torch.cuda.current_device())  # recorded once; every call runs under it
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.engine = self._deserialize(folder / self.record.file)
            self.setup = self._create_context()
        self.context = self.setup.context
        engine_inputs, engine_outputs = seam.engine_io(self.trt, self.engine)
        self.input_names = seam.match_io(engine_inputs, engine_outputs, inputs, self.output, file=self.record.file)
        missing = sorted(set(outputs) - set(engine_outputs))
        if missing:
            raise BundleError(f"{self.record.file} has no output {missing[0]!r}: rebuild it with `cmrt build`")
        self.output_names = engine_outputs
        if record.io == "fp32" and record.graph == "fp32":
            self.precision = "fp32"  # an engine of an FP32 graph (a pipeline's text encoder)
        self.runner = self._runner()
        self.save_runtime_cache()

    def _deserialize(self, path: Path):
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing: rebuild it with `cmrt build`")
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        rebuild = f"rebuild it here with `cmrt build {path.parent} --target {self.record.target}`"
        return seam.deserialize(self.trt, runtime, path.read_bytes(), file=path.name, rebuild=rebuild)

    def _create_context(self) -> seam.ContextSetup:
        rtx = self.record.target == "tensorrt-rtx"
        whole_graph = rtx and self.cuda_graph and hasattr(self.trt, "CudaGraphStrategy")
        blob = runtime_cache_blob(self.bundle_path, self.record) if rtx and self.persist_cache else None
        return seam.create_context(self.trt, self.engine, file=self.record.file, runtime_config=rtx,
                                   whole_graph=whole_graph, cache_blob=blob)

    def _runner(self) -> seam.EngineRunner:
        torch, handle = self.torch, self.stream.cuda_stream
        capture = capturable = None
        if self.cuda_graph and not self.setup.whole_graph:
            capture = seam.torch_capture(torch, self.stream)
            check = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX only
            capturable = None if check is None else (lambda: bool(check(handle)))

        def allocate(name: str, shape: tuple):
            return torch.empty(shape, dtype=self._dtype(name), device=self.device)

        return seam.EngineRunner(self.context, inputs=self.input_names, outputs=self.output_names,
                                 allocate=allocate, stream_handle=handle, capture=capture, capturable=capturable,
                                 name=f"the {self.name} engine {self.record.file}")

    def _dtype(self, name: str):
        return getattr(self.torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name])

    def save_runtime_cache(self) -> RuntimeCache | None:
        """Write the TensorRT-RTX runtime cache beside the engine when it changed (after the JIT
        compile at context creation; call again later to keep kernels compiled for new shapes).

        Returns the new manifest record, or None (no change, not TensorRT-RTX, or not writable: warned).
        """
        if self.setup is None or self.setup.runtime_cache is None or not self.persist_cache:
            return None
        info = save_runtime_cache(self.bundle_path, self.record, self.setup.runtime_cache,
                                  library_version=self.trt.__version__, gpu=self.gpu)
        if info is not None:
            self.record = replace(self.record, runtime_cache=info)
        return info

    @property
    def engine_target(self) -> str:
        """The engine's target (``cmrt check`` records its parity result under it)."""
        return self.record.target

    @property
    def library_version(self) -> str:
        return self.trt.__version__

    def run_torch(self, feeds: dict[str, Any]):
        """Run on torch tensors and return a float32 CUDA tensor on the backend's GPU.

        CUDA inputs must be on the backend's GPU (``InputError`` otherwise); CPU tensors are copied
        up. The run is ordered after the caller's current stream, and the result is ready for it.
        """
        return self.run_all_torch(feeds, [self.output])[self.output]

    def run_all_torch(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, Any]:
        """``run_torch`` for every output (or ``outputs``) by name, float outputs as float32."""
        check_devices(feeds, self.device)
        shapes = {n: tuple(feeds[n].shape) for n in self.input_names}
        check_shapes(self.record, shapes)
        names = self.output_names if outputs is None else outputs

        def work():
            buffers = self.runner.prepare(shapes)
            for name in self.input_names:
                buffers[name].copy_(feeds[name], non_blocking=True)
            self.runner.execute()
            return {n: _float32_copy(self.torch, buffers[n]) for n in names}

        return seam.run_ordered(self.torch, self.device, self.stream, work)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_all(feeds, [self.output])[self.output]

    def run_all(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every output (or ``outputs``) by name, as numpy."""
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        return {k: v.cpu().numpy() for k, v in self.run_all_torch(tensors, outputs).items()}

    def close(self) -> None:
        """Wait for the stream, save the runtime cache, and free the execution context, the engine
        and the cached buffers and graphs (a context goes before its engine), all with the engine's
        GPU current, whatever device the caller has made current. Closing twice does nothing.

        The stream is synchronized first: NvInferRuntime.h (``enqueueV3``) makes releasing memory
        registered for the tensors before the stream is synchronized undefined behaviour, and the
        buffers and the context's memory are freed here. The runtime cache is saved at close, as
        TensorRT-RTX's demo does in ``Engine.deactivate`` (``demo/utils/engine.py``), so kernels
        compiled lazily for shapes seen after open are kept for the next process.
        """
        if self.engine is None:
            return
        with self.torch.cuda.device(self.device):
            try:
                self.stream.synchronize()
                self.save_runtime_cache()
            finally:
                self.runner = self.context = self.setup = None
                self.engine = None


def _float32_copy(torch, buffer):
    """A copy of an output buffer (float ones as float32: one copy either way)."""
    if buffer.dtype.is_floating_point and buffer.dtype != torch.float32:
        return buffer.float()
    return buffer.clone()


def check_devices(feeds: dict[str, Any], device) -> None:
    """Refuse CUDA tensors on another GPU than the backend's, naming both (CPU tensors are fine)."""
    for name, value in feeds.items():
        where = getattr(value, "device", None)  # numpy arrays have a string device
        if getattr(where, "type", None) == "cuda" and where.index != device.index:
            raise InputError(f"{name} is on {where}, but this engine was loaded on {device}: move the inputs "
                             f"there (`.to('{device}')`), or open the backend while {where} is current")


def open_tensorrt(bundle: Bundle) -> TensorRTBackend:
    """The ``BACKENDS["tensorrt"]`` factory."""
    return TensorRTBackend(bundle)
