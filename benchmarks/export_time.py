"""Export time: cmrt's export (network traced once; cold cache, network graph cached, both graphs
cached) against the whole unrolled sampler through ``torch.onnx.export(dynamo=True,
optimize=True)`` (how cmrt exported before, and what a user writes by hand), in paired rounds,
with cmrt's stage breakdown.

Every round runs each variant in a fresh process (imports included, as a user's ``cmrt export``
pays them), one after the other, so that a slow minute on a shared machine slows all of them.

    python -m benchmarks.export_time [--model digits] [--steps 2] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import measure

#: Each variant: the Python code a fresh process runs (``{out}``, ``{steps}``, ``{model}`` filled in).
_CMRT = ("import cmrt, json, time; t = time.perf_counter(); "
         "b = cmrt.export({model}, out={out!r}, steps={steps}, overwrite=True); "
         "g = b.manifest.graphs['fp32']; "
         "print(json.dumps({{'export_s': g.export_seconds, 'stages': g.export_stages, 'total_s': time.perf_counter() - t, "
         "'parity_max_abs': b.manifest.parity['onnxruntime-cpu/fp32'].outputs[0].max_abs}}))")
_WHOLE = ("import torch, json, time, logging, warnings; warnings.simplefilter('ignore'); "
          "logging.getLogger('torch.onnx').setLevel(logging.ERROR); "
          "from cmrt.models.sources import load_model; from cmrt.exporter.api import build_unrolled, resolve_schedule; "
          "from cmrt.exporter.inputs import parity_inputs; from cmrt.exporter.onnx import dynamic_shapes; "
          "m = load_model({model}); s = resolve_schedule(m.spec, {steps}); mod = build_unrolled(m, s); "
          "f = parity_inputs(m.spec, {steps}); t = time.perf_counter(); "
          "p = torch.onnx.export(mod, tuple(f.values()), input_names=list(f), output_names=['images'], "
          "dynamic_shapes=dynamic_shapes(m.spec.kind, len(f), spatial=m.spec.kind == 'decoder'), opset_version=20, "
          "dynamo=True, optimize=True, verbose=False); p.save({out!r} + '.onnx', external_data=True); "
          "print(json.dumps({{'export_s': time.perf_counter() - t}}))")


def run_variant(code: str, env: dict) -> dict:
    """Run one export in a fresh process; its JSON line plus the process's wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out | {"process_s": time.perf_counter() - t0}


def paired(model: str, steps: int, rounds: int) -> dict:
    """Rounds of: whole-sampler export, cmrt cold (empty network cache), cmrt warm."""
    model_arg = "None" if model == "digits" else repr(model)
    rows: dict[str, list[dict]] = {"whole-sampler torch.onnx (optimize=True)": [], "cmrt, cold cache": [],
                                   "cmrt, network cached (another step count)": [], "cmrt, both graphs cached": []}
    with tempfile.TemporaryDirectory(prefix="cmrt-export-time-") as tmp:
        for r in range(rounds):
            cold = Path(tmp) / f"cache-{r}"
            env = {**os.environ, "CMRT_CACHE_DIR": str(cold), "PYTHONWARNINGS": "ignore"}
            fill = {"model": model_arg, "steps": steps}
            rows["whole-sampler torch.onnx (optimize=True)"].append(
                run_variant(_WHOLE.format(out=f"{tmp}/whole{r}", **fill), env))
            rows["cmrt, cold cache"].append(run_variant(_CMRT.format(out=f"{tmp}/cold{r}", **fill), env))
            other = fill | {"steps": steps + 1}
            rows["cmrt, network cached (another step count)"].append(
                run_variant(_CMRT.format(out=f"{tmp}/net{r}", **other), env))
            rows["cmrt, both graphs cached"].append(run_variant(_CMRT.format(out=f"{tmp}/warm{r}", **fill), env))
    return rows


def summarize(rows: dict[str, list[dict]]) -> dict:
    out = {}
    for name, runs in rows.items():
        out[name] = {k: float(np.median([r[k] for r in runs])) for k in ("export_s", "process_s")}
        if "stages" in runs[0]:
            out[name]["stages"] = {s: float(np.median([r["stages"][s] for r in runs])) for s in runs[0]["stages"]}
            out[name]["parity_max_abs"] = max(r["parity_max_abs"] for r in runs)
    whole = rows["whole-sampler torch.onnx (optimize=True)"]
    for name in [n for n in rows if n.startswith("cmrt")]:
        ratios = [w["process_s"] / c["process_s"] for w, c in zip(whole, rows[name])]
        out[name]["speedup_vs_whole_process"] = float(np.median(ratios))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", help="'digits' (the bundled model) or a model source path")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    env = measure.environment()
    load_before = measure.load_average()
    rows = paired(a.model, a.steps, a.rounds)
    result = {"environment": env, "load_before": load_before, "load_after": measure.load_average(),
              "model": a.model, "steps": a.steps, "rounds": a.rounds, "summary": summarize(rows), "rows": rows}
    print(json.dumps(result["summary"], indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
