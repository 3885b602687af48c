"""``cmrt triton``: bundles → a Triton Inference Server model repository.

```
REPO/
  <name>/config.pbtxt        cmrt's runtime in Triton's Python backend, dynamic batching
  <name>/1/model.py          imports cmrt.serve.model.TritonPythonModel
  <name>/1/bundle/           the bundle (hard links where the file system allows, else copies);
                             a pipeline bundle (pipeline.json) gets this model only, run by cmrt.Pipeline
  <name>_onnx/config.pbtxt   the FP32 graph on onnxruntime_onnx: the caller passes noise_0..noise_{k-1}
  <name>_onnx/1/model.onnx   (+ model.onnx.data)
  <name>_trt/config.pbtxt    the bundle's `tensorrt` engine on tensorrt_plan (when it has one)
  <name>_trt/1/model.plan
```

The repository is written into a temporary folder beside ``REPO`` and renamed into place when
complete, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import __version__
from .._io import staged_dir
from ..bundle import Bundle, EngineRecord, PipelineManifest
from ..errors import ConfigError
from . import config as cfg
from .pipeline import is_pipeline_bundle, pipeline_device

VERSION = "1"
BUNDLE_DIR = "bundle"
MODEL_PY = "model.py"
CONFIG = "config.pbtxt"
ONNX_SUFFIX = "_onnx"
TRT_SUFFIX = "_trt"
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 1000
MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TENSORRT = "tensorrt"  # engines of the `tensorrt` target run on Triton's TensorRT backend (not TensorRT-RTX)

MODEL_PY_TEXT = f'''# Written by `cmrt triton` (cmrt {__version__}): cmrt's runtime serving the bundle in ./{BUNDLE_DIR}
# in Triton's Python backend. The Python environment of the backend needs cmrt: pip install 'cmrt[serve]'.
from cmrt.serve.model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """How the models of a repository batch and scale.

    Args:
        max_batch: Triton's ``max_batch_size``, the most images one execution runs (requests merged);
            None: 8, capped by the batch range of a bundle's TensorRT engine profile.
        instances: model instances (processes of the Python backend; each opens its own runtime).
        max_queue_delay_us: how long the dynamic batcher may hold a request to merge it with others.
        dynamic_batching: False writes no ``dynamic_batching`` block: one request per execution.
        plain: also write the ``onnxruntime_onnx`` / ``tensorrt_plan`` models over the graph/engine.
        backend: the cmrt backend the Python model opens (None: cmrt's default choice).
    """

    max_batch: int | None = None
    instances: int = 1
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    dynamic_batching: bool = True
    plain: bool = True
    backend: str | None = None


@dataclass(frozen=True)
class PipelineBundle:
    """An opened pipeline bundle (``cmrt export --model DIFFUSERS_FOLDER``): its folder and manifest."""

    path: Path
    manifest: PipelineManifest

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "PipelineBundle":
        return cls(Path(folder), PipelineManifest.open(folder))


def open_bundle(bundle: str | os.PathLike | Bundle | PipelineBundle) -> Bundle | PipelineBundle:
    """A cmrt bundle (``cmrt.json``) or a pipeline bundle (``pipeline.json``)."""
    if isinstance(bundle, (Bundle, PipelineBundle)):
        return bundle
    return PipelineBundle.open(bundle) if is_pipeline_bundle(bundle) else Bundle.open(bundle)


@dataclass(frozen=True)
class ModelEntry:
    """One model written into a repository. ``platform``: "python" (cmrt's runtime),
    "onnxruntime_onnx" or "tensorrt_plan"."""

    name: str
    platform: str
    bundle: Path
    max_batch: int


def model_name(bundle: Bundle | PipelineBundle) -> str:
    """The Triton model name of a bundle: its folder name, checked to be usable in URLs."""
    name = bundle.path.resolve().name
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ConfigError(f"bundle folder name {name!r} is not a valid model name (letters, digits, '_', '.', '-', "
                          f"starting with a letter or digit, at most {MAX_NAME} characters): rename the folder")
    return name


def write_repository(bundles: Sequence[str | os.PathLike | Bundle | PipelineBundle], out: str | os.PathLike, *,
                     options: RepositoryOptions | None = None, overwrite: bool = False) -> list[ModelEntry]:
    """Write a Triton model repository serving ``bundles``, one model per bundle (plus the plain models).

    Args:
        bundles: bundle folders (or opened bundles), pipeline bundles included; each model is named
            after its folder. A pipeline bundle gets the Python model only (no single graph to serve plain).
        out: the repository folder to write.
        options: batching and scaling (None: the defaults of ``RepositoryOptions``).
        overwrite: replace ``out`` if it exists and is not empty.

    Returns:
        the models written, in order.
    """
    options = options or RepositoryOptions()
    _check_options(options)
    if not bundles:
        raise ConfigError("pass at least one bundle")
    opened = [open_bundle(b) for b in bundles]
    plans = [_plan(b, options) for b in opened]
    _check_unique([e.name for plan in plans for e in plan])
    with staged_dir(out, overwrite=overwrite) as tmp:
        for bundle, plan in zip(opened, plans):
            _write_models(tmp, bundle, plan, options)
    return [e for plan in plans for e in plan]


def _check_options(o: RepositoryOptions) -> None:
    if o.max_batch is not None and o.max_batch < 1:
        raise ConfigError(f"--max-batch must be ≥ 1, got {o.max_batch}")
    if o.instances < 1:
        raise ConfigError(f"--instances must be ≥ 1, got {o.instances}")
    if o.max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us must be ≥ 0, got {o.max_queue_delay_us}")


def _check_unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two models would be named {', '.join(map(repr, dupes))}: Triton names a model after "
                          "its bundle folder, so give the bundles distinct folder names")



def _plan(bundle: Bundle | PipelineBundle, o: RepositoryOptions) -> list[ModelEntry]:
    name, m = model_name(bundle), bundle.manifest
    if isinstance(bundle, PipelineBundle):
        pipeline_device(o.backend, bundle.path)  # refuses a backend a pipeline cannot run on
        return [ModelEntry(name, "python", bundle.path, o.max_batch or DEFAULT_MAX_BATCH)]
    batch = _max_batch(bundle, o.max_batch)
    entries = [ModelEntry(name, "python", bundle.path, batch)]
    if o.plain and "fp32" in m.graphs:
        entries.append(ModelEntry(name + ONNX_SUFFIX, "onnxruntime_onnx", bundle.path, batch))
    if o.plain and _tensorrt_engine(bundle) is not None:
        entries.append(ModelEntry(name + TRT_SUFFIX, "tensorrt_plan", bundle.path, batch))
    return entries


def _max_batch(bundle: Bundle, requested: int | None) -> int:
    """The requested batch, refused above an engine profile's range; by default 8 within it."""
    limits = {e.file: cfg.engine_max_batch(e) for e in bundle.manifest.engines.values()}
    limits = {f: n for f, n in limits.items() if n is not None}
    cap = min(limits.values(), default=None)
    if requested is None:
        return DEFAULT_MAX_BATCH if cap is None else min(DEFAULT_MAX_BATCH, cap)
    if cap is not None and requested > cap:
        where = ", ".join(f"{f} (batch ≤ {n})" for f, n in limits.items())
        raise ConfigError(f"--max-batch {requested} exceeds the profile of {bundle.path}'s engine {where}: pass "
                          f"--max-batch {cap} or rebuild with `cmrt build --max-batch {requested}`")
    return requested


def _tensorrt_engine(bundle: Bundle) -> EngineRecord | None:
    return next((e for e in bundle.manifest.engines.values() if e.target == _TENSORRT), None)


def _write_models(repo: Path, bundle: Bundle, plan: list[ModelEntry], o: RepositoryOptions) -> None:
    for entry in plan:
        version = repo / entry.name / VERSION
        version.mkdir(parents=True)
        config, header = _config(entry, bundle, o)
        (repo / entry.name / CONFIG).write_text(cfg.render(config, header))
        if entry.platform == "python":
            (version / MODEL_PY).write_text(MODEL_PY_TEXT)
            _link_files(bundle.path, version / BUNDLE_DIR, _bundle_files(bundle))
        elif entry.platform == "onnxruntime_onnx":
            graph = bundle.manifest.graphs["fp32"]
            _link_files(bundle.path, version, [f.file for f in graph.files])
            if graph.file != cfg.ONNX_FILE:
                os.replace(version / graph.file, version / cfg.ONNX_FILE)
        else:
            engine = _tensorrt_engine(bundle)
            _link_files(bundle.path, version, [engine.file])
            os.replace(version / engine.file, version / cfg.PLAN_FILE)


def _config(entry: ModelEntry, bundle: Bundle | PipelineBundle, o: RepositoryOptions) -> tuple[dict, str]:
    m = bundle.manifest
    common = dict(max_batch=entry.max_batch, instances=o.instances, max_queue_delay_us=o.max_queue_delay_us,
                  dynamic_batching=o.dynamic_batching)
    if isinstance(bundle, PipelineBundle):
        header = (f"Written by `cmrt triton` (cmrt {__version__}): pipeline bundle {bundle.path.name} ({m.pipeline}, "
                  f"{m.steps} LCM step(s)),\nserved by cmrt.Pipeline in Triton's Python backend. Inputs (B, 1), one "
                  "row per prompt: `prompt`\n(BYTES) and optional `negative_prompt` per row; `seed`, `guidance_scale`, "
                  "`height`, `width` repeat\none value on every row (one per request). Output `images` (B, 3, H, W) "
                  "in [-1, 1].")
        return cfg.python_config(entry.name, m, bundle_dir=BUNDLE_DIR, backend=o.backend, **common), header
    task = f"{m.task.name}, " if m.kind == "editor" else ""
    what = f"{m.kind} bundle {bundle.path.name} ({task}{m.steps} step(s))"
    if entry.platform == "python":
        header = (f"Written by `cmrt triton` (cmrt {__version__}): {what}, served by cmrt's runtime in Triton's\n"
                  "Python backend (seeded noise drawn per request, cmrt's input checks and errors).\n"
                  "Inputs carry the request's batch size B in their first axis; `seed` (B, 1) repeats\n"
                  "one seed on every row. Output `images` (B, C, H, W) in [-1, 1].")
        return cfg.python_config(entry.name, m, bundle_dir=BUNDLE_DIR, backend=o.backend, **common), header
    plain = ("Bring your own noise: every noise_i is a standard-normal input with the output's shape\n"
             "(cmrt's Python model draws it for you). ")
    if entry.platform == "onnxruntime_onnx":
        header = (f"Written by `cmrt triton` (cmrt {__version__}): the FP32 graph of the {what} on\n"
                  f"Triton's onnxruntime_onnx platform. {plain}")
        return cfg.onnx_config(entry.name, m, **common), header
    engine = _tensorrt_engine(bundle)
    header = (f"Written by `cmrt triton` (cmrt {__version__}): the TensorRT {engine.library_version} "
              f"engine of the {what}\non tensorrt_plan; it runs only with that TensorRT version, on the compute "
              f"capabilities it was built for.\n{plain}")
    return cfg.tensorrt_config(entry.name, m, engine, **common), header


def _bundle_files(bundle: Bundle | PipelineBundle) -> list[str]:
    """The bundle's files (relative paths); a pipeline bundle's sub-folders included."""
    files = bundle.path.rglob("*") if isinstance(bundle, PipelineBundle) else bundle.path.iterdir()
    return sorted(str(p.relative_to(bundle.path)) for p in files
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(bundle.path).parts))


def _link_files(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Hard-link (or, across file systems, copy) ``names`` from ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / name, dst / name)
        except OSError:
            shutil.copy2(src / name, dst / name)
