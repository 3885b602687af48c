"""Everything TensorRT in one package, Polygraphy-style (``backend/trt``: the loader beside the
runner): build and run, targets and GPU capabilities, engine validity, the runtime cache.

- ``targets``: the two targets (TensorRT, TensorRT-RTX), the compute capabilities each engine
  covers, ``cuda_device`` and ``compatibility_problem`` (pure checks on recorded facts).
- ``validity``: ``get_engine_validity`` decoded once, after a build and before a load.
- ``builder``: bundle FP16 graph → engine (``cmrt build``).
- ``seam``: the runtime's TensorRT calls on objects passed in (CPU-tested with stand-ins).
- ``runtime_cache``: TensorRT-RTX's runtime cache and the manifest's engine records, under a lock.
- ``backend``: ``TensorRTBackend``, the runtime's ``tensorrt`` backend.

Import-cheap: nothing imports TensorRT or torch until an engine is built or opened. Below the
runtime (which registers the backend) and above the bundle; it imports neither export nor runtime.
"""

from ..errors import EngineBuildError
from .backend import TensorRTBackend, check_devices, check_shapes, open_tensorrt, profile_limits, select_engine, usable
from .builder import (DECODER_LATENT_MAX, ProfileSpec, TimingCacheFile, add_profile, build, build_serialized, configure,
                      network_from_graph, profile_shapes, set_compute_capabilities, write_engine)
from .runtime_cache import (LOCK_FILE, bundle_lock, record_engine, runtime_cache_blob, save_runtime_cache,
                            update_engine)
from .seam import (MAX_CACHED_SHAPES, CaptureFailed, ContextSetup, EngineRunner, attach_runtime_cache, context_failure,
                   create_context, deserialize, engine_io, match_io, run_ordered, serialize_runtime_cache, torch_capture)
from .targets import (PORTABLE, RTX_COMPUTE_CAPABILITIES, RTX_PORTABLE, RTX_SUPPORTED, RUNTIME_CACHE_FILE, TARGETS,
                      Target, cc_from_enum, compatibility_problem, covered_capabilities, cuda_device, load_library,
                      parse_compute_capabilities, resolve_target)
from .validity import (DIAGNOSTIC_FIXES, HEADER_DEFECTS, check_validity, diagnostic_names, engine_validity,
                       query_validity, validity_problem, validity_problem_at_load)

__all__ = [
    "EngineBuildError", "TensorRTBackend", "check_devices", "check_shapes", "open_tensorrt", "profile_limits",
    "select_engine", "usable", "DECODER_LATENT_MAX", "ProfileSpec", "TimingCacheFile", "add_profile", "build",
    "build_serialized", "configure", "network_from_graph", "profile_shapes", "set_compute_capabilities",
    "write_engine", "LOCK_FILE", "bundle_lock", "record_engine", "runtime_cache_blob", "save_runtime_cache",
    "update_engine", "MAX_CACHED_SHAPES", "CaptureFailed", "ContextSetup", "EngineRunner", "attach_runtime_cache",
    "context_failure", "create_context", "deserialize", "engine_io", "match_io", "run_ordered",
    "serialize_runtime_cache", "torch_capture", "PORTABLE", "RTX_COMPUTE_CAPABILITIES", "RTX_PORTABLE",
    "RTX_SUPPORTED", "RUNTIME_CACHE_FILE", "TARGETS", "Target", "cc_from_enum", "compatibility_problem",
    "covered_capabilities", "cuda_device", "load_library", "parse_compute_capabilities", "resolve_target",
    "DIAGNOSTIC_FIXES", "HEADER_DEFECTS", "check_validity", "diagnostic_names", "engine_validity", "query_validity",
    "validity_problem", "validity_problem_at_load",
]
