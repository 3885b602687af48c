"""FP16 graphs: calibration decisions, explicit FP32 islands, accuracy vs the FP32 PyTorch source
(parity inputs and latents ×1/×3/×10), manifest records, size, and the error paths."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from cmrt import ConfigError, ParityError, check, parity
from cmrt.bundle import Bundle
from cmrt.cli import main
from cmrt.exporter import precision as P
from cmrt.exporter.api import build_unrolled, export
from conftest import loaded, tiny_cm_spec, tiny_decoder_spec

FP16, FP32, INT64 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
SIZE_RATIO_TARGET = 0.55


def _types(model) -> dict[str, int]:
    """Element type of every value (the saved graph keeps no value_info: shape inference gives it)."""
    model = onnx.shape_inference.infer_shapes(model)
    vals = (*model.graph.value_info, *model.graph.input, *model.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in vals}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    return types


def _reference(spec, bundle, feeds) -> np.ndarray:
    """The FP32 PyTorch sampler, rebuilt independently of the export."""
    m = bundle.manifest
    module = build_unrolled(loaded(spec), m.schedule)
    with torch.no_grad():
        return module(*[torch.as_tensor(feeds[n]) for n in m.input_names]).numpy()


def _ort(path, feeds) -> np.ndarray:
    from cmrt.runtime.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, device="cpu", precision="fp16").run(feeds)


@pytest.mark.parametrize("scale", P.LATENT_SCALES)
def test_decoder_fp16_matches_pytorch_at_every_latent_scale(dec16, scale):
    feeds, _ = dec16.parity_data()
    feeds = P.scaled_inputs(feeds, scale)
    actual = _ort(dec16.graph_path("fp16"), feeds)
    report = parity.compare({"images": actual}, {"images": _reference(tiny_decoder_spec(), dec16, feeds)},
                            backend="onnxruntime-cpu", precision="fp16")
    out = report.outputs[0]
    assert out.finite and out.max_abs <= 2e-2 and out.psnr >= 40.0, report.lines()
    assert out.max_abs > 0  # FP16 really changed the numbers: the graph is not the FP32 one
    case = "parity inputs" if scale == 1 else f"latents x{scale:g}"
    recorded = dec16.manifest.precision["fp16"].verification[case]
    assert recorded.passed and math.isclose(recorded.max_abs, out.max_abs, rel_tol=1e-6)


def test_cm_with_attention_fp16_matches_pytorch(cm16):
    feeds, expected = cm16.parity_data()
    report = parity.compare({"images": _ort(cm16.graph_path("fp16"), feeds)}, expected,
                            backend="onnxruntime-cpu", precision="fp16")
    assert report.passed, report.lines()
    graph = onnx.load(str(cm16.graph_path("fp16")), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert {"MatMul", "Softmax"} <= ops  # the attention is in the graph
    types = _types(graph)
    attention = [n for n in graph.graph.node if n.op_type == "MatMul"]
    assert attention and all(types[n.output[0]] == FP16 for n in attention)


@pytest.mark.parametrize("which", ["dec16", "cm16"])
def test_heavy_ops_and_weights_are_fp16_io_fp32(which, request):
    bundle = request.getfixturevalue(which)
    model = onnx.load(str(bundle.graph_path("fp16")))
    types = _types(model)
    heavy = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert heavy
    for node in heavy:
        assert types[node.output[0]] == FP16, node.name
        weights = [i for i in node.input[1:] if i in {t.name for t in model.graph.initializer}]
        assert all(types[w] == FP16 for w in weights), node.name
    assert all(v.type.tensor_type.elem_type in (FP32, onnx.TensorProto.INT64) for v in model.graph.input)
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [FP32]


@pytest.mark.parametrize("which", ["dec16", "cm16"])
def test_decisions_are_recorded_and_applied(which, request):
    bundle = request.getfixturevalue(which)
    rec = bundle.manifest.precision["fp16"]
    assert rec.io == "fp32" and rec.converter.startswith("onnxconverter-common")
    groups = rec.fp32_nodes
    assert P.REASON_SAMPLER in groups and P.REASON_NORM in groups
    model = onnx.load(str(bundle.graph_path("fp16")), load_external_data=False)
    nodes = {n.name: n for n in model.graph.node}
    types = _types(model)
    for reason, entries in groups.items():
        for e in entries:  # every recorded FP32 node exists and computes in FP32
            node = nodes[e.node]
            floats = [types[o] for o in node.output if types.get(o) in (FP16, FP32)]
            assert floats and all(t == FP32 for t in floats), (reason, e)
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and {n.name for n in norms} <= {e.node for e in groups[P.REASON_NORM]}
    # the last node (the c_skip·x + c_out·F combination, or its clamp) is sampler arithmetic in FP32
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer[model.graph.output[0].name]
    while last.op_type == "Cast":
        last = producer[last.input[0]]
    assert last.name in {e.node for e in groups[P.REASON_SAMPLER]}
    assert rec.nodes.fp16 > rec.nodes.fp32 > 0


def test_fp16_graph_is_at_most_55_percent_of_fp32(dec16, cm16):
    for bundle in (dec16, cm16):
        g = bundle.manifest.graphs
        on_disk = sum((bundle.path / f.file).stat().st_size for f in g["fp16"].files)
        assert on_disk == g["fp16"].bytes and len(g["fp16"].files) == 2
        assert on_disk / g["fp32"].bytes <= SIZE_RATIO_TARGET
        assert g["fp16"].size_ratio_vs_fp32 == pytest.approx(on_disk / g["fp32"].bytes, abs=1e-4)


def test_calibration_threshold_decides_extra_fp32_nodes(cm16):
    """With a lower threshold, exactly the nodes whose calibrated range exceeds it join FP32."""
    model = onnx.load(str(cm16.graph_path("fp32")))
    feeds = P.calibration_feeds(tiny_cm_spec(), cm16.manifest.steps)
    peaks = P.calibrate(cm16.graph_path("fp32"), [feeds])
    assert not [p for p in cm16.path.iterdir() if "probe" in p.name]  # the probe graph is removed
    assert peaks["noise_0"] == pytest.approx(float(np.abs(feeds["noise_0"]).max()))
    base = {d.node for d in P.decide(model.graph, peaks)}
    threshold = 4.0
    low = P.decide(model.graph, peaks, safe_abs_max=threshold)
    ranged = [d for d in low if d.reason == P.REASON_RANGE]
    assert ranged and all(d.max_abs > threshold for d in ranged)
    assert {d.node for d in low} - {d.node for d in ranged} == base
    converted = P.convert(model, [d.node for d in low])
    types = _types(converted)
    names = {d.node for d in ranged}
    for node in converted.graph.node:
        if node.name in names:
            assert all(types[o] == FP32 for o in node.output if types.get(o) in (FP16, FP32))


def test_io_fp16_graph_takes_fp16_and_checks(tmp_path):
    bundle = export(out=tmp_path / "b", steps=1, model=loaded(tiny_cm_spec()), precision="fp16", io="fp16")
    model = onnx.load(str(bundle.graph_path("fp16")), load_external_data=False)
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [INT64, FP16]  # labels stay integers
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [FP16]
    report = check(bundle.path / "model.fp16.onnx")
    assert report.passed and report.parity.precision == "fp16"


def test_cli_check_of_the_fp16_graph_uses_fp16_tolerances(cm16, capsys):
    assert main(["check", str(cm16.path / "model.fp16.onnx")]) == 0
    out = capsys.readouterr().out
    assert "[fp16]" in out and "PSNR ≥ 40 dB" in out and "PASS" in out
    assert Bundle.open(cm16.path / "model.fp16.onnx").graph_path().name == "model.fp16.onnx"
    assert main(["check", str(cm16.path)]) == 0 and "[fp32]" in capsys.readouterr().out


def test_fp16_parity_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCES, "fp16", parity.Tolerance(max_abs=0.0, min_psnr=math.inf))
    out = tmp_path / "b"
    with pytest.raises(ParityError, match=r"fp16"):
        export(out=out, steps=1, model=loaded(tiny_cm_spec(num_classes=None)), precision="fp16")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


@pytest.mark.parametrize("kwargs, match", [({"precision": "fp8"}, "fp32 or fp16"),
                                           ({"io": "fp16"}, "needs --precision fp16")])
def test_bad_precision_options(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        export(out=tmp_path / "b", steps=1, model=loaded(tiny_cm_spec()), **kwargs)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_official_width_decoder_fp16(tmp_path):
    """The decoder at its published widths (320/640/1024/1024, 3 res blocks) on a small input."""
    spec = tiny_decoder_spec(widths=(320, 640, 1024, 1024), layers=3).with_(name="decoder-official-width")
    bundle = export(out=tmp_path / "b", steps=2, model=loaded(spec), precision="fp16")
    rec = bundle.manifest.precision["fp16"].verification
    for case in ("parity inputs", "latents x3", "latents x10"):
        assert rec[case].passed and rec[case].psnr >= 40 and rec[case].max_abs <= 2e-2, (case, rec[case])
    assert bundle.manifest.graphs["fp16"].size_ratio_vs_fp32 <= SIZE_RATIO_TARGET


def test_fp16_pass_refuses_a_graph_without_network_scopes(cm16):
    """If the exporter's module-scope metadata went missing, every node would look like sampler
    arithmetic and stay FP32: the pass fails loudly instead of writing an all-FP32 "fp16" graph."""
    from cmrt.errors import ExportError
    from cmrt.exporter.metadata import strip_metadata

    model = onnx.load(str(cm16.graph_path("fp32")), load_external_data=False)
    peaks: dict[str, float] = {}
    P.check_coverage(model.graph, P.decide(model.graph, peaks))  # the real graph passes
    strip_metadata(model.graph, frozenset())
    with pytest.raises(ExportError, match="only 0 of .* convolutions/matmuls in FP16"):
        P.check_coverage(model.graph, P.decide(model.graph, peaks))
