"""Stand-ins for the TensorRT objects that cannot exist without a GPU (an execution context, a
runtime config, a runtime cache, a CUDA graph), each modelling only documented behaviour:

- ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` return bool
  (NvInferRuntime.h: false for a name that is not an input, a shape the profile does not allow, an
  address without 256-byte alignment; false when enqueue fails); ``get_tensor_shape`` reports -1
  for output dimensions until the input shapes are set (NvInferRuntime.h ``getTensorShape``).
- ``ICudaEngine.create_execution_context`` returns None on failure (pyCore.cpp returns the
  nullptr as None; Polygraphy's runner and TensorRT-RTX's ``api_usage.py`` test for it).
- ``IRuntimeCache.deserialize`` returns False for a blob from another environment and leaves the
  cache unchanged; ``serialize`` returns a buffer (tensorrt_rtx 1.7.1 docstrings).
- A CUDA graph has ``replay()``.

Tests that can use the real library (builders, ``Runtime.get_engine_validity`` on plans built
here, enums) use it instead.
"""

from __future__ import annotations

import itertools


class Buffer:
    """A device buffer stand-in: a shape and a (256-byte aligned unless asked) address."""

    _next = itertools.count(1)

    def __init__(self, name: str, shape: tuple, aligned: bool = True) -> None:
        self.name, self.shape = name, tuple(shape)
        self.ptr = next(self._next) * 4096 + (0 if aligned else 8)

    def data_ptr(self) -> int:
        return self.ptr


class Allocator:
    """Counts allocations per (name, shape)."""

    def __init__(self, aligned: bool = True) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.aligned = aligned

    def __call__(self, name: str, shape: tuple) -> Buffer:
        self.calls.append((name, tuple(shape)))
        return Buffer(name, shape, self.aligned)


class Context:
    """An execution context for one input ``x`` (profile ``lo``..``hi`` on every axis) and one output
    ``images`` of the same shape."""

    def __init__(self, lo: tuple = (1, 1), hi: tuple = (8, 8), *, enqueue_ok: bool = True,
                 capturable: bool = True, output_shape=None) -> None:
        self.lo, self.hi, self.enqueue_ok, self.capturable = lo, hi, enqueue_ok, capturable
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.log: list[tuple] = []
        self.capturing = False  # set by Capture while it runs the launch
        self.output_shape = output_shape

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.log.append(("shape", name, tuple(shape)))
        ok = name == "x" and len(shape) == len(self.lo) and all(a <= s <= b for s, a, b in zip(shape, self.lo, self.hi))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple:
        if self.output_shape is not None:
            return self.output_shape
        return self.shapes.get("x", (-1,) * len(self.lo))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.log.append(("address", name, ptr))
        ok = name in ("x", "images") and ptr % 256 == 0
        if ok:
            self.addresses[name] = ptr
        return ok

    def execute_async_v3(self, stream: int) -> bool:
        self.log.append(("enqueue", self.shapes.get("x"), self.capturing))
        if self.capturing:
            return self.enqueue_ok and self.capturable
        return self.enqueue_ok

    def is_stream_capturable(self, stream: int) -> bool:
        return self.capturable


class Graph:
    def __init__(self, shape) -> None:
        self.shape, self.replays = shape, 0

    def replay(self) -> None:
        self.replays += 1


class Capture:
    """``capture(launch)``: runs the launch in capture mode; False becomes ``CaptureFailed`` (as
    ``cmrt.tensorrt.torch_capture`` turns an enqueue failure under capture into one)."""

    def __init__(self, context: Context) -> None:
        self.context, self.graphs = context, []

    def __call__(self, launch):
        from cmrt.tensorrt import CaptureFailed

        self.context.capturing = True
        try:
            ok = launch()
        finally:
            self.context.capturing = False
        if not ok:
            raise CaptureFailed("execute_async_v3 returned False under stream capture")
        self.graphs.append(Graph(self.context.shapes.get("x")))
        return self.graphs[-1]


class RuntimeCache:
    """Accepts a blob it serialized itself (same "environment" tag), rejects others."""

    def __init__(self, env: bytes = b"gpu-a") -> None:
        self.env, self.entries = env, b""

    def deserialize(self, blob) -> bool:
        blob = bytes(blob)
        if not blob.startswith(self.env + b":"):
            return False
        self.entries = blob[len(self.env) + 1:]
        return True

    def serialize(self):
        return memoryview(self.env + b":" + self.entries + b"+jit")


class RuntimeConfig:
    def __init__(self, env: bytes = b"gpu-a", set_cache_ok: bool = True) -> None:
        self.env, self.set_cache_ok = env, set_cache_ok
        self.cache = None
        self.cuda_graph_strategy = None

    def create_runtime_cache(self) -> RuntimeCache:
        return RuntimeCache(self.env)

    def set_runtime_cache(self, cache) -> bool:
        self.cache = cache
        return self.set_cache_ok


class Engine:
    """``create_execution_context`` returns ``context`` (None: failure), with or without a config."""

    def __init__(self, context, config: RuntimeConfig | None = None) -> None:
        self.context, self.config, self.used_config = context, config or RuntimeConfig(), None

    def create_runtime_config(self) -> RuntimeConfig:
        return self.config

    def create_execution_context(self, config=None):
        self.used_config = config
        return self.context
