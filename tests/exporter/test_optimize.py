"""Graph clean-up rules (``cmrt.exporter.optimize``): each rewrite keeps the graph's outputs (checked
on ONNX Runtime against the unrewritten graph or PyTorch) and removes the nodes it says it does."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxscript import ir

from cmrt.exporter.metadata import KEEP_METADATA, SCOPES_KEY
from cmrt.exporter.optimize import optimize

C, H, W = 8, 5, 6


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _optimized(model: onnx.ModelProto):
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model)
    return ir.serde.serialize_model(ir_model), report


def _affine_chain_model(extra_use: bool) -> onnx.ModelProto:
    """x·a + b, then ·c + d (a GroupNorm affine followed by a scale-shift), all per channel."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((C, 1, 1)).astype(np.float32), n) for n in "abcd"]
    nodes = [helper.make_node("Mul", ["x", "a"], ["m1"]), helper.make_node("Add", ["m1", "b"], ["a1"]),
             helper.make_node("Mul", ["a1", "c"], ["m2"]), helper.make_node("Add", ["m2", "d"], ["y0"])]
    if extra_use:  # the intermediate a1 feeds a second branch: folding it away would be wrong
        nodes += [helper.make_node("Add", ["y0", "a1"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["y0"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, C, H, W])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_affine_chain_folds_to_one_mul_add():
    model = _affine_chain_model(extra_use=False)
    x = np.random.default_rng(1).standard_normal((2, C, H, W)).astype(np.float32)
    new, report = _optimized(model)
    assert report.folded_affine_chains == 1
    assert _ops(new)["Mul"] == 1 and _ops(new)["Add"] == 1
    np.testing.assert_allclose(_run(new, x), _run(model, x), atol=1e-5)


def test_affine_chain_with_a_shared_intermediate_is_left_alone():
    model = _affine_chain_model(extra_use=True)
    x = np.random.default_rng(1).standard_normal((2, C, H, W)).astype(np.float32)
    new, report = _optimized(model)
    assert report.folded_affine_chains == 0
    assert _ops(new)["Mul"] == 2
    np.testing.assert_allclose(_run(new, x), _run(model, x), atol=1e-6)


class _NormSiLU(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(groups, C)
        with torch.no_grad():
            self.norm.weight.copy_(torch.linspace(0.5, 2.0, C))
            self.norm.bias.copy_(torch.linspace(-1.0, 1.0, C))

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(x))


def _exported(groups: int) -> onnx.ModelProto:
    """What torch.onnx (dynamo) writes for a GroupNorm, before cmrt's clean-up."""
    program = torch.onnx.export(_NormSiLU(groups).eval(), (torch.randn(2, C, H, W),), input_names=["x"],
                                dynamo=True, opset_version=20, optimize=True, verbose=False)
    return program.model_proto


@pytest.mark.parametrize("groups, fused, batchnorms", [(C, 1, 0), (C // 2, 0, 1), (2, 0, 1)])
@pytest.mark.parametrize("scale", [1.0, 3.0, 10.0])
def test_group_norm_rewrites_keep_parity(groups, fused, batchnorms, scale):
    """One channel per group: Reshape → IN → Reshape → Mul → Add becomes one InstanceNormalization.
    Several: the affine Mul → Add becomes one BatchNormalization. Parity with PyTorch's GroupNorm
    + SiLU at activations ×1, ×3, ×10 (and offset, so the statistics are not centred)."""
    model = _exported(groups)
    assert _ops(model)["InstanceNormalization"] == 1 and _ops(model)["Mul"] >= 1
    x = (np.random.default_rng(2).standard_normal((2, C, H, W)).astype(np.float32) * 3 + 1) * scale
    new, report = _optimized(model)
    assert (report.fused_instance_norms, report.batchnorm_affines) == (fused, batchnorms)
    if fused:  # Reshape → IN → Reshape → Mul → Add became one InstanceNormalization
        assert _ops(new)["Reshape"] == 0 and _ops(new)["InstanceNormalization"] == 1
        assert _ops(new)["Mul"] == _ops(model)["Mul"] - 1 and _ops(new)["Add"] == _ops(model)["Add"] - 1
    if batchnorms:  # the affine's Mul and Add became one BatchNormalization; the statistics unchanged
        assert _ops(new)["BatchNormalization"] == 1 and _ops(new)["InstanceNormalization"] == 1
        assert _ops(new)["Mul"] == _ops(model)["Mul"] - 1 and _ops(new)["Add"] == _ops(model)["Add"] - 1
    with torch.no_grad():
        reference = _NormSiLU(groups)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(new, x), reference, atol=1e-5)  # GroupNorm output is scale-free


def test_exported_decoder_is_cleaned_up_and_keeps_scopes(decoder_bundle):
    """The tiny decoder (32 channels, 32 groups, scale-shift) at a fixed schedule: every res block's
    scale-shift folded into its norm, every one-channel GroupNorm fused; parity held (the export
    checks it); module scopes kept for the FP16 pass, the exporter's stack traces dropped."""
    rewrites = decoder_bundle.manifest.graphs["fp32"].rewrites
    assert rewrites["folded_affine_chains"] > 0 and rewrites["fused_instance_norms"] > 0
    graph = onnx.load(str(decoder_bundle.graph_path()), load_external_data=False).graph
    norms = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(any(p.key == SCOPES_KEY for p in n.metadata_props) for n in norms)
    assert {p.key for n in graph.node for p in n.metadata_props} <= KEEP_METADATA
    assert not any(n.op_type == "Gemm" for n in graph.node)  # the time MLP folded away
    assert decoder_bundle.manifest.parity["onnxruntime-cpu/fp32"].passed


def _scale_shift_model(extra_use: bool) -> onnx.ModelProto:
    """A norm's constant affine, then a per-sample scale-shift computed from an embedding input e
    (what a class-conditional res block does): ((x·a + b)·(1 + s) + t), s and t of shape (N, C, 1, 1)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((C, 1, 1)).astype(np.float32), n) for n in "ab"]
    inits += [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("Unsqueeze", ["e", "axes"], ["e4"]),
             helper.make_node("Add", ["e4", "one"], ["s"]), helper.make_node("Neg", ["e4"], ["t"]),
             helper.make_node("Mul", ["x", "a"], ["m1"]), helper.make_node("Add", ["m1", "b"], ["a1"]),
             helper.make_node("Mul", ["a1", "s"], ["m2"]), helper.make_node("Add", ["m2", "t"], ["y0"])]
    nodes += [helper.make_node("Add", ["y0", "a1"] if extra_use else ["y0", "y0"], ["y"])]
    graph = helper.make_graph(nodes, "scale_shift",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, H, W]),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", C, H, W])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


@pytest.mark.parametrize("extra_use", [False, True])
def test_per_sample_scale_shift_folds_onto_vectors(extra_use):
    model = _scale_shift_model(extra_use)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((2, C, H, W)).astype(np.float32) * 10,
             "e": rng.standard_normal((2, C)).astype(np.float32)}
    new, report = _optimized(model)
    assert report.folded_scale_shifts == (0 if extra_use else 1)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    if not extra_use:  # four passes over x became two: one Mul and one Add on the activation
        full = [n for n in new.graph.node if n.op_type in ("Mul", "Add") and "x" in n.input]
        assert len(full) == 1 and _ops(new)["Mul"] == 3 and _ops(new)["Add"] == 4
    np.testing.assert_allclose(run(new), run(model), rtol=1e-5, atol=1e-5)


def test_class_conditional_cm_graph_carries_both_new_rewrites(cm16):
    """The tiny class-conditional CM (64-channel level: two channels per group; scale-shift from the
    class embedding): BatchNorm affines and folded scale-shifts in the fp32 graph, parity held; its
    FP16 graph is the one the TensorRT-RTX build test parses."""
    rewrites = cm16.manifest.graphs["fp32"].rewrites
    assert rewrites["batchnorm_affines"] > 0 and rewrites["folded_scale_shifts"] > 0
    assert cm16.manifest.parity["onnxruntime-cpu/fp32"].passed
    ops = _ops(onnx.load(str(cm16.graph_path("fp16")), load_external_data=False))
    assert ops["BatchNormalization"] == rewrites["batchnorm_affines"]
