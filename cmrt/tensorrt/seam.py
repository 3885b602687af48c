"""The TensorRT calls of the runtime, behind a thin seam (checked against CPU stand-ins in
``tests/runtime/trt_fakes.py``).

Every function here takes the ``trt`` module and TensorRT objects (engine, execution context,
runtime config, runtime cache) as arguments and checks every value TensorRT returns, so the logic
runs unchanged against the real objects on a GPU and against small stand-ins in the CPU tests.
Nothing here imports TensorRT or torch.

Sources the calls were checked against (TensorRT 11.1 ``include/NvInferRuntime.h`` and
``python/src/infer/pyCore.cpp``; the ``tensorrt_rtx`` 1.7.1 docstrings; TensorRT-RTX's
``samples/apiUsage/python/api_usage.py`` and ``demo/utils/engine.py``; Polygraphy's
``backend/trt/runner.py``) are cited at each step.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BundleError
from .validity import check_validity

#: Input shapes whose buffers (and CUDA graphs) one backend keeps; the least recently used
#: beyond this are freed. Decoders see a handful of latent sizes; each slot holds one set of I/O
#: buffers and, with ``cuda_graph=True`` on TensorRT, one graph.
MAX_CACHED_SHAPES = 4


# --- loading -----------------------------------------------------------------------------
def deserialize(trt, runtime, plan, *, file: str, rebuild: str):
    """Check validity, then ``runtime.deserialize_cuda_engine(plan)``; None (NvInferRuntime.h:
    "nullptr if it could not be deserialized") becomes a ``BundleError``."""
    check_validity(trt, runtime, plan, file=file)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BundleError(f"{file} could not be loaded by {trt.__name__} {trt.__version__} (see its log): {rebuild}")
    return engine


# --- I/O names ---------------------------------------------------------------------------
def engine_io(trt, engine) -> tuple[list[str], list[str]]:
    """The engine's input and output tensor names, in TensorRT's index order."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, [n for n in names if n not in inputs]


def match_io(inputs: list[str], outputs: list[str], expected: list[str], output: str, *, file: str) -> list[str]:
    """The engine's inputs in the manifest's order, after comparing them as sets (TensorRT does not
    document an I/O order); ``BundleError`` when the names differ or ``output`` is missing."""
    if set(inputs) != set(expected) or output not in outputs:
        raise BundleError(f"{file} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, the manifest "
                          f"{sorted(expected)} → {output!r}: the engine is from another graph; rebuild it with "
                          "`cmrt build BUNDLE`")
    return list(expected)


# --- execution context, runtime config and runtime cache ---------------------------------
@dataclass
class ContextSetup:
    """An execution context and what keeps it configured (held for their lifetimes: pyCore.cpp ties
    a context to its engine with keep_alive, not to the runtime config or cache)."""

    context: Any
    runtime_config: Any = None
    runtime_cache: Any = None
    #: True/False: a stored runtime cache was offered and accepted/rejected; None: none offered.
    cache_loaded: bool | None = None
    #: TensorRT-RTX captures and replays CUDA graphs itself (``WHOLE_GRAPH_CAPTURE``).
    whole_graph: bool = False


def context_failure(file: str, runtime_config: bool) -> str:
    """The message for a ``create_execution_context`` that returned None."""
    jit = " or TensorRT-RTX's JIT compile failed (see its log)" if runtime_config else ""
    return (f"TensorRT could not create an execution context for {file}: the GPU is probably out of memory for "
            f"the profile's largest shapes (memory is allocated for them up front){jit}; free GPU memory or "
            "rebuild with a smaller profile (`cmrt build --max-batch/--max-latent`)")


def create_context(trt, engine, *, file: str, runtime_config: bool, whole_graph: bool = False,
                   cache_blob: bytes | None = None) -> ContextSetup:
    """Create the execution context, through a runtime config when asked (TensorRT-RTX).

    The runtime-config path follows TensorRT-RTX's ``api_usage.py`` and ``demo/utils/engine.py``:
    ``engine.create_runtime_config()``, ``create_runtime_cache()`` (+ ``deserialize`` of the stored
    blob), ``set_runtime_cache``, optionally ``cuda_graph_strategy = WHOLE_GRAPH_CAPTURE``, then
    ``create_execution_context(runtime_config)``. Activation memory uses the default STATIC
    strategy (NvInferRuntime.h: pre-allocated for the profile's largest shapes).

    Args:
        trt: the ``tensorrt`` or ``tensorrt_rtx`` module.
        engine: the deserialized ``ICudaEngine``.
        file: the engine file, for messages.
        runtime_config: create the context from an ``IRuntimeConfig`` (TensorRT-RTX).
        whole_graph: let TensorRT-RTX capture CUDA graphs itself (needs ``runtime_config``).
        cache_blob: a stored runtime cache to offer (None or empty: start an empty one).
    """
    if not runtime_config:
        context = engine.create_execution_context()
        if context is None:
            raise BundleError(context_failure(file, False))
        return ContextSetup(context)
    config = engine.create_runtime_config()
    if config is None:
        raise BundleError(f"TensorRT-RTX could not create a runtime config for {file} (see its log): rebuild it")
    if whole_graph:
        config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    cache, loaded = attach_runtime_cache(config, cache_blob, file=file)
    context = engine.create_execution_context(config)
    if context is None:
        raise BundleError(context_failure(file, True))
    return ContextSetup(context, config, cache, loaded, whole_graph)


def attach_runtime_cache(config, blob: bytes | None, *, file: str) -> tuple[Any, bool | None]:
    """Create a runtime cache, load ``blob`` into it, and set it on ``config``.

    ``IRuntimeCache.deserialize`` returns False for a blob from another GPU, driver or library
    version (its 1.7.1 docstring) and leaves the cache empty: that is warned about, not fatal, and
    the cache is rebuilt by the JIT. Returns (cache, loaded: None when no blob was offered).
    """
    cache = config.create_runtime_cache()
    if cache is None:
        raise BundleError(f"TensorRT-RTX could not create a runtime cache for {file} (see its log)")
    loaded = None
    if blob:
        loaded = bool(cache.deserialize(blob))
        if not loaded:
            warnings.warn(f"the runtime cache beside {file} was made for another GPU, driver or TensorRT-RTX "
                          "version and was not used: kernels are compiled again and the cache replaced",
                          stacklevel=3)
    if not config.set_runtime_cache(cache):
        raise BundleError(f"TensorRT-RTX refused the runtime cache for {file} (see its log)")
    return cache, loaded


def serialize_runtime_cache(cache, *, file: str):
    """The runtime cache as a bytes-like ``IHostMemory``, or None (warned) when TensorRT-RTX
    returns nothing: a cache that cannot be saved costs the next process a JIT compile, not a run."""
    data = cache.serialize()
    if data is None or data.nbytes == 0:
        warnings.warn(f"TensorRT-RTX returned no runtime cache for {file}: nothing saved", stacklevel=3)
        return None
    return data


# --- shapes, buffers, CUDA graphs -------------------------------------------------------
class CaptureFailed(RuntimeError):
    """A CUDA-graph capture did not produce a graph (internal: the runner falls back to no graph)."""


@dataclass
class _Slot:
    buffers: dict[str, Any]
    graph: Any = None


class EngineRunner:
    """One execution context run for input shapes that change.

    Per input shape it keeps a slot: I/O buffers allocated once and, when ``capture`` is given,
    one CUDA graph (a bounded LRU of ``max_shapes`` slots). Switching to a cached shape rebinds
    the context's input shapes and tensor addresses before running or replaying, so the context's
    state always matches the graph replayed (as TensorRT-Edge-LLM's ``EngineExecutor`` keeps one
    graph per binding state on one context).

    Every ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` result is checked
    (each returns bool: NvInferRuntime.h; Polygraphy's runner checks them the same way). A
    capture that fails (enqueue returns False under capture, or the capture is invalidated) is
    ended and the runner falls back to running without graphs for good, warning once (trtexec's
    pattern): it never retries the capture on every call.

    Args:
        context: the ``IExecutionContext``.
        inputs, outputs: tensor names.
        allocate: ``allocate(name, shape)`` → a device buffer with ``data_ptr()`` (torch: 512-byte
            aligned, above TensorRT's 256-byte requirement).
        stream_handle: the CUDA stream (``cudaStream_t`` as int) every launch is enqueued on.
        capture: ``capture(launch)`` → a graph with ``replay()``, raising ``CaptureFailed``; None
            runs without graphs (also when TensorRT-RTX captures graphs itself).
        capturable: None, or a check made before the first capture
            (``IExecutionContext.is_stream_capturable(stream)`` on TensorRT-RTX).
        max_shapes: how many shapes keep their buffers and graph.
        name: the engine, for messages.
    """

    def __init__(self, context, *, inputs: list[str], outputs: list[str], allocate: Callable[[str, tuple], Any],
                 stream_handle: int, capture: Callable[[Callable[[], bool]], Any] | None = None,
                 capturable: Callable[[], bool] | None = None, max_shapes: int = MAX_CACHED_SHAPES,
                 name: str = "the engine") -> None:
        self.context, self.inputs, self.outputs = context, list(inputs), list(outputs)
        self.allocate, self.stream_handle, self.name = allocate, stream_handle, name
        self.capture, self.capturable, self.max_shapes = capture, capturable, max(1, max_shapes)
        self.slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self.bound: tuple | None = None
        #: Why CUDA graphs were turned off after a failed capture (None: not turned off).
        self.graphs_off: str | None = None
        self.launches = 0

    def prepare(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """Bind the context for these input shapes and return their buffers (allocated on first use)."""
        key = tuple(tuple(shapes[n]) for n in self.inputs)
        slot = self.slots.get(key)
        if slot is None:
            slot = self._new_slot(key, shapes)
        elif key != self.bound:
            self._bind(shapes, slot.buffers)
        self.slots.move_to_end(key)
        self.bound = key
        return slot.buffers

    def execute(self) -> None:
        """Run the bound shape: replay its graph, capture one (after a warm-up run), or launch."""
        slot = self.slots[self.bound]
        if slot.graph is not None:
            slot.graph.replay()
            return
        if self.capture is None or self.graphs_off is not None:
            self.launch()
            return
        self.launch()  # warm-up: TensorRT allocates lazily and picks kernels on the first run
        slot.graph = self._try_capture()
        if slot.graph is None:
            self.launch()  # the capture ran nothing; this run's result comes from a plain launch
        else:
            slot.graph.replay()

    def launch(self) -> None:
        """``execute_async_v3`` on the stream; False (NvInferRuntime.h enqueueV3) is a ``BundleError``."""
        self.launches += 1
        if not self.context.execute_async_v3(self.stream_handle):
            raise BundleError(f"{self.name} failed to run (execute_async_v3 returned False; see the TensorRT log)")

    def _try_capture(self):
        if self.capturable is not None and not self.capturable():
            return self._graphs_off("TensorRT reports this context cannot be stream-captured")
        try:
            return self.capture(self._enqueue_ok)
        except CaptureFailed as exc:
            return self._graphs_off(str(exc))

    def _enqueue_ok(self) -> bool:
        self.launches += 1
        return bool(self.context.execute_async_v3(self.stream_handle))

    def _graphs_off(self, why: str) -> None:
        self.graphs_off = why
        for slot in self.slots.values():
            slot.graph = None
        warnings.warn(f"CUDA graph capture of {self.name} failed ({why}): running without CUDA graphs from now on",
                      stacklevel=4)
        return None

    def _new_slot(self, key: tuple, shapes: dict[str, tuple[int, ...]]) -> _Slot:
        while len(self.slots) >= self.max_shapes:
            old, _ = self.slots.popitem(last=False)  # frees its buffers and graph
            self.bound = None if old == self.bound else self.bound
        self._set_shapes(shapes)
        buffers = {n: self.allocate(n, tuple(shapes[n])) for n in self.inputs}
        buffers.update({n: self.allocate(n, self._output_shape(n)) for n in self.outputs})
        self._set_addresses(buffers)
        slot = self.slots[key] = _Slot(buffers)
        return slot

    def _bind(self, shapes: dict[str, tuple[int, ...]], buffers: dict[str, Any]) -> None:
        self._set_shapes(shapes)
        self._set_addresses(buffers)

    def _set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.bound = None  # the context's state changes from here on
        for n in self.inputs:
            if not self.context.set_input_shape(n, tuple(shapes[n])):
                raise BundleError(f"{self.name} refused shape {tuple(shapes[n])} for input {n} (outside its "
                                  "optimization profile, or a rank the engine does not have): the manifest's "
                                  "profile does not match the engine; rebuild it with `cmrt build BUNDLE`")

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.context.get_tensor_shape(name))
        if not shape or any(d < 0 for d in shape):
            raise BundleError(f"{self.name} cannot infer the shape of output {name} from the inputs (got {shape}): "
                              "the engine does not match the manifest; rebuild it with `cmrt build BUNDLE`")
        return shape

    def _set_addresses(self, buffers: dict[str, Any]) -> None:
        for n, buf in buffers.items():
            if not self.context.set_tensor_address(n, buf.data_ptr()):
                raise BundleError(f"{self.name} refused the buffer address of {n} (an unknown name, or an address "
                                  "not 256-byte aligned; see the TensorRT log)")


def torch_capture(torch, stream) -> Callable[[Callable[[], bool]], Any]:
    """A ``capture(launch)`` for ``EngineRunner`` built on ``torch.cuda.graph``.

    ``capture_error_mode="thread_local"`` lets other threads (TensorRT's own) make CUDA calls
    while this one captures; torch's default "global" forbids them and invalidates the capture.
    The enqueue result is kept, not raised inside the ``with``, so the capture always ends; a
    False result or an invalidated capture (torch raises ``RuntimeError`` from ``capture_end``)
    becomes ``CaptureFailed``.
    """

    def capture(launch: Callable[[], bool]):
        graph = torch.cuda.CUDAGraph()
        ok = False
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                ok = launch()
        except RuntimeError as exc:
            raise CaptureFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if not ok:
            raise CaptureFailed("execute_async_v3 returned False under stream capture")
        return graph

    return capture


def run_ordered(torch, device, stream, work: Callable[[], Any]):
    """Run ``work()`` on ``stream`` (on ``device``) ordered after the caller's current stream, and
    order the caller's stream after it; returns ``work()``'s tensor, recorded on the caller's stream.

    ``stream.wait_stream(caller)``: inputs the caller wrote are complete before they are read.
    ``caller.wait_stream(stream)``: the caller reads the output only once it is written.
    ``out.record_stream(caller)``: the output was allocated on ``stream``; the allocator must not
    reuse its memory while the caller's stream may still read it (PyTorch's ``record_stream``).
    Inputs need no ``record_stream``: they belong to the caller's stream, which now waits for this
    work before anything it queues later.
    """
    with torch.cuda.device(device):
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            out = work()
        caller.wait_stream(stream)
        out.record_stream(caller)
    return out
