"""Results out: JSON (one row per case and backend), a markdown table, a PNG plot (latency against
resolution, one line per backend). Every file is written atomically (``cmrt._io.write_atomic``)."""

from __future__ import annotations

import json
from pathlib import Path

from cmrt._io import write_atomic
from cmrt.errors import ConfigError

REQUIRED_KEYS = ("model", "backend", "precision", "batch", "steps", "resolution", "median_ms", "p90_ms",
                 "images_per_s", "peak_mem_mb", "gflop", "pct_peak")
PLOT_DPI = 110
PANEL_INCHES = (5.0, 3.6)


def write_json(result: dict, path: Path) -> None:
    write_atomic(path, lambda t: t.write_text(json.dumps(result, indent=2) + "\n"))


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    """A markdown section: the machine, the GEMM peak, and one table row per case and backend."""
    env, gemm = result["environment"], result["gemm_gflops"]
    lines = [f"Suite `{result['suite']}` on **{env['machine']}** (torch threads {env['torch_threads']}; "
             f"load average {env['load_1m_start']} → {env.get('load_1m_end')}); measured fp32 GEMM: "
             + ", ".join(f"{k} {v} GFLOP/s" for k, v in gemm.items()) + f"; suite took {result['seconds']} s.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", "",
             "| model | res | batch | steps | backend | prec | median ms | p10 | p90 | img/s | × eager | "
             "GFLOP/img | GFLOP/s | % peak | peak RSS MB |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        head = f"| {r['model']} | {r['resolution']}² | {r['batch']} | {r['steps']} | {r['backend']} | {r['precision']} |"
        if r["status"] != "ok":
            lines.append(f"{head} absent: {r['reason']} |||||||||")
            continue
        lines.append(f"{head} {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['images_per_s']:.2f} | {_fmt(r.get('speedup_vs_eager'), '.2f')} | {r['gflop']:.2f} | "
                     f"{r['gflop_per_s']:.1f} | {r['pct_peak']:.1f} | {r['peak_mem_mb']:.0f} |")
    lines += _reduced_precision(result["rows"])
    if result.get("notes"):
        lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


def _reduced_precision(rows: list[dict]) -> list[str]:
    """Lines under the table: each reduced-precision row against its FP32 twin in paired rounds
    (speed-up, PSNR, non-finite values), or why it was not paired; ``% peak`` of a BF16 row is of
    the BF16 GEMM rate."""
    out = []
    for r in rows:
        head = f"- {r['model']} {r['resolution']}² b{r['batch']} s{r['steps']}: {r['backend']}"
        if "paired_absent" in r:
            out.append(f"{head} not paired with {r['paired_with']}: {r['paired_absent']}")
        elif r.get("paired_rounds"):
            s = r["speedup_vs_fp32_twin"]
            quality = (f", {r['psnr_vs_fp32_twin']} dB vs it, {r['non_finite']} non-finite"
                       if r.get("psnr_vs_fp32_twin") is not None else "")
            out.append(f"{head} {s['median']:.2f}× {r['paired_with']} (per-round {s['min']:.2f}–{s['max']:.2f}, "
                       f"{r['paired_rounds']} paired rounds){quality}")
    bf16 = any(r.get("pct_peak_of") == "bf16 GEMM" for r in rows)
    if out or bf16:
        out = ["", "Reduced precision" + (" (% peak of BF16 rows: of the measured BF16 GEMM rate)" if bf16 else "")
               + ":", *out]
    return out


def write_markdown(result: dict, path: Path) -> None:
    text = markdown(result)
    write_atomic(path, lambda t: t.write_text(text))


def plot(result: dict, path: Path) -> None:
    """One panel per model (and step count when a model has one resolution): median latency
    against resolution (log-log), one line per backend, p10–p90 as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["rows"] if r["status"] == "ok"]
    panels = _panels(ok)
    if not panels:
        raise ConfigError("no backend produced a timing: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]),
                             squeeze=False)
    for ax, (title, x_name, rows) in zip(axes[0], panels):
        for backend in dict.fromkeys(r["backend"] for r in rows):
            pts = sorted((r[x_name], r["median_ms"], r["p10_ms"], r["p90_ms"]) for r in rows if r["backend"] == backend)
            xs, med, lo, hi = zip(*pts)
            ax.errorbar(xs, med, yerr=[[m - l for m, l in zip(med, lo)], [h - m for m, h in zip(med, hi)]],
                        marker="o", capsize=3, label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r[x_name] for r in rows}), [str(v) for v in sorted({r[x_name] for r in rows})])
        ax.set_xlabel("output side (pixels)" if x_name == "resolution" else "steps")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"cmrt bench --suite {result['suite']} — {result['environment']['machine']}", fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda t: fig.savefig(t, dpi=PLOT_DPI, format="png"))
    plt.close(fig)


def _panels(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(title, x axis key, rows) per panel: latency vs resolution per model and step count, or vs
    steps for a model with a single resolution."""
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        if len({r["resolution"] for r in mine}) > 1:
            for steps in sorted({r["steps"] for r in mine}):
                sel = [r for r in mine if r["steps"] == steps]
                panels.append((f"{model}, {steps} step(s), batch {sel[0]['batch']}", "resolution", sel))
        else:
            panels.append((f"{model}, {mine[0]['resolution']}², batch {mine[0]['batch']}", "steps", mine))
    return panels
