"""FP32 ONNX graph → FP16 graph whose FP32 islands are decided by rules and a calibration run.

TensorRT 11 and TensorRT for RTX build strongly typed networks only, so the FP16 ONNX graph decides
every precision of the engine. The steps, each a small function:

1. ``calibrate``: run the FP32 graph on ONNX Runtime (CPU) on representative inputs (realistic
   latents and extreme but valid ones, ×1/×3/×10) and record the largest magnitude of every
   floating-point tensor.
2. ``decide``: keep a node in FP32 when
   - it is sampler arithmetic outside the network (noise injection, c_in scaling, the final
     c_skip·x + c_out·F combination, the clamp, latent normalization): these mix values of very
     different scale (σ_max·ε ≈ 80·ε against c_skip ≈ 1e-3) and are cheap;
   - it computes normalization statistics (GroupNorm, exported as InstanceNormalization between
     reshapes): sums of squares over whole feature maps overflow or lose precision in FP16;
   - calibration saw a value beyond ``SAFE_ABS_MAX`` on one of its inputs or outputs.
3. ``convert``: onnxconverter-common's ``convert_float_to_float16`` with those nodes blocked, which
   inserts explicit Casts around them (plus its own default block list, e.g. ``Resize``).
4. ``verify``: the FP16 graph on ONNX Runtime (CPU) against the FP32 PyTorch sampler, on the parity
   inputs and on the scaled ones, with ``cmrt.parity``'s fp16 tolerances.

The decisions (which nodes stay FP32 and why) are recorded in the manifest's ``precision["fp16"]``.
"""

from __future__ import annotations

import ast
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import (OUTPUT_NAME, Calibration, FileRecord, Fp32Node, GraphRecord, NodeCounts, OutputParity,
                      ParityRecord, PrecisionRecord)
from ..errors import ConfigError
from .onnx import INLINE_BELOW, graph_files
from .metadata import FX_NODE_KEY, SCOPES_KEY, strip_metadata

FP16_MAX = 65504.0  # largest finite float16
#: A tensor whose magnitude calibration saw above this keeps its node in FP32. The same default as
#: NVIDIA ModelOpt AutoCast's ``data_max``: 128× headroom below FP16_MAX for inputs outside the
#: calibration set and for sums formed inside fused kernels.
SAFE_ABS_MAX = 512.0
#: Latent multipliers used for calibration and verification: realistic (×1) and extreme but valid.
LATENT_SCALES = (1.0, 3.0, 10.0)
CALIBRATION_SEED = 1  # calibration draws differ from the parity inputs (seed 0) used to verify
CALIBRATION_BATCH = 2
#: Decoder calibration latents (32×32 images): every intermediate tensor is kept in memory at
#: once, and value ranges of convolutions and normalizations barely depend on the spatial size.
CALIBRATION_LATENT_HW = (4, 4)
NETWORK_SCOPE = "denoiser.unet"  # torch module path of the backbone in the unrolled samplers
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: The FP16 pass refuses to write a graph in which fewer of the convolutions/matmuls run in FP16.
MIN_FP16_COMPUTE_SHARE = 0.5
NORM_TARGETS = ("aten.group_norm", "aten.native_group_norm", "aten.layer_norm", "aten.native_layer_norm")
#: Ops that compute statistics over feature maps. Not ``BatchNormalization``: in inference mode it
#: is a per-channel affine with fixed statistics (cmrt writes a GroupNorm's affine as one, see
#: ``optimize.GroupNormAffineAsBatchNorm``), O(1) values that FP16 holds like any scale/shift.
NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")
NORM_STAT_OPS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "Pow", "Sqrt", "Reciprocal", "Sub", "Div")
IO_PRECISIONS = ("fp32", "fp16")
CONVERTER = "onnxconverter-common"

_SCOPES, _FX_NODE = SCOPES_KEY, FX_NODE_KEY
_FLOAT_TYPES = (1, 10, 11, 16)  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16
_FP32, _FP16 = 1, 10

REASON_SAMPLER = "sampler arithmetic outside the network (noise injection, c_in, c_skip·x + c_out·F, clamp)"
REASON_NORM = "normalization statistics (mean/variance over feature maps)"
REASON_RANGE = f"calibration saw |x| > {SAFE_ABS_MAX:g}"


@dataclass(frozen=True)
class Decision:
    """One node kept in FP32, and why."""

    node: str
    op: str
    reason: str
    max_abs: float | None = None


@dataclass
class Fp16Result:
    """What ``make_fp16`` produced: the graph entry, the decisions record and the parity reports."""

    graph: GraphRecord
    record: PrecisionRecord
    reports: dict = field(default_factory=dict)  # case name → ParityReport

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports.values())

    def raise_if_failed(self) -> None:
        for report in self.reports.values():
            report.raise_if_failed()


# --- calibration -----------------------------------------------------------------------
def scaled_inputs(feeds: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """The same inputs with the latents multiplied by ``scale`` (noise and labels unchanged)."""
    out = dict(feeds)
    if "latents" in out:
        out["latents"] = (out["latents"] * np.float32(scale)).astype(np.float32)
    return out


def input_cases(feeds: dict[str, np.ndarray], kind: str) -> dict[str, dict[str, np.ndarray]]:
    """Named input sets: for decoders the latents at every ``LATENT_SCALES`` factor; for samplers
    (whose only inputs are standard-normal noise and labels) the inputs as they are."""
    if kind != "decoder":
        return {"parity inputs": feeds}
    return {f"latents x{s:g}": scaled_inputs(feeds, s) for s in LATENT_SCALES}


def verification_cases(feeds: dict[str, np.ndarray], kind: str) -> dict[str, dict[str, np.ndarray]]:
    """The parity inputs (= latents ×1), then for decoders the latents at the other scales."""
    scaled = {k: v for k, v in input_cases(feeds, kind).items() if k != f"latents x{LATENT_SCALES[0]:g}"}
    return {"parity inputs": feeds} | scaled


def calibration_feeds(spec, steps: int, *, task=None, sigmas=None) -> dict[str, np.ndarray]:
    """Calibration inputs: fresh draws (``CALIBRATION_SEED``) shaped like the parity inputs (an
    editing ``task``'s images and masks included; ``sigmas``: its schedule)."""
    from .inputs import parity_inputs

    feeds = parity_inputs(spec, steps, task=task, sigmas=sigmas, batch=CALIBRATION_BATCH,
                          latent_hw=CALIBRATION_LATENT_HW, seed=CALIBRATION_SEED)
    return {k: v.numpy() for k, v in feeds.items()}


def calibrate(graph: Path, cases: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Largest |value| of every floating-point tensor of the FP32 ``graph`` over all input
    ``cases``, from ONNX Runtime on the CPU.

    Every intermediate tensor becomes a graph output of a probe graph written beside ``graph``
    (sharing its weights file, so graphs above 2 GB work) and removed afterwards.
    """
    import onnx
    import onnxruntime as ort

    from ..runtime.backends import session_options

    probe = onnx.load(str(graph), load_external_data=False)
    typed = {v.name: v for v in probe.graph.value_info}
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            v = typed.get(name)
            if v is not None and name not in known and v.type.tensor_type.elem_type in _FLOAT_TYPES:
                probe.graph.output.append(v)
                known.add(name)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-probe.", suffix=".onnx", dir=graph.parent)
    os.close(fd)
    try:
        onnx.save_model(probe, tmp)
        session = ort.InferenceSession(tmp, session_options(), providers=["CPUExecutionProvider"])
    finally:
        Path(tmp).unlink(missing_ok=True)
    names = [o.name for o in session.get_outputs()]
    peaks: dict[str, float] = {}
    for feeds in cases:
        for name, value in (*zip(names, session.run(names, feeds)), *feeds.items()):
            a = np.asarray(value)
            if a.dtype.kind == "f" and a.size:
                peak = float(np.abs(a).max())
                peaks[name] = max(peaks.get(name, 0.0), peak if math.isfinite(peak) else math.inf)
    return peaks


# --- decisions -------------------------------------------------------------------------
def _metadata(node) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def node_scopes(graph) -> dict[str, str]:
    """Node name → its torch module path (the deepest scope the exporter recorded). Nodes the ONNX
    optimizer created without metadata inherit the scope of their first input's producer."""
    producer = {o: n for n in graph.node for o in n.output}
    scopes: dict[str, str] = {}

    def scope(node, depth: int = 0) -> str:
        if node.name in scopes:
            return scopes[node.name]
        raw = _metadata(node).get(_SCOPES)
        if raw:
            parts = [s for s in ast.literal_eval(raw) if isinstance(s, str) and s]
            result = next((s for s in reversed(parts) if "." in s or s == "denoiser"), "")
        elif depth < len(graph.node):
            parent = next((producer[i] for i in node.input if i in producer), None)
            result = scope(parent, depth + 1) if parent is not None else ""
        else:
            result = ""
        scopes[node.name] = result
        return result

    for node in graph.node:
        scope(node)
    return scopes


def is_normalization(node) -> bool:
    """True for nodes that compute normalization statistics: a normalization op, or a reduction
    inside an exported normalization's decomposition. Reshapes and the affine scale/shift around
    them are left to FP16 (their values are O(1))."""
    if node.op_type in NORM_OPS:
        return True
    fx = _metadata(node).get(_FX_NODE, "")
    return node.op_type in NORM_STAT_OPS and any(f"target=torch.ops.{t}" in fx for t in NORM_TARGETS)


def decide(graph, peaks: dict[str, float], *, safe_abs_max: float = SAFE_ABS_MAX) -> list[Decision]:
    """The nodes to keep in FP32, with their reasons (see the module docstring)."""
    scopes = node_scopes(graph)
    decisions = []
    for node in graph.node:
        if node.op_type in ("Constant", "Shape", "Cast"):
            continue
        seen = [peaks[t] for t in (*node.input, *node.output) if t in peaks]
        peak = max(seen) if seen else None
        if not scopes[node.name].startswith(NETWORK_SCOPE):
            decisions.append(Decision(node.name, node.op_type, REASON_SAMPLER, peak))
        elif is_normalization(node):
            decisions.append(Decision(node.name, node.op_type, REASON_NORM, peak))
        elif peak is not None and peak > safe_abs_max:
            decisions.append(Decision(node.name, node.op_type, REASON_RANGE, peak))
    return decisions


# --- conversion ------------------------------------------------------------------------
def convert(model, keep_fp32: list[str], *, io: str = "fp32"):
    """An FP16 copy of ``model`` with the ``keep_fp32`` nodes (and the converter's default block
    list) left in FP32 behind explicit Casts; inputs/outputs stay FP32 unless ``io == "fp16"``."""
    from onnxconverter_common import float16

    if io not in IO_PRECISIONS:
        raise ConfigError(f"--io must be one of {IO_PRECISIONS}, got {io!r}")
    with warnings.catch_warnings():  # it warns once per weight it rounds to its ±min_positive_val
        warnings.simplefilter("ignore", UserWarning)
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=io == "fp32", disable_shape_infer=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST), node_block_list=list(keep_fp32),
            max_finite_val=FP16_MAX)
    if io == "fp32":
        restore_fp32_outputs(fp16.graph)
    strip_metadata(fp16.graph, frozenset())  # its decisions are in the manifest, by node name
    return fp16


def restore_fp32_outputs(graph) -> None:
    """Undo the converter's trailing Cast-to-FP16 on outputs whose producer it kept in FP32.

    With ``keep_io_types`` onnxconverter-common still casts a blocked node's output to FP16 when
    that output is the graph's (the last sampler step is such a node): drop that Cast, so the
    FP32 result leaves the graph unrounded.
    """
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        cast = producer.get(out.name)
        if out.type.tensor_type.elem_type != _FP16 or cast is None or cast.op_type != "Cast":
            continue
        source = producer.get(cast.input[0])
        if source is None:
            continue
        source.output[list(source.output).index(cast.input[0])] = out.name
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == cast.input[0]:
                    node.input[i] = out.name
        graph.node.remove(cast)
        stale = [v for v in graph.value_info if v.name == cast.input[0]]
        for v in stale:
            graph.value_info.remove(v)
        out.type.tensor_type.elem_type = _FP32


def precision_counts(model) -> dict[str, int]:
    """How many compute nodes run in FP16 and in FP32 (by the dtype of their first float output)."""
    types = {v.name: v.type.tensor_type.elem_type for v in
             (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    counts = {"fp16": 0, "fp32": 0, "casts": 0}
    for node in model.graph.node:
        if node.op_type == "Cast":
            counts["casts"] += 1
            continue
        t = types.get(node.output[0]) if node.output else None
        if t == _FP16:
            counts["fp16"] += 1
        elif t == _FP32:
            counts["fp32"] += 1
    return counts


def save_graph(model, path: Path) -> list[Path]:
    """Save ``model`` with its weights in ``<path>.data``; return the files written.

    The saved graph carries no per-node metadata and no intermediate ``value_info`` (ONNX Runtime,
    TensorRT and ``onnx.shape_inference`` derive it): on a small model these annotations would
    outweigh the halving of its weights.
    """
    import onnx

    from .._io import _umask

    del model.graph.value_info[:]
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=INLINE_BELOW)
    data.chmod(0o666 & ~_umask())  # onnx creates the data file 0600; a bundle's files share the usual mode
    onnx.checker.check_model(str(path), full_check=False)
    return [path, data]


# --- verification ----------------------------------------------------------------------
def verify(graph: Path, reference: Callable[[dict[str, np.ndarray]], np.ndarray],
           cases: dict[str, dict[str, np.ndarray]]) -> dict:
    """Run the FP16 graph on ONNX Runtime (CPU) on every case and compare with ``reference`` (the
    FP32 PyTorch sampler) under the fp16 tolerances. Returns case name → ParityReport."""
    from ..parity import compare
    from ..runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(graph, device="cpu", precision="fp16")
    reports = {}
    for name, feeds in cases.items():
        actual = {OUTPUT_NAME: backend.run(feeds)}
        expected = {OUTPUT_NAME: reference(feeds)}
        reports[name] = compare(actual, expected, backend=backend.name, precision="fp16")
    return reports


def torch_reference(sampler) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """``feeds → images`` from the FP32 PyTorch sampler (inputs in the graph's order)."""
    import torch

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return sampler(*(torch.from_numpy(np.asarray(v)) for v in feeds.values())).numpy()
    return run


# --- the step --------------------------------------------------------------------------
def make_fp16(sampler, fp32_graph: Path, out: Path, spec, feeds: dict[str, np.ndarray], *,
              io: str = "fp32", safe_abs_max: float = SAFE_ABS_MAX, task=None, schedule=None) -> Fp16Result:
    """FP32 graph → calibrated FP16 graph at ``out`` (+ ``.data``), verified against ``sampler``.

    Args:
        sampler: the FP32 PyTorch module the graph was exported from (the reference).
        fp32_graph: the exported FP32 graph.
        out: where to write the FP16 graph (normally ``model.fp16.onnx`` in a staged bundle).
        spec: the model's ``ModelSpec`` (kind, shapes of calibration inputs).
        feeds: the bundle's parity inputs (verification; calibration uses fresh draws).
        io: "fp32" (default) keeps inputs/outputs FP32; "fp16" makes them FP16 too.
        safe_abs_max: calibration threshold above which a node stays FP32.
        task: the bundle's ``Task`` (editing graphs are calibrated on their own kind of inputs).
        schedule: the bundle's ``Schedule`` (its step count and σ's; None: steps from ``feeds``).

    Returns:
        The manifest entries and one parity report per verification case; check ``passed``.
    """
    import onnx

    steps = schedule.steps if schedule is not None else sum(1 for k in feeds if k.startswith("noise_"))
    sigmas = schedule.sigmas if schedule is not None else None
    calibration = input_cases(calibration_feeds(spec, steps, task=task, sigmas=sigmas), spec.kind)
    peaks = calibrate(fp32_graph, list(calibration.values()))
    model = onnx.load(str(fp32_graph))
    decisions = decide(model.graph, peaks, safe_abs_max=safe_abs_max)
    check_coverage(model.graph, decisions)
    fp16 = convert(model, [d.node for d in decisions], io=io)
    del model
    counts = precision_counts(fp16)
    files = save_graph(fp16, out)
    cases = verification_cases(feeds, spec.kind)
    reports = verify(out, torch_reference(sampler), cases)
    fp32_bytes = sum(f.stat().st_size for f in graph_files(fp32_graph))
    records = tuple(FileRecord.of(f) for f in files)
    graph = GraphRecord(out.name, records, _opset(fp16), io=io,
                        size_ratio_vs_fp32=round(sum(r.bytes for r in records) / fp32_bytes, 4))
    record = decisions_record(decisions, peaks, calibration, counts, io, safe_abs_max,
                              {name: _summary(r) for name, r in reports.items()})
    return Fp16Result(graph, record, reports)


def check_coverage(graph, decisions: list[Decision], *, min_fp16_share: float = MIN_FP16_COMPUTE_SHARE) -> None:
    """Fail loudly when the rules left too few of the network's convolutions and matmuls to FP16
    (e.g. the exporter's scope metadata changed and every node looked like sampler arithmetic),
    instead of writing an all-FP32 "fp16" graph."""
    from ..errors import ExportError

    scopes = node_scopes(graph)
    compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS]
    network = [n for n in compute if scopes[n].startswith(NETWORK_SCOPE)]
    kept = {d.node for d in decisions}
    fp16 = [n for n in network if n not in kept]
    if not compute:
        return
    if not network or len(fp16) < min_fp16_share * len(compute):
        raise ExportError(
            f"the FP16 pass would run only {len(fp16)} of {len(compute)} convolutions/matmuls in FP16 "
            f"({len(network)} carry the network scope '{NETWORK_SCOPE}'): the graph's module-scope metadata "
            "is missing or changed (torch.onnx version?), or calibration saw huge activations; nothing was "
            "written. Check `python -c 'import torch; print(torch.__version__)'` against cmrt's tested versions")


def decisions_record(decisions: list[Decision], peaks: dict[str, float], calibration: dict, counts: dict,
                     io: str, safe_abs_max: float, verification: dict) -> PrecisionRecord:
    """The manifest's ``precision["fp16"]``: converter, rules, calibration inputs and every FP32 node."""
    import onnxconverter_common

    by_reason: dict[str, list[Fp32Node]] = {}
    for d in decisions:
        by_reason.setdefault(d.reason, []).append(Fp32Node(d.node, d.op, _round(d.max_abs)))
    finite = [p for p in peaks.values() if math.isfinite(p)]
    return PrecisionRecord(
        io=io,
        converter=f"{CONVERTER} {onnxconverter_common.__version__} convert_float_to_float16",
        converter_default_fp32_ops="Resize, Range, CumSum, Min, Max, TopK, ... (its DEFAULT_OP_BLOCK_LIST)",
        rules=(REASON_SAMPLER, REASON_NORM, REASON_RANGE),
        calibration=Calibration(tuple(calibration), CALIBRATION_SEED, CALIBRATION_BATCH, tuple(CALIBRATION_LATENT_HW),
                                safe_abs_max, len(peaks), _round(max(finite)) if finite else None),
        nodes=NodeCounts(**counts),
        fp32_nodes={k: tuple(v) for k, v in by_reason.items()},
        verification=verification)


def _summary(report) -> OutputParity:
    return ParityRecord.of(report).outputs[0]


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.4g}")


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
