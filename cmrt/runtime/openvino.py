"""The OpenVINO backend, one room: open, run, close, its compiled-model cache, its parity record
and when it is the default.

OpenVINO reads the bundle's FP32 ONNX graph itself (its GroupNorms rewritten into 4-D operations
on the way in, so the network keeps one memory layout: ``cmrt.runtime.openvino_graph``) and
computes in the precision its ``INFERENCE_PRECISION_HINT`` asks for: ``openvino-bf16`` (BF16
matrix units: AVX512_BF16, AMX) or ``openvino-f32``; ``openvino`` is the precision this bundle's
record allows on this CPU (BF16 where its BF16 parity passed here, else FP32). The graph's batch
and spatial axes stay dynamic, so chunked and tiled decodes run the same compiled model at other
shapes.

``openvino-int8`` runs the bundle's INT8 model instead (OpenVINO IR, ``graphs["int8"]``, written by
``cmrt export --int8`` only where its parity passed and it ran ≥ 1.3× the path it replaces:
``cmrt.exporter.int8``), the float remainder of it in FP32. It is the default only where its
recorded parity is also within BF16's tier and it was timed faster than BF16 on a CPU of this
class (``int8_default``); elsewhere it runs only when named.

A BF16 result is a property of the CPU's instruction set as much as of the graph, so its parity
is recorded like a TensorRT engine's: ``cmrt check BUNDLE --backend openvino-bf16`` (and
``cmrt export`` on a CPU with native BF16) runs the stored parity inputs and writes a
``BackendRecord`` (CPU model, instruction-set class and flags, OpenVINO version, time, max abs,
PSNR, non-finite count, verdict) under ``manifest.backends["openvino-bf16/<isa class>"]``. On a
CPU with native BF16, runners opened with ``backend=None`` choose ``openvino-bf16`` when such a
record passed on a CPU of the same class and the same check timed it faster than ONNX Runtime FP32
on the same inputs (``default_choice``, the record's ``speed``: ``cmrt.runtime.speed``); a failed
record is never chosen and a request for it is refused. Tiny models can run faster on ONNX Runtime
FP32, whose per-operator overhead is lower; large ones run 1.5-2x faster in BF16
(benchmarks/RESULTS.md, "Reduced precision on the CPU").

The CPU's flags are read behind one seam, ``cpu_flags()``: ``$CMRT_CPU_FLAGS`` (space- or
comma-separated; set but empty = no flags) replaces ``/proc/cpuinfo``.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import OUTPUT_NAME, BackendRecord, Bundle, Cpu, GraphRecord, ParityRecord, SpeedRecord
from ..errors import BundleError, ConfigError, RunnerClosedError, require
from ..parity import within
from . import speed as timing
from .inputs import as_float32_output
from .limits import ShapeLimits
from .openvino_graph import group_norms_in_4d
from .stored import StoredRun, run_stored_inputs
from .threads import default_threads

#: backend name → the precision it computes in (None: the bundle's record decides, ``resolve``).
PRECISIONS: dict[str, str | None] = {"openvino": None, "openvino-bf16": "bf16", "openvino-f32": "fp32",
                                     "openvino-int8": "int8"}
#: cmrt's precision → OpenVINO's ``INFERENCE_PRECISION_HINT``. INT8: the INT8 model's quantized
#: convolutions and matmuls run in INT8 whatever the hint; the rest (normalizations, softmax, the
#: sampler arithmetic) in FP32, so its error is the quantization's alone.
HINTS = {"bf16": "bf16", "fp32": "f32", "int8": "f32"}
#: precision → backend name.
NAMES = {"bf16": "openvino-bf16", "fp32": "openvino-f32", "int8": "openvino-int8"}
#: precision → the bundle graph it runs (``Manifest.graphs``).
GRAPHS = {"bf16": "fp32", "fp32": "fp32", "int8": "int8"}
CPU_FLAGS_ENV = "CMRT_CPU_FLAGS"
CACHE_ENV = "CMRT_CACHE_DIR"
#: The flags the CPU plugin's kernels are chosen by (oneDNN's ISA tiers), as /proc/cpuinfo names them.
ISA_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f",
             "avx512bw", "avx2", "fma")
#: Instruction-set classes with BF16 in hardware (``isa_class``).
NATIVE_BF16 = ("amx-bf16", "avx512-bf16")
#: The backends ``default_choice`` may pick, fastest first (measured: benchmarks/RESULTS.md, "Reduced precision on the CPU").
FASTEST = ("openvino-bf16",)
#: Infer requests made up front; more are made when more threads call at once.
REQUESTS = 2


# --- the CPU ----------------------------------------------------------------------------------
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: ``$CMRT_CPU_FLAGS`` when set (the seam tests use), else the first
    ``flags`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    return frozenset(_cpuinfo_field("flags").split())


def cpu_model() -> str:
    """``/proc/cpuinfo``'s model name, else the platform's processor string."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def _cpuinfo_field(name: str) -> str:
    """The value of ``/proc/cpuinfo``'s first ``name`` line; "" where the file cannot be read
    (OSError: no such file off Linux) or has no such line."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(name)), "")
    return line.partition(":")[2].strip()


def isa_class(flags: frozenset[str] | set[str]) -> str:
    """The instruction-set class a CPU backend's kernels (and so its rounding) depend on."""
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx-bf16"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "baseline"


def this_cpu() -> Cpu:
    flags = cpu_flags()
    return Cpu(cpu_model(), isa_class(flags), tuple(sorted(flags & set(ISA_FLAGS))))


def native_bf16() -> bool:
    """Whether this CPU computes BF16 in hardware (AVX512_BF16 or AMX)."""
    return isa_class(cpu_flags()) in NATIVE_BF16


def cache_dir() -> Path:
    """OpenVINO's compiled-model cache: ``$CMRT_CACHE_DIR/openvino``, else ``~/.cache/cmrt/openvino``
    (beside the traced-network cache, ``cmrt.exporter.trace.network_cache_dir``)."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmrt"
    return root / "openvino"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


# --- the backend ------------------------------------------------------------------------------
class OpenVinoBackend:
    """A graph compiled by OpenVINO for the CPU. ``precision``: "bf16" or "fp32" (the precision
    hint), or "int8" (``graph`` is an INT8 model, its float remainder in FP32); ``threads``:
    inference threads (None: ``$CMRT_THREADS`` when set, else OpenVINO's latency default, one per
    physical core, as ONNX Runtime's); ``cache``: keep the compiled model in ``cache_dir()`` so a
    second process loads it instead of compiling; ``output``: the graph output ``run`` returns.

    The graph compiled is the one read with its GroupNorms in 4-D (``openvino_graph``; ``rewritten``
    says how many; an INT8 model is compiled as it is).

    Thread-safe: each call takes an infer request from a pool (one is made when all are busy) and
    returns it after copying the output out.
    """

    thread_safe = True
    limits = ShapeLimits()  # the graph's batch and latent axes stay dynamic
    device = "cpu"
    #: Tiled decodes: the statistics and shared-statistics graphs (``norm`` "shared", "shared-means")
    #: run here (``open_like``), but the layer-synchronous segments (``norm="canvas"``) stay on ONNX
    #: Runtime's CPU in FP32 with this backend's threads. On OpenVINO every segment (147 for the
    #: reduced decoder) is a model compiled apart and each (tile, segment) run pays OpenVINO's
    #: per-inference overhead: measured on the reduced decoder at 256² (``benchmarks/RESULTS.md``,
    #: "Reduced precision on the CPU, re-measured"), they opened 2.6× (FP32) / 1.5× (BF16) and decoded
    #: 2.3× / 2.0× slower than the same segments on ONNX Runtime FP32, so BF16 does not win there.
    #: ``False`` runs them here.
    segments_on_onnxruntime = True

    def __init__(self, graph: str | Path | bytes, *, precision: str = "bf16", threads: int | None = None,
                 cache: bool = True, output: str = OUTPUT_NAME, requests: int = REQUESTS,
                 label: str | None = None) -> None:
        """``graph``: an ONNX file, or a serialized ONNX model with its weights inside (the
        layer-synchronous segments, ``label`` naming it in messages)."""
        if precision not in HINTS:
            raise ConfigError(f"OpenVINO precision must be one of {sorted(HINTS)}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive int or None, got {threads!r}")
        ov = require("openvino", "openvino", "the OpenVINO backend")
        in_memory = isinstance(graph, bytes)
        self.graph = Path(label or "an in-memory graph") if in_memory else Path(graph)
        self.precision, self.threads, self.output, self._cache_on = precision, threads, output, cache
        self.name = NAMES[precision]
        self.library_version = ov.get_version()
        self.cache = cache_dir() if cache else None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        threads = threads or default_threads() or None  # $CMRT_THREADS, as ONNX Runtime's sessions
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if self.cache is not None:
            self.cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(self.cache)
        t0 = time.perf_counter()
        try:
            core = ov.Core()
            model = core.read_model(graph if in_memory else str(graph))
            # GroupNorms in 4-D (``openvino_graph``); not in an INT8 model: NNCF calibrated its
            # quantizers on the graph as it stands (measured: no faster, 51 dB from itself rewritten)
            self.rewritten = group_norms_in_4d(model) if precision != "int8" else 0
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with its whole log
            raise BundleError(f"{self.graph} could not be compiled by OpenVINO ({str(exc).strip().splitlines()[0]}): "
                              "re-export the bundle, or use backend='onnxruntime'") from None
        self.compile_seconds = time.perf_counter() - t0
        if precision == "int8" and not _quantized(self.compiled):
            raise ConfigError(f"{self.graph} holds no quantized operations: precision 'int8' runs an INT8 model "
                              "(`cmrt export --int8`, model.int8.xml); use precision 'bf16' or 'fp32' for this graph")
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        if output not in self.output_names:
            raise BundleError(f"{graph} has no output {output!r} (it has {self.output_names}): re-export the bundle")
        self.threads_used = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._pool: queue.SimpleQueue | None = queue.SimpleQueue()
        for _ in range(requests):
            self._pool.put(self.compiled.create_infer_request())

    def _request(self):
        pool, compiled = self._pool, self.compiled
        if pool is None or compiled is None:
            raise RunnerClosedError(f"the OpenVINO model of {self.graph} was closed")
        try:
            return pool, pool.get_nowait()
        except queue.Empty:
            return pool, compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_outputs(feeds, [self.output])[0]

    def run_outputs(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """The outputs ``names`` of one run, copied out (float outputs as float32)."""
        pool, request = self._request()
        try:
            request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return [as_float32_output(np.array(request.get_tensor(n).data, copy=True)) for n in names]
        finally:
            pool.put(request)

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph by name (float outputs as float32), copied out."""
        return dict(zip(self.output_names, self.run_outputs(feeds, self.output_names)))

    def open_like(self, graph: str | Path | bytes, *, output: str = OUTPUT_NAME, label: str | None = None
                  ) -> "OpenVinoBackend":
        """Another graph on OpenVINO with this backend's precision, threads and cache: a bundle's
        shared-statistics graphs and layer-synchronous segments (``cmrt.runtime.tiled.graphs``)
        run on the runner's own backend."""
        precision = "fp32" if self.precision == "int8" else self.precision  # other graphs are not quantized
        return OpenVinoBackend(graph, precision=precision, threads=self.threads, cache=self._cache_on,
                               output=output, label=label)

    def close(self) -> None:
        """Free the compiled model and its requests (the disk cache stays)."""
        self._pool, self.compiled = None, None

    def __enter__(self) -> "OpenVinoBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quantized(compiled) -> bool:
    """Whether a compiled model runs quantized operations (its runtime graph names each node's
    precision; INT8 kernels run in "i8"/"u8")."""
    key = "runtimePrecision"
    infos = (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
    return any(key in info and info[key].astype(str) in ("i8", "u8") for info in infos)


# --- records ------------------------------------------------------------------------------------
def record_key(name: str, isa: str) -> str:
    return f"{name}/{isa}"


def valid_record(records: dict[str, BackendRecord] | None, name: str, graph: GraphRecord | None,
                 cpu: Cpu | None = None) -> BackendRecord | None:
    """``name``'s record among ``records`` (a bundle's, or a pipeline stage's) for CPUs of
    ``cpu``'s class (default: this CPU), if it is for ``graph`` as it is now (its SHA-256)."""
    cpu = cpu or this_cpu()
    rec = (records or {}).get(record_key(name, cpu.isa))
    if rec is None or graph is None or rec.graph_sha256 != graph.sha256:
        return None
    return rec


def recorded(bundle: Bundle, name: str, cpu: Cpu | None = None) -> BackendRecord | None:
    """``name``'s record on this bundle for CPUs of ``cpu``'s class (default: this CPU), if it is
    for the bundle's current graph (the FP32 one; the INT8 model for ``openvino-int8``)."""
    graph = bundle.manifest.graphs.get(GRAPHS[PRECISIONS.get(name) or "fp32"])
    return valid_record(bundle.manifest.backends, name, graph, cpu)


def precision_for(name: str, records: dict[str, BackendRecord] | None, graph: GraphRecord | None) -> str:
    """The precision backend ``name`` computes in for a graph with these records: "openvino"
    means BF16 where the graph's BF16 record passed on a CPU of this class, else FP32."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown OpenVINO backend {name!r}; choose one of {sorted(PRECISIONS)}")
    precision = PRECISIONS[name]
    if precision is not None:
        return precision
    rec = valid_record(records, "openvino-bf16", graph)
    return "bf16" if rec is not None and rec.passed else "fp32"


def resolve(bundle: Bundle, name: str) -> str:
    """The precision backend ``name`` computes in on this bundle (``precision_for``)."""
    return precision_for(name, bundle.manifest.backends, bundle.manifest.graphs.get("fp32"))


def refuse_failed_record(name: str, rec: BackendRecord | None, where: str, recheck: str) -> None:
    """``ConfigError`` when ``rec`` (the record of the precision backend ``name`` would run) failed:
    ``where`` names what it ran on, ``recheck`` the command that checks it again."""
    if rec is not None and not rec.passed:
        raise ConfigError(f"backend {name!r}: its recorded parity on {where} FAILED on {rec.cpu.model} "
                          f"({rec.cpu.isa}, {_worst(rec)}): use backend='onnxruntime', or re-check with "
                          f"`{recheck}`")


def open_openvino(bundle: Bundle, name: str, *, refuse_failed: bool = True, **options: Any) -> OpenVinoBackend:
    """Open backend ``name`` on the bundle's FP32 graph (its INT8 model for ``openvino-int8``). A
    precision whose recorded parity failed on a CPU of this class is refused (``refuse_failed=False``:
    ``cmrt check`` re-checking it); so is INT8 on a bundle that holds no INT8 model."""
    precision = resolve(bundle, name)
    graph = int8_graph(bundle) if precision == "int8" else bundle.manifest.graphs.get("fp32")
    if graph is None:
        raise BundleError(f"{bundle.path} has no FP32 graph, which the OpenVINO backend reads: re-export it")
    if bundle.selected is not None and bundle.selected != graph.file:
        what = "INT8 model" if precision == "int8" else "FP32 graph"
        raise ConfigError(f"backend {name!r} runs the {what} {graph.file} in {precision}, not "
                          f"{bundle.selected}: open the bundle folder {bundle.path}")
    backend_name = NAMES[precision]
    if refuse_failed:
        refuse_failed_record(name, recorded(bundle, backend_name), str(bundle.path),
                             f"cmrt check {bundle.path} --backend {backend_name}")
    return OpenVinoBackend(bundle.path / graph.file, precision=precision, **options)


def int8_graph(bundle: Bundle):
    """The bundle's INT8 model, or ``ConfigError`` saying why there is none: never exported with
    ``--int8``, or its parity failed at export (the figures) so none was shipped."""
    record, graph = bundle.manifest.int8, bundle.manifest.graphs.get("int8")
    if graph is not None and record is not None and record.shipped:
        return graph
    if record is None:
        raise ConfigError(f"backend 'openvino-int8': {bundle.path} holds no INT8 model: export it with "
                          "`cmrt export ... --int8` (sampler and decoder bundles), or use backend='openvino-bf16'")
    out = record.parity.outputs[0] if record.parity.outputs else None
    figures = "no outputs" if out is None else (
        f"PSNR {out.psnr if out.psnr is not None else float('inf'):.1f} dB, max abs {out.max_abs:.3g} against the "
        f"int8 tier's PSNR ≥ {record.parity.min_psnr:g} dB, max abs ≤ {record.parity.max_abs_tolerance:g}")
    if not record.parity.passed or record.speed is None:
        why = f"its parity FAILED at export on {record.cpu.model} ({figures})"
    else:
        why = (f"at export on {record.cpu.model} it ran {timing.figures(record.speed, 3)}, short of the "
               f"{record.min_speedup:g}× asked (its parity passed: {figures})")
    raise ConfigError(f"backend 'openvino-int8': {bundle.path} ships no INT8 model: {why}, so none was written; use "
                      "backend='openvino-bf16' or 'onnxruntime' (or re-export with --int8-min-speedup 0)")


def for_check(bundle: Bundle, name: "str | Any | None") -> "str | Any | None":
    """What ``cmrt check`` opens for ``name``: an OpenVINO backend even where its record failed (a
    re-check may pass), any other name unchanged."""
    if isinstance(name, str) and name in PRECISIONS:
        return open_openvino(bundle, name, refuse_failed=False)
    return name


def record_parity(bundle: Bundle, backend: Any, run: StoredRun, speed: SpeedRecord | None = None
                  ) -> BackendRecord | None:
    """Write an OpenVINO backend's check result (``run``: its stored-input run; ``speed``: its
    timing against ONNX Runtime FP32, ``run_bundle_and_time``) into the bundle's manifest (atomically);
    other backends record nothing here."""
    if not isinstance(backend, OpenVinoBackend):
        return None
    rec = backend_record(backend, run, bundle.manifest.graphs[GRAPHS[backend.precision]], speed)
    bundle.update(backends={**(bundle.manifest.backends or {}), record_key(rec.backend, rec.cpu.isa): rec})
    return rec


def backend_record(backend: OpenVinoBackend, run: StoredRun, graph: GraphRecord,
                   speed: SpeedRecord | None = None) -> BackendRecord:
    """The record of ``backend``'s run of stored inputs on ``graph`` (on this CPU, now)."""
    non_finite = int(sum(int((~np.isfinite(v)).sum()) for v in run.actual.values()
                         if np.issubdtype(np.asarray(v).dtype, np.floating)))
    return BackendRecord(backend.name, backend.precision, "openvino", backend.library_version, graph.file,
                         graph.sha256, this_cpu(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         round(run.seconds, 6), non_finite, ParityRecord.of(run.report), speed)


def run_and_time(backend: OpenVinoBackend, inputs: dict[str, np.ndarray], run: Callable[[], StoredRun],
                 open_onnxruntime: Callable[[], Any]) -> tuple[StoredRun, SpeedRecord]:
    """Time the open ``backend`` on the stored ``inputs``, then ``run()`` them for parity (which
    closes it), then time ONNX Runtime FP32 (``open_onnxruntime()``) on the same inputs: the parity
    run and the speed the record keeps (``cmrt.runtime.speed.against``: never both backends open,
    as a pipeline stage's check needs)."""
    seconds = _or_close(backend, lambda: timing.timed(backend, inputs))
    stored = run()
    return stored, timing.against(seconds, "onnxruntime-cpu", open_onnxruntime, inputs,
                                 timing.describe_inputs(inputs, "the stored parity inputs"))


def run_bundle_and_time(bundle: Bundle, backend: OpenVinoBackend) -> tuple[StoredRun, SpeedRecord]:
    """A bundle's check with its timing: the open ``backend`` and ONNX Runtime FP32 on the FP32 graph
    in paired rounds (``cmrt.runtime.speed.paired``) on the stored inputs (a decoder's tiled to one
    256² image), then the parity run (which closes ``backend``)."""
    inputs, _ = bundle.parity_data()
    feeds, what = timing.timing_feeds(bundle.manifest, inputs, "the stored parity inputs", "the stored latents")
    return time_then_check(bundle, backend, "onnxruntime-cpu", fp32_on_onnxruntime(bundle), feeds, what)


def fp32_on_onnxruntime(bundle: Bundle) -> Callable[[], Any]:
    """Opens ONNX Runtime FP32 on the bundle's FP32 graph: what a reduced-precision backend is timed
    against (``time_then_check``)."""
    from .ort import OnnxRuntimeBackend

    return lambda: OnnxRuntimeBackend(bundle.graph_path("fp32"), device="cpu")


def time_then_check(bundle: Bundle, backend: Any, against: str, open_against: Callable[[], Any],
                    feeds: dict[str, np.ndarray], what: str) -> tuple[StoredRun, SpeedRecord]:
    """The open ``backend`` against ``against`` (opened by ``open_against()``) in paired rounds on
    ``feeds`` (``what`` they are), then its run of the bundle's stored parity inputs; ``backend``
    is closed after, or on a failure."""
    speed = _or_close(backend, lambda: timing.paired(backend, against, open_against, feeds,
                                                     timing.describe_inputs(feeds, what)))
    return run_stored_inputs(bundle, backend), speed


def _or_close(backend: Any, measure: Callable[[], Any]) -> Any:
    """``measure()``; ``backend`` is closed if it fails (the parity run after it closes it otherwise)."""
    try:
        return measure()
    except BaseException:
        backend.close()
        raise


def check_and_record(bundle: Bundle, name: str = "openvino-bf16") -> BackendRecord:
    """Run backend ``name`` on the stored parity inputs, compare with the stored PyTorch outputs,
    time it against ONNX Runtime FP32, and record the result (passed or not) in the manifest."""
    backend = open_openvino(bundle, name, refuse_failed=False)
    rec = record_parity(bundle, backend, *run_bundle_and_time(bundle, backend))
    assert rec is not None  # an OpenVinoBackend always records
    return rec


def record_at_export(bundle: Bundle) -> BackendRecord | None:
    """``cmrt export``'s step: on a CPU with native BF16 and OpenVINO installed, check and record
    ``openvino-bf16`` (a failure is recorded, so the backend is never chosen; the export stands)."""
    if not native_bf16() or not available():
        return None
    return check_and_record(bundle, "openvino-bf16")


# --- the default ----------------------------------------------------------------------------------
def default_choice(bundle: Bundle) -> str | None:
    """Where the CPU has native BF16 and OpenVINO is installed: the bundle's INT8 model where it may
    replace BF16 (``int8_default``), else the fastest backend whose recorded parity passed on a CPU
    of this one's class and that was timed faster than ONNX Runtime FP32 there
    (``fastest_passed``); None (ONNX Runtime FP32, as before) otherwise, and when the user pointed
    at a graph other than the FP32 one."""
    fp32 = bundle.manifest.graphs.get("fp32")
    if fp32 is None or (bundle.selected is not None and bundle.selected != fp32.file):
        return None
    if bundle.selected is None and native_bf16() and available() and int8_default(bundle):
        return "openvino-int8"
    return fastest_passed(bundle.manifest.backends, fp32)


def int8_default(bundle: Bundle) -> bool:
    """Whether the bundle's INT8 model is the default on this CPU: shipped, its backend record
    passed on a CPU of this class for the model as it is, timed faster than OpenVINO BF16 on a CPU
    of this class at export (``manifest.int8.speed``), and its parity within **BF16's** tier, the
    bar BF16 meets to be the default: INT8 replaces BF16 only where it is as close to PyTorch as
    BF16 must be (its own ``int8`` tier, which shipping asks, is looser)."""
    q, graph = bundle.manifest.int8, bundle.manifest.graphs.get("int8")
    if q is None or not q.shipped or graph is None or q.speed is None:
        return False
    rec = valid_record(bundle.manifest.backends, "openvino-int8", graph)
    return (rec is not None and rec.passed and q.cpu.isa == this_cpu().isa and q.speed.against == "openvino-bf16"
            and q.speed.speedup >= 1.0 and within(q.parity.outputs, "bf16"))


def fastest_passed(records: dict[str, BackendRecord] | None, graph: GraphRecord | None) -> str | None:
    """The fastest CPU backend whose record for ``graph`` passed on a CPU of this one's class and
    that was measured faster than ONNX Runtime FP32 there (``faster``), where this CPU has native
    BF16 and OpenVINO is installed; else None (ONNX Runtime FP32)."""
    if graph is None or not native_bf16() or not available():
        return None
    cpu = this_cpu()
    for name in FASTEST:
        rec = valid_record(records, name, graph, cpu)
        if rec is not None and rec.passed and faster(rec):
            return name
    return None


def faster(rec: BackendRecord) -> bool:
    """Whether the record's backend ran faster than ONNX Runtime FP32 where it was checked. A record
    without a timing (written before cmrt took one) counts as faster: the measured ranking
    (``FASTEST``) decided then."""
    return rec.speed is None or rec.speed.speedup >= 1.0


def record_lines(bundle: Bundle) -> tuple[str, ...]:
    """What the manifest says of each CPU backend record, and which backend a runner opens here."""
    return tuple(record_line(f"backend {key}", rec, recorded(bundle, rec.backend, rec.cpu) is rec)
                 for key, rec in sorted((bundle.manifest.backends or {}).items()))


def record_line(what: str, rec: BackendRecord, current: bool) -> str:
    """One line on a backend record (``current``: for the graph as it is now)."""
    stale = "" if current else " (for an older graph: re-check)"
    verdict = "passed" if rec.passed else "FAILED"
    return (f"{what}: {verdict} on {rec.cpu.model} (OpenVINO {rec.library_version}, {rec.when}), {_worst(rec)}"
            f"{timing.speed_line(rec.speed)}{stale}")


def _worst(rec: BackendRecord) -> str:
    outs = rec.result.outputs
    worst = max((o.max_abs if o.max_abs is not None else float("inf")) for o in outs) if outs else float("nan")
    psnrs = [o.psnr for o in outs if o.psnr is not None]
    psnr = f", PSNR {min(psnrs):.1f} dB" if psnrs else ""
    return f"max abs {worst:.3g}{psnr}, {rec.non_finite} non-finite"


__all__ = ["OpenVinoBackend", "open_openvino", "default_choice", "fastest_passed", "valid_record", "precision_for",
           "refuse_failed_record", "backend_record", "record_line", "check_and_record", "record_parity", "run_and_time",
           "run_bundle_and_time", "time_then_check", "fp32_on_onnxruntime", "faster", "int8_default",
           "record_at_export", "record_lines", "for_check", "cpu_flags", "this_cpu", "native_bf16", "isa_class",
           "cache_dir"]
