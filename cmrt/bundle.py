"""The bundle: a self-describing folder holding an exported sampler, and its typed manifest.

```
bundle/
  cmrt.json                 manifest (``Manifest``), read and written only here
  model.onnx (+ .data)      FP32 graph
  model.fp16.onnx (+ .data) FP16 graph, when asked
  parity.npz                golden inputs and the PyTorch outputs
  engine.*.plan             TensorRT engines, after ``cmrt build``
```

Every section of ``cmrt.json`` is a frozen dataclass below; ``Manifest.from_dict`` checks every
field's type and names the first bad one. Every file the manifest lists carries its size and
SHA-256 (``FileRecord``): ``Bundle.open`` checks that each exists with its recorded size,
``Bundle.verify`` re-hashes them, and the manifest's own ``digest`` covers the rest of
``cmrt.json``. The JSON Schema of the manifest (``manifest_schema``) is shipped as
``docs/manifest.schema.json``.

Format versions: 2 is this one. A version-1 bundle (cmrt 0.1.0's first landing) is refused with
the command that upgrades it in place (``cmrt upgrade BUNDLE``, ``upgrade_bundle``): the upgrade
checks the graph against the SHA-256 that version 1 recorded, then records every file's size and
SHA-256. A bundle from a newer cmrt is refused with a message to upgrade cmrt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._io import sha256_file, write_json_atomic
from ._typed import TypedJsonError, field_docs_from_docstrings, from_json, json_schema, to_json
from .errors import BundleError, BundleNotFoundError, IntegrityError

MANIFEST = "cmrt.json"
PARITY = "parity.npz"
FORMAT_VERSION = 2
GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.xml"}
OUTPUT_NAME = "images"
VALUE_RANGE = (-1.0, 1.0)
KINDS = ("sampler", "decoder", "editor")
#: What each kind of bundle computes by default; editing bundles name their task (``Task``).
DEFAULT_TASKS = {"sampler": "sample", "decoder": "decode"}
#: Manifest sections added within format 2, left out of ``cmrt.json`` when null.
OPTIONAL_SECTIONS = ("norm_stats", "backends", "int8")
Kind = Literal["sampler", "decoder", "editor"]
Precision = Literal["fp32", "fp16"]


# --- sections -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """A file of the bundle with its size and SHA-256.

    Attributes:
        file: name inside the bundle folder.
        bytes: size in bytes.
        sha256: hex SHA-256 of the contents.
    """

    file: str
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> "FileRecord":
        return cls(path.name, path.stat().st_size, sha256_file(path))


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output.

    Attributes:
        name: the ONNX name.
        dtype: numpy dtype name, e.g. "float32", "int64".
        shape: per axis an integer or a symbolic name ("batch", "h", "8*h").
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Schedule:
    """Where every network evaluation sits.

    Attributes:
        steps: number of network evaluations.
        sigmas: σ of every evaluation (consistency models), else null.
        timesteps: timestep of every evaluation (decoders), else null.
        clip: x0 is clamped to [-1, 1] after every evaluation.
        sigma_min: the model's σ_min (consistency models; the re-noising uses √(σ² − σ_min²)).
        grid: points of the Karras grid the default spacing used, or null when σ's were given.
        rule: how the values were chosen ("explicit", "default spacing", "published").
    """

    steps: int
    sigmas: tuple[float, ...] | None
    timesteps: tuple[int, ...] | None
    clip: bool
    sigma_min: float | None = None
    grid: int | None = None
    rule: str = "explicit"


@dataclass(frozen=True)
class Task:
    """What the graph computes.

    Attributes:
        name: "sample", "decode", or an editing task ("inpaint", "colorize", "superres", "stroke",
            "denoise").
        factor: the super-resolution factor (superres only).
    """

    name: str
    factor: int | None = None


@dataclass(frozen=True)
class ImageSpec:
    """The output images.

    Attributes:
        channels: image channels.
        height: pixels, or an expression of the latent size ("8*h") for decoders.
        width: pixels, or an expression of the latent size ("8*w") for decoders.
        value_range: the images' value range.
        layout: axis order.
        dtype: element type of the output.
    """

    channels: int
    height: int | str
    width: int | str
    value_range: tuple[float, ...] = VALUE_RANGE
    layout: str = "NCHW"
    dtype: str = "float32"


@dataclass(frozen=True)
class LatentSpec:
    """A decoder's latent input: unscaled SD 1.x/2.x VAE latents, normalized inside the graph.

    Attributes:
        channels: latent channels.
        scale_factor: the VAE scaling factor the graph multiplies by.
        means: per-channel means subtracted after scaling.
        stds: per-channel standard deviations divided by.
        upscale: image pixels per latent pixel.
        space: which latent space this is.
    """

    channels: int
    scale_factor: float
    means: tuple[float, ...]
    stds: tuple[float, ...]
    upscale: int
    space: str


@dataclass(frozen=True)
class GraphRecord:
    """An ONNX graph of the bundle.

    Attributes:
        file: the graph file.
        files: the graph file and its external-data file, with sizes and SHA-256.
        opset: the default-domain opset.
        io: dtype of the graph's float inputs and outputs ("fp32" or "fp16").
        export_seconds: wall time of the export (FP32 graph).
        export_stages: seconds per export stage (network trace or cache, sampler trace, splice and
            clean-up, save).
        rewrites: graph clean-up counts (``cmrt.exporter.optimize``) and how the network was traced.
        size_ratio_vs_fp32: bytes relative to the FP32 graph (FP16 graph).
    """

    file: str
    files: tuple[FileRecord, ...]
    opset: int
    io: Precision = "fp32"
    export_seconds: float | None = None
    export_stages: dict[str, float] = field(default_factory=dict)
    rewrites: dict[str, int] = field(default_factory=dict)
    size_ratio_vs_fp32: float | None = None

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def sha256(self) -> str:
        return self.files[0].sha256


@dataclass(frozen=True)
class OutputParity:
    """One output compared with PyTorch.

    Attributes:
        name: the output.
        max_abs: largest absolute error.
        mean_abs: mean absolute error.
        psnr: PSNR in dB (null when identical).
        finite: no NaN/Inf in the output.
        passed: within tolerance.
    """

    name: str
    max_abs: float | None
    mean_abs: float | None
    psnr: float | None
    finite: bool
    passed: bool


@dataclass(frozen=True)
class ParityRecord:
    """A backend/precision compared with the PyTorch source on the stored parity inputs.

    Attributes:
        backend: e.g. "onnxruntime-cpu".
        precision: "fp32" or "fp16" (which tolerances applied).
        max_abs_tolerance: the max-abs bound.
        min_psnr: the PSNR floor, if any.
        passed: every output within tolerance.
        outputs: per-output results.
    """

    backend: str
    precision: str
    max_abs_tolerance: float
    min_psnr: float | None
    passed: bool
    outputs: tuple[OutputParity, ...]

    @classmethod
    def of(cls, report: Any) -> "ParityRecord":
        """From a ``cmrt.parity.ParityReport``."""
        outs = tuple(OutputParity(o.name, _finite(o.max_abs), _finite(o.mean_abs), _finite(o.psnr), o.finite,
                                  o.passed) for o in report.outputs)
        return cls(report.backend, report.precision, report.tolerance.max_abs, report.tolerance.min_psnr,
                   report.passed, outs)


@dataclass(frozen=True)
class Fp32Node:
    """A node the FP16 pass kept in FP32.

    Attributes:
        node: node name.
        op: op type.
        max_abs: the largest |value| calibration saw at its inputs/outputs.
    """

    node: str
    op: str
    max_abs: float | None = None


@dataclass(frozen=True)
class Calibration:
    """The calibration run of the FP32 graph.

    Attributes:
        cases: named input sets.
        seed: noise/latent seed of the calibration draws.
        batch: batch size.
        latent_hw: decoder latent size.
        safe_abs_max: threshold above which a node stays FP32.
        tensors: tensors whose range was recorded.
        largest_abs: the largest finite |value| seen.
    """

    cases: tuple[str, ...]
    seed: int
    batch: int
    latent_hw: tuple[int, ...]
    safe_abs_max: float
    tensors: int
    largest_abs: float | None


@dataclass(frozen=True)
class NodeCounts:
    """Compute nodes by precision in the FP16 graph.

    Attributes:
        fp16: nodes whose first float output is FP16.
        fp32: nodes whose first float output is FP32.
        casts: Cast nodes.
    """

    fp16: int
    fp32: int
    casts: int


@dataclass(frozen=True)
class PrecisionRecord:
    """How the FP16 graph's precision was decided (``cmrt.exporter.precision``).

    Attributes:
        io: dtype of the graph's inputs and outputs.
        converter: the converter and its version.
        converter_default_fp32_ops: what the converter keeps in FP32 on its own.
        rules: cmrt's reasons to keep a node in FP32, in the order applied.
        calibration: the calibration run.
        nodes: node counts by precision.
        fp32_nodes: reason → the nodes kept in FP32 for it.
        verification: input case → the FP16 graph's output vs the FP32 PyTorch source's.
    """

    io: Precision
    converter: str
    converter_default_fp32_ops: str
    rules: tuple[str, ...]
    calibration: Calibration
    nodes: NodeCounts
    fp32_nodes: dict[str, tuple[Fp32Node, ...]]
    verification: dict[str, OutputParity] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileRange:
    """One input's range in an optimization profile.

    Attributes:
        min: smallest shape.
        opt: the shape tuned for.
        max: largest shape.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Gpu:
    """A GPU.

    Attributes:
        name: device name.
        compute_capability: "major.minor".
    """

    name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineValidity:
    """``Runtime.get_engine_validity`` on the plan right after the build.

    Attributes:
        checked: the library has the call.
        validity: its verdict (VALID, SUBOPTIMAL, INVALID).
        diagnostics: its diagnostic flags.
        header_ok: the header is well-formed and from this library version.
        device_checked: a GPU was present to check the device part.
        verdict: a sentence.
        header_bytes: the header size.
    """

    checked: bool
    validity: str | None = None
    diagnostics: tuple[str, ...] = ()
    header_ok: bool | None = None
    device_checked: bool = False
    verdict: str = ""
    header_bytes: int | None = None


@dataclass(frozen=True)
class EngineParity:
    """Whether an engine was run on the stored parity inputs, where, and with what result.

    Attributes:
        checked: false until ``cmrt check --backend tensorrt`` ran it on a GPU.
        gpu: the GPU it ran on.
        library_version: the library that ran it.
        when: UTC time of the check.
        result: the comparison with the PyTorch outputs.
    """

    checked: bool = False
    gpu: Gpu | None = None
    library_version: str | None = None
    when: str | None = None
    result: ParityRecord | None = None


@dataclass(frozen=True)
class RuntimeCache:
    """TensorRT-RTX's runtime (JIT) cache, saved beside its engine after the first run on a GPU.

    Attributes:
        file: name inside the bundle.
        sha256: its SHA-256 once written (null: not yet compiled on any GPU).
        bytes: its size once written.
        library_version: the library that wrote it.
        gpu: the GPU it was compiled for.
    """

    file: str
    sha256: str | None = None
    bytes: int | None = None
    library_version: str | None = None
    gpu: Gpu | None = None


@dataclass(frozen=True)
class TimingCache:
    """The TensorRT timing cache a build used (a file outside the bundle).

    Attributes:
        file: its path.
        accepted: whether TensorRT accepted it (a cache from another GPU is rejected and left alone).
    """

    file: str
    accepted: bool


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT or TensorRT-RTX engine built from the FP16 graph (``cmrt build``).

    Attributes:
        file: the plan, inside the bundle.
        bytes: its size.
        sha256: its SHA-256.
        target: "tensorrt" or "tensorrt-rtx".
        library: the Python module that built it.
        library_version: its version (engines load only on the same version).
        compute_capabilities: the GPUs it targets, or the library's portable set.
        gpu: the GPU it was built on (TensorRT), else null.
        graph: which graph it was built from.
        graph_sha256: that graph's SHA-256.
        strongly_typed: always true (precision comes from the graph).
        io: dtype of its inputs/outputs.
        profiles: input → min/opt/max shapes, per optimization profile.
        profile_spec: the ``ProfileSpec`` asked for (batch and latent ranges).
        workspace_bytes: the builder's workspace limit, if set.
        build_seconds: wall time of the build.
        peak_rss_mib: the build process's peak memory.
        validity: the header check after the build.
        built: UTC time of the build.
        parity: whether and where it was checked against PyTorch.
        runtime_cache: TensorRT-RTX's runtime (JIT) cache beside the plan, else null.
        timing_cache: the timing cache of a TensorRT build, else null.
    """

    file: str
    bytes: int
    sha256: str
    target: str
    library: str
    library_version: str
    compute_capabilities: tuple[str, ...] | str
    gpu: Gpu | None
    graph: str
    graph_sha256: str
    strongly_typed: bool
    io: Precision
    profiles: tuple[dict[str, ProfileRange], ...]
    profile_spec: dict[str, Any]
    workspace_bytes: int | None
    build_seconds: float
    peak_rss_mib: float
    validity: EngineValidity
    built: str
    parity: EngineParity = field(default_factory=EngineParity)
    runtime_cache: RuntimeCache | None = None
    timing_cache: TimingCache | None = None

    def files(self) -> list[FileRecord]:
        """The plan, and its runtime cache once written."""
        out = [FileRecord(self.file, self.bytes, self.sha256)]
        rc = self.runtime_cache
        if rc is not None and rc.sha256 is not None and rc.bytes is not None:
            out.append(FileRecord(rc.file, rc.bytes, rc.sha256))
        return out


@dataclass(frozen=True)
class NormStatsRecord:
    """Graphs for tiled decoding with shared GroupNorm statistics (``cmrt export --tile-stats``,
    ``cmrt.graphs.norm_stats``).

    Attributes:
        stats_graph: the sampler graph that also outputs every norm's statistics (it reads the
            FP32 graph's weight file).
        shared_graph: the sampler graph whose norms take their statistics from an input (it reads
            the FP32 graph's weight file).
        means_graph: the sampler graph whose norms take only their means from that input, each
            keeping its own variance (it reads the FP32 graph's weight file).
        tensor: the statistics' name in both graphs, shape (N, 2, S): [:, 0] per-group means,
            [:, 1] per-group (biased) variances, norm after norm in evaluation order.
        groups: every norm's group count, in that order (S is their sum).
        factor: the default downscale factor of the statistics pass (``Decoder.decode``).
        parity: "statistics" (the statistics graph's output vs PyTorch's recorded statistics),
            "shared" and "shared-means" (those graphs fed their own inputs' statistics vs PyTorch's
            images), on the parity inputs at export.
    """

    stats_graph: GraphRecord
    shared_graph: GraphRecord
    means_graph: GraphRecord
    tensor: str
    groups: tuple[int, ...]
    factor: int
    parity: dict[str, ParityRecord] = field(default_factory=dict)

    def graphs(self) -> dict[str, GraphRecord]:
        """Norm mode's graph name → graph: "statistics", "shared" and "shared-means"."""
        return {"statistics": self.stats_graph, "shared": self.shared_graph, "shared-means": self.means_graph}

    def files(self) -> list[FileRecord]:
        """Its graphs' files (their weights are the FP32 graph's, listed with that graph)."""
        return [f for g in self.graphs().values() for f in g.files]


@dataclass(frozen=True)
class ModelInfo:
    """The model the bundle was exported from.

    Attributes:
        name: a short name.
        trained: false for a model with random weights.
        parameters: number of network parameters.
        spec: the full ``cmrt.models.spec.ModelSpec`` as a dict.
    """

    name: str
    trained: bool
    parameters: int
    spec: dict[str, Any]


@dataclass(frozen=True)
class SourceInfo:
    """Where the model came from.

    Attributes:
        path: the source path at export time.
        sha256: its SHA-256 (a folder: of its files), null for models built in memory.
        format: the detected format.
        details: format-specific facts (e.g. the OpenAI architecture, the embedding file).
    """

    path: str
    sha256: str | None
    format: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Versions:
    """Library versions at export.

    Attributes:
        cmrt: cmrt.
        torch: PyTorch.
        onnx: onnx.
        onnxruntime: ONNX Runtime.
    """

    cmrt: str
    torch: str
    onnx: str
    onnxruntime: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and how it was made (``cmrt.json``).

    Attributes:
        format_version: the manifest format (this cmrt writes 2).
        kind: "sampler", "decoder" or "editor".
        task: what the graph computes.
        schedule: the evaluations' σ's or timesteps.
        inputs: graph inputs, in order.
        outputs: graph outputs.
        image: the output images.
        latent: a decoder's latent input, else null.
        num_classes: classes of a class-conditional model, else null.
        graphs: precision → graph.
        parity_inputs: the stored parity inputs and PyTorch outputs (parity.npz).
        model: the exported model.
        source: where it came from.
        versions: library versions at export.
        created: UTC time of the export.
        parity: "backend/precision" → comparison with PyTorch at export (and later checks).
        precision: "fp16" → how the FP16 graph's precision was decided.
        engines: target → engine.
        norm_stats: the shared-statistics graphs for tiled decoding, when exported (decoders,
            ``--tile-stats``), else null.
        backends: "backend/CPU class" → a CPU backend's parity on the FP32 graph (``BackendRecord``,
            e.g. OpenVINO BF16), or on the INT8 model for ``openvino-int8``, else null.
        int8: how the INT8 model (``graphs["int8"]``, OpenVINO IR) was quantized and whether its
            parity passed at export (``QuantizationRecord``; ``cmrt export --int8``), else null.
        digest: SHA-256 of this manifest's canonical JSON without this field.
    """

    kind: Kind
    task: Task
    schedule: Schedule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    image: ImageSpec
    latent: LatentSpec | None
    num_classes: int | None
    graphs: dict[str, GraphRecord]
    parity_inputs: FileRecord
    model: ModelInfo
    source: SourceInfo
    versions: Versions
    created: str
    parity: dict[str, ParityRecord] = field(default_factory=dict)
    precision: dict[str, PrecisionRecord] = field(default_factory=dict)
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    norm_stats: NormStatsRecord | None = None
    backends: dict[str, BackendRecord] | None = None
    int8: QuantizationRecord | None = None
    format_version: int = FORMAT_VERSION
    digest: str = ""

    # --- convenience views (read-only) ---------------------------------------------------
    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def sigmas(self) -> list[float] | None:
        return None if self.schedule.sigmas is None else list(self.schedule.sigmas)

    @property
    def timesteps(self) -> list[int] | None:
        return None if self.schedule.timesteps is None else list(self.schedule.timesteps)

    @property
    def clip(self) -> bool:
        return self.schedule.clip

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def noise_names(self) -> list[str]:
        return [n for n in self.input_names if n.startswith("noise_")]

    def files(self) -> list[FileRecord]:
        """Every file the manifest lists, each record's own: the graphs' (a graph records its files),
        the parity data, and those of the records that own files (``files()``: the shared-statistics
        graphs, the engines and their caches)."""
        out = [f for g in self.graphs.values() for f in g.files] + [self.parity_inputs]
        for record in (self.norm_stats, *self.engines.values()):
            if record is not None:
                out += record.files()
        return out

    # --- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The manifest as JSON-ready values, with ``digest`` filled in."""
        d = self._json()
        d["digest"] = manifest_digest(d)
        return d

    def _json(self) -> dict:
        """``to_json``, less the sections added within format 2 when they are empty, so the digest
        of a manifest written before they existed still matches."""
        d = to_json(self)
        for key in OPTIONAL_SECTIONS:
            if d.get(key) is None:
                d.pop(key, None)
        _drop_null_record_fields(d.get("backends"))
        _drop_null_fields(d.get("int8"))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        """Read a manifest, checking every field; ``BundleError`` names the first bad one."""
        if not isinstance(d, dict):
            raise BundleError(f"{where} is not a JSON object: re-export the bundle")
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(f"{where} has format version {version!r}, newer than this cmrt understands "
                              f"({FORMAT_VERSION}): upgrade cmrt (`pip install -U cmrt`)")
        if version < FORMAT_VERSION:
            raise BundleError(f"{where} has format version {version} (an older cmrt): upgrade the bundle in "
                              f"place with `cmrt upgrade {Path(where).parent}`")
        try:
            manifest = from_json(cls, d)
        except TypedJsonError as exc:
            raise BundleError(f"{where}: field {exc}: re-export the bundle with `cmrt export`") from None
        if manifest.kind not in KINDS:
            raise BundleError(f"{where}: kind must be one of {KINDS}, got {manifest.kind!r}")
        return manifest


def manifest_digest(d: dict) -> str:
    """SHA-256 of a manifest dict's canonical JSON (sorted keys, no whitespace), ``digest`` left out."""
    body = {k: v for k, v in d.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _finite(x: float) -> float | None:
    import math

    return float(x) if math.isfinite(x) else None


def manifest_schema() -> dict:
    """The JSON Schema of ``cmrt.json`` (shipped as ``docs/manifest.schema.json``)."""
    return json_schema(Manifest, title="cmrt bundle manifest (cmrt.json)",
                       description=f"Format version {FORMAT_VERSION}. Written by cmrt.bundle; see the "
                                   "module docstring for integrity and upgrade rules.",
                       field_docs=field_docs_from_docstrings)


# --- integrity ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegrityReport:
    """Whether every listed file is present with its recorded size and SHA-256, and the
    manifest matches its digest. Truthy when all is well."""

    checked: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.passed

    def lines(self) -> list[str]:
        head = f"integrity: {len(self.checked)} files + manifest digest"
        if self.passed:
            return [head + "  ok"]
        return [head + "  FAIL"] + [f"  {p}" for p in self.problems]

    def raise_if_failed(self) -> "IntegrityReport":
        if self.problems:
            raise IntegrityError("bundle integrity check failed: " + "; ".join(self.problems))
        return self


# --- the opened bundle ------------------------------------------------------------------------
class Bundle:
    """An opened bundle: its folder, manifest, and (optionally) the file the user pointed at."""

    def __init__(self, path: Path, manifest: Manifest, selected: str | None = None,
                 raw_digest: str | None = None) -> None:
        self.path, self.manifest, self.selected = path, manifest, selected
        self._raw_digest = raw_digest

    @classmethod
    def open(cls, engine: "str | Path | Bundle", *, check_files: bool = True) -> "Bundle":
        """Open a bundle folder, or the folder of a graph or engine file inside one.

        Checks the manifest's fields and (unless ``check_files`` is False, for a writer about to
        replace a file) that every file it lists exists with its recorded size (cheap); ``verify``
        also re-hashes them.
        """
        if isinstance(engine, Bundle):
            return engine
        p = Path(engine)
        if not p.exists():
            raise BundleNotFoundError(f"{p} does not exist: pass a bundle folder made by `cmrt export`, "
                                      "or a graph inside one")
        folder, selected = (p, None) if p.is_dir() else (p.parent, p.name)
        if selected is not None and not (folder / MANIFEST).is_file():
            raise BundleNotFoundError(f"{p} is not inside a cmrt bundle ({folder} has no {MANIFEST}): pass a "
                                      "bundle folder made by `cmrt export`, or a graph inside one")
        data = read_manifest_json(folder)
        bundle = cls(folder, Manifest.from_dict(data, str(folder / MANIFEST)), selected, data.get("digest"))
        if selected is not None and selected not in bundle.known_files():
            raise BundleError(f"{p} is not a graph or engine listed in {folder / MANIFEST}")
        if check_files:
            bundle.check_files()
        return bundle

    def known_files(self) -> set[str]:
        return {g.file for g in self.manifest.graphs.values()} | {e.file for e in self.manifest.engines.values()}

    def check_files(self) -> None:
        """Every listed file exists with its recorded size (``BundleError`` otherwise)."""
        for rec in self.manifest.files():
            path = self.path / rec.file
            if not path.is_file():
                raise BundleNotFoundError(f"{path} is listed in {MANIFEST} but missing: re-export the bundle "
                                          "(or copy the whole folder)")
            size = path.stat().st_size
            if size != rec.bytes:
                raise IntegrityError(f"{path} has {size} bytes, {MANIFEST} records {rec.bytes}: the file was "
                                     "truncated or changed after export; re-export the bundle")

    def verify(self) -> IntegrityReport:
        """Re-hash every listed file and check the manifest's digest."""
        problems, checked = [], []
        if self._raw_digest is not None and self._raw_digest != manifest_digest(self.manifest._json()):
            problems.append(f"{MANIFEST}: its contents do not match its digest (edited after export)")
        for rec in self.manifest.files():
            path = self.path / rec.file
            checked.append(rec.file)
            if not path.is_file():
                problems.append(f"{rec.file}: missing")
            elif path.stat().st_size != rec.bytes:
                problems.append(f"{rec.file}: {path.stat().st_size} bytes, recorded {rec.bytes}")
            elif sha256_file(path) != rec.sha256:
                problems.append(f"{rec.file}: SHA-256 differs from the recorded one (changed after export)")
        return IntegrityReport(tuple(checked), tuple(problems))

    def graph(self, precision: str | None = None) -> GraphRecord:
        """The graph to run: the selected one, else ``precision``'s, else FP32."""
        graphs = self.manifest.graphs
        if precision is None and self.selected is not None:
            precision = next((k for k, g in graphs.items() if g.file == self.selected), None)
        precision = precision or ("fp32" if "fp32" in graphs else next(iter(graphs)))
        if precision not in graphs:
            raise BundleError(f"{self.path} has no {precision} graph (it has {sorted(graphs)}); "
                              f"make one with `cmrt export --precision {precision}`")
        return graphs[precision]

    def graph_path(self, precision: str | None = None) -> Path:
        return self.path / self.graph(precision).file

    def precision_of(self, graph: Path) -> str:
        for k, g in self.manifest.graphs.items():
            if g.file == graph.name:
                return k
        raise BundleError(f"{graph} is not listed in {self.path / MANIFEST}")

    def parity_data(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The stored golden inputs and PyTorch outputs."""
        path = self.path / self.manifest.parity_inputs.file
        if not path.is_file():
            raise BundleNotFoundError(f"{path} is missing: re-export the bundle to store parity data")
        try:
            with np.load(path, allow_pickle=False) as data:
                inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
                outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} is not readable ({exc}): re-export the bundle") from None
        if set(inputs) != set(self.manifest.input_names):
            raise BundleError(f"{path} holds inputs {sorted(inputs)} but the manifest lists "
                              f"{self.manifest.input_names}: re-export the bundle")
        return inputs, outputs

    def update(self, **changes: Any) -> Manifest:
        """Replace manifest sections (e.g. ``engines=...``) and save the manifest atomically."""
        self.manifest = replace(self.manifest, **changes)
        self.save_manifest()
        return self.manifest

    def save_manifest(self) -> None:
        data = self.manifest.to_dict()
        write_json_atomic(self.path / MANIFEST, data)
        self._raw_digest = data["digest"]


def read_manifest_json(folder: Path) -> dict:
    """The raw ``cmrt.json`` of a bundle folder (not yet checked)."""
    data = _read_json(folder / MANIFEST, missing=f"{folder} has no {MANIFEST}: it is not a cmrt bundle "
                      "(make one with `cmrt export`)", fix="re-export the bundle")
    if not isinstance(data, dict):
        raise BundleError(f"{folder / MANIFEST} is not a JSON object: re-export the bundle")
    return data


def _read_json(path: Path, *, missing: str, fix: str) -> Any:
    """``path``'s JSON; ``BundleNotFoundError(missing)`` when there is no such file, ``BundleError``
    naming ``fix`` when it is not JSON."""
    if not path.is_file():
        raise BundleNotFoundError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}): {fix}") from None


def save_parity(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> FileRecord:
    """Write the parity inputs and PyTorch outputs; returns the file's record."""
    arrays = {f"input/{k}": v for k, v in inputs.items()} | {f"output/{k}": v for k, v in outputs.items()}
    np.savez(path, **arrays)
    return FileRecord.of(path)


# --- format upgrades --------------------------------------------------------------------------
def upgrade_v1(d: dict, folder: Path) -> dict:
    """A format-1 manifest dict → format 2, recording every file's size and SHA-256.

    Version 1 recorded only each graph file's SHA-256: the upgrade refuses a graph that no
    longer matches it, so an upgrade never blesses a changed graph.
    """
    graphs = {}
    for name, g in d["graphs"].items():
        path = folder / g["file"]
        if not path.is_file() or sha256_file(path) != g["sha256"]:
            raise IntegrityError(f"{path} does not match the SHA-256 its version-1 manifest recorded: "
                                 "re-export the bundle instead of upgrading it")
        files = [FileRecord.of(folder / f) for f in [g["file"], *g.get("data", [])]]
        graphs[name] = to_json(GraphRecord(g["file"], tuple(files), g["opset"],
                                           io=d.get("precision", {}).get(name, {}).get("io", "fp32"),
                                           export_seconds=g.get("export_seconds"), rewrites=g.get("rewrites", {}),
                                           size_ratio_vs_fp32=g.get("size_ratio_vs_fp32")))
    if d.get("engines"):
        raise BundleError(f"{folder}: version-1 engines cannot be upgraded: re-export and rebuild them")
    fp16 = d.get("precision", {}).get("fp16")
    spec = d["model"]
    return {
        "kind": d["kind"], "task": {"name": DEFAULT_TASKS[d["kind"]]},
        "schedule": {"steps": d["steps"], "sigmas": d.get("sigmas"), "timesteps": d.get("timesteps"),
                     "clip": d.get("clip", True), "sigma_min": spec.get("sigma_min") if d["kind"] == "sampler" else None,
                     "grid": None, "rule": "recorded by format 1"},
        "inputs": d["inputs"], "outputs": d["outputs"], "image": d["image"], "latent": d.get("latent"),
        "num_classes": d.get("num_classes"), "graphs": graphs,
        "parity_inputs": to_json(FileRecord.of(folder / PARITY)),
        "model": {"name": spec.get("name", "model"), "trained": spec.get("trained", True), "parameters": 0,
                  "spec": spec},
        "source": {"path": d["source"].get("path", ""), "sha256": d["source"].get("sha256"),
                   "format": d["source"].get("format", "unknown"),
                   "details": {k: v for k, v in d["source"].items() if k not in ("path", "sha256", "format")}},
        "versions": d["versions"], "created": d.get("created", ""),
        "parity": {k: _upgrade_parity(v) for k, v in d.get("parity", {}).items()},
        "precision": {} if fp16 is None else {"fp16": _upgrade_precision(fp16)},
        "format_version": FORMAT_VERSION,
    }


def _upgrade_parity(p: dict) -> dict:
    tol = p.get("tolerance", {})
    return {"backend": p["backend"], "precision": p["precision"], "max_abs_tolerance": tol.get("max_abs"),
            "min_psnr": tol.get("min_psnr"), "passed": p["passed"], "outputs": p["outputs"]}


def _upgrade_precision(p: dict) -> dict:
    p = dict(p)
    p["verification"] = {case: {"name": OUTPUT_NAME} | v for case, v in p.get("verification", {}).items()}
    p["fp32_nodes"] = {reason: [{"node": n["node"], "op": n["op"], "max_abs": n.get("max_abs")} for n in nodes]
                       for reason, nodes in p.get("fp32_nodes", {}).items()}
    return p


def upgrade_bundle(path: str | Path) -> Bundle:
    """Upgrade a bundle's manifest to this format in place (atomically); a current bundle is
    left as it is. Returns the opened bundle."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleNotFoundError(f"{folder} is not a bundle folder")
    data = read_manifest_json(folder)
    version = data.get("format_version", 1)
    if version == 1:
        upgraded = upgrade_v1(data, folder)
        manifest = Manifest.from_dict(upgraded, str(folder / MANIFEST))  # refuses before anything is written
        Bundle(folder, manifest).save_manifest()
    return Bundle.open(folder)

# --- backend parity records (``cmrt.runtime.openvino``) ----------------------------------------
@dataclass(frozen=True)
class Cpu:
    """A CPU, as far as it decides a CPU backend's kernels and so its numerics.

    Attributes:
        model: ``/proc/cpuinfo``'s model name.
        isa: the instruction-set class the kernels are chosen by ("amx-bf16", "avx512-bf16",
            "avx512", "avx2", "baseline"): records apply to CPUs of the same class.
        flags: the flags of that kind it has (e.g. avx512_bf16, amx_tile).
    """

    model: str
    isa: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeedRecord:
    """How fast a backend ran against another on the same inputs, on the CPU of the record that
    holds it: what the default choice (``cmrt.runtime.openvino.fastest_passed``) and the INT8 ship
    rule (``cmrt.exporter.int8``) read (``cmrt.runtime.speed``).

    Attributes:
        against: the backend compared with (e.g. "onnxruntime-cpu", "openvino-bf16").
        seconds: this backend's median seconds per call.
        against_seconds: the other's median seconds per call.
        speedup: how many times as fast as the other (above 1: faster): the median of the
            per-round ratios when paired, else ``against_seconds / seconds``.
        calls: timed calls of each (rounds when paired), after one untimed call.
        inputs: the inputs timed (names and shapes, and what they are).
        order: how the two were timed ("paired rounds", or "one after the other": never both
            in memory).
    """

    against: str
    seconds: float
    against_seconds: float
    speedup: float
    calls: int
    inputs: str
    order: str


@dataclass(frozen=True)
class BackendRecord:
    """A CPU backend run on the stored parity inputs from the FP32 graph, like an engine's check
    (``cmrt check --backend openvino-bf16``; ``cmrt export`` on a CPU with native BF16).

    Attributes:
        backend: e.g. "openvino-bf16".
        precision: the precision it computes in ("bf16", "fp32"): which tolerances applied.
        library: the Python module that ran it.
        library_version: its version.
        graph: the graph it ran.
        graph_sha256: that graph's SHA-256.
        cpu: the CPU it ran on.
        when: UTC time of the check.
        seconds: wall time of the run on the parity inputs (compilation excluded).
        non_finite: NaN/Inf values in the outputs.
        result: the comparison with the PyTorch outputs.
        speed: its speed against ONNX Runtime FP32 on the same graph and inputs (None: recorded
            before cmrt measured it).
    """

    backend: str
    precision: str
    library: str
    library_version: str
    graph: str
    graph_sha256: str
    cpu: Cpu
    when: str
    seconds: float
    non_finite: int
    result: ParityRecord
    speed: SpeedRecord | None = None

    @property
    def passed(self) -> bool:
        return self.result.passed


@dataclass(frozen=True)
class QuantizationRecord:
    """The INT8 model's making (``cmrt.exporter.int8``): post-training static quantization of the
    FP32 graph, and its parity at export. Shipped only where that parity passed: a failed one
    leaves no model (no ``graphs["int8"]``), only this record saying why.

    Attributes:
        shipped: whether the INT8 model was written (its parity passed the int8 tier).
        quantizer: the library and its version (e.g. "nncf 3.4.0").
        method: what ran, on which representation of the graph.
        source_graph: the FP32 graph quantized.
        source_sha256: its SHA-256.
        options: the quantizer's options (preset, model type, bias correction, subset size,
            ignored scope).
        calibration: how the calibration inputs were drawn.
        calibration_samples: calls (batches) the statistics were collected on.
        calibration_batch: images per call.
        calibration_seed: the seed of their noise (and labels).
        quantized_ops: FakeQuantize nodes in the INT8 model.
        seconds: wall time of the quantization.
        library_version: OpenVINO's version (the model's runtime and IR writer).
        cpu: the CPU the export checked it on.
        parity: the INT8 model on OpenVINO vs the stored PyTorch outputs (the int8 tier).
        speed: the INT8 model's speed against the path it would replace (None: recorded before
            cmrt measured it).
        min_speedup: the speed-up it had to reach to ship (None: recorded before the rule).
    """

    shipped: bool
    quantizer: str
    method: str
    source_graph: str
    source_sha256: str
    options: dict[str, Any]
    calibration: str
    calibration_samples: int
    calibration_batch: int
    calibration_seed: int
    quantized_ops: int
    seconds: float
    library_version: str
    cpu: Cpu
    parity: ParityRecord
    speed: SpeedRecord | None = None
    min_speedup: float | None = None


#: Record fields added within a format version, left out of the JSON while null (so the digest of a
#: manifest written before they existed still matches).
RECORD_OPTIONAL_FIELDS = ("speed", "min_speedup")


def _drop_null_fields(record: dict | None) -> None:
    for key in RECORD_OPTIONAL_FIELDS:
        if record is not None and key in record and record[key] is None:
            del record[key]


def _drop_null_record_fields(records: dict | None) -> None:
    for record in (records or {}).values():
        _drop_null_fields(record)


# --- pipeline bundles (text → latents → image) --------------------------------------------
PIPELINE_MANIFEST = "pipeline.json"
PIPELINE_FORMAT_VERSION = 1
#: Stage sections added within format 1 (left out of the JSON while null).
STAGE_OPTIONAL_SECTIONS = ("backends", "engines")


@dataclass(frozen=True)
class StageRecord:
    """One stage of a pipeline bundle: its graph, I/O, stored parity inputs and parity results.

    Attributes:
        name: "text_encoder", "text_encoder_2", "sampler" or "decoder".
        graph: the stage's ONNX graph (null for a decoder kept as its own cmrt bundle).
        inputs: graph inputs, in order.
        outputs: graph outputs.
        parity_inputs: the stored inputs and PyTorch outputs of the stage's parity check.
        parity: "backend/precision" → comparison with PyTorch at export.
        bundle: a sub-folder holding the stage as a cmrt bundle of its own (a consistency decoder),
            else null.
        graphs: other precisions of the stage ("fp16" → graph), when exported.
        backends: CPU backend runs of the stored inputs from the FP32 graph, "openvino-bf16/<isa
            class>" → record (``cmrt check BUNDLE --backend openvino-bf16``; ``cmrt export`` on a
            CPU with native BF16), as a bundle's ``backends``; null when none.
        engines: TensorRT / TensorRT-RTX engines of the stage, target → record (``cmrt build``);
            null when none.
    """

    name: str
    graph: GraphRecord | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity_inputs: FileRecord | None
    parity: dict[str, ParityRecord] = field(default_factory=dict)
    bundle: str | None = None
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    backends: dict[str, BackendRecord] | None = None
    engines: dict[str, EngineRecord] | None = None

    def files(self) -> list[FileRecord]:
        out = [f for g in ([self.graph] if self.graph else []) + list(self.graphs.values()) for f in g.files]
        out += [FileRecord(e.file, e.bytes, e.sha256) for e in (self.engines or {}).values()]
        return out + ([self.parity_inputs] if self.parity_inputs else [])


@dataclass(frozen=True)
class TokenizerRecord:
    """A tokenizer's files, copied from the diffusers folder.

    Attributes:
        folder: its sub-folder in the bundle ("tokenizer", "tokenizer_2").
        max_length: the text encoder's context (longer prompts are truncated).
        files: the files (names relative to the bundle), with sizes and SHA-256.
    """

    folder: str
    max_length: int
    files: tuple[FileRecord, ...]


@dataclass(frozen=True)
class PipelineManifest:
    """A text-to-image pipeline bundle (``pipeline.json``): tokenizers, text encoder(s), the
    K-step LCM sampler as one graph, and the decoder stage.

    Attributes:
        format_version: this record's format (1).
        kind: "pipeline".
        pipeline: the diffusers class the folder named.
        family: "sd" (SD 1.x/2.x-class) or "sdxl".
        steps: LCM steps K (inputs noise_0 … noise_{K-1}: the initial latents, then each step's noise).
        timesteps: the LCM timesteps.
        guidance: "embedding" (full LCM: the w-embedding) or "cfg" (classifier-free guidance with
            negative prompts, when guidance_scale > 1).
        default_guidance_scale: the diffusers pipeline's own default.
        default_height: default image height.
        default_width: default image width.
        vae_scale_factor: image pixels per latent pixel.
        vae_scaling_factor: the VAE's latent scaling factor (latents are divided by it before decoding).
        latent_channels: the UNet's latent channels.
        force_zeros_for_empty_prompt: SDXL: no negative prompt means zero negative embeddings.
        tokenizers: the tokenizers' files, one per text encoder.
        stages: stage name → record.
        scheduler: the LCM scheduler settings used.
        lora: the fused LCM-LoRA (file, SHA-256, scale), else null.
        source: where the pipeline came from.
        versions: library versions at export.
        created: UTC time of the export.
        digest: SHA-256 of this record's canonical JSON without this field.
    """

    pipeline: str
    family: Literal["sd", "sdxl"]
    steps: int
    timesteps: tuple[int, ...]
    guidance: Literal["embedding", "cfg"]
    default_guidance_scale: float
    default_height: int
    default_width: int
    vae_scale_factor: int
    vae_scaling_factor: float
    latent_channels: int
    force_zeros_for_empty_prompt: bool
    tokenizers: tuple[TokenizerRecord, ...]
    stages: dict[str, StageRecord]
    scheduler: dict[str, Any]
    lora: dict[str, Any] | None
    source: SourceInfo
    versions: Versions
    created: str
    kind: Literal["pipeline"] = "pipeline"
    format_version: int = PIPELINE_FORMAT_VERSION
    digest: str = ""

    def files(self) -> list[FileRecord]:
        """Every file the record lists (stage graphs, parity data, tokenizer files)."""
        return [f for s in self.stages.values() for f in s.files()] + [f for t in self.tokenizers for f in t.files]

    def to_dict(self) -> dict:
        d = self._json()
        d["digest"] = manifest_digest(d)
        return d

    def _json(self) -> dict:
        """``to_json``, less the stage sections added within format 1 when they are null, so the
        digest of a record written before they existed still matches."""
        d = to_json(self)
        for stage in d["stages"].values():
            for key in STAGE_OPTIONAL_SECTIONS:
                if stage.get(key) is None:
                    stage.pop(key, None)
            _drop_null_record_fields(stage.get("backends"))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = PIPELINE_MANIFEST) -> "PipelineManifest":
        """Read the record, checking every field; ``BundleError`` names the first bad one."""
        if not isinstance(d, dict):
            raise BundleError(f"{where} is not a JSON object: re-export the pipeline bundle")
        version = d.get("format_version")
        if not isinstance(version, int) or version > PIPELINE_FORMAT_VERSION:
            raise BundleError(f"{where} has format version {version!r}, which this cmrt does not understand: "
                              "upgrade cmrt (`pip install -U cmrt`)")
        try:
            return from_json(cls, d)
        except TypedJsonError as exc:
            raise BundleError(f"{where}: field {exc}: re-export the pipeline bundle with `cmrt export`") from None

    def save(self, folder: Path) -> None:
        write_json_atomic(Path(folder) / PIPELINE_MANIFEST, self.to_dict())

    @classmethod
    def open(cls, folder: str | Path) -> "PipelineManifest":
        """Read ``folder/pipeline.json`` and check that every listed file exists with its size."""
        folder = Path(folder)
        path = folder / PIPELINE_MANIFEST
        data = _read_json(path, missing=f"{folder} has no {PIPELINE_MANIFEST}: it is not a cmrt pipeline bundle "
                          "(make one with `cmrt export --model DIFFUSERS_FOLDER`)", fix="re-export the pipeline bundle")
        manifest = cls.from_dict(data, str(path))
        if isinstance(data, dict) and data.get("digest") != manifest_digest(manifest._json()):
            raise IntegrityError(f"{path}: its contents do not match its digest (edited after export)")
        for rec in manifest.files():
            f = folder / rec.file
            if not f.is_file():
                raise BundleNotFoundError(f"{f} is listed in {PIPELINE_MANIFEST} but missing: re-export the bundle")
            if f.stat().st_size != rec.bytes:
                raise IntegrityError(f"{f} has {f.stat().st_size} bytes, {PIPELINE_MANIFEST} records {rec.bytes}: "
                                     "the file was truncated or changed after export; re-export the bundle")
        return manifest


def update_stages(folder: str | Path, changes: dict[str, dict[str, Any]]) -> PipelineManifest:
    """Replace fields of stage records (stage → field → value) in ``folder``'s ``pipeline.json``,
    re-read now, and save it atomically with a new digest. Returns the new record."""
    folder = Path(folder)
    m = PipelineManifest.open(folder)
    unknown = sorted(set(changes) - set(m.stages))
    if unknown:
        raise BundleError(f"{folder / PIPELINE_MANIFEST} has no stage {unknown[0]!r}")
    stages = {name: replace(s, **changes.get(name, {})) for name, s in m.stages.items()}
    m = replace(m, stages=stages)
    m.save(folder)
    return m


def pipeline_schema() -> dict:
    """The JSON Schema of ``pipeline.json`` (shipped as ``docs/pipeline.schema.json``)."""
    return json_schema(PipelineManifest, title="cmrt pipeline bundle manifest (pipeline.json)",
                       description=f"Format version {PIPELINE_FORMAT_VERSION}. Written by cmrt.exporter.pipeline.",
                       field_docs=field_docs_from_docstrings)


if __name__ == "__main__":  # python -m cmrt.bundle > docs/manifest.schema.json
    print(json.dumps(manifest_schema(), indent=2, ensure_ascii=False))

