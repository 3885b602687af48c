"""Reduced precision on the CPU (issue 23): the issue's table, re-measured by one command, and each
reduced-precision result's PSNR against FP32 on the same inputs and noise. The timed callables
(``diffusers-bf16``, ``openvino-bf16``, ``openvino-f32``) live in ``benchmarks.backends``; the
machine's BF16 GEMM rate beside its FP32 one (the roofline in BF16's own terms) in
``benchmarks.measure.gemm_rates``.

    cmrt bench --suite bf16 --json b.json --markdown b.md       # the table, 5 paired rounds
    python -m benchmarks.bf16 [--rounds 5] [--json out.json]     # the same, the table printed
    python -m benchmarks.bf16 --gemm-only                        # the FP32 and BF16 GEMM rates
    python -m benchmarks.bf16 --int8 --cases imagenet            # bundles with their INT8 model added

The table: the decoder (``decoder-reduced``) at 64² and 256², 2 steps, batch 1, and the ImageNet-64
CM, 1 step, batch 4; contenders diffusers FP32, diffusers under ``torch.autocast("cpu",
dtype=torch.bfloat16)``, cmrt on ONNX Runtime FP32, OpenVINO FP32 and BF16 on cmrt's graph, timed
in paired rounds (``benchmarks.paired``); each result's PSNR against diffusers FP32 (PyTorch FP32,
the same weights and seeded noise) and its non-finite count; the backend cmrt picks by default here;
and the issue's targets stated met or not. With ``--int8`` each case's bundle first gets its INT8
model as ``cmrt export --int8`` adds it (shipped only where it holds and runs ≥ 1.3× BF16 here),
the INT8 model is timed too, and the default is whatever cmrt then picks (INT8 where its parity is
within BF16's tier: ``cmrt.runtime.openvino.int8_default``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import measure

#: paired name → what the table calls it, in its column order.
CONTENDERS = {"diffusers": "diffusers FP32", "diffusers-bf16": "diffusers + BF16 autocast",
              "cmrt": "cmrt ORT FP32", "openvino-f32": "OpenVINO FP32", "openvino-bf16": "OpenVINO BF16",
              "openvino-int8": "OpenVINO INT8"}
#: Timed only with ``--int8`` (the case's bundle then exported as ``cmrt export --int8`` would).
INT8_ONLY = ("openvino-int8",)
#: cmrt backend name (``cmrt.runtime.backends.default_backend_name``) → its paired contender.
DEFAULT_CONTENDER = {"onnxruntime": "cmrt", "onnxruntime-cpu": "cmrt", "openvino-bf16": "openvino-bf16",
                     "openvino-f32": "openvino-f32", "openvino-int8": "openvino-int8"}
ROUNDS = 5
#: A quality reference must match PyTorch FP32 this closely to be one (cmrt's FP32 graph does, ~1e-5).
SAME_NOISE_DB = 80.0


@dataclass(frozen=True)
class TableCase:
    label: str
    model: str
    resolution: int
    steps: int
    batch: int
    long_calls: bool  # calls of seconds: one timed call per round


CASES = (TableCase("decoder 64², 2 steps, batch 1", "decoder-reduced", 64, 2, 1, False),
         TableCase("decoder 256², 2 steps, batch 1", "decoder-reduced", 256, 2, 1, False),
         TableCase("ImageNet-64 CM, 1 step, batch 4", "imagenet64", 64, 1, 4, True))


@dataclass(frozen=True)
class Target:
    """cmrt's default ≥ ``factor`` × ``against`` on the cases whose label starts with one of ``cases``."""

    against: str
    factor: float
    cases: tuple[str, ...]


TARGETS = (Target("diffusers-bf16", 1.5, ("decoder 256²",)), Target("diffusers-bf16", 1.3, ("ImageNet-64",)),
           Target("diffusers", 2.0, ("decoder 256²", "ImageNet-64")))
MIN_PSNR = 40.0  # the quality target (cmrt.parity's FP16/BF16 floor)


def image_array(x: Any, sampler_pipeline: bool) -> np.ndarray:
    """A call's images as float32 numpy in [-1, 1] (diffusers' pipeline returns [0, 1])."""
    a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    return a * 2.0 - 1.0 if sampler_pipeline else a


def quality(outputs: dict[str, np.ndarray], reference: str) -> dict[str, dict]:
    """name → PSNR (dB) against ``reference``'s images and the count of non-finite values."""
    from cmrt.parity import psnr

    ref = outputs[reference]
    return {k: {"psnr_db": round(float(psnr(v, ref)), 1) if k != reference else None,
                "non_finite": int((~np.isfinite(v)).sum())} for k, v in outputs.items()}


def run_case(case: TableCase, cache: Path, rounds: int, log: Callable[[str], None], int8: bool = False) -> dict:
    """One row of the table: paired rounds of every contender, their quality and cmrt's default.
    ``int8``: the case's bundle with an INT8 model added as ``cmrt export --int8`` adds it (shipped
    only at ≥ 1.3× BF16 here), so the default may be INT8 (``openvino.int8_default``), and the INT8
    model timed beside the rest."""
    from dataclasses import replace

    from benchmarks.backends import int8_bundle
    from benchmarks.cases import MODELS, Case, case_flops, prepare, weights_digest
    from benchmarks.paired import _rounds, make_calls, ratios
    from cmrt.exporter.int8 import MIN_SPEEDUP
    from cmrt.runtime.backends import default_backend_name

    model = MODELS[case.model].load()
    bench_case = Case(case.model, case.resolution, case.steps, case.batch)
    prepared = prepare(model, weights_digest(model), bench_case, cache, ["onnxruntime-cpu"], gpu=False)
    if int8:
        prepared = replace(prepared, bundle=int8_bundle(prepared.bundle, MIN_SPEEDUP))
    gflop = case_flops(model, bench_case) * case.batch
    default = default_backend_name(prepared.bundle)
    names = [k for k in CONTENDERS if int8 or k not in INT8_ONLY]
    calls, absent = make_calls(names, prepared)
    absent.update({k: "not asked (--int8)" for k in CONTENDERS if k not in names})
    if "diffusers" not in calls or "cmrt" not in calls:
        raise RuntimeError(f"{case.label}: the table's FP32 references cannot run here: {absent}")
    load_start = measure.load_average()
    t0 = time.strftime("%H:%M", time.gmtime())
    samples = _rounds(calls, rounds, case.long_calls)
    pipeline = prepared.kind != "decoder"
    outputs = {k: image_array(c(), pipeline and k.startswith("diffusers")) for k, c in calls.items()}
    del calls
    measure.release_memory()
    q = quality(outputs, "diffusers")
    same_noise = q["cmrt"]["psnr_db"] is not None and q["cmrt"]["psnr_db"] >= SAME_NOISE_DB
    chosen = DEFAULT_CONTENDER.get(default, default)
    row = {"label": case.label, "model": case.model, "resolution": case.resolution, "steps": case.steps,
           "batch": case.batch, "rounds": rounds, "gflop": gflop, "utc": f"{t0}–{time.strftime('%H:%M', time.gmtime())}",
           "load_1m": [load_start, measure.load_average()], "samples_ms": samples,
           "median_ms": {k: float(np.median(v)) for k, v in samples.items()},
           "default_backend": default, "default_contender": chosen,
           "default_speedup": ratios(samples, chosen) if chosen in samples else None,
           "quality": q, "reference_same_noise": same_noise, "absent": absent}
    log(case_line(row))
    return row


def ratios_text(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def case_line(row: dict) -> str:
    times = ", ".join(f"{k} {v:.1f} ms" for k, v in row["median_ms"].items())
    sp = row["default_speedup"] or {}
    return (f"{row['label']} (load {row['load_1m'][0]} → {row['load_1m'][1]}): {times}; default "
            f"{row['default_backend']}: " + ", ".join(f"vs {k} {ratios_text(r)}" for k, r in sp.items()))


def verdicts(rows: list[dict]) -> list[dict]:
    """Each target on each of its cases: the default's per-round speed-up (median, minimum), its
    PSNR against PyTorch FP32 and non-finite count, met or not (median ≥ factor, PSNR ≥ 40 dB,
    no non-finite values)."""
    out = []
    for t in TARGETS:
        for row in rows:
            if not row["label"].startswith(t.cases) or not row["default_speedup"]:
                continue
            sp = row["default_speedup"][t.against]
            q = row["quality"][row["default_contender"]]
            psnr = q["psnr_db"]
            quality_ok = (psnr is None or psnr >= MIN_PSNR) and q["non_finite"] == 0 and row["reference_same_noise"]
            out.append({"case": row["label"], "target": f"default ≥ {t.factor}× {CONTENDERS[t.against]}",
                        "median": sp["median"], "min": sp["min"], "psnr_db": psnr, "non_finite": q["non_finite"],
                        "met": bool(sp["median"] >= t.factor and quality_ok),
                        "met_every_round": bool(sp["min"] >= t.factor and quality_ok)})
    return out


def table(result: dict) -> str:
    """The issue's table (median ms; PSNR vs diffusers FP32 and non-finite counts), the default's
    speed-ups and the targets, as markdown."""
    names = list(CONTENDERS)
    lines = ["| case | load | " + " | ".join(CONTENDERS.values()) + " | cmrt default |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for row in result["cases"]:
        cells = []
        for k in names:
            if k in row["absent"] or k not in row["median_ms"]:
                cells.append(f"absent: {row['absent'].get(k, 'not run')}")
                continue
            q = row["quality"][k]
            db = "" if q["psnr_db"] is None else f" ({q['psnr_db']:.1f} dB"
            nf = "" if not db else f", {q['non_finite']} non-finite)"
            bold = "**" if k == row["default_contender"] else ""
            cells.append(f"{bold}{row['median_ms'][k]:,.1f} ms{bold}{db}{nf}")
        lines.append(f"| {row['label']} ({row['rounds']} rounds, {row['utc']} UTC) | {row['load_1m'][0]} → "
                     f"{row['load_1m'][1]} | " + " | ".join(cells) + f" | {row['default_backend']} |")
    lines += ["", "| case | default's speed-up, median of per-round ratios (min–max) |", "|---|---|"]
    for row in result["cases"]:
        sp = row["default_speedup"] or {}
        lines.append(f"| {row['label']} | " + "; ".join(f"vs {CONTENDERS[k]} {ratios_text(r)}"
                                                         for k, r in sp.items()) + " |")
    lines += ["", "| target | case | median | min | PSNR | non-finite | met |", "|---|---|---|---|---|---|---|"]
    for v in result["targets"]:
        met = "**met**" if v["met"] else "**not met**"
        lines.append(f"| {v['target']} | {v['case']} | {v['median']:.2f}× | {v['min']:.2f}× | {v['psnr_db']} dB | "
                     f"{v['non_finite']} | {met}{' (every round)' if v['met_every_round'] else ''} |")
    g = result["gemm_gflops"]
    lines += ["", f"GEMM rates (GFLOP/s) before: {g['before']}; after: {g['after']}. Load (1 min) "
              f"{result['environment']['load_1m_start']} → {result['environment'].get('load_1m_end')}."]
    return "\n".join(lines)


def run(cache: Path, *, rounds: int = ROUNDS, cases: tuple[TableCase, ...] = CASES, log=print,
        gemm_size: int = measure.GEMM_SIZE, int8: bool = False) -> dict:
    """The table: GEMM rates (FP32 and BF16) before and after, every case in paired rounds."""
    t0 = time.perf_counter()
    env = measure.environment()
    before = measure.gemm_rates(gemm_size)
    log(f"machine: {env['machine']}; GEMM {before} GFLOP/s; load {env['load_1m_start']}")
    cache.mkdir(parents=True, exist_ok=True)
    rows = [run_case(c, cache, rounds, log, int8) for c in cases]
    after = measure.gemm_rates(gemm_size)
    env["load_1m_end"] = measure.load_average()
    result = {"environment": env, "gemm_gflops": {"before": before, "after": after}, "cases": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    result["targets"] = verdicts(rows)
    return result


def suite(cache: Path, *, rounds: int = ROUNDS, cases: tuple[TableCase, ...] = CASES, log=print,
          gemm_size: int = measure.GEMM_SIZE) -> dict:
    """``cmrt bench --suite bf16``: ``run`` as rows in the suites' format (one per case and
    contender; BF16 rows' share of the roofline against the BF16 GEMM rate), the table and the
    targets in ``notes`` (printed under the rows)."""
    from benchmarks.paired import suite_rows

    result = run(cache, rounds=rounds, cases=cases, log=log, gemm_size=gemm_size)
    g = result["gemm_gflops"]
    peaks = {p: max(g["before"][p]["peak"], g["after"][p]["peak"]) for p in g["before"]}
    rows = []
    for c in result["cases"]:
        one = {"model": c["model"], "environment": result["environment"], "gemm_gflops": {"peak": peaks["fp32"]},
               "gemm_by_precision": {"peak": peaks},
               "cases": {c["label"]: {"resolution": c["resolution"], "batch": c["batch"], "steps": c["steps"],
                                      "load_1m": c["load_1m"][1], "samples_ms": c["samples_ms"], "gflop": c["gflop"],
                                      "absent": c["absent"]}}}
        rows += suite_rows(one)
    return {"suite": "bf16", "environment": result["environment"], "gemm_gflops": g["before"]["fp32"],
            "rows": rows, "table": result, "notes": table(result), "seconds": result["seconds"]}


def select(prefixes: str | None) -> tuple[TableCase, ...]:
    """The cases whose label starts with one of the comma-separated ``prefixes`` (case-insensitive);
    all for None."""
    if prefixes is None:
        return CASES
    wanted = [x.strip().lower() for x in prefixes.split(",") if x.strip()]
    return tuple(c for c in CASES if any(c.label.lower().startswith(w) for w in wanted))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cases import DEFAULT_CACHE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path)
    p.add_argument("--gemm-only", action="store_true", help="only the FP32 and BF16 GEMM rates")
    p.add_argument("--n", type=int, default=measure.GEMM_SIZE, help="GEMM size")
    p.add_argument("--int8", action="store_true",
                   help="add an INT8 model to each case's bundle as `cmrt export --int8` does (shipped only at "
                        ">= 1.3x BF16 here; cmrt's default takes it where it holds BF16's tier) and time it too")
    p.add_argument("--cases", default=None, help="comma-separated label prefixes of the cases to run (default: all): "
                   + "; ".join(c.label for c in CASES))
    a = p.parse_args(argv)
    if a.gemm_only:
        print(json.dumps({"gemm_n": a.n, "gemm_gflop_per_s": measure.gemm_rates(a.n)}))
        return 0
    cases = select(a.cases)
    if not cases:
        p.error(f"--cases {a.cases!r} matches none of: {'; '.join(c.label for c in CASES)}")
    result = run(a.cache, rounds=a.rounds, gemm_size=a.n, cases=cases, int8=a.int8)
    if a.json:
        from cmrt._io import write_atomic

        write_atomic(a.json, lambda t: t.write_text(json.dumps(result, indent=1) + "\n"))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
