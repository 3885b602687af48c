"""The OpenVINO backend's graph rewrite (``cmrt.runtime.openvino_graph``): GroupNorms in 4-D.
Parity with PyTorch's GroupNorm on graphs as cmrt exports them, only GroupNorms touched, and the
point of it: the compiled model keeps the convolutions' layout (fewer reorders)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cmrt.exporter.optimize import optimize
from cmrt.runtime.openvino import OpenVinoBackend

ov = pytest.importorskip("openvino")
from cmrt.runtime.openvino_graph import group_norms_in_4d  # noqa: E402  (needs openvino)

C, H, W = 16, 12, 10


class _Block(torch.nn.Module):
    """conv → GroupNorm → SiLU → conv → GroupNorm → SiLU → LayerNorm over the last axis."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(C, C, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(C, C, 3, padding=1)
        self.norm1, self.norm2 = torch.nn.GroupNorm(groups, C), torch.nn.GroupNorm(groups, C)
        self.last = torch.nn.LayerNorm(W)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.weight.copy_(torch.linspace(0.5, 2.0, C))
                norm.bias.copy_(torch.linspace(-1.0, 1.0, C))

    def forward(self, x):
        silu = torch.nn.functional.silu
        return self.last(silu(self.norm2(self.conv2(silu(self.norm1(self.conv1(x)))))))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """groups → the block's ONNX file, exported once per module."""
    paths: dict[int, str] = {}

    def get(groups: int) -> str:
        if groups not in paths:
            paths[groups] = _graph(groups, tmp_path_factory.mktemp("blocks"))
        return paths[groups]
    return get


def _graph(groups: int, tmp_path) -> str:
    """The block as ``cmrt export`` writes it: torch.onnx (dynamo) with a dynamic batch, then cmrt's
    clean-up (one-channel GroupNorms fused into a 4-D InstanceNormalization, affines into
    BatchNormalization)."""
    from onnxscript import ir

    program = torch.onnx.export(_Block(groups).eval(), (torch.randn(2, C, H, W),), input_names=["x"], output_names=["y"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                opset_version=20, optimize=True, verbose=False)
    model = ir.from_proto(program.model_proto)
    optimize(model)
    path = tmp_path / f"block{groups}.onnx"
    onnx.save(ir.to_proto(model), path)
    return str(path)


def _input(scale: float) -> np.ndarray:
    return ((np.random.default_rng(2).standard_normal((3, C, H, W)) * 3 + 1) * scale).astype(np.float32)


@pytest.mark.parametrize("groups, rewritten", [(C // 2, 2), (2, 2), (C, 0)])
def test_rewritten_group_norms_match_pytorch(groups, rewritten, graph):
    """Several channels per group: both GroupNorms rewritten; one per group (already a 4-D
    InstanceNormalization) and the LayerNorm left alone. FP32 on OpenVINO within 1e-4 of PyTorch,
    at activations ×1 and ×30 and offset (statistics not centred), and at another batch size."""
    path = graph(groups)
    model = ov.Core().read_model(path)
    assert group_norms_in_4d(model) == rewritten
    assert sum(op.get_type_name() == "MVN" for op in model.get_ordered_ops()) == 3 - rewritten
    with OpenVinoBackend(path, precision="fp32", cache=False, output="y") as backend:
        assert backend.rewritten == rewritten
        for scale in (1.0, 30.0):
            x = _input(scale)
            with torch.no_grad():
                reference = _Block(groups).eval()(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(backend.run({"x": x}), reference, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(backend.run({"x": x[:1]}), reference[:1], atol=1e-4, rtol=1e-4)


def _reorders(path: str, rewrite: bool, precision: str) -> int:
    core = ov.Core()
    model = core.read_model(path)
    if rewrite:
        group_norms_in_4d(model)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    runtime = compiled.get_runtime_model().get_ordered_ops()
    reorders = [op for op in runtime if op.get_rt_info()["layerType"].astype(str) == "Reorder"]
    return sum(str(op.get_output_partial_shape(0)).endswith(f"{H},{W}]") for op in reorders)  # activations


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_rewrite_removes_the_layout_reorders(precision, graph):
    """What the rewrite is for: the plugin runs the convolutions in a channels-last or blocked layout
    and the original GroupNorms' reshapes in planar, so each costs reorders of the activation
    into planar and back; the 4-D form none (the graph's input and output keep theirs, ONNX's
    layout being planar)."""
    path = graph(2)
    before, after = _reorders(path, False, precision), _reorders(path, True, precision)
    assert after < before, (before, after)


def test_a_bundle_graph_is_rewritten_and_keeps_parity(cm_bundle):
    """The tiny CM's 64-channel levels hold GroupNorms of two channels per group: the backend
    rewrites them, and the FP32 run on the stored inputs matches the stored PyTorch outputs to
    FP32's tolerance (its 32-channel ones are already 4-D InstanceNormalizations, left alone)."""
    from cmrt.runtime.stored import run_stored_inputs

    backend = OpenVinoBackend(cm_bundle.graph_path(), precision="fp32", cache=False)
    assert backend.rewritten > 0
    run = run_stored_inputs(cm_bundle, backend)
    assert run.report.passed and run.report.precision == "fp32", run.report


def test_graph_ab_times_the_rewrite(graph, capsys):
    """``python -m benchmarks.graph_ab GRAPH --openvino f32``: the graph as read against its
    GroupNorms in 4-D, both at FP32 parity with ONNX Runtime, timed in paired rounds."""
    import re

    from benchmarks import graph_ab

    assert graph_ab.main([graph(2), "--openvino", "f32", "--batch", "2", "--rounds", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "openvino-f32, 2 GroupNorms in 4-D: " in out and "first/this" in out
    assert [float(db) > 90 for db in re.findall(r"([\d.]+) dB from ONNX Runtime FP32", out)] == [True, True]
