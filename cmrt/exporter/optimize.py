"""Graph clean-up for fixed-step samplers, run on the exported graph before it is saved.

A fixed schedule makes every network evaluation's time input a constant, so the whole time path
(embedding table row, embedding MLP, each res block's scale/shift projection) folds into per-channel
constants. What is left around each GroupNorm is then a chain of per-channel multiply/adds, which
these rules merge:

* ``Add(Mul(Add(Mul(x, a), b), c), d)`` → ``Add(Mul(x, a·c), b·c + d)`` (norm affine ∘ scale-shift);
* a GroupNorm with one channel per group, exported as ``Reshape → InstanceNormalization →
  Reshape → Mul → Add``, → one ``InstanceNormalization`` carrying the affine (exactly the same
  statistics: each group is one channel);
* a norm's constant affine followed by a per-sample scale-shift (class-conditional models:
  ``(x·γ + β)·s + t`` with s, t of shape (N, C, 1, 1) computed from the embedding) →
  ``x·(γ·s) + (β·s + t)``: two passes over the activation instead of four, the rest on vectors;
* a GroupNorm with several channels per group: its per-channel affine ``Mul → Add`` →
  one inference-mode ``BatchNormalization`` (mean 0, variance 1, epsilon 0: the same
  ``x·γ + β``, one pass over the activation instead of two).

Each rewrite saves one or two full passes over an activation tensor: on ONNX Runtime's CPU
provider these memory-bound passes, not the convolutions, are what stands between a UNet and the
machine's GEMM rate (``benchmarks/RESULTS.md``). The rewritten graph is standard ONNX (TensorRT and
the FP16 pass read it unchanged); the export's parity check runs on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnxscript.optimizer
from onnxscript import ir
from onnxscript.rewriter.pattern import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from .metadata import SCOPES_KEY

#: Constant folding limits, in elements. Inputs: large enough for the official decoder's time path
#: (its 1024×320 table and 1280×1280 / 2048×1280 projections). Outputs: only small tensors (the
#: per-channel vectors) are materialized, never a folded copy of an activation-sized tensor.
FOLD_INPUT_LIMIT = 1 << 23
FOLD_OUTPUT_LIMIT = 1 << 16


@dataclass(frozen=True)
class OptimizeReport:
    folded_affine_chains: int
    fused_instance_norms: int
    batchnorm_affines: int = 0
    folded_scale_shifts: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"folded_affine_chains": self.folded_affine_chains, "fused_instance_norms": self.fused_instance_norms,
                "batchnorm_affines": self.batchnorm_affines, "folded_scale_shifts": self.folded_scale_shifts}


def tidy(model: ir.Model) -> None:
    """The exporter's own clean-up, at a fraction of its cost: constant folding (shapes, casts),
    then onnxscript's no-op, basic (cast/reshape/transpose chains), slice and reshape-shape rules.

    ``torch.onnx.export(optimize=True)`` runs these and a dozen more rule sets (MatMul broadcast,
    Relu/Clip, BatchNorm and Pad fusions, ScatterND, LLM fusions) that never match a UNet, on the
    whole unrolled graph; cmrt runs this once per network graph, before the steps are spliced in.
    """
    from onnxscript import rewriter
    from onnxscript.rewriter import _basic_rules, _collapse_slices, _materialize_reshape_shape, _no_op

    rules = [*_no_op.rules, *_basic_rules.basic_optimization_rules(), *_collapse_slices.rules,
             *_materialize_reshape_shape.rules]
    for _ in range(2):  # as the exporter's optimizer: a second round catches what the first exposed
        _fold(model)
        rewriter.RewritePass(rules)(model)
        onnxscript.optimizer.remove_unused_nodes(model)


def _fold(model: ir.Model, *, shape_inference: bool = True) -> None:
    """Constant folding. ``shape_inference``: node-level type and shape inference while folding:
    the exporter leaves intermediate values untyped when its own optimizer is off, and typed values
    are what lets CastLike and the shape ops fold (``tidy`` runs it on each traced graph, so the
    spliced graph needs no second pass)."""
    log = logging.getLogger("onnxscript")
    level = log.level
    log.setLevel(logging.ERROR)  # "skipping constant folding for ..." is not news to a user
    try:
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=shape_inference,
                                            input_size_limit=FOLD_INPUT_LIMIT, output_size_limit=FOLD_OUTPUT_LIMIT)
    finally:
        log.setLevel(level)


def optimize(model: ir.Model) -> OptimizeReport:
    """Fold constants, merge affine chains and one-channel GroupNorms, drop what became unused."""
    _fold(model, shape_inference=False)
    _dedupe(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    chains = RewriteRuleSet([FoldAffineChain.rule()]).apply_to_model(model)  # first: it shortens
    shifts = RewriteRuleSet([FoldDynamicScaleShift.rule()]).apply_to_model(model)
    norms = RewriteRuleSet([OneChannelGroupNorm.rule()]).apply_to_model(model)  # the chains this one ends in
    affines = RewriteRuleSet([GroupNormAffineAsBatchNorm.rule()]).apply_to_model(model)  # the norms it left
    onnxscript.optimizer.remove_unused_nodes(model)
    _lift_constants(model)
    return OptimizeReport(chains, norms, affines, shifts)


def _dedupe(model: ir.Model) -> None:
    """Common subexpressions once: what every step computes alike (the class embedding of the same
    labels, each res block's SiLU of the shared embedding) is computed once."""
    from onnx_ir.passes.common import CommonSubexpressionEliminationPass

    CommonSubexpressionEliminationPass()(model)


def _lift_constants(model: ir.Model) -> None:
    """Constant nodes → initializers, as the exporter's own optimizer leaves its graphs."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _per_channel(arr: np.ndarray | None, rank: int = 4) -> bool:
    """A constant that broadcasts along the channel axis only: shape (C,1,1) or (1,C,1,1)."""
    if arr is None or arr.dtype != np.float32 or arr.ndim > rank:
        return False
    shape = (1,) * (rank - arr.ndim) + arr.shape
    return shape[0] == 1 and all(d == 1 for d in shape[2:])


def _single_use(*values: ir.Value) -> bool:
    return all(len(v.uses()) == 1 and not v.is_graph_output() for v in values)


def _is_shape_of(shape: ir.Value, x: ir.Value) -> bool:
    """``shape`` is ``Shape(x)``, or a constant equal to x's (static) shape."""
    producer = shape.producer()
    if producer is not None and producer.op_type == "Shape" and producer.inputs[0] is x:
        start, end = producer.attributes.get("start"), producer.attributes.get("end")
        return (start is None or start.as_int() == 0) and end is None
    value = _const(shape)
    static = x.shape is not None and all(isinstance(d, int) for d in x.shape)
    return value is not None and static and value.tolist() == list(x.shape)


def _keep_scope(new: ir.Value, old_node: ir.Node) -> None:
    """The rewritten node keeps the module scope of the node it replaces (the FP16 pass reads it)."""
    scope = old_node.metadata_props.get(SCOPES_KEY)
    if scope is not None and new.producer() is not None:
        new.producer().metadata_props[SCOPES_KEY] = scope


def _initializer(op, arr: np.ndarray, like: ir.Value, suffix: str) -> ir.Value:
    return op.initializer(ir.tensor(np.ascontiguousarray(arr, dtype=np.float32)), name=f"{like.name}_{suffix}")


class FoldAffineChain(RewriteRuleClassBase):
    """``(x·a + b)·c + d`` with per-channel constants → ``x·(a·c) + (b·c + d)``."""

    def pattern(self, op, x, a, b, c, d):
        return op.Add(op.Mul(op.Add(op.Mul(x, a, _outputs=["m1"]), b, _outputs=["a1"]), c, _outputs=["m2"]), d)

    def check(self, context, x, a, b, c, d, m1, a1, m2) -> MatchResult:
        result = MatchResult()
        if not all(_per_channel(_const(v)) for v in (a, b, c, d)):
            return result.fail("not all four operands are per-channel float32 constants")
        if not _single_use(m1, a1, m2):
            return result.fail("an intermediate value has other users")
        return result

    def rewrite(self, op, x, a, b, c, d, m1, a1, m2):
        av, bv, cv, dv = (_const(v) for v in (a, b, c, d))
        out = op.Add(op.Mul(x, _initializer(op, av * cv, m1, "scale")), _initializer(op, bv * cv + dv, m1, "shift"))
        _keep_scope(out, m1.producer())
        return out


def _per_sample_channel(value: ir.Value, channels: int) -> bool:
    """A computed value that broadcasts per sample and channel only: shape (N, C, 1, 1)."""
    shape = value.shape
    if value.const_value is not None or shape is None or len(shape) != 4:
        return False
    return shape[1] == channels and shape[2] == 1 and shape[3] == 1


class FoldDynamicScaleShift(FoldAffineChain):
    """``(x·a + b)·c + d`` (``FoldAffineChain``'s pattern) with per-channel constants a, b and
    per-sample (N, C, 1, 1) values c, d (a scale-shift from the embedding) → ``x·(a·c) + (b·c + d)``:
    the products of a and b with c are on (N, C, 1, 1) vectors."""

    def check(self, context, x, a, b, c, d, m1, a1, m2) -> MatchResult:
        result = MatchResult()
        av, bv = _const(a), _const(b)
        if not (_per_channel(av) and _per_channel(bv)) or av.size != bv.size or av.size < 2:
            return result.fail("a and b are not per-channel float32 constants")
        if not (_per_sample_channel(c, av.size) and _per_sample_channel(d, av.size)):
            return result.fail("c and d are not computed (N, C, 1, 1) values")
        if not _single_use(m1, a1, m2):
            return result.fail("an intermediate value has other users")
        return result

    def rewrite(self, op, x, a, b, c, d, m1, a1, m2):
        av, bv = (_const(v).reshape(1, -1, 1, 1) for v in (a, b))
        scale = op.Mul(_initializer(op, av, m1, "scale"), c)
        shift = op.Add(op.Mul(_initializer(op, bv, m1, "shift"), c), d)
        out = op.Add(op.Mul(x, scale), shift)
        _keep_scope(out, m1.producer())
        return out


class OneChannelGroupNorm(RewriteRuleClassBase):
    """GroupNorm with as many groups as channels, exported via a reshaped InstanceNormalization plus
    an affine Mul/Add → ``InstanceNormalization(x, gamma, beta)`` on the 4-D tensor."""

    def pattern(self, op, x, groups_shape, ones, zeros, back_shape, gamma, beta):
        grouped = op.Reshape(x, groups_shape)
        norm = op.InstanceNormalization(grouped, ones, zeros, _outputs=["normed"])
        back = op.Reshape(norm, back_shape, _outputs=["back"])
        return op.Add(op.Mul(back, gamma, _outputs=["scaled"]), beta)

    def check(self, context, x, groups_shape, ones, zeros, back_shape, gamma, beta, normed, back,
              scaled) -> MatchResult:
        result = MatchResult()
        if not _is_shape_of(back_shape, x):
            return result.fail("the second reshape does not restore the input's shape")
        shape, g, b = _const(groups_shape), _const(gamma), _const(beta)
        one, zero = _const(ones), _const(zeros)
        batch = x.shape[0] if x.shape is not None else 0
        if shape is None or shape.shape != (3,) or shape[0] not in (0, batch) or shape[2] != -1:
            return result.fail("the grouping reshape is not (N, G, -1)")
        groups = int(shape[1])
        if x.shape is None or len(x.shape) != 4 or x.shape[1] != groups:
            return result.fail("not a 4-D input with one channel per group")
        if one is None or zero is None or not (np.all(one == 1) and np.all(zero == 0)):
            return result.fail("the InstanceNormalization carries its own affine")
        if not (_per_channel(g) and _per_channel(b) and g.size == groups and b.size == groups):
            return result.fail("the affine is not one constant per channel")
        if not _single_use(normed, back, scaled):
            return result.fail("an intermediate value has other users")
        return result

    def rewrite(self, op, x, groups_shape, ones, zeros, back_shape, gamma, beta, normed, back, scaled):
        norm_node = normed.producer()
        eps = norm_node.attributes.get("epsilon")
        out = op.InstanceNormalization(x, _initializer(op, _const(gamma).reshape(-1), normed, "gamma"),
                                       _initializer(op, _const(beta).reshape(-1), normed, "beta"),
                                       epsilon=eps.as_float() if eps is not None else 1e-5)
        _keep_scope(out, norm_node)
        return out


class GroupNormAffineAsBatchNorm(RewriteRuleClassBase):
    """A GroupNorm's per-channel affine after its back-reshape, ``Reshape(InstanceNormalization(…))
    · γ + β`` → ``BatchNormalization(·, γ, β, mean=0, var=1, epsilon=0)``.

    ONNX Runtime's CPU provider runs ``Mul`` and ``Add`` as two passes over the activation and has
    no fused scale-shift kernel; its ``BatchNormalization`` is one pass (measured: −2 to −4% of a
    decode's time on the reduced decoder, ``benchmarks/RESULTS.md``, "CPU inference and the
    roofline"). TensorRT imports it as a scale layer. Applied only after a GroupNorm (the only per-channel affines left once
    ``FoldAffineChain`` has run), so the rest of the graph is unchanged."""

    def pattern(self, op, normed, back_shape, gamma, beta):
        back = op.Reshape(normed, back_shape, _outputs=["back"])
        return op.Add(op.Mul(back, gamma, _outputs=["scaled"]), beta)

    def check(self, context, normed, back_shape, gamma, beta, back, scaled) -> MatchResult:
        result = MatchResult()
        producer = normed.producer()
        if producer is None or producer.op_type != "InstanceNormalization":
            return result.fail("not the back-reshape of a GroupNorm's InstanceNormalization")
        grouping = producer.inputs[0].producer()
        if grouping is None or grouping.op_type != "Reshape" or not _is_shape_of(back_shape, grouping.inputs[0]):
            return result.fail("not a GroupNorm's Reshape → InstanceNormalization → Reshape")
        g, b = _const(gamma), _const(beta)
        if not (_per_channel(g) and _per_channel(b) and g.size == b.size and g.size > 1):
            return result.fail("the affine is not one constant per channel")
        x_shape = grouping.inputs[0].shape  # the GroupNorm's input: its channels, where known
        channels = x_shape[1] if x_shape is not None and len(x_shape) == 4 else None
        if x_shape is None or len(x_shape) != 4 or (isinstance(channels, int) and channels != g.size):
            return result.fail("the affine's size is not the 4-D input's channel count")
        if not _single_use(back, scaled):
            return result.fail("an intermediate value has other users")
        return result

    def rewrite(self, op, normed, back_shape, gamma, beta, back, scaled):
        c = _const(gamma).size
        out = op.BatchNormalization(op.Reshape(normed, back_shape),
                                    _initializer(op, _const(gamma).reshape(-1), scaled, "bn_scale"),
                                    _initializer(op, _const(beta).reshape(-1), scaled, "bn_bias"),
                                    _initializer(op, np.zeros(c, np.float32), scaled, "bn_mean"),
                                    _initializer(op, np.ones(c, np.float32), scaled, "bn_var"), epsilon=0.0)
        _keep_scope(out, scaled.producer())
        return out
