"""The runtime's stream order, device pinning and CUDA-graph capture on a real GPU with PyTorch
CUDA alone (no TensorRT): a CUDA "engine" stand-in computes ``images = 2·x + 1`` with torch
kernels on the stream handle TensorRT would get, after a long GPU sleep that exposes missing
stream synchronization. Runs on any NVIDIA GPU (Hopper included), skips without one."""

from __future__ import annotations

import pytest

from cmrt import InputError
from cmrt import tensorrt as _trt
from cmrt.tensorrt import check_devices

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (stream/graph tests need one)")]

SLEEP_CYCLES = 50_000_000  # tens of milliseconds: longer than any host-side step of a run


class CudaStandIn:
    """An execution context whose enqueue runs torch kernels on ``ExternalStream(handle)``, reading
    and writing the buffers at the bound addresses (``registry``: data_ptr → tensor)."""

    def __init__(self, registry: dict, *, fail_under_capture: bool = False, sync_under_capture: bool = False):
        self.registry, self.shapes, self.addresses = registry, {}, {}
        self.fail_under_capture, self.sync_under_capture = fail_under_capture, sync_under_capture
        self.captured_enqueues = 0

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return ptr % 256 == 0

    def execute_async_v3(self, handle):
        capturing = torch.cuda.is_current_stream_capturing()
        stream = torch.cuda.ExternalStream(handle)
        with torch.cuda.stream(stream):
            if capturing:
                self.captured_enqueues += 1
                if self.fail_under_capture:
                    return False
                if self.sync_under_capture:
                    stream.synchronize()  # illegal under capture: invalidates it
            torch.cuda._sleep(SLEEP_CYCLES)
            x, out = self.registry[self.addresses["x"]], self.registry[self.addresses["images"]]
            torch.mul(x, 2, out=out)
            out.add_(1)
        return True


def _runner(context, stream, registry, *, graphs: bool):
    def allocate(name, shape):
        t = torch.empty(shape, device=stream.device)
        registry[t.data_ptr()] = t
        return t

    capture = _trt.torch_capture(torch, stream) if graphs else None
    return _trt.EngineRunner(context, inputs=["x"], outputs=["images"], allocate=allocate,
                             stream_handle=stream.cuda_stream, capture=capture, name="the stand-in")


def _run(runner, stream, x):
    def work():
        buffers = runner.prepare({"x": tuple(x.shape)})
        buffers["x"].copy_(x, non_blocking=True)
        runner.execute()
        return buffers["images"].clone()

    return _trt.run_ordered(torch, stream.device, stream, work)


def _pending_input(shape, value):
    """An input whose final value is written on the caller's stream behind a long sleep."""
    x = torch.zeros(shape, device="cuda")
    torch.cuda._sleep(SLEEP_CYCLES)
    x.fill_(value)
    return x


def test_runs_wait_for_the_caller_and_the_caller_waits_for_them():
    registry, stream = {}, torch.cuda.Stream()
    runner = _runner(CudaStandIn(registry), stream, registry, graphs=False)
    out = _run(runner, stream, _pending_input((2, 4), 3.0))
    assert torch.equal(out, torch.full((2, 4), 7.0, device="cuda"))  # read on the caller's stream, no sync
    # the output was recorded on the caller's stream: freeing it and allocating there is safe
    del out
    again = _run(runner, stream, _pending_input((2, 4), 5.0))
    assert torch.equal(again, torch.full((2, 4), 11.0, device="cuda"))


def test_one_graph_per_shape_replays_new_inputs():
    registry, stream = {}, torch.cuda.Stream()
    ctx = CudaStandIn(registry)
    runner = _runner(ctx, stream, registry, graphs=True)
    for value in (1.0, 2.0, 3.0):
        for shape in ((2, 4), (4, 4)):
            out = _run(runner, stream, _pending_input(shape, value))
            assert torch.equal(out, torch.full(shape, 2 * value + 1, device="cuda"))
    assert ctx.captured_enqueues == 2 and all(s.graph is not None for s in runner.slots.values())


@pytest.mark.parametrize("how", ["fail_under_capture", "sync_under_capture"])
def test_a_failed_capture_falls_back_once(how):
    registry, stream = {}, torch.cuda.Stream()
    ctx = CudaStandIn(registry, **{how: True})
    runner = _runner(ctx, stream, registry, graphs=True)
    with pytest.warns(UserWarning, match="running without CUDA graphs"):
        out = _run(runner, stream, _pending_input((2, 4), 1.0))
    assert torch.equal(out, torch.full((2, 4), 3.0, device="cuda"))
    for shape in ((4, 4), (2, 4)):
        assert torch.equal(_run(runner, stream, _pending_input(shape, 2.0)), torch.full(shape, 5.0, device="cuda"))
    assert ctx.captured_enqueues == 1 and runner.graphs_off


def test_inputs_on_another_gpu_are_refused():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    with pytest.raises(InputError, match="cuda:1.*loaded on cuda:0"):
        check_devices({"x": torch.zeros(1, device="cuda:1")}, torch.device("cuda", 0))
    check_devices({"x": torch.zeros(1, device="cuda:0"), "y": torch.zeros(1)}, torch.device("cuda", 0))


def test_runs_stay_on_the_recorded_device_when_another_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    registry = {}
    with torch.cuda.device(0):
        stream = torch.cuda.Stream()
    runner = _runner(CudaStandIn(registry), stream, registry, graphs=False)
    with torch.cuda.device(1):
        out = _run(runner, stream, torch.ones(2, 4, device="cuda:0"))
    assert out.device == torch.device("cuda", 0) and torch.equal(out, torch.full((2, 4), 3.0, device="cuda:0"))
