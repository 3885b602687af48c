"""Export time and peak memory of a pipeline bundle at the published sizes (issue 22, item 6):
a random-weight SD 1.5-sized LCM and an SDXL-sized one (``benchmarks.lcm_models``), each
exported by ``cmrt.exporter.pipeline.export_pipeline`` in a fresh process (imports included, as
``cmrt export`` pays them), with a cold network cache.

The parent watches the child's resident set and stops it above ``--max-gib`` (or when the
machine's available memory falls under ``MIN_AVAILABLE_GIB``), so an export too big for the
machine cannot take it down: the result then says where it stopped (the phase running) and the
peak reached. The child times every phase of the export (loading the folder, TorchScript tracing
and conversion in ``torch.onnx.export``, ONNX load and the save streaming the weights into one .data file, the checker, ONNX
Runtime's parity runs, hashing, OpenVINO's BF16 record) and reports its ``VmHWM``, overall and per
stretch between phase boundaries (``Peaks``).

    python -m benchmarks.lcm_export --size sd15 [--work /tmp/cmrt-lcm] [--max-gib 18] [--json out.json]
    python -m benchmarks.lcm_export --size sdxl --max-gib 18
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

GIB = 1024**3
POLL_S = 0.25
MIN_AVAILABLE_GIB = 1.5  # stop the child before the machine runs out
DEFAULT_WORK = Path("/tmp/cmrt-lcm")
PHASE = "PHASE "  # the child's stderr lines: PHASE <t> <enter|exit> <name>


# --- the child ---------------------------------------------------------------------------
class Peaks:
    """Peak resident set per stretch of the export: at every phase boundary the process's
    ``VmHWM`` since the last boundary is credited to the phases open over that stretch (the
    innermost named after ``>``) and then reset (``benchmarks.measure``'s ``clear_refs`` reset;
    where the kernel refuses it, each stretch reads the lifetime peak)."""

    def __init__(self) -> None:
        self.open: list[str] = []
        self.gib: dict[str, float] = {}

    def boundary(self, kind: str, label: str) -> None:
        from benchmarks.measure import peak_rss_gib, reset_peak_rss

        where = " > ".join(self.open) or "(between phases)"
        self.gib[where] = round(max(self.gib.get(where, 0.0), peak_rss_gib() or 0.0), 2)
        reset_peak_rss()
        if kind == "enter":
            self.open.append(label)
        elif label in self.open:
            self.open.remove(label)
        print(f"{PHASE}{time.time():.3f} {kind} {label}", file=sys.stderr, flush=True)


def _timed(owner, attr: str, label: str, totals: dict[str, float], peaks: Peaks) -> None:
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        peaks.boundary("enter", label)
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0
            peaks.boundary("exit", label)
    setattr(owner, attr, wrapper)


def _stage_timer(owner, totals: dict[str, float], peaks: Peaks) -> None:
    original = owner._export_and_check

    def wrapper(name, *args, **kwargs):
        peaks.boundary("enter", f"stage:{name}")
        t0 = time.perf_counter()
        try:
            return original(name, *args, **kwargs)
        finally:
            totals[f"stage:{name}"] = time.perf_counter() - t0
            peaks.boundary("exit", f"stage:{name}")
    owner._export_and_check = wrapper


def child(folder: Path, out: Path, steps: int) -> dict:
    """Export ``folder`` to ``out`` with every phase timed (runs in the fresh process)."""
    t_start = time.perf_counter()
    import onnx
    import torch

    import cmrt.exporter.pipeline as P
    import cmrt.exporter.unroll as U

    totals: dict[str, float] = {"imports": time.perf_counter() - t_start}
    peaks = Peaks()
    _timed(P, "load_pipeline", "load the diffusers folder", totals, peaks)
    _timed(torch.onnx, "export", "torch.onnx.export (TorchScript trace + conversion)", totals, peaks)
    _timed(onnx, "load", "onnx.load (graph only)", totals, peaks)
    _timed(U, "unroll", "unroll the traced step K times (ONNX)", totals, peaks)
    _timed(P, "save_one_data_file", "save the graph, weights streamed to one .data", totals, peaks)
    _timed(onnx.checker, "check_model", "onnx.checker", totals, peaks)
    _timed(P, "_run_onnx", "ONNX Runtime parity runs (session + run)", totals, peaks)
    _timed(P, "save_parity", "save parity npz", totals, peaks)
    _timed(P, "sha256_path", "hash the source folder", totals, peaks)
    _timed(P, "sha256_file", "hash bundle files", totals, peaks)
    _timed(P, "record_stages_at_export", "OpenVINO BF16 record per stage (compile + run)", totals, peaks)
    _stage_timer(P, totals, peaks)
    t0 = time.perf_counter()
    P.export_pipeline(folder, out=out, steps=steps, overwrite=True)
    total = time.perf_counter() - t0
    peaks.boundary("exit", "(end)")
    stages = {k: round(v, 1) for k, v in totals.items()}
    return {"export_s": round(total, 1), "phases_s": stages, "child_vmhwm_gib": max(peaks.gib.values()),
            "peak_gib_by_phase": peaks.gib}


# --- the parent --------------------------------------------------------------------------
def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("inf")


@contextmanager
def _stderr_file(path: Path):
    with open(path, "w+") as f:
        yield f


def watched(cmd: list[str], max_gib: float, log_path: Path, env: dict | None = None,
            min_available_gib: float = MIN_AVAILABLE_GIB) -> dict:
    """Run ``cmd``, sampling its resident set (with its children); stop it above ``max_gib`` or
    when the machine's available memory falls under ``min_available_gib``. Returns the wall time,
    its CPU time (user + system), the peak RSS seen, how it ended, the phase running at the peak and at the end, and its stdout."""
    import resource

    import psutil

    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with _stderr_file(log_path) as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        watched_proc = psutil.Process(proc.pid)
        peak, peak_t, stopped = 0.0, 0.0, None
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [watched_proc, *watched_proc.children(recursive=True)]) / GIB
            except psutil.NoSuchProcess:
                break
            if rss > peak:
                peak, peak_t = rss, time.time()
            if rss > max_gib or _available_gib() < min_available_gib:
                stopped = (f"stopped at {rss:.1f} GiB RSS (limit {max_gib} GiB)" if rss > max_gib else
                           f"stopped at {rss:.1f} GiB RSS: the machine had under {min_available_gib} GiB available")
                proc.kill()
                break
            time.sleep(POLL_S)
        out, _ = proc.communicate()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log_path.read_text()
    phases = [l[len(PHASE):].split(" ", 2) for l in text.splitlines() if l.startswith(PHASE)]
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_s, 1), "peak_rss_gib": round(peak, 2),
              "returncode": proc.returncode, "stopped": stopped,
              "phase_at_peak": _phase_at(phases, peak_t), "phase_at_end": _phase_at(phases, time.time())}
    lines = [l for l in (out or "").strip().splitlines() if l.startswith("{")]
    if lines:
        result |= json.loads(lines[-1])
    elif stopped is None:
        result["error"] = next((l for l in reversed(text.splitlines()) if l.strip() and not l.startswith(PHASE)), "")
    return result


def _phase_at(phases: list[list[str]], t: float) -> str | None:
    """The innermost phase open at time ``t`` (from the child's enter/exit lines)."""
    open_: list[str] = []
    for stamp, kind, name in phases:
        if float(stamp) > t:
            break
        if kind == "enter":
            open_.append(name)
        elif name in open_:
            open_.remove(name)
    return " > ".join(open_) if open_ else None


def build_folder(size: str, work: Path, max_gib: float, min_available_gib: float = MIN_AVAILABLE_GIB) -> tuple[Path, dict]:
    """The random-weight folder of ``size`` under ``work`` (built once, in a watched process)."""
    folder = work / size
    info: dict = {}
    if not (folder / "model_index.json").is_file():
        cmd = [sys.executable, "-c", "import sys; from pathlib import Path; from benchmarks.lcm_models import "
               "save_folder; save_folder(sys.argv[1], Path(sys.argv[2]))", size, str(folder)]
        info = watched(cmd, max_gib, work / f"build-{size}.log", min_available_gib=min_available_gib)
        if info["returncode"] != 0:
            raise RuntimeError(f"building the {size} folder failed: {info}")
    return folder, info


def measure_export(size: str, work: Path, max_gib: float, steps: int = 4) -> dict:
    """Build (once) and export the ``size`` folder in a watched fresh process, cold network cache."""
    from benchmarks import measure
    from benchmarks.lcm_models import fp32_bytes, parameter_counts

    work.mkdir(parents=True, exist_ok=True)
    folder, build = build_folder(size, work, max_gib)
    weights = fp32_bytes(folder)  # the weights as the exporter holds them (an FP16 folder is loaded as FP32)
    load = measure.load_average()
    env = {**os.environ, "CMRT_CACHE_DIR": str(work / f"cache-{size}-{time.time_ns()}")}
    cmd = [sys.executable, "-m", "benchmarks.lcm_export", "--child", str(folder), str(work / f"bundle-{size}"),
           "--steps", str(steps)]
    result = watched(cmd, max_gib, work / f"export-{size}.log", env=env)
    result |= {"size": size, "steps": steps, "parameters": parameter_counts(folder),
               "weights_fp32_gib": round(weights / GIB, 2), "peak_over_weights": round(result["peak_rss_gib"] * GIB / weights, 2),
               "load_1m_before": load, "load_1m_after": measure.load_average(), "max_gib": max_gib,
               "folder_build": build}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("sd15", "sdxl", "tiny"), default="sd15")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"folders and bundles (default {DEFAULT_WORK})")
    p.add_argument("--max-gib", type=float, default=18.0, help="stop the export above this RSS (default 18)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(Path(a.child[0]), Path(a.child[1]), a.steps)))
        return 0
    result = measure_export(a.size, a.work, a.max_gib, a.steps)
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
