"""TensorRT / TensorRT-RTX engines for the stages of a pipeline bundle (``cmrt build PIPELINE_BUNDLE``).

One engine per graph stage, built by the same steps as a bundle's (``builder.build_plan``):
the sampler and the VAE decoder from their FP16 graphs (``cmrt export --model ... --precision
fp16``), the text encoder(s) from the FP32 graph (strongly typed: FP32 throughout, as the stage
stays FP32 on every backend unless its recorded parity allows otherwise). Each has one
optimization profile: the batch for every stage, and the latent height and width for the sampler
and decoder (the images are 8× that); the token sequence stays the tokenizer's context, fixed in
the graph. The records go into ``pipeline.json`` under ``stages[name].engines[target]`` and the
plans (``<stage>.<target>.plan``) into its file list, so ``cmrt check`` verifies them.

A consistency-decoder stage is a cmrt bundle of its own (``BUNDLE/decoder``): ``cmrt build`` it
directly once it has an FP16 graph.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

from .._io import write_bytes_atomic
from ..bundle import EngineRecord, PipelineManifest, StageRecord, update_stages
from ..errors import BundleError, ConfigError
from .backend import record_usable
from .builder import ProfileSpec, _check_target_options, _require_gpu, build_plan, engine_record
from .runtime_cache import bundle_lock
from .targets import TARGETS, load_library, parse_compute_capabilities, resolve_target

#: Stages built from their FP32 graph (the rest from their FP16 graph).
FP32_STAGES = ("text_encoder", "text_encoder_2")
#: Symbolic axis names of the stage graphs (``cmrt.exporter.pipeline``) → the profile's axis.
LATENT_AXES = {"h": 0, "w": 1}


def stage_graph(stage: StageRecord):
    """(precision key, graph record) an engine of ``stage`` is built from."""
    if stage.name in FP32_STAGES:
        return "fp32", stage.graph
    graph = stage.graphs.get("fp16")
    if graph is None:
        raise ConfigError(f"stage {stage.name} has no FP16 graph to build an engine from: export the pipeline "
                          "with `cmrt export --model FOLDER --precision fp16`")
    return "fp16", graph


def stage_profile_shapes(stage: StageRecord, profile: ProfileSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name → (min, opt, max) shapes of a stage (pure: its recorded input specs): the
    "batch" axis from the profile's batch, "h"/"w" from its latent sizes, fixed axes as recorded."""
    shapes = {}
    for spec in stage.inputs:
        levels = []
        for b, hw in zip(profile.batch, profile.latent):
            dims = []
            for axis in spec.shape:
                if isinstance(axis, int):
                    dims.append(axis)
                elif axis == "batch":
                    dims.append(b)
                elif axis in LATENT_AXES:
                    dims.append(hw[LATENT_AXES[axis]])
                else:
                    raise BundleError(f"stage {stage.name}: input {spec.name} has an axis {axis!r} no profile "
                                      "covers: re-export the pipeline bundle")
            levels.append(tuple(dims))
        shapes[spec.name] = tuple(levels)
    return shapes


def build_stages(bundle: str | Path, *, target: str | None = None, profile: ProfileSpec | None = None,
                 workspace_gb: float | None = None, compute_capabilities: list[str] | None = None
                 ) -> dict[str, EngineRecord]:
    """Build an engine per graph stage of a pipeline bundle and record them in ``pipeline.json``.

    Args:
        bundle: the pipeline bundle folder (with FP16 sampler/decoder graphs).
        target: "tensorrt" or "tensorrt-rtx"; None picks whichever library is installed.
        profile: batch and latent ranges (None: ``ProfileSpec()``) for every stage (the text
            encoders use its batch range only).
        workspace_gb: builder workspace limit in GiB.
        compute_capabilities: TensorRT-RTX targets (None: its portable set).

    Returns:
        Stage name → the engine record written.
    """
    folder = Path(bundle)
    manifest = PipelineManifest.open(folder)
    tgt = resolve_target(target)
    profile = profile or ProfileSpec()
    ccs = parse_compute_capabilities(compute_capabilities)
    _check_target_options(tgt, ccs, None)
    stages = [s for s in manifest.stages.values() if s.graph is not None]
    graphs = {s.name: stage_graph(s) for s in stages}  # every stage buildable before the first build
    trt = load_library(tgt)
    gpu = None if tgt.builds_without_gpu else _require_gpu(tgt)
    done: list[tuple] = []  # (stage, graph key, graph, shapes, built plan without its bytes, partial file)
    try:
        for s in stages:
            name, graph = graphs[s.name]
            shapes = stage_profile_shapes(s, profile)
            built = build_plan(trt, tgt, folder / graph.file, shapes, workspace_gb=workspace_gb,
                               compute_capabilities=ccs, gpu=gpu)
            partial = write_bytes_atomic(folder / f".{s.name}.{tgt.name}.plan.partial", built.plan)
            done.append((s, name, graph, shapes, replace(built, plan=None, config=None), partial))
    except BaseException:  # a later stage failed: no plan is replaced, none is left half-recorded
        for *_, partial in done:
            partial.unlink(missing_ok=True)
        raise
    records: dict[str, EngineRecord] = {}
    for s, name, graph, shapes, built, partial in done:  # every stage built: the plans take their names
        path = partial.replace(folder / f"{s.name}.{tgt.name}.plan")
        records[s.name] = engine_record(tgt, trt, path, name, graph, shapes, profile, built, gpu, ccs, workspace_gb)
    with bundle_lock(folder):
        current = PipelineManifest.open(folder).stages
        update_stages(folder, {n: {"engines": {**(current[n].engines or {}), r.target: r}} for n, r in records.items()})
    return records


def stage_engine(stage: StageRecord, target: str | None = None) -> EngineRecord | None:
    """The stage's engine to run: ``target``'s, else the first whose library is installed
    (TensorRT, then TensorRT-RTX), else the first; None when it has none."""
    engines = stage.engines or {}
    if target is not None:
        return engines.get(target)
    installed = [n for n in TARGETS if n in engines and importlib.util.find_spec(TARGETS[n].module)]
    candidates = installed or [n for n in TARGETS if n in engines] or list(engines)
    return engines[candidates[0]] if candidates else None


def stage_usable(stage: StageRecord) -> bool:
    """True when the stage has an engine whose library is installed and which fits this GPU
    (for the default choice; never raises for a missing library or GPU)."""
    record = stage_engine(stage)
    return record is not None and record_usable(record)


def open_stage_engine(folder: str | Path, stage: StageRecord):
    """A ``TensorRTBackend`` on the stage's engine (``ConfigError`` naming the build when it has none)."""
    from .backend import TensorRTBackend

    record = stage_engine(stage)
    if record is None:
        raise ConfigError(f"backend 'tensorrt': stage {stage.name} of {folder} has no engine: build them with "
                          f"`cmrt build {folder} --target tensorrt-rtx` (or tensorrt on the GPU)")
    return TensorRTBackend.for_stage(Path(folder), record, [i.name for i in stage.inputs],
                                     [o.name for o in stage.outputs])


__all__ = ["build_stages", "stage_profile_shapes", "stage_graph", "stage_engine", "stage_usable", "open_stage_engine",
           "FP32_STAGES"]
