"""Where the time goes, against the machine's GEMM rate: the roofline picture.

For each case (model, output side, batch, steps) the bundle's fp32 graph runs on ONNX Runtime's
CPU provider with its profiler on, with cmrt's session options; the kernel times of every run
after the first are summed by operator class (convolution, matmul/attention, normalization,
element-wise, layout, other), and the achieved rate (``unet_flops`` × steps × batch over the
median run) is set against the machine's fp32 GEMM rate measured in the same process, before and
after. Where OpenVINO is installed, the same graph also runs on OpenVINO with the BF16 precision
hint (cmrt's ``openvino-bf16`` backend, timed without a profiler): its rate is set against the
measured BF16 GEMM rate (``measure.gemm_rates``), each precision's row against its own rate. Writes a JSON record, a markdown table and a stacked-bar PNG (share of each run's time by
class, labelled with the share of the GEMM rate), so the next bottleneck is visible at a glance.

    python -m benchmarks.roofline [--cases decoder-reduced:64:1:2,decoder-reduced:256:1:2] [--runs 5]
        [--json benchmarks/results/roofline.json] [--png benchmarks/roofline.png]
    python -m benchmarks.roofline --plot-only --json benchmarks/results/roofline.json --png benchmarks/roofline.png

A case is ``model:side:batch:steps`` with a model of ``benchmarks.suites.MODELS``. Profiling adds a
little time per node; the shares are what the profiler saw, the rate is the median profiled run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks import measure
from benchmarks.cases import DEFAULT_CACHE, GIGA, MODELS, Case, case_flops, prepare, weights_digest

#: ONNX Runtime operator (as its profiler names it, after its own fusions) → class.
OP_CLASSES: dict[str, tuple[str, ...]] = {
    "convolution": ("Conv", "FusedConv", "ConvTranspose"),
    "matmul/attention": ("MatMul", "FusedMatMul", "Gemm", "Softmax", "Attention", "MultiHeadAttention",
                         "GroupQueryAttention", "MatMulNBits"),
    "normalization": ("InstanceNormalization", "GroupNormalization", "GroupNorm", "LayerNormalization",
                      "SimplifiedLayerNormalization", "BatchNormalization", "ReduceMean", "ReduceSumSquare",
                      "GlobalAveragePool", "ReduceSum"),
    "element-wise": ("Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Sigmoid", "QuickGelu", "Relu",
                     "Tanh", "Erf", "Exp", "Neg", "Clip", "Cast", "Where", "Sum", "BiasGelu", "Gelu"),
    "layout": ("ReorderInput", "ReorderOutput", "Reshape", "Transpose", "Concat", "Slice", "Split", "Expand",
               "Resize", "Upsample", "Identity", "Squeeze", "Unsqueeze", "Flatten", "AveragePool", "Gather",
               "Shape", "Tile", "Pad"),
}
CLASSES = (*OP_CLASSES, "other")
_CLASS_OF = {op: cls for cls, ops in OP_CLASSES.items() for op in ops}
COLORS = {"convolution": "#4c72b0", "matmul/attention": "#8172b2", "normalization": "#c44e52",
          "element-wise": "#dd8452", "layout": "#55a868", "other": "#937860"}
DEFAULT_CASES = "decoder-reduced:64:1:2,decoder-reduced:256:1:2"


def op_class(op: str) -> str:
    return _CLASS_OF.get(op, "other")


@dataclass(frozen=True)
class Profile:
    """One case's profile: milliseconds per run by operator and by class, and the run times;
    ``bf16_run_ms``: the same graph's runs on OpenVINO BF16 (empty without OpenVINO)."""

    case: str
    gflop: float
    run_ms: list[float]
    op_ms: dict[str, float]
    class_ms: dict[str, float]
    bf16_run_ms: list[float] = ()

    def bf16_gflop_per_s(self) -> float | None:
        return self.gflop / (float(np.median(self.bf16_run_ms)) / 1e3) if len(self.bf16_run_ms) else None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.run_ms))

    def gflop_per_s(self) -> float:
        return self.gflop / (self.median_ms / 1e3)


def parse_profile(events: list[dict], skip_runs: int = 1) -> tuple[list[float], dict[str, float]]:
    """Run times (ms) and the kernel time per operator (ms per run) from ONNX Runtime's profile
    events, leaving out the first ``skip_runs`` runs (allocation, first-touch)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise ValueError(f"the profile holds {len(runs)} runs; need more than {skip_runs}")
    start = runs[skip_runs - 1]["ts"] + runs[skip_runs - 1]["dur"] if skip_runs else 0
    kept = runs[skip_runs:]
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3
    return [r["dur"] / 1e3 for r in kept], {k: v / len(kept) for k, v in totals.items()}


def by_class(op_ms: dict[str, float]) -> dict[str, float]:
    out = {c: 0.0 for c in CLASSES}
    for op, ms in op_ms.items():
        out[op_class(op)] += ms
    return out


def profile_graph(graph: Path, feeds: dict[str, np.ndarray], runs: int, threads: int | None = None
                  ) -> tuple[list[float], dict[str, float]]:
    """Run ``graph`` ``runs`` + 1 times under ONNX Runtime's profiler with cmrt's CPU session
    options; the run times and per-operator kernel times of all but the first run."""
    import onnxruntime as ort

    from cmrt.runtime.backends import session_options

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return parse_profile(events)


def profile_case(spec: str, runs: int, cache: Path, threads: int | None = None) -> Profile:
    key, side, batch, steps = _parse_case(spec)
    model = MODELS[key].load()
    case = Case(key, side, steps, batch)
    prepared = prepare(model, weights_digest(model), case, cache, ["onnxruntime-cpu"], gpu=False)
    gflop = case_flops(model, case) * batch
    del model
    run_ms, op_ms = profile_graph(prepared.bundle.graph_path("fp32"), prepared.feeds, runs, threads)
    bf16 = openvino_bf16_runs(prepared.bundle.graph_path("fp32"), prepared.feeds, runs, threads)
    return Profile(spec, gflop, run_ms, op_ms, by_class(op_ms), bf16)


def openvino_bf16_runs(graph: Path, feeds: dict[str, np.ndarray], runs: int, threads: int | None = None
                       ) -> list[float]:
    """Milliseconds of ``runs`` runs of ``graph`` on cmrt's OpenVINO backend with the BF16 hint,
    after one untimed run; [] where OpenVINO is not installed."""
    from cmrt.runtime import openvino

    if not openvino.available():
        return []
    with openvino.OpenVinoBackend(graph, precision="bf16", threads=threads) as backend:
        backend.run(feeds)
        return [measure.host_time(lambda: backend.run(feeds)) for _ in range(runs)]


def _parse_case(spec: str) -> tuple[str, int, int, int]:
    parts = spec.split(":")
    if len(parts) != 4 or parts[0] not in MODELS or not all(p.isdigit() and int(p) > 0 for p in parts[1:]):
        raise SystemExit(f"bad case {spec!r}: use model:side:batch:steps with a model of {', '.join(MODELS)}")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def run(cases: list[str], runs: int, cache: Path, log=print) -> dict:
    env = measure.environment()
    rates_before = measure.gemm_rates()
    before = rates_before["fp32"]
    log(f"machine: {env['machine']}; GEMM {rates_before} GFLOP/s; load {env['load_1m_start']}")
    profiles = []
    for spec in cases:
        p = profile_case(spec, runs, cache)
        profiles.append(p)
        log(_line(p, before["peak"], rates_before["bf16"]["peak"]))
        measure.release_memory()
    rates_after = measure.gemm_rates()
    after = rates_after["fp32"]
    env["load_1m_end"] = measure.load_average()
    peak = max(before["peak"], after["peak"])
    bf16_peak = max(rates_before["bf16"]["peak"], rates_after["bf16"]["peak"])
    return {"environment": env, "gemm_gflops": {"before": before, "after": after, "peak": peak},
            "bf16_gemm_gflops": {"before": rates_before["bf16"], "after": rates_after["bf16"], "peak": bf16_peak},
            "runs": runs, "profiles": [asdict(p) | _rates(p, peak, bf16_peak) for p in profiles]}


def _rates(p: Profile, peak: float, bf16_peak: float) -> dict:
    """A profile's rates, each as a share of its own precision's GEMM rate."""
    out = {"median_ms": p.median_ms, "gflop_per_s": p.gflop_per_s(), "pct_of_gemm": 100 * p.gflop_per_s() / peak}
    bf16 = p.bf16_gflop_per_s()
    if bf16 is not None:
        out |= {"bf16_median_ms": float(np.median(p.bf16_run_ms)), "bf16_gflop_per_s": bf16,
                "bf16_pct_of_bf16_gemm": 100 * bf16 / bf16_peak}
    return out


def _line(p: Profile, peak: float, bf16_peak: float) -> str:
    total = sum(p.class_ms.values())
    shares = ", ".join(f"{c} {100 * ms / total:.1f}%" for c, ms in p.class_ms.items() if ms > 0)
    bf16 = p.bf16_gflop_per_s()
    ov = (f"; OpenVINO BF16 {np.median(p.bf16_run_ms):.1f} ms, {bf16:.1f} GFLOP/s = {100 * bf16 / bf16_peak:.0f}% "
          "of the BF16 GEMM rate") if bf16 is not None else ""
    return (f"{p.case}: ONNX Runtime FP32 {p.median_ms:.1f} ms, {p.gflop_per_s():.1f} GFLOP/s = "
            f"{100 * p.gflop_per_s() / peak:.0f}% of the FP32 GEMM rate; {shares}{ov}")


def markdown(result: dict) -> str:
    head = "| case (model:side:batch:steps) | GFLOP | median run | GFLOP/s | % of GEMM | " + \
           " | ".join(CLASSES) + " | top operators |"
    lines = [head, "|" + "---|" * (6 + len(CLASSES))]
    for p in result["profiles"]:
        total = sum(p["class_ms"].values())
        top = sorted(p["op_ms"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {p['case']} | {p['gflop']:.1f} | {p['median_ms']:.1f} ms | {p['gflop_per_s']:.1f} | "
                     f"**{p['pct_of_gemm']:.0f}%** | "
                     + " | ".join(f"{100 * p['class_ms'][c] / total:.1f}%" for c in CLASSES)
                     + " | " + ", ".join(f"{op} {100 * ms / total:.0f}%" for op, ms in top) + " |")
    bf16 = [p for p in result["profiles"] if p.get("bf16_gflop_per_s") is not None]
    if bf16:
        g = result["bf16_gemm_gflops"]
        lines += ["", f"Each precision against its own GEMM rate: FP32 {result['gemm_gflops']['peak']:.1f} GFLOP/s "
                  f"(PyTorch's BLAS or ONNX Runtime's MLAS, the faster), BF16 {g['peak']:.1f} GFLOP/s (PyTorch's "
                  "bfloat16 `torch.mm` or OpenVINO's BF16 MatMul, the faster).", "",
                  "| case | ONNX Runtime FP32 | % of FP32 GEMM | OpenVINO BF16 | % of BF16 GEMM |", "|---|---|---|---|---|"]
        lines += [f"| {p['case']} | {p['median_ms']:.1f} ms, {p['gflop_per_s']:.1f} GFLOP/s | {p['pct_of_gemm']:.0f}% | "
                  f"{p['bf16_median_ms']:.1f} ms, {p['bf16_gflop_per_s']:.1f} GFLOP/s | "
                  f"{p['bf16_pct_of_bf16_gemm']:.0f}% |" for p in bf16]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = result["profiles"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(profiles), 4.2))
    bottom = np.zeros(len(profiles))
    for c in CLASSES:
        share = np.array([100 * p["class_ms"][c] / sum(p["class_ms"].values()) for p in profiles])
        ax.bar(range(len(profiles)), share, bottom=bottom, color=COLORS[c], label=c)
        bottom += share
    for i, p in enumerate(profiles):
        ax.text(i, 101, f"{p['pct_of_gemm']:.0f}% of\nGEMM rate", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(profiles)), [p["case"].replace(":", "\n", 1) for p in profiles], fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_ylabel("share of ONNX Runtime kernel time (%)")
    peak = result["gemm_gflops"]["peak"]
    ax.set_title(f"Time by operator class; fp32 GEMM rate {peak:.0f} GFLOP/s", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--plot-only", action="store_true", help="redraw the table and PNG from --json")
    a = p.parse_args(argv)
    if a.plot_only:
        if a.json is None:
            raise SystemExit("--plot-only needs --json")
        result = json.loads(a.json.read_text())
    else:
        a.cache.mkdir(parents=True, exist_ok=True)
        result = run([c for c in a.cases.split(",") if c], a.runs, a.cache)
        if a.json:
            a.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    if a.png:
        plot(result, a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
