"""The graph stages of a pipeline bundle on backends: which backend each stage runs on, opening
it, and each stage's check on its stored inputs, with OpenVINO's parity recorded per stage in
``pipeline.json`` (``stages[name].backends``, as a bundle's ``backends``).

Which backend a stage runs on (``stage_backend``), for ``backend=``:

- None (the default): a stage engine that can run here (``cmrt build``, its library, a GPU it
  was built for) → ``tensorrt``; else, on a CPU with native BF16 and OpenVINO installed,
  ``openvino-bf16`` for a stage whose own BF16 record passed on a CPU of this class for its
  current FP32 graph and timed it faster than ONNX Runtime FP32 there (the record's ``speed``);
  else ONNX Runtime (FP32, or the FP16 graphs with ``precision="fp16"``,
  which keeps ONNX Runtime for every stage).
- "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda": every stage on ONNX Runtime.
- "openvino-bf16": the sampler and decoder in BF16; a text encoder in BF16 only where its own
  BF16 record passed here, else in FP32 on OpenVINO (``openvino-f32``).
- "openvino": each stage in BF16 where its record passed here, else FP32; "openvino-f32": FP32.
- "tensorrt": every stage's engine (``cmrt build BUNDLE``; refused for a stage without one).

A precision whose recorded parity failed on a CPU of this class is refused when asked for, and
never chosen by default; ``cmrt check`` runs it anyway (a re-check may pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import PipelineManifest, StageRecord, update_stages
from ..errors import ConfigError, InputTypeError, ParityError
from ..parity import ParityReport
from .stored import StoredRun, run_stored

ORT = ("onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda")
OPENVINO = ("openvino", "openvino-bf16", "openvino-f32")
#: What ``Pipeline(bundle, backend=...)`` and ``cmrt check PIPELINE --backend`` take.
PIPELINE_BACKENDS = (*ORT, *OPENVINO, "tensorrt")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def check_backend_name(backend: Any) -> str | None:
    """``backend`` as given (None: the default per stage); ``ConfigError`` naming it otherwise."""
    if backend is None:
        return None
    if not isinstance(backend, str):
        raise InputTypeError(f"backend must be a backend name (str) or None, got {type(backend).__name__}")
    if backend not in PIPELINE_BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} for a pipeline bundle; choose one of "
                          f"{', '.join(PIPELINE_BACKENDS)} (None: the default per stage)")
    return backend


def check_precision(backend: str | None, precision: str) -> None:
    """``precision`` other than FP32 picks ONNX Runtime's FP16 graphs: refused with another backend."""
    if precision != "fp32" and backend not in (None, *ORT):
        raise ConfigError(f"precision={precision!r} picks ONNX Runtime's FP16 graphs; backend {backend!r} runs "
                          "its own precision: drop precision, or use backend='onnxruntime'")


def is_features(stage: StageRecord) -> bool:
    """The stage outputs features (embeddings, latents), not images: its tiers are "*-features"."""
    return any(key.endswith("-features") for key in stage.parity)


def tier(stage: StageRecord, precision: str) -> str:
    """The tolerance tier (``cmrt.parity.TOLERANCES``) of ``stage`` computed in ``precision``."""
    return f"{precision}-features" if is_features(stage) else precision


# --- choice ----------------------------------------------------------------------------------------
def stage_backend(folder: Path, stage: StageRecord, backend: str | None, *, device: str, precision: str,
                  recheck: bool = False) -> str:
    """The backend ``stage`` runs on for the pipeline's ``backend`` (``check_backend_name``), as a
    concrete name: "onnxruntime-cpu"/"-cuda", "openvino-bf16", "openvino-f32" or "tensorrt".
    ``recheck``: ``cmrt check``, which runs a failed precision again and checks a text encoder in
    the BF16 it asks for."""
    ort = f"onnxruntime-{device}"
    check_precision(backend, precision)
    if backend is None:
        return ort if precision != "fp32" else _default(stage, ort)
    if backend in ORT:
        return ort if backend == "onnxruntime" else backend
    if backend == "tensorrt":
        return "tensorrt"
    if device == "cuda":
        raise ConfigError(f"backend {backend!r} runs on the CPU; device='cuda' asks for a GPU: use device='cpu' "
                          "(or 'auto'), or backend='onnxruntime-cuda'")
    return _openvino(folder, stage, backend, recheck)


def _default(stage: StageRecord, ort: str) -> str:
    from ..tensorrt.stages import stage_usable
    from .openvino import fastest_passed

    if stage_usable(stage):
        return "tensorrt"
    return fastest_passed(stage.backends, stage.graph) or ort


def _openvino(folder: Path, stage: StageRecord, backend: str, recheck: bool) -> str:
    from .openvino import precision_for, refuse_failed_record, valid_record

    precision = precision_for(backend, stage.backends, stage.graph)
    if backend == "openvino-bf16" and stage.name in TEXT_ENCODERS and not recheck:
        rec = valid_record(stage.backends, "openvino-bf16", stage.graph)
        precision = "bf16" if rec is not None and rec.passed else "fp32"  # FP32 unless its parity allows BF16
    name = "openvino-bf16" if precision == "bf16" else "openvino-f32"
    if not recheck:
        refuse_failed_record(backend, valid_record(stage.backends, name, stage.graph),
                             f"{folder} (stage {stage.name})", f"cmrt check {folder} --backend {name}")
    return name


# --- opening -----------------------------------------------------------------------------------------
def open_stage(folder: Path, stage: StageRecord, name: str, *, precision: str = "fp32"):
    """Open the concrete backend ``name`` (``stage_backend``) on ``stage``; ``precision``: which of
    its graphs ONNX Runtime runs ("fp16": the FP16 graph where the stage has one)."""
    output = stage.outputs[0].name
    if name.startswith("onnxruntime-"):
        from .backends import OnnxRuntimeBackend

        key = precision if precision in stage.graphs else "fp32"
        graph = stage.graphs.get(key, stage.graph)
        return OnnxRuntimeBackend(folder / graph.file, device=name.removeprefix("onnxruntime-"), precision=key,
                                  output=output)
    if name.startswith("openvino-"):
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(folder / stage.graph.file, precision="bf16" if name == "openvino-bf16" else "fp32",
                               output=output)
    from ..tensorrt.stages import open_stage_engine

    return open_stage_engine(folder, stage)


def open_stages(folder: Path, manifest: PipelineManifest, backend: str | None, *, device: str,
                precision: str = "fp32", recheck: bool = False) -> dict[str, Any]:
    """Every graph stage opened (stage name → backend); on a failure the ones opened are closed."""
    names = {n: stage_backend(folder, s, backend, device=device, precision=precision, recheck=recheck)
             for n, s in manifest.stages.items() if s.graph is not None}  # every refusal before any compile
    opened: dict[str, Any] = {}
    try:
        for n, name in names.items():
            opened[n] = open_stage(folder, manifest.stages[n], name, precision=precision)
    except BaseException:
        for b in opened.values():
            b.close()
        raise
    return opened


# --- checking and recording -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StageCheck:
    """One stage run on its stored inputs: the backend and precision it ran in, and the run."""

    stage: str
    backend: str
    precision: str
    run: StoredRun

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.backend}/{self.run.report.precision}"


def stored_data(folder: Path, stage: StageRecord) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A stage's stored parity inputs and PyTorch outputs (``parity/<stage>.npz``)."""
    with np.load(folder / stage.parity_inputs.file, allow_pickle=False) as data:
        inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
        outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
    return inputs, outputs


def check_stages(folder: str | Path, backend: str | None = None, *, device: str = "cpu",
                 record: bool = True) -> dict[str, StageCheck]:
    """Run every graph stage on ``backend`` (the pipeline's choice per stage) on its stored inputs
    and compare with the stored PyTorch outputs under the stage's tier in the precision it ran
    (``tier``). With ``record``, OpenVINO runs are recorded per stage in ``pipeline.json``
    (passed or not), as ``cmrt check BUNDLE --backend openvino-bf16`` records a bundle's."""
    from .openvino import OpenVinoBackend, backend_record, record_key, run_and_time

    folder = Path(folder)
    manifest = PipelineManifest.open(folder)
    backend = check_backend_name(backend)
    checks, records = {}, {}
    for n, s in manifest.stages.items():
        if s.graph is None or s.parity_inputs is None:
            continue  # a nested cmrt bundle: `cmrt check BUNDLE/decoder` checks it
        opened = open_stage(folder, s, stage_backend(folder, s, backend, device=device, precision="fp32",
                                                     recheck=True))
        name, precision = opened.name, opened.precision
        inputs, expected = stored_data(folder, s)
        stored = partial(run_stored, opened, inputs, expected, tier=tier(s, precision))  # closes it
        if record and isinstance(opened, OpenVinoBackend):  # with its timing against ONNX Runtime FP32
            run, speed = run_and_time(opened, inputs, stored, partial(open_stage, folder, s, "onnxruntime-cpu"))
            rec = backend_record(opened, run, s.graph, speed)
            records[n] = {"backends": {**(s.backends or {}), record_key(rec.backend, rec.cpu.isa): rec}}
        else:
            run = stored()
        checks[n] = StageCheck(n, name, precision, run)
        if record and getattr(opened, "engine_target", None) is not None:
            records[n] = {"engines": _engine_checked(s, opened, run)}
    if records:
        update_stages(folder, records)
    return checks


def _engine_checked(stage: StageRecord, backend: Any, run: StoredRun) -> dict:
    """The stage's engine records with the checked one's parity filled in (where, when, result)."""
    from dataclasses import replace

    from ..bundle import Gpu
    from .check import engine_parity

    gpu = Gpu(**backend.gpu) if isinstance(backend.gpu, dict) else backend.gpu
    engines = dict(stage.engines or {})
    engines[backend.engine_target] = replace(engines[backend.engine_target],
                                             parity=engine_parity(run.report, gpu, backend.library_version))
    return engines


def record_at_export(folder: str | Path) -> dict[str, StageCheck] | None:
    """``cmrt export --model``'s step: on a CPU with native BF16 and OpenVINO installed, check and
    record ``openvino-bf16`` for every stage (a failure is recorded, so that stage is never chosen;
    the export stands)."""
    from .openvino import available, native_bf16

    if not native_bf16() or not available():
        return None
    return check_stages(folder, "openvino-bf16")


def record_lines(manifest: PipelineManifest) -> list[str]:
    """One line per stage record: backend, verdict, CPU, figures, and whether it is current."""
    from .check import engine_verdict
    from .openvino import record_line, valid_record

    lines = []
    for n, s in manifest.stages.items():
        for key, rec in sorted((s.backends or {}).items()):
            lines.append(record_line(f"stage {n} backend {key}", rec,
                                     valid_record(s.backends, rec.backend, s.graph, rec.cpu) is rec))
        for target, e in sorted((s.engines or {}).items()):
            lines.append(f"stage {n} engine {e.file} ({target}, {e.graph} graph): " + engine_verdict(e, "BUNDLE"))
    return lines


def failed(checks: dict[str, StageCheck]) -> list[ParityReport]:
    return [c.run.report for c in checks.values() if not c.run.report.passed]


def raise_if_failed(checks: dict[str, StageCheck]) -> None:
    bad = failed(checks)
    if bad:
        raise ParityError("; ".join(f"stage {c.stage}: " + "; ".join(o.line() for o in c.run.report.outputs
                                                                      if not o.passed)
                                    for c in checks.values() if not c.run.report.passed), bad[0])


__all__ = ["PIPELINE_BACKENDS", "check_backend_name", "stage_backend", "open_stage", "open_stages", "check_stages",
           "record_at_export", "record_lines", "tier", "StageCheck"]
