"""The benchmark suites: which models, resolutions, steps and batches; preparing their bundles
(exported once, cached); running every backend on every case into result rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence


from cmrt.bundle import Bundle
from cmrt.errors import ConfigError
from cmrt.models.load import LoadedModel

from . import measure
from .backends import BASELINE, BENCH_BACKENDS, CPU, CUDA, Absent, Prepared

RANDOM_WEIGHTS_SEED = 0
GIGA = 1e9
PERCENT = 100.0
DEFAULT_CACHE = Path.home() / ".cache" / "cmrt" / "bench"
REDUCED_DECODER_WIDTHS = (32, 64, 64, 64)  # the official depth at a tenth of the width
OFFICIAL_DECODER_WIDTHS = (320, 640, 1024, 1024)
DECODER_LAYERS = 3


# --- models ----------------------------------------------------------------------------
def _random(spec) -> LoadedModel:
    """A model with PyTorch's default initialization, seeded (timing does not need trained weights)."""
    import torch

    from cmrt.models.unet import UNet

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    return LoadedModel(spec, UNet(spec.unet).eval(), {"path": f"random weights (seed {RANDOM_WEIGHTS_SEED})",
                                                     "sha256": None, "format": "benchmark"})


def decoder_spec(widths: Sequence[int], layers: int = DECODER_LAYERS, name: str = "decoder"):
    """A consistency-decoder spec (the official layout, any widths)."""
    from cmrt.models.spec import ModelSpec
    from cmrt.models.unet import UNetConfig

    unet = UNetConfig(in_channels=7, out_channels=6, block_out_channels=tuple(widths), layers_per_block=layers,
                      attention=(False,) * len(widths), mid_attention=False, time_embedding="learned",
                      num_train_timesteps=1024)
    return ModelSpec(kind="decoder", unet=unet, image_channels=3, clip=False, name=name, trained=False)


def openai_cm_spec(arch: str, grid_size: int = 40):
    """A consistency-model spec of a published OpenAI architecture (random weights)."""
    from cmrt.models.convert import OPENAI_ARCHS
    from cmrt.models.spec import ModelSpec

    a = OPENAI_ARCHS[arch]
    return ModelSpec(kind="sampler", unet=a.unet, image_channels=a.unet.out_channels, image_size=a.image_size,
                     num_classes=a.unet.num_classes, grid_size=grid_size, name=arch, trained=False)


def tiny_cm_spec():
    from cmrt.models.spec import ModelSpec
    from cmrt.models.unet import UNetConfig

    unet = UNetConfig(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                      attention=(False, True), attention_head_dim=32, num_classes=10)
    return ModelSpec(kind="sampler", unet=unet, image_size=16, num_classes=10, name="tiny-cm", trained=False)


def _digits() -> LoadedModel:
    from cmrt.models.sources import load_model

    return load_model(None)


@dataclass(frozen=True)
class BenchModel:
    key: str
    description: str
    load: Callable[[], LoadedModel]


MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel("decoder-reduced", "consistency decoder, official depth, widths 32/64/64/64, random weights",
               lambda: _random(decoder_spec(REDUCED_DECODER_WIDTHS, name="decoder-reduced"))),
    BenchModel("decoder-official", "consistency decoder, official widths 320/640/1024/1024 (621M), random weights",
               lambda: _random(decoder_spec(OFFICIAL_DECODER_WIDTHS, name="decoder-official"))),
    BenchModel("digits", "the bundled default digits consistency model (16², 1 channel)", _digits),
    BenchModel("imagenet64", "OpenAI ImageNet-64 CM UNet (296M), random weights",
               lambda: _random(openai_cm_spec("imagenet64"))),
    BenchModel("lsun256", "OpenAI LSUN-256 CM UNet (526M), random weights",
               lambda: _random(openai_cm_spec("lsun256"))),
    BenchModel("tiny-decoder", "a tiny decoder (widths 32×4, 1 layer) for smoke tests",
               lambda: _random(decoder_spec((32, 32, 32, 32), layers=1, name="tiny-decoder"))),
    BenchModel("tiny-cm", "a tiny class-conditional CM (16²) for smoke tests", lambda: _random(tiny_cm_spec())),
)}


# --- suites ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One timed configuration. ``resolution``: output image side in pixels."""

    model: str
    resolution: int
    steps: int
    batch: int = 1


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

    def all_cases(self, gpu: bool) -> tuple[Case, ...]:
        return self.cases + (self.gpu_cases if gpu else ())


def _grid(model: str, resolutions: Iterable[int], steps: Iterable[int], batch: int = 1) -> tuple[Case, ...]:
    return tuple(Case(model, r, s, batch) for r in resolutions for s in steps)


def _cm_suite(cache: Path, log: Callable[[str], None]) -> dict:
    from .paired import cm_suite

    return cm_suite(cache, log)


def _edit_suite(cache: Path, log: Callable[[str], None]) -> dict:
    from .edit import run

    return run(cache, log=log)


_SLOW_COMPILE = ("left out of this suite: inductor compiles the unrolled UNets for minutes on a 2-core CPU; "
                 "ask for it with --backend torch-compile")
_QUICK = _grid("decoder-reduced", (64, 256), (2,)) + _grid("digits", (16,), (1, 2, 4))
_DECODER = _grid("decoder-official", (64, 128, 256), (2,))
_CM = tuple(c for b in (1, 4) for c in _grid("imagenet64", (64,), (1, 2), b) + _grid("lsun256", (256,), (1, 2), b))
SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("quick", "reduced-width decoder at 64² and 256², the digits model at 1/2/4 steps (< 3 min on a 2-core CPU "
          "once bundles are cached)", _QUICK, skip=(("torch-compile", _SLOW_COMPILE),)),
    Suite("decoder", "the official-width decoder at 64², 128², 256² (CPU); up to 1024² on a GPU", _DECODER,
          gpu_cases=_grid("decoder-official", (512, 1024), (2,)), warmup=1, repeats=3, min_seconds=0.0),
    Suite("cm", "ImageNet-64 and LSUN-256 consistency-model UNets (random weights at the published sizes), "
          "batch 1 and 4, 1 and 2 steps: cmrt on ONNX Runtime CPU vs diffusers' pipeline and PyTorch eager, paired "
          "rounds (LSUN-256 takes about an hour on a 2-core CPU)", _CM, runner=_cm_suite),
    Suite("full", "quick + decoder + cm", _QUICK + _DECODER + _CM,
          gpu_cases=_grid("decoder-official", (512, 1024), (2,)), warmup=1, repeats=3),
    Suite("edit", "editing graphs (inpaint, superres ×4, stroke, colorize at 2 and 4 evaluations, denoise) on "
          "ONNX Runtime CPU vs the same PyTorch editor in eager mode, paired rounds", (), runner=_edit_suite),
    Suite("smoke", "tiny models, for tests and a first look (seconds)",
          _grid("tiny-decoder", (16,), (2,)) + _grid("tiny-cm", (16,), (2,)), warmup=1, repeats=2, min_seconds=0.0),
)}


def check_names(suite: str, backends: Sequence[str] | None) -> tuple[Suite, list[str]]:
    """The suite and backend list, or a ``ConfigError`` naming the valid choices. Without an
    explicit list, every backend runs but those the suite skips (listed absent with the reason)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    names = list(backends) if backends else list(BENCH_BACKENDS)
    unknown = [b for b in names if b not in BENCH_BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BENCH_BACKENDS)}")
    return SUITES[suite], names


def skipped(suite: Suite, backends: Sequence[str], explicit: bool) -> dict[str, str]:
    """Backends the suite leaves out (unless named explicitly) → the reason."""
    return {} if explicit else {b: r for b, r in suite.skip if b in backends}


# --- preparing bundles -----------------------------------------------------------------
def _weights_digest(model: LoadedModel) -> str:
    h = hashlib.sha256(model.spec.to_json().encode())
    for k, v in model.unet.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """A digest of cmrt's source: a cached bundle is reused only if the code that exported it is unchanged."""
    import cmrt

    root = Path(cmrt.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_bundle(model: LoadedModel, digest: str, cache: Path, schedule: Sequence, *, fp16: bool = False) -> Bundle:
    """The exported bundle of ``model`` at ``schedule`` (σ's or timesteps), exported on first use."""
    from cmrt import __version__
    from cmrt.exporter.api import export

    key = json.dumps([__version__, _code_digest(), digest, [round(float(s), 6) for s in schedule], fp16])
    out = cache / f"{model.spec.name.split()[0]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "cmrt.json").is_file():
        return Bundle.open(out)
    kw = {"timesteps": list(schedule)} if model.spec.kind == "decoder" else {"sigmas": list(schedule)}
    if fp16:
        kw["precision"] = "fp16"
    return export(out=out, model=model, steps=None, overwrite=True, **kw)


def prepare(model: LoadedModel, digest: str, case: Case, cache: Path, backends: Sequence[str],
            gpu: bool) -> Prepared:
    """Export (or reuse) the bundles a case needs and draw its inputs."""
    from cmrt.exporter.api import parity_inputs, resolve_schedule
    from cmrt.schedules import DECODER_UPSCALE

    spec = model.spec
    resolved = resolve_schedule(spec, case.steps)
    schedule = list(resolved.sigmas or resolved.timesteps)
    if spec.kind == "decoder":
        side = case.resolution // DECODER_UPSCALE
        feeds = parity_inputs(spec, case.steps, batch=case.batch, latent_hw=(side, side))
    else:
        if case.resolution != spec.image_size:
            raise ConfigError(f"{spec.name} makes {spec.image_size}² images, not {case.resolution}²")
        feeds = parity_inputs(spec, case.steps, batch=case.batch)
    bundle = cached_bundle(model, digest, cache, schedule)
    single = None
    if "onnxruntime-loop" in backends:
        single = [cached_bundle(model, digest, cache, [s]) for s in schedule]
    fp16 = cached_bundle(model, digest, cache, schedule, fp16=True) if ("tensorrt" in backends and gpu) else None
    return Prepared(model, bundle, {k: v.numpy() for k, v in feeds.items()}, list(schedule), single, fp16)


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


def case_flops(model: LoadedModel, case: Case) -> float:
    """GFLOP per image: one UNet evaluation at the output resolution × steps."""
    from cmrt.models.unet import unet_flops

    return unet_flops(model.unet.config, case.resolution, case.resolution) * case.steps / GIGA


def finish_row(row: dict, gflop: float, batch: int, peak_gflops: float) -> dict:
    """Derived figures: images/s, achieved GFLOP/s and its share of the measured GEMM peak."""
    row["gflop"] = gflop
    if row["status"] != "ok":
        return row
    seconds = row["median_ms"] / 1e3
    row["images_per_s"] = batch / seconds
    row["gflop_per_s"] = gflop * batch / seconds
    row["pct_peak"] = PERCENT * row["gflop_per_s"] / peak_gflops
    return row


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
    gemm = measure.gemm_rate(cuda=gpu)
    log(f"machine: {env['machine']}; fp32 GEMM {gemm} GFLOP/s; load {env['load_1m_start']}")
    options.cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    by_model: dict[str, list[Case]] = {}
    for case in suite.all_cases(gpu):
        by_model.setdefault(case.model, []).append(case)
    for key, cases in by_model.items():
        model = MODELS[key].load()
        digest = _weights_digest(model)
        for case in cases:
            rows += _run_case(model, digest, case, suite, backends, options, gpu, gemm["peak"], env, log)
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
    return rows


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _brief(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['backend']:20s} absent: {row['reason']}"
    return (f"{row['backend']:20s} {row['median_ms']:9.2f} ms (p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}) "
            f"{row['gflop_per_s']:7.1f} GFLOP/s {row['pct_peak']:5.1f}% peak, RSS {row['peak_mem_mb']:.0f} MB")


__all__ = ["SUITES", "MODELS", "Suite", "Case", "RunOptions", "run_suite", "check_names", "prepare",
           "cached_bundle", "case_flops"]
