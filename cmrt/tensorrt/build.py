"""Bundle FP16 graph → TensorRT or TensorRT-RTX engine (strongly typed), written into the bundle.

One code path for both targets: ``tensorrt`` (TensorRT ≥ 10.12; builds on the GPU it will run on)
and ``tensorrt-rtx`` (TensorRT for RTX; builds ahead of time without a GPU, for a set of compute
capabilities). Their Python APIs have the same shape, so the target only picks the module.

Steps: ``resolve_target`` → ``profile_shapes`` (pure) → ``network_from_graph`` (parse, strongly
typed) → ``configure`` (workspace, profile, compute capabilities or timing cache) →
``build_serialized`` → ``engine_validity`` (from the plan's header) → ``write_engine`` (atomic) and
the manifest's ``engines[target]`` record.
"""

from __future__ import annotations

import datetime as _dt
import resource
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import sha256_file, write_bytes_atomic
from ..bundle import Bundle, EngineRecord, EngineValidity, Gpu, ProfileRange, RuntimeCache, TimingCache
from ..errors import ConfigError, EngineBuildError, MissingDependencyError, require  # EngineBuildError: re-exported
from ..runtime._trt import RUNTIME_CACHE_FILE, diagnostic_names

GIB = 1 << 30
MIB = 1 << 20
DECODER_LATENT_MAX = 512  # the exported graphs' dynamic latent side limit (export/onnx.py)
PORTABLE = "library default (portable set)"
HEADER_DEFECTS = {"MALFORMED_ENGINE", "VERSION_MISMATCH"}


@dataclass(frozen=True)
class Target:
    """A TensorRT flavour: its Python module, the cmrt extra that installs it, and whether
    building needs a GPU."""

    name: str
    module: str
    extra: str
    builds_without_gpu: bool

    @property
    def engine_file(self) -> str:
        return f"engine.{self.name}.plan"


TARGETS: dict[str, Target] = {
    "tensorrt": Target("tensorrt", "tensorrt", "trt", builds_without_gpu=False),
    "tensorrt-rtx": Target("tensorrt-rtx", "tensorrt_rtx", "trt-rtx", builds_without_gpu=True),
}

#: TensorRT-RTX ``ComputeCapability`` members by "major.minor" (no Hopper: RTX builds exclude SM90).
RTX_COMPUTE_CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120",
                            "12.1": "SM121"}


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


def resolve_target(name: str | None) -> Target:
    """The named target, or (None) whichever library is installed, TensorRT first."""
    import importlib.util

    if name is not None:
        if name not in TARGETS:
            raise ConfigError(f"unknown --target {name!r}; choose one of {sorted(TARGETS)}")
        return TARGETS[name]
    for target in TARGETS.values():
        if importlib.util.find_spec(target.module) is not None:
            return target
    raise MissingDependencyError("building an engine needs TensorRT or TensorRT for RTX, and neither is "
                                 "installed: run `pip install 'cmrt[trt]'` (NVIDIA GPU machine) or "
                                 "`pip install 'cmrt[trt-rtx]'` (builds without a GPU, for RTX GPUs)")


def load_library(target: Target):
    """Import the target's TensorRT module (``MissingDependencyError`` naming the extra)."""
    return require(target.module, target.extra, f"building a {target.name} engine")


def cuda_device() -> dict | None:
    """The current CUDA GPU's name and compute capability, or None without one (via torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def parse_compute_capabilities(values: list[str] | None) -> list[str] | None:
    """"8.6", "86" or "SM86" → TensorRT-RTX enum names; None keeps the library's portable set."""
    if not values:
        return None
    names = []
    for v in values:
        key = v.strip().upper().removeprefix("SM")
        key = key if "." in key else f"{key[:-1]}.{key[-1:]}"
        if key not in RTX_COMPUTE_CAPABILITIES:
            raise ConfigError(f"compute capability {v!r} is not one TensorRT for RTX targets; choose from "
                              f"{', '.join(RTX_COMPUTE_CAPABILITIES)} (no Hopper 9.0)")
        names.append(RTX_COMPUTE_CAPABILITIES[key])
    return names


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
        rejected, or (warned) when TensorRT returns none."""
        if not self.accepted:
            return False
        cache = config.get_timing_cache()
        data = None if cache is None else cache.serialize()
        if data is None:
            warnings.warn(f"TensorRT returned no timing cache after the build: {self.path} is left unchanged",
                          stacklevel=2)
            return False
        write_bytes_atomic(self.path, data)
        return True


def build_serialized(builder, network, config):
    """Build the plan: TensorRT's ``IHostMemory`` (a buffer, written and hashed without a copy)."""
    plan = builder.build_serialized_network(network, config)
    if plan is None or plan.nbytes == 0:
        raise EngineBuildError("TensorRT failed to build the engine (see its log above)")
    return plan


def engine_validity(trt, plan, *, gpu: dict | None = None) -> dict:
    """The plan's validity from its header (``Runtime.get_engine_validity``).

    ``header_ok`` is True when the header is well-formed and from this library version (no
    ``MALFORMED_ENGINE`` / ``VERSION_MISMATCH``). Without a GPU the device part of the check
    cannot run (TensorRT-RTX then answers INVALID with no header diagnostic), so
    ``device_checked`` is False. Libraries without the call give ``{"checked": False}``.
    """
    runtime = trt.Runtime(_QuietLogger.make(trt))
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return {"checked": False}
    validity, diagnostics = check(plan)
    flags = diagnostic_names(trt, diagnostics)
    header_ok = not set(flags) & HEADER_DEFECTS
    verdict = ("header malformed or from another version" if not header_ok else
               f"header valid; on this GPU: {validity.name}" if gpu is not None else
               "header valid for this library version; the device check needs a GPU (none here)")
    return {"checked": True, "validity": validity.name, "diagnostics": flags, "header_ok": header_ok,
            "device_checked": gpu is not None, "verdict": verdict, "header_bytes": int(runtime.engine_header_size)}


def validity_problem(validity: dict) -> str | None:
    """Why a freshly built plan must be refused, or None (pure: the ``engine_validity`` record)."""
    if not validity.get("checked"):
        return None
    if not validity["header_ok"]:
        return f"its header check reports {validity['diagnostics']}"
    if validity["device_checked"] and validity["validity"] == "INVALID":
        return f"it is invalid on this GPU: {validity['diagnostics'] or 'no diagnostics'}"
    return None


class _QuietLogger:
    """A TensorRT logger that keeps messages instead of printing them (the header check logs a
    fatal-level line when it finds no GPU, which is expected on a build machine)."""

    @staticmethod
    def make(trt):
        class Quiet(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity, msg) -> None:
                self.messages.append(f"{severity}: {msg}")

        return Quiet()


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
    t0 = time.perf_counter()
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network, _parser = network_from_graph(trt, builder, graph)
    config = configure(trt, builder, tgt, shapes, workspace_gb=workspace_gb, compute_capabilities=ccs)
    if cache_file is not None:
        cache_file.attach(config)
    plan = build_serialized(builder, network, config)
    seconds = time.perf_counter() - t0
    validity = engine_validity(trt, plan, gpu=gpu)
    problem = validity_problem(validity)
    if problem:
        raise EngineBuildError(f"the built {tgt.name} engine is refused: {problem}")
    if cache_file is not None:
        cache_file.save(config)
    path = write_engine(bundle, tgt.engine_file, plan)
    record = _record(tgt, trt, bundle, path, shapes, profile, seconds, validity, gpu, ccs, workspace_gb)
    record = replace(record, timing_cache=None if cache_file is None else TimingCache(str(cache_file.path),
                                                                                      cache_file.accepted),
                     runtime_cache=_fresh_runtime_cache(bundle) if tgt.name == "tensorrt-rtx" else None)
    bundle.update(engines={**bundle.manifest.engines, tgt.name: record})
    return record


def _fresh_runtime_cache(bundle: Bundle) -> RuntimeCache:
    """A new engine invalidates the runtime cache of the old one: remove the file; the first run on a
    GPU writes it again (``cmrt.runtime.tensorrt.save_runtime_cache``) with its SHA-256."""
    (bundle.path / RUNTIME_CACHE_FILE).unlink(missing_ok=True)
    return RuntimeCache(RUNTIME_CACHE_FILE)


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


def _record(tgt, trt, bundle, path, shapes, profile, seconds, validity, gpu, ccs, workspace_gb) -> EngineRecord:
    m = bundle.manifest
    return EngineRecord(
        file=path.name, bytes=path.stat().st_size, sha256=sha256_file(path), target=tgt.name, library=tgt.module,
        library_version=trt.__version__,
        compute_capabilities=tuple(ccs) if ccs else (PORTABLE if tgt.builds_without_gpu else (gpu["compute_capability"],)),
        gpu=None if gpu is None else Gpu(**gpu), graph="fp16", graph_sha256=m.graphs["fp16"].sha256,
        strongly_typed=True, io=m.graphs["fp16"].io,
        profiles=({name: ProfileRange(*(tuple(x) for x in s)) for name, s in shapes.items()},),
        profile_spec=asdict(profile), workspace_bytes=None if workspace_gb is None else int(workspace_gb * GIB),
        build_seconds=round(seconds, 2),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB, 1),
        validity=EngineValidity(**{**validity, "diagnostics": tuple(validity.get("diagnostics", ()))}),
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
