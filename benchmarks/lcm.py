"""``cmrt bench --suite lcm``: text to image with a latent consistency model, cmrt's pipeline
against what CPU users run today, on the same random-weight SD 1.5-sized LCM (the published
configurations, ``benchmarks.lcm_models``), 512², 4 steps, batch 1, in paired rounds
(``benchmarks.paired.paired_rounds``: each round runs every contender once, so a slow minute on a
shared machine slows all of them), per stage and end to end.

Contenders (every one draws its noise from ``torch.Generator().manual_seed(SEED)`` in diffusers'
order, so all start from the same latents):

- ``diffusers-fp32``: diffusers' ``LatentConsistencyModelPipeline`` (``output_type="pt"``);
- ``diffusers-bf16``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``optimum-openvino``: optimum-intel's ``OVLatentConsistencyModelPipeline`` exported from the same
  folder (``export=True``, its default precision);
- ``cmrt-ort-fp32``: ``cmrt.Pipeline`` on ONNX Runtime FP32;
- ``cmrt-default``: ``cmrt.Pipeline`` on its default backend, when ``Pipeline`` takes a
  ``backend`` argument (otherwise its default is ONNX Runtime FP32, already timed).

Stages: ``text`` (the text encoder), ``sampler`` (diffusers: the UNet's calls; cmrt: the unrolled
sampler graph, UNet and LCM steps), ``decoder`` (the VAE decode), ``rest`` (end to end minus the
three: tokenization, scheduler steps, noise, post-processing). cmrt's images are compared with
diffusers' FP32 ones (max abs, images in [-1, 1]); the others get a PSNR against them.

    python -m benchmarks.lcm [--size sd15] [--rounds 3] [--work /tmp/cmrt-lcm] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import measure, paired
from benchmarks.backends import Absent  # a contender that cannot run here (the reason is its message)

PROMPT = "a photograph of an astronaut riding a horse"
SEED = 0
STEPS = 4
RESOLUTION = 512
ROUNDS = 3
GUIDANCE = 8.5  # LatentConsistencyModelPipeline's default
MAX_GIB = 18.0  # the suite's process stops itself above this resident set (a shared 24 GiB machine)
STAGES = ("text", "sampler", "decoder")
REFERENCE = "diffusers-fp32"
CMRT = "cmrt-ort-fp32"


@dataclass
class Clock:
    """Seconds spent per stage in the current call (reset by each contender's call)."""

    current: dict[str, float] = field(default_factory=dict)

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        """Time every call of ``owner.attr`` (an instance attribute shadowing the method) as ``stage``."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[stage] = self.current.get(stage, 0.0) + time.perf_counter() - t0
        setattr(owner, attr, timed)


@dataclass
class Contender:
    name: str
    precision: str
    generate: Callable[[], np.ndarray]  # images (1, 3, H, W) in [-1, 1]
    clock: Clock
    note: str = ""
    calls: list[dict[str, float]] = field(default_factory=list)  # per call: stage → ms, "total" → ms

    def __call__(self) -> np.ndarray:
        self.clock.current = {}
        t0 = time.perf_counter()
        images = self.generate()
        total = time.perf_counter() - t0
        record = {s: 1e3 * self.clock.current[s] for s in STAGES if s in self.clock.current}
        record["total"] = 1e3 * total
        if all(s in record for s in STAGES):
            record["rest"] = record["total"] - sum(record[s] for s in STAGES)
        self.calls.append(record)
        return images


# --- contenders ----------------------------------------------------------------------------------
def _diffusers_pipe(folder: Path):
    import torch
    from diffusers import LatentConsistencyModelPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    pipe = LatentConsistencyModelPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    clock = Clock()
    clock.wrap(pipe.text_encoder, "forward", "text")
    clock.wrap(pipe.unet, "forward", "sampler")
    clock.wrap(pipe.vae, "decode", "decoder")
    return pipe, clock


def _diffusers_call(pipe, resolution: int, autocast: bool) -> Callable[[], np.ndarray]:
    import contextlib

    import torch

    def call() -> np.ndarray:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=resolution, width=resolution,
                       generator=torch.Generator().manual_seed(SEED), output_type="pt").images
        return out.float().numpy() * 2.0 - 1.0  # diffusers' [0, 1] (clamped) → [-1, 1]
    return call


def diffusers_contenders(folder: Path, resolution: int) -> list[Contender]:
    """diffusers FP32 and the same pipeline under BF16 autocast (one set of weights, one clock)."""
    pipe, clock = _diffusers_pipe(folder)
    out = [Contender(REFERENCE, "fp32", _diffusers_call(pipe, resolution, False), clock)]
    if _has_bf16():
        out.append(Contender("diffusers-bf16", "bf16 autocast", _diffusers_call(pipe, resolution, True), clock))
    else:
        out.append(_absent("diffusers-bf16", "bf16 autocast", "this CPU has no avx512_bf16/amx: autocast to bfloat16 "
                                                              "would be emulated"))
    return out


def _has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def optimum_openvino(folder: Path, resolution: int) -> Contender:
    """optimum-intel's OpenVINO LCM pipeline exported from ``folder`` (its default precision)."""
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.intel") is None:
        raise Absent("optimum-intel is not installed: optimum-intel 2.2.0 needs transformers<5.6 and torchvision "
                     "(which pins another torch), so installing it would replace this venv's torch 2.13 CPU build "
                     "and transformers 5.24")
    import torch
    from optimum.intel import OVLatentConsistencyModelPipeline

    pipe = OVLatentConsistencyModelPipeline.from_pretrained(str(folder), export=True)
    pipe.set_progress_bar_config(disable=True)
    clock = Clock()
    clock.wrap(pipe.text_encoder, "forward", "text")
    clock.wrap(pipe.unet, "forward", "sampler")
    clock.wrap(pipe.vae, "decode", "decoder")

    def call() -> np.ndarray:
        out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=resolution, width=resolution,
                   generator=torch.Generator().manual_seed(SEED), output_type="pt").images
        return np.asarray(out, dtype=np.float32) * 2.0 - 1.0
    hint = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT") if hasattr(pipe.unet, "request") else "?"
    return Contender("optimum-openvino", f"OpenVINO default ({hint})", call, clock)


def _pipeline_takes_backend() -> bool:
    import cmrt

    return "backend" in inspect.signature(cmrt.Pipeline.__init__).parameters


def cmrt_contenders(bundle: Path, resolution: int) -> list[Contender]:
    """cmrt's pipeline on ONNX Runtime FP32 and on its default backend (when it has a choice)."""
    import cmrt

    takes_backend = _pipeline_takes_backend()
    options = {"backend": "onnxruntime-cpu"} if takes_backend else {"device": "cpu"}
    out = [_cmrt(CMRT, "fp32", cmrt.Pipeline(bundle, **options), resolution)]
    if takes_backend:
        pipe = cmrt.Pipeline(bundle)
        chosen = ", ".join(f"{n} {b} [{p}]" for n, (b, p) in getattr(pipe, "stage_backends", {}).items())
        out.append(_cmrt("cmrt-default", chosen or "default", pipe, resolution))
    else:
        out.append(_absent("cmrt-default", "default", "cmrt.Pipeline takes no backend argument in this checkout: its "
                                                      "default is ONNX Runtime FP32, timed as cmrt-ort-fp32"))
    return out


def _cmrt(name: str, precision: str, pipe, resolution: int) -> Contender:
    clock = Clock()
    stages = getattr(pipe, "_stages", None) or {}  # stage name → its open backend (cmrt.runtime.stages)
    for stage, label in (("text_encoder", "text"), ("sampler", "sampler"), ("decoder", "decoder")):
        method = next((m for m in ("run_all", "run") if hasattr(stages.get(stage), m)), None)
        if method is not None:
            clock.wrap(stages[stage], method, label)
    return Contender(name, precision, lambda: np.asarray(pipe.generate(PROMPT, height=resolution, width=resolution,
                                                                       seed=SEED, guidance_scale=GUIDANCE)), clock)


def _absent(name: str, precision: str, reason: str) -> Contender:
    c = Contender(name, precision, lambda: None, Clock())
    c.note = reason
    return c


# --- the suite -----------------------------------------------------------------------------------
def prepare(size: str, work: Path, log: Callable[[str], None]) -> tuple[Path, Path]:
    """The random-weight folder (built once) and cmrt's bundle of it (exported once)."""
    from benchmarks.lcm_export import build_folder
    from cmrt.exporter.pipeline import export_pipeline

    work.mkdir(parents=True, exist_ok=True)
    folder, _ = build_folder(size, work, MAX_GIB)
    bundle = work / f"bundle-{size}"
    if not (bundle / "pipeline.json").is_file():
        t0 = time.perf_counter()
        export_pipeline(folder, out=bundle, steps=STEPS, overwrite=True)
        log(f"exported {bundle} in {time.perf_counter() - t0:.0f} s")
    return folder, bundle


def _guard(max_gib: float, log: Callable[[str], None]) -> None:
    """Stop this process above ``max_gib`` of resident memory (a daemon thread)."""
    import psutil

    me = psutil.Process()

    def watch():
        while True:
            rss = me.memory_info().rss / 2**30
            if rss > max_gib:
                log(f"stopping: resident set {rss:.1f} GiB > {max_gib} GiB")
                os._exit(3)
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True).start()


def run(work: Path, *, size: str = "sd15", resolution: int = RESOLUTION, rounds: int = ROUNDS,
        log: Callable[[str], None] = print, max_gib: float = MAX_GIB, contenders: list[str] | None = None,
        folder: Path | None = None, bundle: Path | None = None) -> dict:
    """Build, export and time every contender in paired rounds (one timed call each per round).
    ``folder`` and ``bundle``: an LCM folder and cmrt's bundle of it to time instead (the tests'
    tiny ones); otherwise the ``size`` folder under ``work`` (built and exported once).

    Returns ``{"suite": "lcm", "environment", "gemm_gflops", "rows", "lcm": {...}, "seconds"}``;
    ``lcm`` holds per contender the per-round samples, stage medians and shares, the image check,
    and cmrt's per-round speed-up over each other contender.
    """
    t_start = time.perf_counter()
    _guard(max_gib, log)
    env = measure.environment()
    gemm = measure.gemm_rate(measure.GEMM_SIZE if size != "tiny" else 256)
    log(f"machine: {env['machine']}; fp32 GEMM {gemm} GFLOP/s; load {env['load_1m_start']}")
    if folder is None or bundle is None:
        folder, bundle = prepare(size, work, log)
    pool = diffusers_contenders(folder, resolution)
    try:
        pool.append(optimum_openvino(folder, resolution))
    except Absent as exc:
        pool.append(_absent("optimum-openvino", "OpenVINO default", str(exc)))
    pool += cmrt_contenders(bundle, resolution)
    if contenders is not None:
        pool = [c for c in pool if c.name in contenders]
    live = {c.name: c for c in pool if not c.note}
    absent = {c.name: c.note for c in pool if c.note}
    for name, why in absent.items():
        log(f"{name}: absent ({why})")
    load_start = measure.load_average()
    images = {name: c() for name, c in live.items()}  # the warm-up call of each, kept for the image check
    check = image_check(images)
    log("images: " + json.dumps(check))
    samples = paired.paired_rounds(dict(live), rounds, per_round=1, warmup=0, untimed=0)
    result = summarize(live, samples, rounds)
    result |= {"images": check, "absent": absent, "size": size, "resolution": resolution, "steps": STEPS,
               "rounds": rounds, "load_1m": [load_start, measure.load_average()], "seed": SEED, "prompt": PROMPT,
               "guidance_scale": GUIDANCE, "bundle": str(bundle), "folder": str(folder)}
    for line in describe(result):
        log(line)
    env["load_1m_end"] = measure.load_average()
    return {"suite": "lcm", "environment": env, "gemm_gflops": gemm, "rows": rows(result, env, live, absent),
            "lcm": result, "seconds": round(time.perf_counter() - t_start, 1)}


def image_check(images: dict[str, np.ndarray]) -> dict:
    """cmrt's images against diffusers FP32 (max abs); every other contender's PSNR against it;
    the reference's share of saturated pixels (random weights push many to ±1)."""
    from cmrt.parity import psnr, tolerance_for

    ref = images.get(REFERENCE)
    if ref is None:
        return {}
    out: dict[str, Any] = {"reference_saturated_share": float(np.mean(np.abs(ref) >= 1.0 - 1e-6)),
                           "reference_std": float(ref.std())}
    for name, im in images.items():
        if name == REFERENCE:
            continue
        out[name] = {"max_abs_vs_diffusers_fp32": float(np.max(np.abs(im - ref))),
                     "psnr_db_vs_diffusers_fp32": round(float(psnr(im, ref)), 1), "shape": list(im.shape)}
        if name.startswith("cmrt") and "fp32" in name:
            out[name]["within_fp32_tolerance"] = out[name]["max_abs_vs_diffusers_fp32"] <= tolerance_for("fp32").max_abs
    return out


def summarize(live: dict[str, Contender], samples: dict[str, list[float]], rounds: int) -> dict:
    """Per contender: end-to-end samples and median, per-stage medians and shares of the median
    total; cmrt's per-round speed-up over each other contender (median, min, max)."""
    out: dict[str, Any] = {"contenders": {}, "cmrt_speedup": {}}
    for name, c in live.items():
        timed = c.calls[-rounds:]
        stages = {s: float(np.median([r[s] for r in timed])) for s in (*STAGES, "rest") if all(s in r for r in timed)}
        total = float(np.median(samples[name]))
        out["contenders"][name] = {"precision": c.precision, "samples_ms": samples[name], "median_ms": total,
                                   "stages_ms": stages,
                                   "stage_shares": {s: v / total for s, v in stages.items()}}
    if CMRT in samples:
        base = np.asarray(samples[CMRT])
        for name, s in samples.items():
            if name != CMRT:
                r = np.asarray(s) / base
                out["cmrt_speedup"][name] = {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
    return out


def describe(result: dict) -> list[str]:
    lines = []
    for name, c in result["contenders"].items():
        stages = ", ".join(f"{s} {v / 1e3:.2f} s ({100 * c['stage_shares'][s]:.0f}%)" for s, v in c["stages_ms"].items())
        lines.append(f"{name} [{c['precision']}]: {c['median_ms'] / 1e3:.2f} s end to end; {stages}")
    for name, r in result["cmrt_speedup"].items():
        lines.append(f"{CMRT} vs {name}: {r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})")
    return lines


def rows(result: dict, env: dict, live: dict, absent: dict) -> list[dict]:
    """One row per contender in ``benchmarks.report``'s format (no FLOP count: GFLOP fields are 0)."""
    base = {"model": f"lcm-{result['size']}", "batch": 1, "steps": result["steps"], "resolution": result["resolution"],
            "machine": env["machine"], "load_1m": result["load_1m"][0], "device": "cpu", "gflop": 0.0,
            "gflop_per_s": 0.0, "pct_peak": 0.0}
    out = []
    for name, c in result["contenders"].items():
        s = np.asarray(c["samples_ms"])
        ratio = result["cmrt_speedup"].get(name, {}).get("median")
        out.append(base | {"backend": name, "precision": c["precision"], "status": "ok", "median_ms": c["median_ms"],
                           "p10_ms": float(np.percentile(s, 10)), "p90_ms": float(np.percentile(s, 90)),
                           "repeats": len(s), "images_per_s": 1e3 / c["median_ms"], "peak_mem_mb": measure.rss_mb(),
                           "peak_rss_reset": False, "speedup_vs_eager": None, "cmrt_speedup": ratio,
                           "stages_ms": c["stages_ms"]})
    for name, why in absent.items():
        out.append(base | {"backend": name, "precision": "–", "status": "absent", "reason": why, "median_ms": None,
                           "p90_ms": None, "images_per_s": None, "peak_mem_mb": None})
    return out


def suite(cache: Path, log: Callable[[str], None] = print) -> dict:
    """``cmrt bench --suite lcm``: the SD 1.5-sized LCM under ``cache/lcm``."""
    return run(cache / "lcm", log=log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    p.add_argument("--resolution", type=int, default=None, help="image side (default 512; 64 for tiny)")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--work", type=Path, default=Path("/tmp/cmrt-lcm"))
    p.add_argument("--contenders", default=None, help="comma-separated subset")
    p.add_argument("--max-gib", type=float, default=MAX_GIB)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    res = a.resolution or (64 if a.size == "tiny" else RESOLUTION)
    names = a.contenders.split(",") if a.contenders else None
    result = run(a.work, size=a.size, resolution=res, rounds=a.rounds, max_gib=a.max_gib, contenders=names)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
