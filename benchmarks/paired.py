"""Latency ratios and the share of the GEMM rate, measured in paired rounds (issues 2 and 14).

On a shared VM the machine's speed drifts by ±15% between minutes, as much as the margins being
measured. Here every round times each backend in turn (a few calls back to back) on the same inputs, and the
ratios are the medians of the per-round ratios, so a slow minute slows both sides of a ratio.
Backends (``benchmarks/backends.py``): diffusers' ``ConsistencyDecoderVAE.decode`` with the same
weights (for a consistency model: diffusers' ``ConsistencyModelPipeline``), ``cmrt.Decoder.decode``
/ ``cmrt.Sampler.sample`` (seeded), a bare ``InferenceSession.run`` on cmrt's graph, a plain
``torch.onnx`` dynamo export on ONNX Runtime's defaults, and cmrt's unrolled module in PyTorch eager
mode. The machine's fp32 GEMM rate is measured before and after; the FLOP rate is ``unet_flops`` ×
steps × batch over cmrt's median.

    python -m benchmarks.paired [--model decoder-reduced] [--resolutions 64,256] [--steps 2] [--batches 1]
        [--backends diffusers,cmrt,session,plain] [--rounds 15] [--json out.json]
    python -m benchmarks.paired --model imagenet64 --resolutions 64 --steps 1,2 --batches 1,4 \
        --backends diffusers,cmrt,eager --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import measure
from benchmarks.backends import BENCH_BACKENDS, REDUCED_PRECISION, Absent
from benchmarks.cases import DEFAULT_CACHE, MODELS, Case, case_flops, prepare, weights_digest

#: The paired runner's contenders: its short name → the suites' backend name (whose timed callable,
#: precision and FP32 twin are ``BENCH_BACKENDS``'). The reduced-precision contenders come in under
#: their own names from ``REDUCED_PRECISION`` (one entry each, in ``benchmarks.backends``).
SUITE_NAMES = {"diffusers": "diffusers", "cmrt": "onnxruntime-cpu", "session": "onnxruntime-session",
               "plain": "onnxruntime-plain", "eager": "pytorch-eager", "openvino-f32": "openvino-f32",
               **{name: name for name in REDUCED_PRECISION}, "openvino-int8": "openvino-int8"}
SHORT_NAMES = {v: k for k, v in SUITE_NAMES.items()}
BACKENDS = {short: BENCH_BACKENDS[name].make for short, name in SUITE_NAMES.items()}
DEFAULT_BACKENDS = "diffusers,cmrt,session,plain"
WARMUP = 2
SETTLE_S = 0.05  # pause before each backend's turn: threads the previous one left spinning go idle
PER_ROUND = 3


def paired_rounds(calls: dict, rounds: int, per_round: int = PER_ROUND, *, warmup: int = WARMUP,
                  untimed: int = 1) -> dict[str, list[float]]:
    """``rounds`` rounds; in each, every backend in turn gets a pause, ``untimed`` untimed calls and
    ``per_round`` timed calls back to back (steady state, as in a loop of decodes), whose median is
    its sample for the round. Milliseconds. The pause keeps a backend from running beside threads
    the previous one left spinning (ONNX Runtime's default; the plain export uses it). Calls of
    seconds (the published models) need no untimed call per round: ``untimed=0``, ``per_round=1``."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(SETTLE_S)
            for _ in range(untimed):
                call()
            samples[name].append(float(np.median([measure.host_time(call) for _ in range(per_round)])))
    return samples


def summarize(samples: dict[str, list[float]], gflop: float, peak: float) -> dict:
    """Medians, cmrt's per-round speed-up over every other backend (median and range), and cmrt's
    FLOP rate as a share of the GEMM peak."""
    s = {k: np.asarray(v) for k, v in samples.items()}
    median = {k: float(np.median(v)) for k, v in s.items()}
    out = {"median_ms": median, "gflop": gflop, "cmrt_gflop_per_s": gflop / (median["cmrt"] / 1e3),
           "cmrt_pct_of_gemm_peak": 100.0 * gflop / (median["cmrt"] / 1e3) / peak,
           "cmrt_speedup": ratios(samples, "cmrt")}
    if "session" in s:
        out["api_overhead"] = float(np.median(s["cmrt"] / s["session"]) - 1.0)
    return out


def ratios(samples: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """``base``'s per-round speed-up over every other backend: median, min and max of
    other/base over the rounds."""
    s = {k: np.asarray(v) for k, v in samples.items()}
    out = {}
    for name in s:
        if name != base:
            r = s[name] / s[base]
            out[name] = {"median": float(np.median(r)), "min": float(np.min(r)), "max": float(np.max(r))}
    return out


def run(model_key: str, resolutions: list[int], rounds: int, cache: Path, *, steps: list[int] = (2,),
        batches: list[int] = (1,), backends: list[str] | None = None, long_calls: bool = False, log=print,
        gemm_size: int = measure.GEMM_SIZE) -> dict:
    """Paired rounds on every (resolution, steps, batch) case of one model. ``long_calls``: calls of
    seconds, timed once per round after one warm-up call (no untimed call per round); ``gemm_size``:
    the GEMM-rate probe's matrix side."""
    names = backends or DEFAULT_BACKENDS.split(",")
    env = measure.environment()
    rates_before = measure.gemm_rates(gemm_size)
    gemm_before = rates_before["fp32"]
    log(f"machine: {env['machine']}; GEMM {rates_before} GFLOP/s; load {env['load_1m_start']}")
    model = MODELS[model_key].load()
    digest = weights_digest(model)
    cases = {}
    for res in resolutions:
        for n_steps in steps:
            for batch in batches:
                case = Case(model_key, res, n_steps, batch)
                prepared = prepare(model, digest, case, cache, ["onnxruntime-cpu"], gpu=False)
                calls, absent = make_calls(names, prepared)
                key = f"{res}:b{batch}:s{n_steps}"
                cases[key] = {"resolution": res, "batch": batch, "steps": n_steps, "load_1m": measure.load_average(),
                              "samples_ms": _rounds(calls, rounds, long_calls), "gflop": case_flops(model, case) * batch,
                              "absent": absent}
                del calls
                measure.release_memory()
                log(f"{key}: " + ", ".join(f"{k} {np.median(v):.1f} ms" for k, v in cases[key]["samples_ms"].items()))
    rates_after = measure.gemm_rates(gemm_size)
    gemm_after = rates_after["fp32"]
    peak = max(gemm_before["peak"], gemm_after["peak"])
    peaks = {p: max(rates_before[p]["peak"], rates_after[p]["peak"]) for p in rates_before}
    log(f"GEMM after: {rates_after} GFLOP/s")
    for key, c in cases.items():
        c.update(summarize(c["samples_ms"], c["gflop"], peak))
        log(_line(key, c))
    env["load_1m_end"] = measure.load_average()
    return {"model": model_key, "rounds": rounds, "backends": names, "environment": env,
            "gemm_gflops": {"before": gemm_before, "after": gemm_after, "peak": peak},
            "gemm_by_precision": {"before": rates_before, "after": rates_after, "peak": peaks}, "cases": cases}


def make_calls(names: list[str], prepared) -> tuple[dict, dict[str, str]]:
    """The timed callables of ``names`` on a prepared case, and the reason of each that cannot run
    here (``Absent``: e.g. OpenVINO not installed), which the rows list instead of dropping it."""
    calls, absent = {}, {}
    for name in names:
        try:
            calls[name] = BACKENDS[name](prepared)
        except Absent as exc:
            absent[name] = str(exc)
    return calls, absent


def _rounds(calls: dict, rounds: int, long_calls: bool) -> dict[str, list[float]]:
    if long_calls:
        return paired_rounds(calls, rounds, per_round=1, warmup=1, untimed=0)
    return paired_rounds(calls, rounds)


def _line(key: str, c: dict) -> str:
    m = c["median_ms"]
    times = ", ".join(f"{k} {v:.1f} ms" for k, v in m.items())
    ratios = ", ".join(f"vs {k} {r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})" for k, r in c["cmrt_speedup"].items())
    overhead = f", API overhead {100 * c['api_overhead']:+.1f}%" if "api_overhead" in c else ""
    return (f"{key}: {times}; cmrt {ratios}{overhead}; {c['cmrt_gflop_per_s']:.1f} GFLOP/s = "
            f"{c['cmrt_pct_of_gemm_peak']:.0f}% of GEMM peak")


#: the ``cm`` suite: the published OpenAI consistency-model UNets with random weights at
#: their sizes, batch 1 and 4, 1 and 2 steps; cmrt against diffusers' pipeline and PyTorch eager,
#: and the reduced-precision contenders (diffusers under BF16 autocast, cmrt on OpenVINO BF16).
CM_CASES = {"imagenet64": (64, 5), "lsun256": (256, 2)}  # model → (resolution, rounds)
CM_BACKENDS = ["diffusers", "cmrt", "eager", *REDUCED_PRECISION]


def cm_suite(cache: Path, log=print, *, models: dict[str, tuple[int, int]] | None = None,
             steps: list[int] = (1, 2), batches: list[int] = (1, 4), gemm_size: int = measure.GEMM_SIZE) -> dict:
    """``cmrt bench --suite cm``: paired rounds per model (calls of seconds: one timed call per
    round), as rows in the suites' format, one per case and backend."""
    t0 = time.perf_counter()
    rows, results = [], {}
    cache.mkdir(parents=True, exist_ok=True)
    for key, (res, rounds) in (models or CM_CASES).items():
        r = run(key, [res], rounds, cache, steps=list(steps), batches=list(batches), backends=CM_BACKENDS,
                long_calls=True, log=log, gemm_size=gemm_size)
        results[key] = r
        rows += suite_rows(r)
    first = next(iter(results.values()))
    return {"suite": "cm", "environment": first["environment"], "gemm_gflops": first["gemm_gflops"]["before"],
            "rows": rows, "paired": results, "seconds": round(time.perf_counter() - t0, 1)}


def suite_rows(result: dict) -> list[dict]:
    """One row per case and backend in ``benchmarks.report``'s format; ``speedup_vs_eager`` is the
    median of per-round ratios."""
    env = result["environment"]
    peaks = result.get("gemm_by_precision", {}).get("peak") or {"fp32": result["gemm_gflops"]["peak"]}
    rows = []
    for c in result["cases"].values():
        s = {k: np.asarray(v) for k, v in c["samples_ms"].items()}
        for name, samples in s.items():
            median = float(np.median(samples))
            ratio = float(np.median(s["eager"] / samples)) if "eager" in s else None
            backend = BENCH_BACKENDS[SUITE_NAMES[name]]
            peak, rate_of = rate_for(backend.precision, peaks)
            twin = SHORT_NAMES.get(backend.fp32_twin or "")
            vs_twin = ratios({twin: c["samples_ms"][twin], name: samples}, name)[twin] if twin in s else None
            twin_fields = {"paired_with": backend.fp32_twin, "paired_rounds": len(samples),
                           "speedup_vs_fp32_twin": vs_twin} if vs_twin else {}
            rows.append(twin_fields | {"model": result["model"], "backend": backend.name, "precision": backend.precision,
                         "pct_peak_of": rate_of,
                         "batch": c["batch"], "steps": c["steps"], "resolution": c["resolution"],
                         "machine": env["machine"], "load_1m": c["load_1m"], "status": "ok", "device": "cpu",
                         "median_ms": median, "p10_ms": float(np.percentile(samples, 10)),
                         "p90_ms": float(np.percentile(samples, 90)), "repeats": len(samples),
                         "peak_mem_mb": measure.rss_mb(), "peak_rss_reset": False, "gflop": c["gflop"] / c["batch"],
                         "images_per_s": c["batch"] / (median / 1e3), "gflop_per_s": c["gflop"] / (median / 1e3),
                         "pct_peak": 100 * c["gflop"] / (median / 1e3) / peak, "speedup_vs_eager": ratio})
        for name, reason in c.get("absent", {}).items():
            backend = BENCH_BACKENDS[SUITE_NAMES[name]]
            rows.append({"model": result["model"], "backend": backend.name, "precision": backend.precision,
                         "batch": c["batch"], "steps": c["steps"], "resolution": c["resolution"],
                         "machine": env["machine"], "load_1m": c["load_1m"], "status": "absent", "reason": reason,
                         "device": "cpu", "gflop": c["gflop"] / c["batch"]})
    return rows


def rate_for(precision: str, peaks: dict[str, float]) -> tuple[float, str]:
    """The GEMM rate a row's share of the roofline is read against: its own precision's where it was
    measured (BF16 rows: the BF16 rate), else the FP32 one; and which it is."""
    key = precision if precision in peaks else "fp32"
    return peaks[key], f"{key} GEMM"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="decoder-reduced", choices=sorted(MODELS))
    p.add_argument("--resolutions", default="64,256")
    p.add_argument("--steps", default="2")
    p.add_argument("--batches", default="1")
    p.add_argument("--backends", default=DEFAULT_BACKENDS, help=f"any of {', '.join(BACKENDS)}; cmrt is required")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--long-calls", action="store_true", help="one warm-up call, one timed call per round")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    names = a.backends.split(",")
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or "cmrt" not in names:
        p.error(f"--backends: choose from {', '.join(BACKENDS)}, including cmrt (got {a.backends})")
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    result = run(a.model, ints(a.resolutions), a.rounds, a.cache, steps=ints(a.steps), batches=ints(a.batches),
                 backends=names, long_calls=a.long_calls)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
