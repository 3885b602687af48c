"""``cmrt.export``: model source → bundle (graph + manifest + parity data), checked against PyTorch."""

from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from .. import __version__
from .. import schedules as S
from .._io import staged_dir
from ..bundle import (DEFAULT_TASKS, GRAPH_FILES, OUTPUT_NAME, PARITY, VALUE_RANGE, Bundle, FileRecord, GraphRecord,
                      ImageSpec, LatentSpec, Manifest, ModelInfo, NormStatsRecord, ParityRecord, Schedule, SourceInfo,
                      Task, Versions, save_parity)
from ..errors import ConfigError
from ..models.denoisers import build_denoiser
from ..models.load import LoadedModel
from ..models.sources import load_model, refuse_options
from ..models.spec import ModelSpec
from ..models.unet import count_parameters
from ..parity import compare
from ..runtime.openvino import record_at_export
from ..runtime.tiled.options import DEFAULT_STATS_FACTOR
from ..editing import EDIT_TASKS, RGB
from ..samplers import UnrolledConsistencySampler, UnrolledDecoderSampler, UnrolledEditor
from .inputs import parity_inputs
from .int8 import MIN_SPEEDUP as INT8_MIN_SPEEDUP
from .int8 import add_int8, int8_request
from .onnx import OPSET, GraphExport, describe_io, dynamic_shapes, export_graph, graph_files

PRECISIONS = ("fp32", "fp16")
DEFAULT_STEPS = 2
SAMPLE_TASK = "sample"
#: ``--task`` values: plain sampling (a decoder's only task: decoding), or an editing task.
TASKS = (SAMPLE_TASK, *EDIT_TASKS)


def resolve_task(spec: ModelSpec, task: str = SAMPLE_TASK, factor: int | None = None) -> Task:
    """The bundle's ``Task`` for ``--task``/``--factor`` on a model, validated.

    Editing needs a consistency model; colorize a 3-channel one; superres a factor p ≥ 2 that
    divides the image side; ``--factor`` applies to superres only.
    """
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if factor is not None and task != "superres":
        raise ConfigError(f"--factor applies to --task superres only (this export's task is {task})")
    if task == SAMPLE_TASK:
        return Task(DEFAULT_TASKS[spec.kind])
    if spec.kind != "sampler":
        raise ConfigError(f"--task {task} needs a consistency model; this source is a {spec.kind}, whose only "
                          "task is decoding (drop --task)")
    if task == "colorize" and spec.image_channels != RGB:
        raise ConfigError(f"--task colorize needs an RGB (3-channel) model; this one has {spec.image_channels} "
                          "channel(s)")
    if task == "superres":
        _check_factor(spec, factor)
    return Task(task, factor)


def _check_factor(spec: ModelSpec, factor: int | None) -> None:
    if factor is None:
        raise ConfigError("--task superres needs --factor P (the upsampling factor, e.g. 4 for 4×4 → 16×16)")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or spec.image_size % factor:
        raise ConfigError(f"--factor must be an integer ≥ 2 that divides the image side {spec.image_size}, "
                          f"got {factor!r}")


def resolve_schedule(spec: ModelSpec, steps: int | None = None, sigmas: Sequence[float] | None = None,
                     timesteps: Sequence[int] | None = None, grid: int | None = None, *,
                     task: str = SAMPLE_TASK) -> Schedule:
    """The σ's (samplers, editors) or timesteps (decoders) of every evaluation, validated.

    ``sigmas``/``timesteps`` set every evaluation explicitly; otherwise ``steps`` (default 2) picks
    the documented spacing: ``schedules.default_cm_sigmas`` on the ``grid``-point Karras grid
    (default: the model's own, ``spec.grid_size``), or ``schedules.decoder_timesteps``.

    Editing tasks (``task``): inpaint, colorize and superres default to the sampling σ's (they
    start from noise at σ_max, and the projection after every evaluation keeps the known part,
    so the same spacing serves; docs/editing.md has the measurements behind this choice);
    stroke uses the same spacing from ``schedules.STROKE_SIGMA_START`` (5) down, so the result
    stays near the painting; denoise takes exactly one σ, the input's noise level, from ``sigmas``.
    """
    if task == "denoise" and spec.kind != "decoder":
        return _denoise_schedule(spec, steps, sigmas, timesteps, grid)
    if spec.kind == "decoder":
        if sigmas is not None:
            raise ConfigError("a decoder is scheduled by timesteps, not σ's: use --timesteps (e.g. 1008,512)")
        if grid is not None:
            raise ConfigError("--grid applies to consistency models (their Karras σ grid); a decoder has none")
        return _decoder_schedule(_step_count(steps, timesteps), timesteps)
    if timesteps is not None:
        raise ConfigError("a consistency model is scheduled by σ's: use --sigmas (e.g. 80,1.3824)")
    if grid is not None and sigmas is not None:
        raise ConfigError("--grid spaces the default σ's; it does not apply with explicit --sigmas")
    return _sampler_schedule(spec, _step_count(steps, sigmas), sigmas, grid, task)


def _denoise_schedule(spec: ModelSpec, steps, sigmas, timesteps, grid) -> Schedule:
    if timesteps is not None or grid is not None:
        raise ConfigError("--task denoise takes one σ (--sigmas S, the input's noise level); "
                          "--timesteps and --grid do not apply")
    if sigmas is None or len(sigmas) != 1:
        raise ConfigError("--task denoise needs exactly one σ, the noise level of its input: --sigmas S "
                          f"(e.g. --sigmas 0.5); got {'none' if sigmas is None else len(sigmas)}")
    if steps is not None and steps != 1:
        raise ConfigError(f"--task denoise is one evaluation: --steps {steps} does not apply (use --steps 1 or omit it)")
    return _sampler_schedule(spec, 1, sigmas, None)


def _step_count(steps: int | None, explicit: Sequence | None) -> int:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
        raise ConfigError(f"--steps must be an integer, got {steps!r}")
    if explicit is not None:
        if len(explicit) == 0:
            raise ConfigError("the list of σ's or timesteps is empty: give at least one value")
        if steps is not None and steps != len(explicit):
            raise ConfigError(f"--steps {steps} disagrees with the {len(explicit)} values given")
        return len(explicit)
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {steps}")
    return steps


def _decoder_schedule(steps: int, timesteps: Sequence[int] | None) -> Schedule:
    ts = [int(t) for t in timesteps] if timesteps is not None else S.decoder_timesteps(steps)
    if any(not 0 <= t < S.DECODER_T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ConfigError(f"--timesteps must be distinct, descending, in [0, {S.DECODER_T}); got {ts}")
    rule = "explicit" if timesteps is not None else (
        "published" if tuple(ts) == S.DECODER_TIMESTEPS else "default spacing")
    return Schedule(steps=len(ts), sigmas=None, timesteps=tuple(ts), clip=False, rule=rule)


def _sampler_schedule(spec: ModelSpec, steps: int, sigmas: Sequence[float] | None, grid: int | None,
                      task: str = SAMPLE_TASK) -> Schedule:
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
        raise ConfigError(f"--grid must be an integer ≥ 2, got {grid!r}")
    n = grid or spec.grid_size
    sig = [float(s) for s in sigmas] if sigmas is not None else S.default_edit_sigmas(
        task, steps, n, spec.sigma_min, spec.sigma_max, spec.rho)
    if any(not (math.isfinite(s) and spec.sigma_min < s <= spec.sigma_max) for s in sig):
        raise ConfigError(f"--sigmas must lie in ({spec.sigma_min}, {spec.sigma_max}]; got {sig}")
    if any(a <= b for a, b in zip(sig, sig[1:])):
        raise ConfigError(f"--sigmas must be strictly descending; got {sig}")
    return Schedule(steps=len(sig), sigmas=tuple(sig), timesteps=None, clip=True, sigma_min=spec.sigma_min,
                    grid=None if sigmas is not None else n,
                    rule="explicit" if sigmas is not None else _default_rule(task, n))


def _default_rule(task: str, n: int) -> str:
    if task == "stroke":
        return f"default spacing on the {n}-point Karras grid from σ = {S.STROKE_SIGMA_START:g} (stroke)"
    return f"default spacing on the {n}-point Karras grid"


def build_unrolled(model: LoadedModel, schedule: Schedule, task: Task | None = None) -> torch.nn.Module:
    """The unrolled sampler (or, for an editing ``task``, editor) module of a loaded model for a
    schedule (``schedule.clip`` applies)."""
    denoiser = build_denoiser(model.spec, model.unet)
    if task is not None and task.name in EDIT_TASKS:
        return UnrolledEditor(denoiser, task.name, list(schedule.sigmas), sigma_min=model.spec.sigma_min,
                              clip=schedule.clip, conditional=model.spec.num_classes is not None,
                              factor=task.factor).eval()
    if model.spec.kind == "decoder":
        return UnrolledDecoderSampler(denoiser, list(schedule.timesteps), clip=schedule.clip).eval()
    return UnrolledConsistencySampler(denoiser, list(schedule.sigmas), sigma_min=model.spec.sigma_min,
                                      clip=schedule.clip, conditional=model.spec.num_classes is not None).eval()


def export(source: str | Path | None = None, *, out: str | Path = "bundle", steps: int | None = None,
           sigmas: Sequence[float] | None = None, timesteps: Sequence[int] | None = None, grid: int | None = None,
           clip: bool | None = None, precision: str = "fp32", io: str = "fp32", overwrite: bool = False,
           arch: str | None = None, image_size: int | None = None, trust: bool = False,
           embedding: str | Path | None = None, model: LoadedModel | None = None, cache: bool = True,
           task: str = SAMPLE_TASK, factor: int | None = None, tile_stats: bool = False, int8: bool = False,
           int8_latents=None, int8_min_speedup: float | None = None) -> Bundle:
    """Export a model's fixed-step sampler (or editor) to a bundle, and check it against PyTorch.

    Args:
        source: a model source (``cmrt.models.sources``; None: the bundled default model).
        out: the bundle folder to write; it must not exist (or be empty) unless ``overwrite``.
        steps: network evaluations (default 2; implied by ``sigmas``/``timesteps`` when given).
        sigmas: the σ of every evaluation (consistency models).
        timesteps: the timestep of every evaluation (decoders).
        grid: points of the Karras grid that ``steps`` spaces on (consistency models; default:
            the model's own, e.g. 40, or 201 for OpenAI's ``ct_imagenet64.pt``).
        clip: clamp x0 to [-1, 1] after each evaluation; None follows the source's own sampler.
        precision: "fp32", or "fp16" to also write a calibrated FP16 graph (``model.fp16.onnx``),
            verified against the FP32 PyTorch source with the fp16 tolerances.
        io: "fp32" (default) or "fp16": the FP16 graph's input/output dtype.
        overwrite: replace an existing ``out``.
        arch, image_size, trust, embedding: load options of the published formats
            (``cmrt.models.sources.load_model``); refused where they do not apply.
        model: an already loaded model instead of ``source`` (library users and tests).
        cache: reuse a traced network graph of the same architecture (``CMRT_CACHE_DIR``).
        task: "sample" (default: the model's own sampler; a decoder decodes), or an editing task of
            a consistency model: "inpaint", "colorize", "superres", "stroke", "denoise"
            (``cmrt.editing``): an ``editor`` bundle for ``cmrt.Editor``.
        factor: superres only: the upsampling factor p (the image input is H/p × W/p).
        tile_stats: decoders only: also write the statistics and shared-statistics graphs that let
            a tiled decode share GroupNorm statistics across its tiles (``cmrt.graphs.norm_stats``;
            ``Decoder.decode(norm=...)``), each checked against PyTorch.
        int8: also quantize the sampler or decoder graph to INT8 (NNCF, ``cmrt.exporter.int8``) and
            ship it (``model.int8.xml``, ``backend="openvino-int8"``) where its parity passes the
            int8 tier and it runs ``int8_min_speedup`` times as fast as the path it replaces; where
            either fails no INT8 model is written and ``manifest.int8`` says why (the rest of the
            bundle stands). Needs OpenVINO and NNCF (``pip install 'cmrt[openvino]'``).
        int8_latents: decoders with ``int8``: real encoded images' latents (N, 4, h, w) to calibrate
            on (``cmrt.train.calibration.decoder_latents``; ``cmrt export --int8`` passes them), or a
            callable returning them, called only when the source is a decoder.
        int8_min_speedup: with ``int8``: the speed-up over the path it replaces (OpenVINO BF16 on a
            CPU with native BF16, else ONNX Runtime FP32) the INT8 model must reach to ship (None:
            ``cmrt.exporter.int8.MIN_SPEEDUP``, 1.3; 0: on parity alone).

    Returns:
        The opened bundle. On a parity failure a ``ParityError`` is raised and ``out`` is untouched.
    """
    _check_precision(precision, io)
    model = _model(source, model, arch=arch, image_size=image_size, trust=trust, embedding=embedding)
    job = resolve_task(model.spec, task, factor)
    _check_tile_stats(tile_stats, model.spec)
    int8_latents = int8_request(int8, "editor" if job.name in EDIT_TASKS else model.spec.kind, job.name, int8_latents,
                                int8_min_speedup)
    schedule = resolve_schedule(model.spec, steps, sigmas, timesteps, grid, task=task)
    schedule = _with_clip(schedule, model.spec.clip if clip is None else bool(clip))
    sampler = build_unrolled(model, schedule, job)
    feeds = parity_inputs(model.spec, schedule.steps, task=job, sigmas=schedule.sigmas)
    with staged_dir(out, overwrite=overwrite) as tmp:
        graph = tmp / GRAPH_FILES["fp32"]
        t0 = time.perf_counter()
        facts = export_graph(sampler, model.unet, list(feeds.values()), list(feeds),
                             dynamic_shapes(model.spec.kind, len(feeds), spatial=model.spec.kind == "decoder"),
                             graph, spatial=model.spec.kind == "decoder", cache=cache)
        export_s = time.perf_counter() - t0
        report, reference = _check_graph(sampler, graph, feeds)
        parity_file = save_parity(tmp / PARITY, {k: v.numpy() for k, v in feeds.items()}, reference)
        manifest = _manifest(model, graph, schedule, parity_file, _graph_record(graph, facts, export_s),
                             {"onnxruntime-cpu/fp32": ParityRecord.of(report)}, job)
        bundle = Bundle(tmp, manifest)
        bundle.save_manifest()
        report.raise_if_failed()
        if tile_stats:
            _add_norm_stats(bundle, sampler, graph, feeds, reference)
        if precision == "fp16":
            _add_fp16(bundle, sampler, graph, model, feeds, io, job)
        record_at_export(bundle)  # OpenVINO BF16's parity, on a CPU with native BF16 (cmrt.runtime.openvino)
        if int8:
            add_int8(bundle, latents=int8_latents,  # shipped only where it holds and pays (cmrt.exporter.int8)
                     min_speedup=INT8_MIN_SPEEDUP if int8_min_speedup is None else int8_min_speedup)
    return Bundle.open(out)


def _check_precision(precision: str, io: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be fp32 or fp16, got {precision!r}")
    if io not in PRECISIONS or (io == "fp16" and precision != "fp16"):
        raise ConfigError(f"--io {io} needs --precision fp16 (choose --io fp32, or add --precision fp16)")


def _check_tile_stats(tile_stats: bool, spec: ModelSpec) -> None:
    if not isinstance(tile_stats, bool):
        raise ConfigError(f"tile_stats must be True or False, got {tile_stats!r}")
    if tile_stats and spec.kind != "decoder":
        raise ConfigError(f"--tile-stats applies to decoders (tiled decoding); this source is a {spec.kind}")


def _add_norm_stats(bundle: Bundle, sampler, graph: Path, feeds: dict[str, torch.Tensor],
                    reference: dict) -> None:
    """The statistics and shared-statistics graphs (``norm_stats``) inside the staged bundle,
    recorded with their parity; raises ``ParityError`` when either misses its tolerance."""
    from ..models import norm_stats as NS
    from ..runtime.backends import OnnxRuntimeBackend
    from ..graphs.norm_stats import STATS_NAME, write_norm_graphs

    t0 = time.perf_counter()
    made = write_norm_graphs(graph)
    seconds = round(time.perf_counter() - t0, 2)
    with torch.no_grad(), NS.recording(sampler) as recorded:
        sampler(*feeds.values())
    inputs = {k: v.numpy() for k, v in feeds.items()}
    stats_run = OnnxRuntimeBackend(made.stats, device="cpu", output=STATS_NAME)
    try:
        stats = stats_run.run(inputs)
    finally:
        stats_run.close()
    reports = {"statistics": compare({STATS_NAME: stats}, {STATS_NAME: NS.pack(recorded).numpy()},
                                     backend=stats_run.name, precision="fp32-stats")}
    for name, path in (("shared", made.shared), ("shared-means", made.means)):
        run = OnnxRuntimeBackend(path, device="cpu")
        try:
            reports[name] = compare({OUTPUT_NAME: run.run(inputs | {STATS_NAME: stats})}, reference, backend=run.name,
                                    precision="fp32")
        finally:
            run.close()
    record = NormStatsRecord(
        stats_graph=GraphRecord(made.stats.name, (FileRecord.of(made.stats),), OPSET, export_seconds=seconds),
        shared_graph=GraphRecord(made.shared.name, (FileRecord.of(made.shared),), OPSET),
        means_graph=GraphRecord(made.means.name, (FileRecord.of(made.means),), OPSET),
        tensor=STATS_NAME, groups=made.groups, factor=DEFAULT_STATS_FACTOR,
        parity={k: ParityRecord.of(r) for k, r in reports.items()})
    bundle.update(norm_stats=record)
    for r in reports.values():
        r.raise_if_failed()


def _model(source, model: LoadedModel | None, **options) -> LoadedModel:
    if model is None:
        return load_model(source, **options)
    if source is not None:
        raise ConfigError("pass either a model source or an already loaded model=, not both")
    given = {k: v for k, v in options.items() if v not in (None, False)}
    refuse_options(given, frozenset(), "a model was given already loaded (model=)")
    return model


def _with_clip(schedule: Schedule, clip: bool) -> Schedule:
    from dataclasses import replace

    return replace(schedule, clip=clip)


def _graph_record(graph: Path, facts: GraphExport, export_s: float) -> GraphRecord:
    files = tuple(FileRecord.of(f) for f in graph_files(graph))
    return GraphRecord(graph.name, files, OPSET, io="fp32", export_seconds=round(export_s, 2),
                       export_stages=dict(facts.seconds),
                       rewrites=facts.rewrites | {"network_calls_spliced": facts.network_calls,
                                                  "network_graph_cached": int(facts.network_cached),
                                                  "sampler_graph_cached": int(facts.sampler_cached)})


def _manifest(model: LoadedModel, graph: Path, schedule: Schedule, parity_file: FileRecord, record: GraphRecord,
              parity: dict[str, ParityRecord], task: Task) -> Manifest:
    spec = model.spec
    inputs, outputs = describe_io(graph)
    decoder = spec.kind == "decoder"
    up = S.DECODER_UPSCALE
    return Manifest(
        kind="editor" if task.name in EDIT_TASKS else spec.kind, task=task, schedule=schedule, inputs=inputs,
        outputs=outputs,
        image=ImageSpec(channels=spec.image_channels, height=f"{up}*h" if decoder else spec.image_size,
                        width=f"{up}*w" if decoder else spec.image_size, value_range=VALUE_RANGE),
        latent=LatentSpec(S.LATENT_CHANNELS, S.LATENT_SCALE, S.LATENT_MEANS, S.LATENT_STDS, up,
                          "SD 1.x/2.x VAE, unscaled") if decoder else None,
        num_classes=spec.num_classes, graphs={"fp32": record}, parity_inputs=parity_file,
        model=ModelInfo(spec.name, spec.trained, count_parameters(model.unet), spec.to_dict()),
        source=_source_info(model.source), versions=_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), parity=parity)


def _source_info(source: dict) -> SourceInfo:
    details = {k: v for k, v in source.items() if k not in ("path", "sha256", "format")}
    return SourceInfo(str(source.get("path", "")), source.get("sha256"), str(source.get("format", "unknown")), details)


def _versions() -> Versions:
    import onnx
    import onnxruntime

    return Versions(__version__, torch.__version__, onnx.__version__, onnxruntime.__version__)


def _add_fp16(bundle: Bundle, sampler, graph: Path, model: LoadedModel, feeds, io: str, task: Task) -> None:
    """The FP16 step (``precision.make_fp16``) inside the staged bundle; raises on a parity failure."""
    from .precision import make_fp16

    fp16 = make_fp16(sampler, graph, bundle.path / GRAPH_FILES["fp16"], model.spec,
                     {k: v.numpy() for k, v in feeds.items()}, io=io, task=task, schedule=bundle.manifest.schedule)
    m = bundle.manifest
    bundle.update(graphs={**m.graphs, "fp16": fp16.graph}, precision={**m.precision, "fp16": fp16.record},
                  parity={**m.parity, "onnxruntime-cpu/fp16": ParityRecord.of(fp16.reports["parity inputs"])})
    fp16.raise_if_failed()


def _check_graph(sampler: torch.nn.Module, graph: Path, feeds: dict[str, torch.Tensor]):
    """Run PyTorch and ONNX Runtime (CPU) on the same inputs and compare."""
    from ..runtime.backends import OnnxRuntimeBackend

    with torch.no_grad():
        reference = {OUTPUT_NAME: sampler(*feeds.values()).numpy()}
    backend = OnnxRuntimeBackend(graph, device="cpu")
    try:
        actual = {OUTPUT_NAME: backend.run({k: v.numpy() for k, v in feeds.items()})}
    finally:
        backend.close()
    return compare(actual, reference, backend=backend.name, precision="fp32"), reference


__all__ = ["export", "resolve_schedule", "resolve_task", "build_unrolled", "parity_inputs", "TASKS"]
