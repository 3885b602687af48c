"""Decode latency targets, measured in paired rounds (issue 2).

On a shared VM the machine's speed drifts by ±15% between minutes, as much as the margins being
measured. Here every round times each backend in turn (a few calls back to back) on the same inputs, and the
ratios are the medians of the per-round ratios, so a slow minute slows both sides of a ratio.
Backends (``benchmarks/backends.py``): diffusers' ``ConsistencyDecoderVAE.decode`` with the same
weights, ``cmrt.Decoder.decode`` (seeded), a bare ``InferenceSession.run`` on cmrt's graph, and a
plain ``torch.onnx`` dynamo export on ONNX Runtime's defaults. The machine's fp32 GEMM rate is
measured before and after; the FLOP rate is ``unet_flops`` × steps over cmrt's median.

    python -m benchmarks.paired [--model decoder-reduced] [--resolutions 64,256] [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import measure
from benchmarks.backends import diffusers_own, onnxruntime_cpu, onnxruntime_plain, onnxruntime_session
from benchmarks.suites import DEFAULT_CACHE, MODELS, Case, _weights_digest, case_flops, prepare

BACKENDS = {"diffusers": diffusers_own, "cmrt": onnxruntime_cpu, "session": onnxruntime_session,
            "plain": onnxruntime_plain}
WARMUP = 2
SETTLE_S = 0.05  # pause before each backend's turn: threads the previous one left spinning go idle
PER_ROUND = 3


def paired_rounds(calls: dict, rounds: int, per_round: int = PER_ROUND) -> dict[str, list[float]]:
    """``rounds`` rounds; in each, every backend in turn gets a pause, one untimed call and
    ``per_round`` timed calls back to back (steady state, as in a loop of decodes), whose median is
    its sample for the round. Milliseconds. The pause keeps a backend from running beside threads
    the previous one left spinning (ONNX Runtime's default; the plain export uses it)."""
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(SETTLE_S)
            call()
            samples[name].append(float(np.median([measure.host_time(call) for _ in range(per_round)])))
    return samples


def summarize(samples: dict[str, list[float]], gflop: float, peak: float) -> dict:
    """Medians, per-round ratio medians, and cmrt's FLOP rate as a share of the GEMM peak."""
    s = {k: np.asarray(v) for k, v in samples.items()}
    median = {k: float(np.median(v)) for k, v in s.items()}
    return {
        "median_ms": median,
        "speedup_vs_diffusers": float(np.median(s["diffusers"] / s["cmrt"])),
        "speedup_vs_diffusers_range": [float(np.min(s["diffusers"] / s["cmrt"])), float(np.max(s["diffusers"] / s["cmrt"]))],
        "plain_speedup_vs_diffusers": float(np.median(s["diffusers"] / s["plain"])),
        "cmrt_vs_plain": float(np.median(s["plain"] / s["cmrt"])),
        "api_overhead": float(np.median(s["cmrt"] / s["session"]) - 1.0),
        "gflop": gflop,
        "cmrt_gflop_per_s": gflop / (median["cmrt"] / 1e3),
        "cmrt_pct_of_gemm_peak": 100.0 * gflop / (median["cmrt"] / 1e3) / peak,
    }


def run(model_key: str, resolutions: list[int], rounds: int, cache: Path, log=print) -> dict:
    env = measure.environment()
    gemm_before = measure.gemm_rate()
    log(f"machine: {env['machine']}; fp32 GEMM {gemm_before} GFLOP/s; load {env['load_1m_start']}")
    model = MODELS[model_key].load()
    digest = _weights_digest(model)
    cases = {}
    for res in resolutions:
        case = Case(model_key, res, 2)
        prepared = prepare(model, digest, case, cache, ["onnxruntime-cpu"], gpu=False)
        calls = {name: make(prepared) for name, make in BACKENDS.items()}
        cases[res] = {"samples_ms": paired_rounds(calls, rounds), "gflop": case_flops(model, case)}
        del calls
        measure.release_memory()
    gemm_after = measure.gemm_rate()
    peak = max(gemm_before["peak"], gemm_after["peak"])
    for res, c in cases.items():
        c.update(summarize(c["samples_ms"], c["gflop"], peak))
        log(_line(res, c))
    env["load_1m_end"] = measure.load_average()
    return {"model": model_key, "rounds": rounds, "environment": env, "gemm_gflops": {"before": gemm_before,
            "after": gemm_after, "peak": peak}, "cases": cases}


def _line(res: int, c: dict) -> str:
    m = c["median_ms"]
    return (f"{res}²: diffusers {m['diffusers']:.1f} ms, cmrt {m['cmrt']:.1f} ms (session {m['session']:.1f}, "
            f"plain export {m['plain']:.1f}); cmrt/diffusers {c['speedup_vs_diffusers']:.2f}× "
            f"(rounds {c['speedup_vs_diffusers_range'][0]:.2f}–{c['speedup_vs_diffusers_range'][1]:.2f}), "
            f"plain/diffusers {c['plain_speedup_vs_diffusers']:.2f}×, cmrt vs plain {c['cmrt_vs_plain']:.3f}×, "
            f"API overhead {100 * c['api_overhead']:+.1f}%, {c['cmrt_gflop_per_s']:.1f} GFLOP/s = "
            f"{c['cmrt_pct_of_gemm_peak']:.0f}% of GEMM peak")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="decoder-reduced", choices=sorted(MODELS))
    p.add_argument("--resolutions", default="64,256")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    result = run(a.model, [int(r) for r in a.resolutions.split(",")], a.rounds, a.cache)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
