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

#: name → (its precision, its FP32 twin or None). The reduced-precision rows of the other suites
#: (``benchmarks.backends.REDUCED_PRECISION``): ``openvino-bf16`` runs here as ``cmrt.Editor`` on
#: OpenVINO; ``diffusers-bf16`` cannot (``ABSENT``), and its place (PyTorch under BF16 autocast, a
#: user's one line) is taken by ``pytorch-eager-bf16``, the same editor module under autocast.
BACKENDS = {"pytorch-eager": ("fp32", None), "onnxruntime-cpu": ("fp32", None),
            "pytorch-eager-bf16": ("bf16", "pytorch-eager"), "openvino-bf16": ("bf16", "onnxruntime-cpu")}
ABSENT = {"diffusers-bf16": "diffusers has no pipeline for these editing tasks (the suite's PyTorch side is cmrt's "
                            "own editor module: its BF16 autocast is the pytorch-eager-bf16 row)"}
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


def calls(model, bundle, batch: int = BATCH, backends=tuple(BACKENDS)) -> dict[str, Callable[[], object]]:
    """The timed callables on the same inputs (the parity-input recipe at ``batch``), images out as
    numpy; an OpenVINO one only where OpenVINO is installed."""
    import importlib.util

    import torch

    from cmrt.exporter.api import build_unrolled
    from cmrt.exporter.inputs import parity_inputs
    from cmrt.runtime.editor import Editor

    m = bundle.manifest
    feeds = parity_inputs(model.spec, m.steps, task=m.task, sigmas=m.schedule.sigmas, batch=batch, seed=1)
    module = build_unrolled(model, m.schedule, m.task)
    arrays = {k: v.numpy() for k, v in feeds.items()}
    noise = [arrays[n] for n in m.noise_names] or None

    def eager(bf16: bool = False):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(*feeds.values()).float().numpy()

    def runtime(name: str):
        editor = Editor(bundle.path, backend=name)
        return lambda: editor.edit(arrays["image"], mask=arrays.get("mask"), class_labels=arrays.get("class_labels"),
                                   noise=noise)
    makers = {"pytorch-eager": lambda: eager, "onnxruntime-cpu": lambda: runtime("onnxruntime-cpu"),
              "pytorch-eager-bf16": lambda: lambda: eager(True), "openvino-bf16": lambda: runtime("openvino-bf16")}
    ov = importlib.util.find_spec("openvino") is not None
    return {k: makers[k]() for k in backends if ov or not k.startswith("openvino")}


def run(cache: Path, *, rounds: int = ROUNDS, log: Callable[[str], None] = print) -> dict:
    """Time every case in paired rounds; rows in the suites' format (``benchmarks.report``).

    Args:
        cache: where the editor bundles are exported once and reused.
        rounds: paired rounds per case (each: a pause, one untimed and three timed calls per backend).
        log: progress lines.
    """
    t0 = time.perf_counter()
    env = measure.environment()
    rates = measure.gemm_rates()
    gemm, peaks = rates["fp32"], {p: r["peak"] for p, r in rates.items()}
    log(f"machine: {env['machine']}; GEMM {rates} GFLOP/s; load {env['load_1m_start']}")
    cache.mkdir(parents=True, exist_ok=True)
    rows, models = [], {}
    for case in CASES:
        if case.model not in models:
            models[case.model] = _load_or_reason(case.model)
        model = models[case.model]
        if isinstance(model, str):
            rows += [_absent(case, b, model, env) for b in (*BACKENDS, *ABSENT)]
            continue
        bundle = editor_bundle(model, case, cache)
        timed = calls(model, bundle)
        samples = paired_rounds(timed, rounds)
        images = {k: np.asarray(c(), dtype=np.float32) for k, c in timed.items()}
        del timed
        case_rows = _rows(case, model, samples, env, peaks, images)
        case_rows += [_absent(case, b, r, env) for b, r in ABSENT.items()]
        case_rows += [_absent(case, b, "openvino is not installed (pip install 'cmrt[openvino]')", env)
                      for b in BACKENDS if b not in samples]
        rows += case_rows
        log(_line(case, case_rows))
    env["load_1m_end"] = measure.load_average()
    return {"suite": "edit", "environment": env, "gemm_gflops": gemm, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def _load_or_reason(model: str):
    from cmrt.errors import CmrtError

    try:
        return load(model)
    except CmrtError as exc:
        return f"model not available: {exc}"


def _rows(case: EditCase, model, samples: dict[str, list[float]], env: dict, peaks: dict[str, float],
          images: dict[str, np.ndarray]) -> list[dict]:
    """One row per timed backend; ratios are medians of per-round ratios; a BF16 row's share of
    the roofline is of the BF16 GEMM rate, and it carries its speed-up over, PSNR against and
    non-finite count beside its FP32 twin."""
    from cmrt.models.unet import unet_flops
    from cmrt.parity import psnr

    from .paired import rate_for, ratios

    size = model.spec.image_size
    gflop = unet_flops(model.unet.config, size, size) * max(case.steps, 1) / 1e9
    s = {k: np.asarray(v) for k, v in samples.items()}
    rows = []
    for name in s:
        precision, twin = BACKENDS[name]
        median = float(np.median(s[name]))
        peak, rate_of = rate_for(precision, peaks)
        eager = float(np.median(s["pytorch-eager"] / s[name])) if "pytorch-eager" in s else None
        spread = [float(np.min(s["pytorch-eager"] / s[name])), float(np.max(s["pytorch-eager"] / s[name]))] \
            if "pytorch-eager" in s else None
        row = {"model": f"{case.model} {case.task}" + (f" ×{case.factor}" if case.factor else ""),
               "backend": name, "precision": precision, "batch": BATCH, "steps": len(_sigmas(case)),
               "resolution": size, "machine": env["machine"], "load_1m": measure.load_average(),
               "status": "ok", "device": "cpu", "median_ms": median,
               "p10_ms": float(np.percentile(s[name], 10)), "p90_ms": float(np.percentile(s[name], 90)),
               "repeats": len(s[name]), "peak_mem_mb": measure.rss_mb(), "peak_rss_reset": False,
               "gflop": gflop, "images_per_s": BATCH / (median / 1e3),
               "gflop_per_s": gflop * BATCH / (median / 1e3),
               "pct_peak": 100 * gflop * BATCH / (median / 1e3) / peak, "pct_peak_of": rate_of,
               "speedup_vs_eager": eager, "speedup_range": spread}
        if twin in s:
            row |= {"paired_with": twin, "paired_rounds": len(s[name]),
                    "speedup_vs_fp32_twin": ratios({twin: samples[twin], name: samples[name]}, name)[twin],
                    "psnr_vs_fp32_twin": round(float(psnr(images[name], images[twin])), 1),
                    "non_finite": int((~np.isfinite(images[name])).sum())}
        rows.append(row)
    return rows


def _sigmas(case: EditCase) -> list:
    return [0.5] if case.task == "denoise" else [None] * case.steps


def _absent(case: EditCase, backend: str, reason: str, env: dict) -> dict:
    precision = BACKENDS[backend][0] if backend in BACKENDS else "bf16"
    return {"model": f"{case.model} {case.task}", "backend": backend, "precision": precision, "batch": BATCH,
            "steps": case.steps, "resolution": 16, "machine": env["machine"], "status": "absent", "reason": reason,
            "device": "cpu", "gflop": None}


def _line(case: EditCase, rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    times = ", ".join(f"{r['backend']} {r['median_ms']:.1f} ms" + (f" ({r['speedup_vs_eager']:.2f}× eager)"
                                                                   if r["backend"] != "pytorch-eager" else "")
                      for r in ok)
    return f"{case.model} {case.task} {ok[0]['steps'] if ok else case.steps} eval(s), batch {BATCH}: {times}"
