"""Bundle FP16 graph → TensorRT or TensorRT-RTX engine (strongly typed), written into the bundle.

One code path for both targets: ``tensorrt`` (TensorRT ≥ 10.12; builds on the GPU it will run on)
and ``tensorrt-rtx`` (TensorRT for RTX; builds ahead of time without a GPU, for a set of compute
capabilities). Their Python APIs have the same shape, so the target only picks the module.

Steps: ``resolve_target`` → ``profile_shapes`` (pure) → ``network_from_graph`` (parse, strongly
typed) → ``configure`` (workspace, profile, compute capabilities or timing cache) →
``build_serialized`` → ``engine_validity`` (from the plan's header) → ``write_engine`` (atomic), then
the timing cache (the user's file: an error there keeps the engine) and the manifest's
``engines[target]`` record.
"""

from __future__ import annotations

import datetime as _dt
import resource
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import sha256_file, write_bytes_atomic
from ..bundle import Bundle, EngineRecord, EngineValidity, Gpu, ProfileRange, TimingCache
from ..errors import ConfigError, EngineBuildError, MissingDependencyError  # EngineBuildError: re-exported
from .runtime_cache import bundle_lock, fresh_runtime_cache
from .targets import (PORTABLE, RTX_COMPUTE_CAPABILITIES, Target, cuda_device, load_library,
                      parse_compute_capabilities, resolve_target)
from .validity import engine_validity, validity_problem

GIB = 1 << 30
MIB = 1 << 20
DECODER_LATENT_MAX = 512  # the exported graphs' dynamic latent side limit (export/onnx.py)


@dataclass(frozen=True)
class ProfileSpec:
    """The optimization profile: min/opt/max batch and (decoders) latent height/width.

    The default decoder range is latents 32²–128² (images 256²–1024²), batch 1–4.
    """

    batch: tuple[int, int, int] = (1, 1, 4)
    latent: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((32, 32), (64, 64), (128, 128))

    def __post_init__(self) -> None:
        _check_range("batch", self.batch)
        for axis, name in ((0, "latent height"), (1, "latent width")):
            _check_range(name, tuple(hw[axis] for hw in self.latent), DECODER_LATENT_MAX)


def _check_range(name: str, values: tuple, upper: int | None = None) -> None:
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"{name} needs three integers min ≤ opt ≤ max, got {values}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"{name} must satisfy 1 ≤ min ≤ opt ≤ max, got min {lo}, opt {opt}, max {hi}")
    if upper is not None and hi > upper:
        raise ConfigError(f"{name} max {hi} exceeds the graph's limit {upper}")


def profile_shapes(manifest, profile: ProfileSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name → (min, opt, max) shapes for a bundle's graph (pure: manifest facts only)."""
    img = manifest.image
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for spec in manifest.inputs:
        name = spec.name
        per_level = []
        for b, (h, w) in zip(profile.batch, profile.latent):
            if manifest.kind == "editor":  # fixed spatial size: every axis but the batch as recorded
                per_level.append((b, *(int(d) for d in spec.shape[1:])))
            elif name == "class_labels":
                per_level.append((b,))
            elif name == "latents":
                per_level.append((b, manifest.latent.channels, h, w))
            elif manifest.latent is not None:
                up = manifest.latent.upscale
                per_level.append((b, img.channels, up * h, up * w))
            else:
                per_level.append((b, img.channels, img.height, img.width))
        shapes[name] = tuple(per_level)
    return shapes


# --- build steps -----------------------------------------------------------------------
def network_from_graph(trt, builder, graph: Path):
    """Parse an ONNX graph (external data resolved beside it) into a strongly typed network."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, builder.logger)
    if not parser.parse_from_file(str(graph)) or parser.num_errors:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise EngineBuildError(f"TensorRT could not parse {graph.name}: {errors}")
    if flag is not None and not network.get_flag(flag):
        raise EngineBuildError(f"the network from {graph.name} is not strongly typed")
    return network, parser


def configure(trt, builder, target: Target, shapes: dict, *, workspace_gb: float | None,
              compute_capabilities: list[str] | None):
    """A builder config: workspace limit, one optimization profile, and the target's compute
    capabilities (the timing cache is attached by ``TimingCacheFile``)."""
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * GIB))
    add_profile(builder, config, shapes)
    if compute_capabilities:
        set_compute_capabilities(trt, config, compute_capabilities)
    return config


def add_profile(builder, config, shapes: dict) -> int:
    """Add one optimization profile; ``add_optimization_profile`` returns its index, or -1 when the
    profile is invalid (NvInfer.h ``addOptimizationProfile``), which is an ``EngineBuildError``."""
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    index = config.add_optimization_profile(profile)
    if index < 0:
        ranges = ", ".join(f"{n} {tuple(lo)}..{tuple(hi)}" for n, (lo, _opt, hi) in shapes.items())
        raise EngineBuildError(f"TensorRT refused the optimization profile ({ranges}; see its log): check "
                               "--min/--opt/--max-batch and --min/--opt/--max-latent")
    return index


def set_compute_capabilities(trt, config, names: list[str]) -> None:
    """Set TensorRT-RTX's target compute capabilities; a False from ``set_compute_capability``
    (its 1.7.1 docstring: "True if successful, false otherwise") is an ``EngineBuildError``."""
    config.num_compute_capabilities = len(names)
    for i, cc in enumerate(names):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, cc), i):
            raise EngineBuildError(f"TensorRT-RTX refused compute capability {cc} (see its log): choose from "
                                   f"{', '.join(RTX_COMPUTE_CAPABILITIES)}")


@dataclass
class TimingCacheFile:
    """A ``--timing-cache`` file: read before the build, written after it only if TensorRT took it.

    ``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache made on another
    GPU or TensorRT version (NvInfer.h ``setTimingCache``; pyCore.cpp binds it with the result):
    that is warned about, the build goes on without it, and the user's file is left as it is.
    """

    path: Path
    accepted: bool = False

    def attach(self, config) -> bool:
        """Create the cache from the file (``b""`` when absent: a new cache) and set it on ``config``."""
        blob = self.path.read_bytes() if self.path.is_file() else b""
        cache = config.create_timing_cache(blob)
        self.accepted = cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=False))
        if not self.accepted:
            warnings.warn(f"the timing cache {self.path} was rejected (made on another GPU or TensorRT version): "
                          "building without it and leaving the file unchanged; pass another --timing-cache file "
                          "to keep one for this GPU", stacklevel=2)
        return self.accepted

    def save(self, config) -> bool:
        """Write the config's cache to the file atomically; False (nothing written) when it was
        rejected, or (warned) when TensorRT returns none or the file cannot be written: the
        engine is written before this (``build``), and a bad ``--timing-cache`` path must not
        lose a build that took minutes."""
        if not self.accepted:
            return False
        cache = config.get_timing_cache()
        data = None if cache is None else cache.serialize()
        if data is None:
            warnings.warn(f"TensorRT returned no timing cache after the build: {self.path} is left unchanged",
                          stacklevel=2)
            return False
        try:
            write_bytes_atomic(self.path, data)
        except OSError as exc:
            warnings.warn(f"the engine was written, but the timing cache could not be saved to {self.path} ({exc}): "
                          "pass a writable --timing-cache path next time", stacklevel=2)
            return False
        return True


def build_serialized(builder, network, config):
    """Build the plan: TensorRT's ``IHostMemory`` (a buffer, written and hashed without a copy)."""
    plan = builder.build_serialized_network(network, config)
    if plan is None or plan.nbytes == 0:
        raise EngineBuildError("TensorRT failed to build the engine (see its log above)")
    return plan


def write_engine(bundle: Bundle, name: str, plan) -> Path:
    """Write ``plan`` (bytes or TensorRT's ``IHostMemory``) into the bundle atomically."""
    return write_bytes_atomic(bundle.path / name, plan)


# --- the command -----------------------------------------------------------------------
def build(engine: str | Path | Bundle, *, target: str | None = None, profile: ProfileSpec | None = None,
          workspace_gb: float | None = None, compute_capabilities: list[str] | None = None,
          timing_cache: str | Path | None = None) -> EngineRecord:
    """Build an engine from a bundle's FP16 graph and record it in the manifest.

    Args:
        engine: a bundle folder (or a file inside one) that holds an FP16 graph.
        target: "tensorrt" or "tensorrt-rtx"; None picks whichever library is installed.
        profile: min/opt/max batch and latent size (None: ``ProfileSpec()``).
        workspace_gb: builder workspace limit in GiB (None: the library's default).
        compute_capabilities: TensorRT-RTX targets, e.g. ["8.6", "8.9"] (None: its portable set).
        timing_cache: a TensorRT timing cache file, read if present and written after the build
            unless TensorRT rejected it (another GPU or version: warned, file left unchanged)
            (``tensorrt`` only: a cache makes TensorRT-RTX look for a GPU).

    Returns:
        The engine record written to ``cmrt.json`` under ``engines[target]``.
    """
    bundle = Bundle.open(engine)
    tgt = resolve_target(target)
    profile = profile or ProfileSpec()
    ccs = parse_compute_capabilities(compute_capabilities)
    _check_target_options(tgt, ccs, timing_cache)
    graph = bundle.graph_path("fp16")
    shapes = profile_shapes(bundle.manifest, profile)
    trt = load_library(tgt)
    gpu = None if tgt.builds_without_gpu else _require_gpu(tgt)
    cache_file = TimingCacheFile(Path(timing_cache)) if timing_cache else None
    built = build_plan(trt, tgt, graph, shapes, workspace_gb=workspace_gb, compute_capabilities=ccs, gpu=gpu,
                       timing_cache=cache_file)
    path = write_engine(bundle, tgt.engine_file, built.plan)  # the engine first: the timing cache is the user's file
    if cache_file is not None:
        cache_file.save(built.config)
    record = engine_record(tgt, trt, path, "fp16", bundle.manifest.graphs["fp16"], shapes, profile, built, gpu, ccs,
                           workspace_gb)
    record = replace(record, timing_cache=None if cache_file is None else TimingCache(str(cache_file.path),
                                                                                      cache_file.accepted))
    return _record_engine(bundle, record)


@dataclass
class BuiltPlan:
    """A built, header-checked plan, its builder config (for the timing cache) and build seconds."""

    plan: object
    config: object
    seconds: float
    validity: dict


def build_plan(trt, tgt: Target, graph: Path, shapes: dict, *, workspace_gb: float | None,
               compute_capabilities: list[str] | None, gpu: dict | None,
               timing_cache: TimingCacheFile | None = None) -> BuiltPlan:
    """Parse ``graph`` (strongly typed), configure one profile of ``shapes``, build the plan and
    check its header (``EngineBuildError`` when refused): the steps every build shares."""
    t0 = time.perf_counter()
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network, _parser = network_from_graph(trt, builder, graph)
    config = configure(trt, builder, tgt, shapes, workspace_gb=workspace_gb, compute_capabilities=compute_capabilities)
    if timing_cache is not None:
        timing_cache.attach(config)
    plan = build_serialized(builder, network, config)
    seconds = time.perf_counter() - t0
    validity = engine_validity(trt, plan, gpu=gpu)
    problem = validity_problem(validity)
    if problem:
        raise EngineBuildError(f"the built {tgt.name} engine is refused: {problem}")
    return BuiltPlan(plan, config, seconds, validity)


def _record_engine(bundle: Bundle, record: EngineRecord) -> EngineRecord:
    """Write ``engines[target]`` (re-read under the bundle's lock, beside a running backend's
    runtime-cache saves); a new TensorRT-RTX engine starts with a fresh runtime cache."""
    if record.target == "tensorrt-rtx":
        record = replace(record, runtime_cache=fresh_runtime_cache(bundle.path))
    with bundle_lock(bundle.path):
        bundle.manifest = Bundle.open(bundle.path, check_files=False).manifest  # as it is now, not as first read
        bundle.update(engines={**bundle.manifest.engines, record.target: record})
    return record


def _check_target_options(tgt: Target, ccs: list[str] | None, timing_cache) -> None:
    if ccs and tgt.name != "tensorrt-rtx":
        raise ConfigError("--compute-capability applies to --target tensorrt-rtx; TensorRT builds for the "
                          "GPU it runs on")
    if timing_cache and tgt.builds_without_gpu:
        raise ConfigError("--timing-cache applies to --target tensorrt; with TensorRT for RTX a timing "
                          "cache makes the build need a GPU")


def _require_gpu(tgt: Target) -> dict:
    gpu = cuda_device()
    if gpu is None:
        raise MissingDependencyError(f"--target {tgt.name} builds on the GPU it will run on, and no CUDA GPU "
                                     "is visible (with a CUDA build of torch): run `cmrt build` on that GPU "
                                     "machine, or use --target tensorrt-rtx (builds without a GPU)")
    return gpu


def engine_record(tgt: Target, trt, path: Path, graph_name: str, graph, shapes: dict, profile: ProfileSpec,
                  built: BuiltPlan, gpu: dict | None, ccs: list[str] | None, workspace_gb: float | None) -> EngineRecord:
    """The manifest record of an engine written at ``path`` from ``graph`` (``graph_name``: its
    precision key, "fp16" or "fp32")."""
    validity = built.validity
    return EngineRecord(
        file=path.name, bytes=path.stat().st_size, sha256=sha256_file(path), target=tgt.name, library=tgt.module,
        library_version=trt.__version__,
        compute_capabilities=tuple(ccs) if ccs else (PORTABLE if tgt.builds_without_gpu else (gpu["compute_capability"],)),
        gpu=None if gpu is None else Gpu(**gpu), graph=graph_name, graph_sha256=graph.sha256,
        strongly_typed=True, io=graph.io,
        profiles=({name: ProfileRange(*(tuple(x) for x in s)) for name, s in shapes.items()},),
        profile_spec=asdict(profile), workspace_bytes=None if workspace_gb is None else int(workspace_gb * GIB),
        build_seconds=round(built.seconds, 2),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB, 1),
        validity=EngineValidity(**{**validity, "diagnostics": tuple(validity.get("diagnostics", ()))}),
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
