"""The TensorRT seam (cmrt.tensorrt): validity decoding on plans built here by TensorRT-RTX,
I/O-name matching, context creation through a runtime config with a runtime cache, and the
shape-keyed buffer/CUDA-graph runner with its fallback after a failed capture.

The real TensorRT-RTX (builder, ``Runtime.get_engine_validity``, enums) is used wherever it works
without a GPU; execution contexts, runtime configs and graphs are stand-ins (``trt_fakes``) that
model documented behaviour. The same code paths run for real in the ``gpu`` tests
(``test_trt_seam_cuda.py`` with PyTorch CUDA alone, ``test_tensorrt_backend.py`` with TensorRT).
"""

from __future__ import annotations

import warnings

import pytest
import trt_fakes as F

from cmrt import BundleError
from cmrt import tensorrt as _trt

SHAPE_A, SHAPE_B, SHAPE_C = (2, 4), (4, 4), (1, 8)


def _runner(context=None, *, capture=True, max_shapes=4, aligned=True, capturable=False):
    context = context or F.Context()
    alloc = F.Allocator(aligned)
    cap = F.Capture(context) if capture else None
    check = (lambda: context.is_stream_capturable(7)) if capturable else None
    runner = _trt.EngineRunner(context, inputs=["x"], outputs=["images"], allocate=alloc, stream_handle=7,
                               capture=cap, capturable=check, max_shapes=max_shapes, name="the test engine")
    return runner, context, alloc, cap


def _run(runner, shape):
    buffers = runner.prepare({"x": shape})
    runner.execute()
    return buffers


# --- real TensorRT-RTX: validity of plans built here -----------------------------------------
@pytest.fixture(scope="module")
def rtx():
    return pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")


@pytest.fixture(scope="module")
def tiny_plan(rtx) -> bytes:
    """A real TensorRT-RTX plan of a one-layer network (ReLU, dynamic batch), built on the CPU."""
    builder = rtx.Builder(rtx.Logger(rtx.Logger.ERROR))
    network = builder.create_network(1 << int(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    x = network.add_input("x", rtx.DataType.FLOAT, (-1, 4))
    y = network.add_activation(x, rtx.ActivationType.RELU).get_output(0)
    y.name = "images"
    network.mark_output(y)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (4, 4))
    assert config.add_optimization_profile(profile) == 0
    return bytes(memoryview(builder.build_serialized_network(network, config)))


def _quiet_runtime(rtx):
    class Quiet(rtx.ILogger):
        def __init__(self) -> None:
            rtx.ILogger.__init__(self)

        def log(self, severity, msg) -> None:  # the check logs a fatal line without a GPU
            pass

    return rtx.Runtime(Quiet())


def test_validity_of_a_plan_built_here_is_checked_before_loading(rtx, tiny_plan):
    runtime = _quiet_runtime(rtx)
    # real answers without a GPU: INVALID with no diagnostic for the good plan ...
    validity, diagnostics = runtime.get_engine_validity(tiny_plan)
    assert validity.name == "INVALID" and _trt.diagnostic_names(rtx, diagnostics) == []
    with pytest.raises(BundleError, match="invalid on this machine without a reason.*nvidia-smi"):
        _trt.check_validity(rtx, runtime, tiny_plan, file="engine.tensorrt-rtx.plan")
    # ... MALFORMED_ENGINE, by name and with its fix, for a damaged one, and deserialize stops there
    damaged = b"\0" * 4 + tiny_plan[4:]
    with pytest.raises(BundleError, match="MALFORMED_ENGINE: the file is damaged"):
        _trt.deserialize(rtx, runtime, damaged, file="engine.tensorrt-rtx.plan", rebuild="rebuild it")
    assert _trt.diagnostic_names(rtx, runtime.get_engine_validity(b"")[1]) == ["MALFORMED_ENGINE"]


def test_device_diagnostics_are_named_with_their_fix(rtx):
    D = rtx.EngineInvalidityDiagnostics
    mask = int(D.OLD_CUDA_DRIVER) | int(D.UNSUPPORTED_CC) | int(D.INSUFFICIENT_GPU_MEMORY)
    flags = _trt.diagnostic_names(rtx, mask)
    assert flags == ["UNSUPPORTED_CC", "OLD_CUDA_DRIVER", "INSUFFICIENT_GPU_MEMORY"]
    msg = _trt.validity_problem_at_load("INVALID", flags, file="e.plan")
    assert "OLD_CUDA_DRIVER: the NVIDIA driver is too old" in msg and "UNSUPPORTED_CC" in msg
    assert "INSUFFICIENT_GPU_MEMORY: the GPU has too little free memory" in msg and len(msg.splitlines()) == 1
    assert _trt.validity_problem_at_load("SUBOPTIMAL", [], file="e.plan") is None
    assert set(_trt.DIAGNOSTIC_FIXES) == set(D.__members__)  # every flag of 1.7.1 has a fix


class _Runtime:
    """A runtime whose engine passes the validity check (as on a supported GPU) but cannot be
    deserialized (``deserialize_cuda_engine`` → None)."""

    def __init__(self, rtx, validity: str) -> None:
        self.rtx, self.validity = rtx, validity

    def get_engine_validity(self, plan):
        return getattr(self.rtx.EngineValidity, self.validity), 0

    def deserialize_cuda_engine(self, plan):
        return None


def test_deserialize_none_and_suboptimal(rtx, tiny_plan):
    with pytest.raises(BundleError, match="could not be loaded by tensorrt_rtx .*: rebuild it"):
        _trt.deserialize(rtx, _Runtime(rtx, "VALID"), tiny_plan, file="e.plan", rebuild="rebuild it")
    with pytest.warns(UserWarning, match="likely slow"):
        assert _trt.check_validity(rtx, _Runtime(rtx, "SUBOPTIMAL"), tiny_plan, file="e.plan") == "SUBOPTIMAL"
    assert _trt.check_validity(rtx, object(), tiny_plan, file="e.plan") is None  # TensorRT: no such call


# --- I/O names ----------------------------------------------------------------------------------
def test_io_names_compare_as_sets_and_follow_the_manifest():
    expected = ["latents", "noise_0", "noise_1"]
    assert _trt.match_io(["noise_1", "latents", "noise_0"], ["images"], expected, "images", file="e") == expected
    with pytest.raises(BundleError, match="from another graph"):
        _trt.match_io(["latents", "noise_0"], ["images"], expected, "images", file="e")
    with pytest.raises(BundleError, match="rebuild"):
        _trt.match_io(expected, ["out"], expected, "images", file="e")


# --- execution context, runtime config, runtime cache -------------------------------------------
def test_context_none_is_a_bundle_error_naming_memory():
    with pytest.raises(BundleError, match="out of memory for the profile's largest shapes") as err:
        _trt.create_context(None, F.Engine(None), file="e.plan", runtime_config=False)
    assert "JIT" not in str(err.value)
    with pytest.raises(BundleError, match="JIT compile failed"):
        _trt.create_context(None, F.Engine(None), file="e.plan", runtime_config=True)


def test_runtime_config_carries_the_cache_and_whole_graph_capture(rtx):
    engine = F.Engine(F.Context())
    setup = _trt.create_context(rtx, engine, file="e.plan", runtime_config=True, whole_graph=True,
                                cache_blob=b"gpu-a:kernels")
    assert engine.used_config is setup.runtime_config and setup.runtime_config.cache is setup.runtime_cache
    assert setup.runtime_config.cuda_graph_strategy == rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert setup.cache_loaded is True and setup.whole_graph
    assert bytes(_trt.serialize_runtime_cache(setup.runtime_cache, file="e.plan")) == b"gpu-a:kernels+jit"
    fresh = _trt.create_context(rtx, F.Engine(F.Context()), file="e.plan", runtime_config=True)
    assert fresh.cache_loaded is None and fresh.runtime_config.cuda_graph_strategy is None


def test_a_runtime_cache_from_another_gpu_is_warned_about_and_replaced(rtx):
    with pytest.warns(UserWarning, match="made for another GPU.*replaced"):
        setup = _trt.create_context(rtx, F.Engine(F.Context()), file="e.plan", runtime_config=True,
                                    cache_blob=b"gpu-b:kernels")
    assert setup.cache_loaded is False
    assert bytes(_trt.serialize_runtime_cache(setup.runtime_cache, file="e.plan")) == b"gpu-a:+jit"
    with pytest.raises(BundleError, match="refused the runtime cache"):
        _trt.create_context(rtx, F.Engine(F.Context(), F.RuntimeConfig(set_cache_ok=False)), file="e.plan",
                            runtime_config=True)


# --- the shape-keyed runner ---------------------------------------------------------------------
def test_buffers_are_allocated_once_per_shape_and_rebound_on_switch():
    runner, ctx, alloc, _ = _runner(capture=False)
    a = _run(runner, SHAPE_A)
    b = _run(runner, SHAPE_B)
    assert _run(runner, SHAPE_A) is a and _run(runner, SHAPE_B) is b
    assert alloc.calls == [("x", SHAPE_A), ("images", SHAPE_A), ("x", SHAPE_B), ("images", SHAPE_B)]
    # each switch set the shape and both addresses again, so the context matches the buffers
    assert ctx.shapes["x"] == SHAPE_B and ctx.addresses == {"x": b["x"].ptr, "images": b["images"].ptr}
    assert sum(1 for e in ctx.log if e[0] == "shape") == 4 and runner.launches == 4
    _run(runner, SHAPE_B)  # same shape again: no rebinding
    assert sum(1 for e in ctx.log if e[0] == "shape") == 4


def test_the_shape_cache_is_bounded_lru():
    runner, _, alloc, _ = _runner(capture=False, max_shapes=2)
    for shape in (SHAPE_A, SHAPE_B, SHAPE_A, SHAPE_C):  # C evicts B (least recently used)
        _run(runner, shape)
    assert list(runner.slots) == [(SHAPE_A,), (SHAPE_C,)]
    _run(runner, SHAPE_B)
    assert list(runner.slots) == [(SHAPE_C,), (SHAPE_B,)] and len(alloc.calls) == 8


def test_one_graph_per_shape_after_a_warm_up():
    runner, ctx, _, cap = _runner()
    for shape in (SHAPE_A, SHAPE_B, SHAPE_A, SHAPE_B, SHAPE_A):
        _run(runner, shape)
    assert [g.shape for g in cap.graphs] == [SHAPE_A, SHAPE_B]  # captured once each, never again
    assert [g.replays for g in cap.graphs] == [3, 2]
    assert runner.launches == 4  # per shape: a warm-up launch and the launch under capture
    assert runner.graphs_off is None


def test_a_failed_capture_falls_back_to_plain_runs_once():
    runner, ctx, _, cap = _runner(F.Context(capturable=False))
    with pytest.warns(UserWarning, match="CUDA graph capture .* failed .*returned False") as record:
        _run(runner, SHAPE_A)
        for shape in (SHAPE_B, SHAPE_A, SHAPE_B):
            _run(runner, shape)
    assert len(record) == 1 and cap.graphs == [] and runner.graphs_off
    captured = [e for e in ctx.log if e[0] == "enqueue" and e[2]]
    assert len(captured) == 1  # one capture attempt in all
    # the failed call still ran the engine without a graph after the attempt: warm-up, capture, plain
    assert [e[2] for e in ctx.log if e[0] == "enqueue"][:3] == [False, True, False]


def test_is_stream_capturable_false_skips_the_capture():
    runner, ctx, _, cap = _runner(F.Context(capturable=False), capturable=True)
    with pytest.warns(UserWarning, match="cannot be stream-captured"):
        _run(runner, SHAPE_A)
    assert not any(e[2] for e in ctx.log if e[0] == "enqueue") and runner.graphs_off


@pytest.mark.parametrize("context, aligned, match", [
    (F.Context(hi=(3, 3)), True, r"refused shape \(4, 4\) for input x"),
    (F.Context(), False, "refused the buffer address of x .*256-byte"),
    (F.Context(output_shape=(-1, 4)), True, r"cannot infer the shape of output images .*\(-1, 4\)"),
    (F.Context(enqueue_ok=False), True, "execute_async_v3 returned False")])
def test_every_tensorrt_result_is_checked(context, aligned, match):
    runner, *_ = _runner(context, capture=False, aligned=aligned)
    with pytest.raises(BundleError, match=match):
        _run(runner, SHAPE_B)
    assert runner.bound is None or runner.bound == (SHAPE_B,)


def test_a_refused_shape_leaves_the_runner_usable():
    runner, *_ = _runner(F.Context(hi=(3, 3)), capture=False)
    with pytest.raises(BundleError):
        _run(runner, SHAPE_B)
    assert runner.bound is None and not runner.slots
    _run(runner, (2, 2))
    assert runner.bound == ((2, 2),)


# --- torch_capture's ending of a failed capture (torch.cuda.graph modelled) ------------------
class _TorchGraphs:
    """Models ``torch.cuda.graph``: its ``__exit__`` ends the capture and raises RuntimeError when
    the capture was invalidated (torch/cuda/graphs.py ``capture_end``)."""

    def __init__(self, invalidate: bool) -> None:
        self.invalidate, self.modes, self.ended = invalidate, [], 0
        self.cuda = self

    def CUDAGraph(self):  # noqa: N802 - torch's name
        return F.Graph(None)

    def graph(self, graph, *, stream, capture_error_mode):
        self.modes.append(capture_error_mode)
        outer = self

        class Ctx:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                outer.ended += 1
                if outer.invalidate:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                return False

        return Ctx()


def test_torch_capture_ends_the_capture_and_reports_failures():
    fake = _TorchGraphs(invalidate=False)
    capture = _trt.torch_capture(fake, stream=None)
    assert capture(lambda: True) is not None and fake.modes == ["thread_local"]
    with pytest.raises(_trt.CaptureFailed, match="returned False under stream capture"):
        capture(lambda: False)
    assert fake.ended == 2  # the capture was ended both times
    invalidated = _trt.torch_capture(_TorchGraphs(invalidate=True), stream=None)
    with pytest.raises(_trt.CaptureFailed, match="previous error during capture"):
        invalidated(lambda: True)


def test_no_warnings_on_the_happy_path():
    runner, *_ = _runner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(runner, SHAPE_A)
        _run(runner, SHAPE_A)
