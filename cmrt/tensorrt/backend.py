"""The TensorRT backend: run a bundle's engine (``engine.tensorrt.plan`` or ``engine.tensorrt-rtx.plan``).

Import-cheap: nothing here imports TensorRT, CUDA or torch at module level. Opening the backend
checks, before touching the device, that the engine's library is installed, that a CUDA GPU is
visible, and that the engine was built by this library version for this GPU (from the facts
``cmrt build`` recorded in the manifest); any mismatch is refused with a message to rebuild.

Running (the TensorRT calls sit behind the seam in ``cmrt.runtime._trt``): a TensorRT-RTX engine
is checked with ``get_engine_validity`` before it is deserialized, and its context is created from
a runtime config that carries the runtime cache stored beside the engine
(``engine.tensorrt-rtx.cache``, written back after the JIT compile). Per input shape, device
buffers (torch CUDA tensors) are allocated once and bound (a few shapes are kept),
``execute_async_v3`` runs on the backend's stream, ordered after the caller's current stream;
``run_torch`` takes and returns CUDA tensors without host copies. ``cuda_graph=True``: TensorRT-RTX
captures graphs itself; with TensorRT cmrt captures one per shape after a warm-up run. The
contract is written out in ``docs/tensorrt.md``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_bytes_atomic
from dataclasses import replace

from ..bundle import OUTPUT_NAME, Bundle, EngineRecord, Gpu, RuntimeCache
from ..errors import BundleError, MissingDependencyError, require
from . import _trt
from .tiling import ShapeLimits

#: Engine targets in the order a bundle's engines are tried (module, pip extra).
ENGINE_TARGETS = {"tensorrt": ("tensorrt", "trt"), "tensorrt-rtx": ("tensorrt_rtx", "trt-rtx")}
#: Compute capabilities TensorRT for RTX runs on (no Hopper).
RTX_SUPPORTED = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
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
    installed = [n for n in ENGINE_TARGETS if n in engines and importlib.util.find_spec(ENGINE_TARGETS[n][0])]
    candidates = installed or [n for n in ENGINE_TARGETS if n in engines] or list(engines)
    return engines[candidates[0]]


def compatibility_problem(record: EngineRecord, library_version: str, device: dict) -> str | None:
    """Why an engine cannot run here, or None. ``device``: {"name", "compute_capability"}.

    Engines load only on the library build and the GPU they were built for (TensorRT: the build
    GPU's compute capability; TensorRT-RTX: the capabilities asked at build time, or its portable
    set on a supported GPU).
    """
    target, built = record.target, record.library_version
    rebuild = f"rebuild it here with `cmrt build BUNDLE --target {target}`"
    if built != library_version:
        return (f"the {target} engine {record.file} was built with {record.library} {built}, but "
                f"{library_version} is installed: {rebuild} (or install {record.library}=={built})")
    cc = device["compute_capability"]
    ccs = record.compute_capabilities
    if target == "tensorrt-rtx":
        if cc not in RTX_SUPPORTED:
            return (f"TensorRT for RTX does not run on {device['name']} (compute capability {cc}; it supports "
                    f"{', '.join(RTX_SUPPORTED)}, not Hopper): build with --target tensorrt instead")
        wanted = [_cc_from_enum(c) for c in ccs] if isinstance(ccs, tuple) else None
        if wanted is not None and cc not in wanted:
            return (f"the engine was built for compute capabilities {wanted}, this GPU ({device['name']}) is "
                    f"{cc}: rebuild with `cmrt build BUNDLE --target tensorrt-rtx --compute-capability {cc}`")
        return None
    if isinstance(ccs, tuple) and cc not in ccs:
        gpu = record.gpu.name if record.gpu else "another GPU"
        return (f"the engine was built on {gpu} (compute capability {ccs[0]}), this GPU is {device['name']} "
                f"({cc}): {rebuild}")
    return None


def _cc_from_enum(name: str) -> str:
    digits = name.upper().removeprefix("SM")
    return f"{digits[:-1]}.{digits[-1]}"


def check_shapes(record: EngineRecord, feeds: dict[str, tuple[int, ...]]) -> None:
    """Refuse input shapes outside the engine's optimization profile, naming the range."""
    from ..errors import InputError

    profile = record.profiles[0]
    for name, shape in feeds.items():
        if name not in profile:
            continue
        lo, hi = profile[name].min, profile[name].max
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"{name} has shape {tuple(shape)}, outside the engine's profile {tuple(lo)}..{tuple(hi)}: "
                             "rebuild with a wider range (`cmrt build --max-batch/--max-latent ...`) or use "
                             "backend onnxruntime")


def engine_limits(record: EngineRecord) -> ShapeLimits:
    """The batch and latent ranges of an engine's (first) optimization profile: what a runner
    chunks batches and tiles latents to. A sampler's profile bounds the batch only."""
    profile = record.profiles[0]
    if "latents" in profile:
        r = profile["latents"]
        return ShapeLimits(batch=(r.min[0], r.max[0]), latent_min=(r.min[2], r.min[3]), latent_max=(r.max[2], r.max[3]))
    first = next((profile[n] for n in sorted(profile) if n.startswith("noise_")), None)
    return ShapeLimits() if first is None else ShapeLimits(batch=(first.min[0], first.max[0]))


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
    module = ENGINE_TARGETS.get(record.target, (None,))[0]
    if module is None or importlib.util.find_spec(module) is None or importlib.util.find_spec("torch") is None:
        return False
    device = _device()
    if device is None:
        return False
    version = getattr(importlib.import_module(module), "__version__", "")
    return compatibility_problem(record, version, device) is None


class TensorRTBackend:
    """A bundle's TensorRT or TensorRT-RTX engine on one CUDA GPU.

    The GPU is the one current when the backend is opened; the stream, the engine, the context
    and every buffer live on it, and every run happens under it, whatever device is current then.
    Runs are ordered after the caller's current stream and outputs are handed back recorded on it
    (see ``docs/tensorrt.md``).

    Args:
        bundle: an opened bundle with an engine (``cmrt build``).
        target: "tensorrt" or "tensorrt-rtx" (None: the selected file, else the installed library's).
        cuda_graph: run with CUDA graphs: TensorRT-RTX captures them itself per shape
            (``WHOLE_GRAPH_CAPTURE``); with TensorRT cmrt captures one per input shape after a
            warm-up run (up to ``MAX_CACHED_SHAPES``) and falls back to plain runs if capture fails.
    """

    precision = "fp16"
    thread_safe = False  # one execution context with bound buffers: runners serialize calls

    def __init__(self, bundle: Bundle, *, target: str | None = None, cuda_graph: bool = False) -> None:
        self.record = select_engine(bundle, target)
        module, extra = ENGINE_TARGETS[self.record.target]
        self.trt = require(module, extra, f"running the {self.record.target} engine")
        import torch

        device = _device()
        if device is None:
            raise MissingDependencyError(f"backend tensorrt needs an NVIDIA GPU and a CUDA build of torch; none is "
                                         f"visible: use backend onnxruntime, or `pip install 'cmrt[{extra}]'` "
                                         "on a GPU machine")
        problem = compatibility_problem(self.record, self.trt.__version__, device)
        if problem:
            raise BundleError(problem)
        self.name, self.torch, self.cuda_graph = self.record.target, torch, cuda_graph
        self.bundle_path, self.gpu = bundle.path, device
        self.device = torch.device("cuda", torch.cuda.current_device())  # recorded once; every call runs under it
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.engine = self._deserialize(bundle.path / self.record.file)
            self.setup = self._create_context()
        self.context = self.setup.context
        inputs, outputs = _trt.engine_io(self.trt, self.engine)
        self.input_names = _trt.match_io(inputs, outputs, bundle.manifest.input_names, OUTPUT_NAME,
                                         file=self.record.file)
        self.output_names = outputs
        self.limits = engine_limits(self.record)
        self.runner = self._runner()
        self.save_runtime_cache()

    def _deserialize(self, path: Path):
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing: rebuild it with `cmrt build`")
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        rebuild = f"rebuild it here with `cmrt build {path.parent} --target {self.record.target}`"
        return _trt.deserialize(self.trt, runtime, path.read_bytes(), file=path.name, rebuild=rebuild)

    def _create_context(self) -> _trt.ContextSetup:
        rtx = self.record.target == "tensorrt-rtx"
        whole_graph = rtx and self.cuda_graph and hasattr(self.trt, "CudaGraphStrategy")
        blob = runtime_cache_blob(self.bundle_path, self.record) if rtx else None
        return _trt.create_context(self.trt, self.engine, file=self.record.file, runtime_config=rtx,
                                   whole_graph=whole_graph, cache_blob=blob)

    def _runner(self) -> _trt.EngineRunner:
        torch, handle = self.torch, self.stream.cuda_stream
        capture = capturable = None
        if self.cuda_graph and not self.setup.whole_graph:
            capture = _trt.torch_capture(torch, self.stream)
            check = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX only
            capturable = None if check is None else (lambda: bool(check(handle)))

        def allocate(name: str, shape: tuple):
            return torch.empty(shape, dtype=self._dtype(name), device=self.device)

        return _trt.EngineRunner(self.context, inputs=self.input_names, outputs=self.output_names,
                                 allocate=allocate, stream_handle=handle, capture=capture, capturable=capturable,
                                 name=f"the {self.name} engine {self.record.file}")

    def _dtype(self, name: str):
        return getattr(self.torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name])

    def save_runtime_cache(self) -> RuntimeCache | None:
        """Write the TensorRT-RTX runtime cache beside the engine when it changed (after the JIT
        compile at context creation; call again later to keep kernels compiled for new shapes).

        Returns the new manifest record, or None (no change, not TensorRT-RTX, or not writable: warned).
        """
        if self.setup.runtime_cache is None:
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
        check_devices(feeds, self.device)
        shapes = {n: tuple(feeds[n].shape) for n in self.input_names}
        check_shapes(self.record, shapes)

        def work():
            buffers = self.runner.prepare(shapes)
            for name in self.input_names:
                buffers[name].copy_(feeds[name], non_blocking=True)
            self.runner.execute()
            out = buffers[OUTPUT_NAME]
            return out.clone() if out.dtype == self.torch.float32 else out.float()  # one copy either way

        return _trt.run_ordered(self.torch, self.device, self.stream, work)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        return self.run_torch(tensors).cpu().numpy()

    def close(self) -> None:
        """Free the execution context, the engine and the cached buffers and graphs (in that order:
        a context must go before its engine)."""
        self.runner = self.context = self.setup = None
        self.engine = None


def check_devices(feeds: dict[str, Any], device) -> None:
    """Refuse CUDA tensors on another GPU than the backend's, naming both (CPU tensors are fine)."""
    from ..errors import InputError

    for name, value in feeds.items():
        where = getattr(value, "device", None)  # numpy arrays have a string device
        if getattr(where, "type", None) == "cuda" and where.index != device.index:
            raise InputError(f"{name} is on {where}, but this engine was loaded on {device}: move the inputs "
                             f"there (`.to('{device}')`), or open the backend while {where} is current")


# --- the TensorRT-RTX runtime cache beside the engine ------------------------------------
def runtime_cache_blob(bundle_path: Path, record: EngineRecord) -> bytes | None:
    """The stored runtime cache for this engine, or None (none yet, or its SHA-256 does not match
    the manifest's: warned, and rebuilt by the JIT)."""
    info = record.runtime_cache
    path = bundle_path / (info.file if info else _trt.RUNTIME_CACHE_FILE)
    if not path.is_file():
        return None
    blob = path.read_bytes()
    if info is not None and info.sha256 and hashlib.sha256(blob).hexdigest() != info.sha256:
        warnings.warn(f"{path} does not match the SHA-256 recorded in the manifest: not used (it is rebuilt)",
                      stacklevel=3)
        return None
    return blob


def save_runtime_cache(bundle_path: Path, record: EngineRecord, cache, *, library_version: str,
                       gpu: dict) -> RuntimeCache | None:
    """Serialize ``cache`` and, when it differs from the file beside the engine, write it
    atomically and record it in the manifest's engine record under ``runtime_cache``.

    A bundle that cannot be written (read-only install) is warned about, not fatal: the next
    process then compiles the kernels again. Returns the new record, or None.
    """
    data = _trt.serialize_runtime_cache(cache, file=record.file)
    if data is None:
        return None
    name = record.runtime_cache.file if record.runtime_cache else _trt.RUNTIME_CACHE_FILE
    digest = hashlib.sha256(memoryview(data)).hexdigest()
    if record.runtime_cache and record.runtime_cache.sha256 == digest and (bundle_path / name).is_file():
        return None
    try:
        path = write_bytes_atomic(bundle_path / name, data)
        info = RuntimeCache(name, digest, path.stat().st_size, library_version, Gpu(**gpu))
        _record_runtime_cache(bundle_path, record.target, info)
    except OSError as exc:
        warnings.warn(f"could not save the TensorRT-RTX runtime cache in {bundle_path} ({exc}): each process "
                      "will JIT-compile the engine again", stacklevel=3)
        return None
    return info


def _record_runtime_cache(bundle_path: Path, target: str, info: RuntimeCache) -> None:
    bundle = Bundle.open(bundle_path, check_files=False)  # re-read: another process may have changed it
    engines = dict(bundle.manifest.engines)
    if target in engines:
        engines[target] = replace(engines[target], runtime_cache=info)
        bundle.update(engines=engines)


def open_tensorrt(bundle: Bundle) -> TensorRTBackend:
    """The ``BACKENDS["tensorrt"]`` factory."""
    return TensorRTBackend(bundle)
