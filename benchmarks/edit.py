"""The ``edit`` suite: editing graphs on ONNX Runtime against the same PyTorch editor in eager mode.

Per task (inpaint, superres ×4, stroke, colorize with an RGB model; denoise, one evaluation) and
per number of evaluations (2 and 4), the exported editor bundle runs through ``cmrt.Editor.edit``
on ONNX Runtime CPU and the module it was exported from (``UnrolledEditor``) runs in PyTorch eager
mode, on the same image, mask, labels and noise (both given the same pre-drawn noise: the graph's
compute and cmrt's input checks against PyTorch's compute). On a shared machine the speed drifts
between minutes, so the two are timed in paired rounds (``benchmarks.paired.paired_rounds``) and
each ratio is the median of the per-round ratios.

    cmrt bench --suite edit [--json e.json --markdown e.md]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import measure
from .cases import cache_key, weights_digest
from .paired import paired_rounds

BACKENDS = ("pytorch-eager", "onnxruntime-cpu")
BATCH = 4
ROUNDS = 9


@dataclass(frozen=True)
class EditCase:
    """One timed editing graph: a task of a model at a number of evaluations."""

    model: str  # "digits" (the bundled gray model) or "digits-color" (the RGB one)
    task: str
    steps: int
    factor: int | None = None


CASES = tuple(EditCase("digits", t, k, 4 if t == "superres" else None)
              for t in ("inpaint", "superres", "stroke") for k in (2, 4)) + (
    EditCase("digits-color", "colorize", 2), EditCase("digits-color", "colorize", 4),
    EditCase("digits", "denoise", 1))


def load(model: str):
    """The loaded model of a case (``cmrt.models.sources.load_model``)."""
    from cmrt.models.load import COLOR_MODEL
    from cmrt.models.sources import load_model

    return load_model(None if model == "digits" else COLOR_MODEL)


def editor_bundle(model, case: EditCase, cache: Path):
    """The case's editor bundle, exported into ``cache`` once per code version, weights and schedule."""
    from cmrt.bundle import Bundle
    from cmrt.exporter.api import export

    key = cache_key(weights_digest(model), case.task, case.steps, case.factor)
    out = cache / f"edit-{case.model}-{case.task}-{key}"
    if (out / "cmrt.json").is_file():
        return Bundle.open(out)
    options = {"sigmas": [0.5]} if case.task == "denoise" else {"steps": case.steps}
    return export(out=out, model=model, task=case.task, factor=case.factor, overwrite=True, **options)


def calls(model, bundle, batch: int = BATCH) -> dict[str, Callable[[], object]]:
    """The two timed callables on the same inputs (the parity-input recipe at ``batch``)."""
    import torch

    from cmrt.exporter.api import build_unrolled
    from cmrt.exporter.inputs import parity_inputs
    from cmrt.runtime.editor import Editor

    m = bundle.manifest
    feeds = parity_inputs(model.spec, m.steps, task=m.task, sigmas=m.schedule.sigmas, batch=batch, seed=1)
    module = build_unrolled(model, m.schedule, m.task)
    editor = Editor(bundle.path, backend="onnxruntime-cpu")
    arrays = {k: v.numpy() for k, v in feeds.items()}
    noise = [arrays[n] for n in m.noise_names] or None

    def eager():
        with torch.inference_mode():
            return module(*feeds.values())

    def onnxruntime():
        return editor.edit(arrays["image"], mask=arrays.get("mask"), class_labels=arrays.get("class_labels"),
                           noise=noise)
    return {"pytorch-eager": eager, "onnxruntime-cpu": onnxruntime}


def run(cache: Path, *, rounds: int = ROUNDS, log: Callable[[str], None] = print) -> dict:
    """Time every case in paired rounds; rows in the suites' format (``benchmarks.report``).

    Args:
        cache: where the editor bundles are exported once and reused.
        rounds: paired rounds per case (each: a pause, one untimed and three timed calls per backend).
        log: progress lines.
    """
    t0 = time.perf_counter()
    env = measure.environment()
    gemm = measure.gemm_rate()
    log(f"machine: {env['machine']}; fp32 GEMM {gemm} GFLOP/s; load {env['load_1m_start']}")
    cache.mkdir(parents=True, exist_ok=True)
    rows, models = [], {}
    for case in CASES:
        if case.model not in models:
            models[case.model] = _load_or_reason(case.model)
        model = models[case.model]
        if isinstance(model, str):
            rows += [_absent(case, b, model, env) for b in BACKENDS]
            continue
        bundle = editor_bundle(model, case, cache)
        samples = paired_rounds(calls(model, bundle), rounds)
        rows += _rows(case, model, samples, env, gemm["peak"])
        log(_line(case, rows[-2:]))
    env["load_1m_end"] = measure.load_average()
    return {"suite": "edit", "environment": env, "gemm_gflops": gemm, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def _load_or_reason(model: str):
    from cmrt.errors import CmrtError

    try:
        return load(model)
    except CmrtError as exc:
        return f"model not available: {exc}"


def _rows(case: EditCase, model, samples: dict[str, list[float]], env: dict, peak: float) -> list[dict]:
    from cmrt.models.unet import unet_flops

    size = model.spec.image_size
    gflop = unet_flops(model.unet.config, size, size) * max(case.steps, 1) / 1e9
    s = {k: np.asarray(v) for k, v in samples.items()}
    ratio = float(np.median(s["pytorch-eager"] / s["onnxruntime-cpu"]))
    rows = []
    for name in BACKENDS:
        median = float(np.median(s[name]))
        rows.append({"model": f"{case.model} {case.task}" + (f" ×{case.factor}" if case.factor else ""),
                     "backend": name, "precision": "fp32", "batch": BATCH, "steps": len(_sigmas(case)),
                     "resolution": size, "machine": env["machine"], "load_1m": measure.load_average(),
                     "status": "ok", "device": "cpu", "median_ms": median,
                     "p10_ms": float(np.percentile(s[name], 10)), "p90_ms": float(np.percentile(s[name], 90)),
                     "repeats": len(s[name]), "peak_mem_mb": measure.rss_mb(), "peak_rss_reset": False,
                     "gflop": gflop, "images_per_s": BATCH / (median / 1e3),
                     "gflop_per_s": gflop * BATCH / (median / 1e3),
                     "pct_peak": 100 * gflop * BATCH / (median / 1e3) / peak,
                     "speedup_vs_eager": 1.0 if name == "pytorch-eager" else ratio,
                     "speedup_range": [float(np.min(s["pytorch-eager"] / s["onnxruntime-cpu"])),
                                       float(np.max(s["pytorch-eager"] / s["onnxruntime-cpu"]))]})
    return rows


def _sigmas(case: EditCase) -> list:
    return [0.5] if case.task == "denoise" else [None] * case.steps


def _absent(case: EditCase, backend: str, reason: str, env: dict) -> dict:
    return {"model": f"{case.model} {case.task}", "backend": backend, "precision": "fp32", "batch": BATCH,
            "steps": case.steps, "resolution": 16, "machine": env["machine"], "status": "absent", "reason": reason,
            "device": "cpu", "gflop": None}


def _line(case: EditCase, rows: list[dict]) -> str:
    eager, ort = rows
    return (f"{case.model} {case.task} {ort['steps']} eval(s), batch {BATCH}: eager {eager['median_ms']:.1f} ms, "
            f"onnxruntime {ort['median_ms']:.1f} ms, eager/onnxruntime {ort['speedup_vs_eager']:.2f}× "
            f"(rounds {ort['speedup_range'][0]:.2f}–{ort['speedup_range'][1]:.2f})")
