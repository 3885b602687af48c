"""Measuring: warm-up then timed repeats, latency percentiles, peak memory, the machine's
measured fp32 GEMM rate, and the environment the figures came from.

On a GPU the timer brackets each call with CUDA events and synchronizes; on a CPU it uses
``time.perf_counter`` around the call (the call returns host arrays, so it has finished).
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cmrt._io import release_memory  # noqa: F401  (the benchmarks call measure.release_memory)

GEMM_SIZE = 2048  # square fp32 matrices for the peak-rate probe (large enough to be compute-bound)
GEMM_REPEATS = 5
GEMM_WARMUP = 2
MAX_REPEATS = 200
MIB = 1 << 20
KIB = 1 << 10
PERCENTILES = (10, 50, 90)
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set)


@dataclass(frozen=True)
class Timing:
    """Per-call latencies of one timed case, in milliseconds."""

    samples_ms: tuple[float, ...]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def median_ms(self) -> float:
        return self.percentile(50)

    @property
    def p10_ms(self) -> float:
        return self.percentile(10)

    @property
    def p90_ms(self) -> float:
        return self.percentile(90)


def time_callable(fn: Callable[[], Any], *, warmup: int, repeats: int, cuda: bool = False,
                  min_seconds: float = 0.0, max_repeats: int = MAX_REPEATS) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then at least ``repeats`` times timed.

    Args:
        fn: the call to time (no arguments; it must return once its work is done on the host,
            or be synchronized by ``cuda``).
        warmup: untimed calls first (graph optimization, allocator and cache warm-up).
        repeats: the fewest timed calls.
        cuda: time with CUDA events on the current stream and synchronize after each call.
        min_seconds: keep timing fast calls until this much time has been timed (steadier
            medians for millisecond cases), up to ``max_repeats`` calls.
        max_repeats: the most timed calls.
    """
    for _ in range(warmup):
        fn()
    one = _cuda_time if cuda else host_time
    samples: list[float] = []
    while len(samples) < repeats or (sum(samples) < min_seconds * 1e3 and len(samples) < max_repeats):
        samples.append(one(fn))
    return Timing(tuple(samples))


def host_time(fn: Callable[[], Any]) -> float:
    """Milliseconds one call of ``fn`` takes on the host clock."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _cuda_time(fn: Callable[[], Any]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


# --- memory ----------------------------------------------------------------------------
def rss_mb() -> float:
    """The process's resident set now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _status_kib(field: str) -> int | None:
    try:
        text = open(_STATUS).read()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def peak_rss_gib() -> float | None:
    """The process's resident-set high-water mark (``VmHWM``) in GiB; None off Linux."""
    hwm = _status_kib("VmHWM")
    return None if hwm is None else hwm * KIB / (1 << 30)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux); False where the kernel refuses."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK_RSS)
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block: process RSS (VmHWM, reset at entry on Linux) and, on a GPU, the
    CUDA allocator's maximum.

    ``resettable`` is False where the kernel does not let us reset the peak: ``peak_rss_mb``
    is then the process's lifetime peak.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda, self.resettable = cuda, False
        self.peak_rss_mb: float | None = None
        self.cuda_max_allocated_mb: float | None = None

    def __enter__(self) -> "PeakMemory":
        self.resettable = reset_peak_rss()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM")
        self.peak_rss_mb = hwm * KIB / MIB if hwm is not None else rss_mb()
        if self.cuda:
            import torch

            self.cuda_max_allocated_mb = torch.cuda.max_memory_allocated() / MIB


# --- the machine -----------------------------------------------------------------------
def gemm_rate(n: int = GEMM_SIZE, *, repeats: int = GEMM_REPEATS, cuda: bool = False) -> dict[str, float]:
    """The machine's measured fp32 GEMM rate in GFLOP/s (2·n³ per product, best of ``repeats``).

    On a CPU both PyTorch's BLAS and ONNX Runtime's MLAS are probed (they differ on some CPUs:
    MKL picks slower paths on AMD) and ``peak`` is the faster; on a GPU, PyTorch on CUDA with
    TF32 off.
    """
    flop = 2.0 * n ** 3
    rates: dict[str, float] = {}
    rates["torch"] = flop / _best_seconds(_torch_gemm(n, cuda), repeats, cuda) / 1e9
    if not cuda:
        rates["onnxruntime"] = flop / _best_seconds(_ort_gemm(n), repeats, False) / 1e9
    rates["peak"] = max(rates.values())
    return {k: round(v, 1) for k, v in rates.items()}


def gemm_rates(n: int = GEMM_SIZE, *, repeats: int = GEMM_REPEATS) -> dict[str, dict[str, float]]:
    """The CPU's measured GEMM rates in each precision a CPU backend computes in, GFLOP/s:
    ``fp32`` as ``gemm_rate`` (PyTorch's BLAS, ONNX Runtime's MLAS, ``peak`` the faster) and ``bf16``
    (PyTorch's ``torch.mm`` on bfloat16 matrices, i.e. oneDNN's BF16 kernels, and, where OpenVINO is
    installed, an ``n``×``n`` MatMul by a constant weight compiled with the BF16 precision hint, the
    kernel class OpenVINO's BF16 convolutions and matmuls use; ``peak`` the faster). A BF16 result's
    share of the roofline is to be read against the BF16 rate, an FP32 one against the FP32 rate."""
    flop = 2.0 * n ** 3
    bf16 = {"torch": flop / _best_seconds(_torch_gemm(n, False, bf16=True), repeats, False) / 1e9}
    ov = _openvino_gemm(n)
    if ov is not None:
        bf16["openvino"] = flop / _best_seconds(ov, repeats, False) / 1e9
    bf16["peak"] = max(bf16.values())
    return {"fp32": gemm_rate(n, repeats=repeats), "bf16": {k: round(v, 1) for k, v in bf16.items()}}


def _best_seconds(fn: Callable[[], Any], repeats: int, cuda: bool) -> float:
    t = time_callable(fn, warmup=GEMM_WARMUP, repeats=repeats, cuda=cuda)
    return min(t.samples_ms) / 1e3


def _torch_gemm(n: int, cuda: bool, *, bf16: bool = False) -> Callable[[], Any]:
    import torch

    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, torch.bfloat16 if bf16 else torch.float32) for _ in range(2))
    return lambda: torch.mm(a, b)


def _openvino_gemm(n: int) -> Callable[[], Any] | None:
    """An ``n``×``n`` MatMul by a constant ``n``×``n`` weight on OpenVINO's CPU plugin with the BF16
    precision hint (None without OpenVINO). On a CPU without BF16 in hardware OpenVINO computes it
    in FP32."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov
    import openvino.opset13 as ops

    from cmrt.runtime.threads import default_threads

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "gemm")
    config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    threads = default_threads()
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: request.infer({0: x})


def _ort_gemm(n: int) -> Callable[[], Any]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cmrt.runtime.backends import session_options

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in "ab"}
    return lambda: sess.run(None, feeds)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def load_average() -> float | None:
    """The 1-minute load average (other work on a shared machine skews timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the libraries that run the backends (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("cmrt", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "diffusers", "tensorrt",
             "tensorrt-rtx-cu13", "numpy")
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return {k: v for k, v in out.items() if v is not None}


def environment() -> dict[str, Any]:
    """Where the figures come from: CPU/GPU model, core count, versions, load."""
    import torch

    gpu = gpu_name()
    cores = os.cpu_count() or 1
    label = f"{gpu}" if gpu else f"{cpu_model()}, {cores} cores"
    return {"machine": label, "cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "platform": platform.platform(), "versions": versions(),
            "load_1m_start": load_average()}
