"""The benchmark suites: which cases each suite times, and running every backend on every case into
result rows. The models, cases, digests and bundle preparation are ``benchmarks.cases``'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cmrt.errors import ConfigError

from . import bf16, edit, lcm, measure, paired
from .backends import BASELINE, BENCH_BACKENDS, CPU, CUDA, REDUCED_PRECISION, Absent, Prepared
from .cases import DEFAULT_CACHE, GIGA, MODELS, Case, cached_bundle, case_flops, prepare, weights_digest

PERCENT = 100.0
#: The smoke suite's GEMM probe: a first look needs a rate, not the last percent of it (64× less work).
SMOKE_GEMM_SIZE = 512


# --- suites ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    cases: tuple[Case, ...]
    gpu_cases: tuple[Case, ...] = ()  # added on a GPU machine
    warmup: int = 2
    repeats: int = 5
    min_seconds: float = 1.0
    skip: tuple[tuple[str, str], ...] = ()  # (backend, reason): listed as absent unless asked for by name
    runner: Callable[..., dict] | None = None  # a suite with its own timing (e.g. paired rounds): run(cache, log=)
    gemm_size: int = measure.GEMM_SIZE  # side of the GEMM-rate probe's square matrices
    #: paired rounds of each reduced-precision contender against its FP32 twin (``REDUCED_PRECISION``),
    #: per case, and the timed calls per round (1: calls of seconds)
    twin_rounds: int = 5
    twin_per_round: int = paired.PER_ROUND

    def all_cases(self, gpu: bool) -> tuple[Case, ...]:
        return self.cases + (self.gpu_cases if gpu else ())


def _grid(model: str, resolutions: Iterable[int], steps: Iterable[int], batch: int = 1) -> tuple[Case, ...]:
    return tuple(Case(model, r, s, batch) for r in resolutions for s in steps)


def _cm_suite(cache: Path, log: Callable[[str], None]) -> dict:
    return paired.cm_suite(cache, log)


def _edit_suite(cache: Path, log: Callable[[str], None]) -> dict:
    return edit.run(cache, log=log)


def _lcm_suite(cache: Path, log: Callable[[str], None]) -> dict:
    return lcm.suite(cache, log)


def _bf16_suite(cache: Path, log: Callable[[str], None]) -> dict:
    return bf16.suite(cache, log=log)


_SLOW_COMPILE = ("left out of this suite: inductor compiles the unrolled UNets for minutes on a 2-core CPU; "
                 "ask for it with --backend torch-compile")
_QUICK = _grid("decoder-reduced", (64, 256), (2,)) + _grid("digits", (16,), (1, 2, 4))
_DECODER = _grid("decoder-official", (64, 128, 256), (2,))
_CM = tuple(c for b in (1, 4) for c in _grid("imagenet64", (64,), (1, 2), b) + _grid("lsun256", (256,), (1, 2), b))
SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("quick", "reduced-width decoder at 64² and 256², the digits model at 1/2/4 steps (< 3 min on a 2-core CPU "
          "once bundles are cached)", _QUICK, skip=(("torch-compile", _SLOW_COMPILE),)),
    Suite("decoder", "the official-width decoder at 64², 128², 256² (CPU); up to 1024² on a GPU", _DECODER,
          gpu_cases=_grid("decoder-official", (512, 1024), (2,)), warmup=1, repeats=3, min_seconds=0.0,
          twin_rounds=3, twin_per_round=1),
    Suite("cm", "ImageNet-64 and LSUN-256 consistency-model UNets (random weights at the published sizes), "
          "batch 1 and 4, 1 and 2 steps: cmrt on ONNX Runtime CPU vs diffusers' pipeline and PyTorch eager, with "
          "diffusers-bf16 and openvino-bf16, paired rounds (LSUN-256 takes over an hour on a 2-core CPU)", _CM, runner=_cm_suite),
    Suite("full", "quick + decoder + cm", _QUICK + _DECODER + _CM,
          gpu_cases=_grid("decoder-official", (512, 1024), (2,)), warmup=1, repeats=3, twin_rounds=3, twin_per_round=1),
    Suite("edit", "editing graphs (inpaint, superres ×4, stroke, colorize at 2 and 4 evaluations, denoise) on "
          "ONNX Runtime CPU vs the same PyTorch editor in eager mode, with openvino-bf16 and the editor under BF16 "
          "autocast (pytorch-eager-bf16; diffusers-bf16 listed absent), paired rounds", (), runner=_edit_suite),
    Suite("lcm", "text to image: an SD 1.5-sized latent consistency model (random weights, the published "
          "configurations), 512², 4 steps, batch 1: cmrt's Pipeline on ONNX Runtime FP32 (and its default backend) vs "
          "diffusers' LatentConsistencyModelPipeline FP32 and BF16 autocast and optimum-intel's OpenVINO pipeline, per "
          "stage, paired rounds (minutes per round on a 2-core CPU; benchmarks/lcm.py)", (), runner=_lcm_suite),
    Suite("smoke", "tiny models, for tests and a first look (seconds)",
          _grid("tiny-decoder", (16,), (2,)) + _grid("tiny-cm", (16,), (2,)), warmup=1, repeats=2, min_seconds=0.0,
          gemm_size=SMOKE_GEMM_SIZE, twin_rounds=2, twin_per_round=1),
    Suite("bf16", "issue 23's table: the reduced decoder at 64² and 256² (2 steps, batch 1) and the ImageNet-64 CM "
          "(1 step, batch 4); diffusers FP32 and under BF16 autocast, cmrt on ONNX Runtime FP32, OpenVINO FP32 and "
          "BF16, paired rounds, PSNR vs PyTorch FP32, the targets (about 10 min on a quiet 2-core CPU)", (),
          runner=_bf16_suite),
)}


def check_names(suite: str, backends: Sequence[str] | None) -> tuple[Suite, list[str]]:
    """The suite and backend list, or a ``ConfigError`` naming the valid choices. Without an
    explicit list, every backend runs but those the suite skips (listed absent with the reason)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    names = list(backends) if backends else [n for n, b in BENCH_BACKENDS.items() if not b.opt_in]
    unknown = [b for b in names if b not in BENCH_BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BENCH_BACKENDS)}")
    return SUITES[suite], names


def skipped(suite: Suite, backends: Sequence[str], explicit: bool) -> dict[str, str]:
    """Backends the suite leaves out (unless named explicitly) → the reason."""
    return {} if explicit else {b: r for b, r in suite.skip if b in backends}


# --- running ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    cache: Path = DEFAULT_CACHE
    warmup: int | None = None  # None: the suite's
    repeats: int | None = None
    label: str | None = None  # machine label (None: from the environment)
    skipped: tuple[tuple[str, str], ...] = ()  # (backend, reason) listed absent without running


def _device(name: str, gpu: bool) -> str:
    d = BENCH_BACKENDS[name].device
    return (CUDA if gpu else CPU) if d == "auto" else d


def time_backend(name: str, prepared: Prepared, *, warmup: int, repeats: int, min_seconds: float,
                 gpu: bool) -> dict:
    """Build one backend on a prepared case and time it; an absent backend gives its reason."""
    device = _device(name, gpu)
    on_gpu = gpu and device == CUDA
    measure.release_memory()
    prepared.extra.pop("compile_s", None)
    try:
        with measure.PeakMemory(cuda=on_gpu) as mem:
            call = BENCH_BACKENDS[name].make(prepared)
            timing = measure.time_callable(call, warmup=warmup, repeats=repeats, cuda=on_gpu,
                                           min_seconds=min_seconds)
    except Absent as exc:
        return {"status": "absent", "reason": str(exc), "device": device}
    finally:
        call = None
        measure.release_memory()
    row = {"status": "ok", "device": device, "median_ms": timing.median_ms, "p10_ms": timing.p10_ms,
           "p90_ms": timing.p90_ms, "repeats": len(timing.samples_ms),
           "peak_mem_mb": mem.peak_rss_mb, "peak_rss_reset": mem.resettable}
    if mem.cuda_max_allocated_mb is not None:
        row["cuda_max_allocated_mb"] = mem.cuda_max_allocated_mb
    if "compile_s" in prepared.extra:
        row["compile_s"] = prepared.extra["compile_s"]
    return row


def finish_row(row: dict, gflop: float, batch: int, peak_gflops: float | dict[str, float]) -> dict:
    """Derived figures: images/s, achieved GFLOP/s and its share of the measured GEMM peak (of the
    row's own precision where ``peak_gflops`` holds one per precision: a BF16 row against the BF16
    rate; ``pct_peak_of`` says which)."""
    row["gflop"] = gflop
    if row["status"] != "ok":
        return row
    peaks = peak_gflops if isinstance(peak_gflops, dict) else {"fp32": peak_gflops}
    peak, row["pct_peak_of"] = paired.rate_for(row.get("precision", "fp32"), peaks)
    seconds = row["median_ms"] / 1e3
    row["images_per_s"] = batch / seconds
    row["gflop_per_s"] = gflop * batch / seconds
    row["pct_peak"] = PERCENT * row["gflop_per_s"] / peak
    return row


def pair_with_twin(name: str, prepared: Prepared, suite: Suite) -> dict:
    """A reduced-precision contender against its FP32 twin on one prepared case: ``twin_rounds``
    paired rounds (the twin's per-round time over the contender's: median, min, max), and the
    contender's PSNR against the twin's images (same inputs and seeded noise) and non-finite count."""
    from cmrt.parity import psnr

    twin = REDUCED_PRECISION[name]
    measure.release_memory()
    try:
        calls = {twin: BENCH_BACKENDS[twin].make(prepared), name: BENCH_BACKENDS[name].make(prepared)}
    except Absent as exc:
        return {"paired_with": twin, "paired_absent": str(exc)}
    samples = paired.paired_rounds(calls, suite.twin_rounds, per_round=suite.twin_per_round, warmup=1,
                                   untimed=int(suite.twin_per_round > 1))
    pipeline = prepared.kind != "decoder"  # diffusers' pipeline returns images in [0, 1]
    images = {k: bf16.image_array(c(), pipeline and k.startswith("diffusers")) for k, c in calls.items()}
    del calls
    measure.release_memory()
    return {"paired_with": twin, "paired_rounds": suite.twin_rounds,
            "speedup_vs_fp32_twin": paired.ratios(samples, name)[twin],
            "psnr_vs_fp32_twin": round(float(psnr(images[name], images[twin])), 1),
            "non_finite": int((~np.isfinite(images[name])).sum())}


def add_ratios(rows: list[dict]) -> None:
    """``speedup_vs_eager``: PyTorch eager's median over each backend's, within a case."""
    base = {(r["model"], r["resolution"], r["steps"], r["batch"]): r["median_ms"] for r in rows
            if r["backend"] == BASELINE and r["status"] == "ok"}
    for r in rows:
        ref = base.get((r["model"], r["resolution"], r["steps"], r["batch"]))
        if r["status"] == "ok" and ref:
            r["speedup_vs_eager"] = ref / r["median_ms"]


def run_suite(suite: Suite, backends: Sequence[str], options: RunOptions = RunOptions(),
              log: Callable[[str], None] = print) -> dict:
    """Run every backend on every case of a suite.

    Returns:
        ``{"suite", "environment", "gemm_gflops", "rows", "seconds"}``; each row holds at least
        model, backend, precision, batch, steps, resolution, median_ms, p90_ms, images_per_s,
        peak_mem_mb, gflop, pct_peak (absent backends: status "absent" and the reason).
    """
    if suite.runner is not None:
        return suite.runner(options.cache, log)
    t0 = time.perf_counter()
    env = measure.environment()
    if options.label:
        env["machine"] = options.label
    gpu = env["gpu"] is not None
    gemm = measure.gemm_rate(suite.gemm_size, cuda=gpu)
    # the CPU's BF16 rate too, when a BF16 contender runs: its rows' share of the roofline is read against it
    peaks = {"fp32": gemm["peak"]}
    if any(BENCH_BACKENDS[b].precision == "bf16" for b in backends) and not gpu:
        gemm = {f"fp32 {k}": v for k, v in gemm.items()} | {
            f"bf16 {k}": v for k, v in measure.gemm_rates(suite.gemm_size)["bf16"].items()}
        peaks = {"fp32": gemm["fp32 peak"], "bf16": gemm["bf16 peak"]}
        gemm["peak"] = peaks["fp32"]
    log(f"machine: {env['machine']}; GEMM {gemm} GFLOP/s; load {env['load_1m_start']}")
    options.cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    by_model: dict[str, list[Case]] = {}
    for case in suite.all_cases(gpu):
        by_model.setdefault(case.model, []).append(case)
    for key, cases in by_model.items():
        model = MODELS[key].load()
        digest = weights_digest(model)
        for case in cases:
            rows += _run_case(model, digest, case, suite, backends, options, gpu, peaks, env, log)
        del model
        measure.release_memory()
    add_ratios(rows)
    env["load_1m_end"] = measure.load_average()
    return {"suite": suite.name, "environment": env, "gemm_gflops": gemm, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def _run_case(model, digest, case, suite, backends, options, gpu, peak, env, log) -> list[dict]:
    t_prep = time.perf_counter()
    prepared = prepare(model, digest, case, options.cache, backends, gpu)
    log(f"{case.model} {case.resolution}² batch {case.batch} steps {case.steps} "
        f"(bundles ready in {time.perf_counter() - t_prep:.1f}s)")
    gflop = case_flops(model, case)
    rows = []
    for name in backends:
        row = {"model": case.model, "backend": name, "precision": BENCH_BACKENDS[name].precision,
               "batch": case.batch, "steps": case.steps, "resolution": case.resolution,
               "machine": env["machine"], "load_1m": measure.load_average()}
        skip = dict(options.skipped).get(name)
        if skip is not None:
            rows.append(finish_row(row | {"status": "absent", "reason": skip, "device": _device(name, gpu)},
                                   gflop, case.batch, peak))
            log("  " + _brief(rows[-1]))
            continue
        row |= time_backend(name, prepared, warmup=_pick(options.warmup, suite.warmup),
                            repeats=_pick(options.repeats, suite.repeats), min_seconds=suite.min_seconds, gpu=gpu)
        rows.append(finish_row(row, gflop, case.batch, peak))
        log("  " + _brief(row))
    for row in rows:
        if row["backend"] in REDUCED_PRECISION and row["status"] == "ok":
            row |= _twin_fields(row["backend"], prepared, suite, rows)
            log("  " + _twin_brief(row))
    return rows


def _twin_fields(name: str, prepared: Prepared, suite: Suite, rows: list[dict]) -> dict:
    twin = REDUCED_PRECISION[name]
    if not any(r["backend"] == twin and r["status"] == "ok" for r in rows):
        return {"paired_with": twin, "paired_absent": f"its FP32 twin {twin} did not run in this suite (ask for it "
                                                      f"with --backend {name},{twin})"}
    return pair_with_twin(name, prepared, suite)


def _twin_brief(row: dict) -> str:
    if "paired_absent" in row:
        return f"{row['backend']:20s} not paired with {row['paired_with']}: {row['paired_absent']}"
    r = row["speedup_vs_fp32_twin"]
    return (f"{row['backend']:20s} vs {row['paired_with']} in {row['paired_rounds']} paired rounds: "
            f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}), {row['psnr_vs_fp32_twin']} dB, "
            f"{row['non_finite']} non-finite")


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _brief(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['backend']:20s} absent: {row['reason']}"
    return (f"{row['backend']:20s} {row['median_ms']:9.2f} ms (p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}) "
            f"{row['gflop_per_s']:7.1f} GFLOP/s {row['pct_peak']:5.1f}% peak, RSS {row['peak_mem_mb']:.0f} MB")


#: ``MODELS``, ``Case``, ``prepare``, ``cached_bundle``, ``case_flops``, ``weights_digest``, ``DEFAULT_CACHE``
#: and ``GIGA`` are ``benchmarks.cases``' (imported from there by every other module), named here too.
__all__ = ["SUITES", "Suite", "RunOptions", "run_suite", "check_names", "skipped", "time_backend", "MODELS", "Case",
           "prepare", "cached_bundle", "case_flops", "weights_digest", "DEFAULT_CACHE", "GIGA"]
