"""TensorRT targets and GPU capabilities: which library builds and runs an engine, which GPUs an
engine covers, and the GPU that is here (``cuda_device``). Pure tables and checks on recorded
facts; nothing here imports TensorRT (``load_library`` does, when asked) or, at module level, torch.

Sources: the TensorRT-RTX support matrix and "CPU-Only AOT and TensorRT-RTX Engines" page
(docs.nvidia.com/deeplearning/tensorrt-rtx: engines are by default portable across compute
capabilities 8.0, 8.6, 8.9, 12.0 and later; Turing, 7.5, only when asked for explicitly) and
TensorRT-RTX's ``samples/apiUsage/python/api_usage.py`` ("Turing GPUs are not supported by default
when leaving the compute capability unset"; ``set_compute_capability(trt.ComputeCapability.SM75, 0)``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..bundle import EngineRecord
from ..errors import ConfigError, MissingDependencyError, require


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


#: Engine targets, in the order a bundle's engines are tried (TensorRT, then TensorRT-RTX).
TARGETS: dict[str, Target] = {
    "tensorrt": Target("tensorrt", "tensorrt", "trt", builds_without_gpu=False),
    "tensorrt-rtx": Target("tensorrt-rtx", "tensorrt_rtx", "trt-rtx", builds_without_gpu=True),
}

#: TensorRT-RTX ``ComputeCapability`` members by "major.minor": every GPU it runs on (no Hopper:
#: RTX builds exclude SM90).
RTX_COMPUTE_CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120",
                            "12.1": "SM121"}
#: Compute capabilities TensorRT for RTX runs on.
RTX_SUPPORTED = tuple(RTX_COMPUTE_CAPABILITIES)
#: What an engine built without ``--compute-capability`` covers: the library's portable set,
#: which leaves out Turing (7.5) unless it is asked for (see the module docstring's sources).
RTX_PORTABLE = tuple(cc for cc in RTX_SUPPORTED if cc != "7.5")
#: The manifest's ``compute_capabilities`` of an engine built for the portable set.
PORTABLE = "library default (portable set)"
#: The TensorRT-RTX runtime cache (JIT-compiled kernels), written beside the engine.
RUNTIME_CACHE_FILE = "engine.tensorrt-rtx.cache"


def resolve_target(name: str | None) -> Target:
    """The named target, or (None) whichever library is installed, TensorRT first."""
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


def load_library(target: Target, doing: str | None = None):
    """Import the target's TensorRT module (``MissingDependencyError`` naming the extra)."""
    return require(target.module, target.extra, doing or f"building a {target.name} engine")


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


def cc_from_enum(name: str) -> str:
    """"SM86" → "8.6" (the inverse of ``RTX_COMPUTE_CAPABILITIES``)."""
    digits = name.upper().removeprefix("SM")
    return f"{digits[:-1]}.{digits[-1]}"


def covered_capabilities(record: EngineRecord) -> tuple[str, ...]:
    """The compute capabilities ("major.minor") an engine runs on: those it was built for, or
    (TensorRT-RTX without ``--compute-capability``) the portable set."""
    ccs = record.compute_capabilities
    if not isinstance(ccs, tuple):
        return RTX_PORTABLE if record.target == "tensorrt-rtx" else ()
    return tuple(cc_from_enum(c) if c.upper().startswith("SM") else c for c in ccs)


def compatibility_problem(record: EngineRecord, library_version: str, device: dict) -> str | None:
    """Why an engine cannot run here, or None. ``device``: {"name", "compute_capability"}.

    Engines load only on the library build and the GPU they were built for (TensorRT: the build
    GPU's compute capability; TensorRT-RTX: the capabilities asked at build time, or its portable
    set, which does not include Turing).
    """
    target, built = record.target, record.library_version
    rebuild = f"rebuild it here with `cmrt build BUNDLE --target {target}`"
    if built != library_version:
        return (f"the {target} engine {record.file} was built with {record.library} {built}, but "
                f"{library_version} is installed: {rebuild} (or install {record.library}=={built})")
    cc = device["compute_capability"]
    if target == "tensorrt-rtx":
        return _rtx_problem(record, cc, device["name"])
    ccs = record.compute_capabilities
    if isinstance(ccs, tuple) and cc not in ccs:
        gpu = record.gpu.name if record.gpu else "another GPU"
        return (f"the engine was built on {gpu} (compute capability {ccs[0]}), this GPU is {device['name']} "
                f"({cc}): {rebuild}")
    return None


def _rtx_problem(record: EngineRecord, cc: str, name: str) -> str | None:
    if cc not in RTX_SUPPORTED:
        return (f"TensorRT for RTX does not run on {name} (compute capability {cc}; it supports "
                f"{', '.join(RTX_SUPPORTED)}, not Hopper): build with --target tensorrt instead")
    covered = covered_capabilities(record)
    if cc in covered:
        return None
    fix = f"rebuild with `cmrt build BUNDLE --target tensorrt-rtx --compute-capability {cc}`"
    if not isinstance(record.compute_capabilities, tuple):
        return (f"the engine was built for TensorRT-RTX's portable set ({', '.join(covered)}), which does not "
                f"cover {name} (compute capability {cc}): {fix}")
    return f"the engine was built for compute capabilities {list(covered)}, this GPU ({name}) is {cc}: {fix}"
