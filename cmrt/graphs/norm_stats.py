"""Shared GroupNorm statistics for tiled decoding: two variants of a decoder bundle's FP32 graph.

A tile normalizes by its own statistics, so its tone drifts from the untiled decode's
(``benchmarks/RESULTS.md``, "Which tiling technique"). Giving every tile the statistics of the
whole canvas, measured on a downscaled copy of it, removes most of that drift. In the exported
graph every GroupNorm is an ``InstanceNormalization``: on the grouped (N, G, L) tensor (between
two Reshapes, the affine after them) or, with one channel per group, on the (N, C, H, W) tensor
with the affine inside (``optimize.OneChannelGroupNorm``). In graph order (every step's norms,
step after step, which is the order PyTorch calls them):

* the **statistics graph** is the sampler unchanged plus one output ``norm_stats`` (N, 2, S):
  ``[:, 0]`` every norm's per-group mean, ``[:, 1]`` its per-group (biased) variance, norm after
  norm (S = the sum of the norms' group counts);
* the **shared-statistics graph** takes ``norm_stats`` as an input and normalizes every norm's
  input by it, ``(x − mean) / √(var + ε)`` (then its affine), instead of by its own statistics;
* the **shared-means graph** takes the same input but uses only its means: each norm's input
  keeps its own variance, ``(x − mean) / √(var_own + ε)``.

``cmrt.graphs.segmenting.segments`` cuts the shared-statistics graph at its norms into self-contained pieces, which the
runtime runs layer by layer across all tiles with the full canvas's statistics
(``cmrt.runtime.tiled.layer_sync``, ``norm="canvas"``); they are made when a decode first needs them,
not stored in the bundle.

All three are standard ONNX (ReduceMean, Sub, Mul, Add, Slice, Split, Squeeze, Unsqueeze,
Reshape, Sqrt, Reciprocal, Concat) and read the FP32 graph's weight file, so they add no weights
to the bundle. Only ONNX Runtime runs them (``cmrt.Decoder``): there are no FP16 variants and no
TensorRT engines of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ExportError

#: The statistics tensor's name: an output of the statistics graph, an input of the shared one.
STATS_NAME = "norm_stats"
#: The variants' files in a bundle.
STATS_GRAPH, SHARED_GRAPH, MEANS_GRAPH = "model.stats.onnx", "model.shared.onnx", "model.shared-means.onnx"
#: What a shared-statistics graph takes from ``norm_stats``: means and variances, or means only.
VARIANCES = ("shared", "own")
_PREFIX = "cmrt_norm"


@dataclass(frozen=True)
class Norm:
    """One ``InstanceNormalization`` of the graph.

    Attributes:
        node: its index in the graph's node list.
        groups: its channel count (= the GroupNorm's groups).
        rank: its input's rank (3: grouped (N, G, L); 4: (N, C, H, W), one channel per group).
        epsilon: its ε.
        identity_affine: its scale is all ones and its bias all zeros (the GroupNorm's affine is
            applied after it, per channel), so a shared-statistics norm skips them.
    """

    node: int
    groups: int
    rank: int
    epsilon: float
    identity_affine: bool = False


def _initializer(graph: onnx.GraphProto, name: str, base: Path) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t, str(base))
    return None


def find_norms(model: onnx.ModelProto, base: Path) -> list[Norm]:
    """Every InstanceNormalization of ``model``, in graph (= evaluation) order, with its group
    count and rank (read from its scale initializer and the rank of its input's shape).

    Raises:
        ExportError: a norm whose scale is not an initializer or whose input rank is unknown.
    """
    g = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*g.value_info, *g.input)
             if v.type.tensor_type.HasField("shape")}
    norms = []
    for i, node in enumerate(g.node):
        if node.op_type != "InstanceNormalization":
            continue
        scale = _initializer(g, node.input[1], base)
        rank = ranks.get(node.input[0], 0) or _rank_from_producer(g, node.input[0])
        if scale is None or rank not in (3, 4):
            raise ExportError(f"norm {node.name!r}: its scale is not a constant or its input's rank is unknown "
                              f"({rank}); cannot share its statistics")
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        bias = _initializer(g, node.input[2], base)
        identity = bias is not None and bool(np.all(scale == 1) and np.all(bias == 0))
        norms.append(Norm(i, int(scale.size), rank, float(eps), identity))
    if not norms:
        raise ExportError("the graph has no GroupNorm (InstanceNormalization) to share statistics of")
    return norms


def _rank_from_producer(graph: onnx.GraphProto, name: str) -> int:
    """A grouping Reshape's output has the rank of its (constant) shape."""
    for node in graph.node:
        if name in node.output and node.op_type == "Reshape":
            shape = _initializer(graph, node.input[1], Path("."))
            return 0 if shape is None else int(shape.size)
    return 0


def _axes(rank: int) -> list[int]:
    return list(range(2, rank))


def _const(graph: onnx.GraphProto, name: str, values, dtype=np.int64) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def _batch_dim(model: onnx.ModelProto) -> onnx.TensorShapeProto.Dimension:
    return model.graph.input[0].type.tensor_type.shape.dim[0]


def _stats_value_info(model: onnx.ModelProto, total: int) -> onnx.ValueInfoProto:
    batch = _batch_dim(model)
    dims = [batch.dim_param or batch.dim_value, 2, total]
    return helper.make_tensor_value_info(STATS_NAME, onnx.TensorProto.FLOAT, dims)


def statistics_graph(model: onnx.ModelProto, norms: list[Norm]) -> onnx.ModelProto:
    """The sampler plus the ``norm_stats`` output (N, 2, S), see the module docstring."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    by_node = {n.node: (k, n) for k, n in enumerate(norms)}
    means, variances = [], []
    for i, node in enumerate(model.graph.node):
        g.node.append(node)
        if i not in by_node:
            continue
        # each norm's statistics right beside it (its input's per-group mean and biased variance)
        k, norm = by_node[i]
        x, p = node.input[0], f"{_PREFIX}{k}_"
        axes = _const(g, p + "axes", _axes(norm.rank))
        g.node.extend([
            helper.make_node("ReduceMean", [x, axes], [p + "mean_k"], keepdims=1, name=p + "mean_k"),
            helper.make_node("Sub", [x, p + "mean_k"], [p + "centred"], name=p + "centred"),
            helper.make_node("Mul", [p + "centred", p + "centred"], [p + "sq"], name=p + "sq"),
            helper.make_node("ReduceMean", [p + "sq", axes], [p + "var"], keepdims=0, name=p + "var"),
            helper.make_node("Squeeze", [p + "mean_k", _const(g, p + "spatial", _axes(norm.rank))], [p + "mean"],
                             name=p + "mean")])
        means.append(p + "mean")
        variances.append(p + "var")
    one = _const(g, f"{_PREFIX}_axis1", [1])
    g.node.extend([
        helper.make_node("Concat", means, [f"{_PREFIX}_means"], axis=1, name=f"{_PREFIX}_means"),
        helper.make_node("Concat", variances, [f"{_PREFIX}_vars"], axis=1, name=f"{_PREFIX}_vars"),
        helper.make_node("Unsqueeze", [f"{_PREFIX}_means", one], [f"{_PREFIX}_m"], name=f"{_PREFIX}_m"),
        helper.make_node("Unsqueeze", [f"{_PREFIX}_vars", one], [f"{_PREFIX}_v"], name=f"{_PREFIX}_v"),
        helper.make_node("Concat", [f"{_PREFIX}_m", f"{_PREFIX}_v"], [STATS_NAME], axis=1, name=STATS_NAME)])
    g.output.append(_stats_value_info(model, sum(n.groups for n in norms)))
    return out


def shared_statistics_graph(model: onnx.ModelProto, norms: list[Norm], variances: str = "shared") -> onnx.ModelProto:
    """The sampler with every norm fed from the ``norm_stats`` input, see the module docstring;
    ``variances`` "own": only the means (the shared-means graph)."""
    if variances not in VARIANCES:
        raise ValueError(f"variances must be one of {VARIANCES}, got {variances!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    by_node = {n.node: (k, n) for k, n in enumerate(norms)}
    offset = 0
    for i, node in enumerate(model.graph.node):
        if i not in by_node:
            g.node.append(node)
            continue
        k, norm = by_node[i]
        g.node.extend(_shared_norm(g, node, k, norm, offset, own_variance=variances == "own"))
        offset += norm.groups
    g.input.append(_stats_value_info(model, offset))
    return out


def _shared_norm(g: onnx.GraphProto, node: onnx.NodeProto, k: int, norm: Norm, offset: int, *,
                 own_variance: bool = False) -> list[onnx.NodeProto]:
    """``(x − mean_k)·(var_k + ε)^(−½)·scale + bias``, mean_k and var_k sliced out of ``norm_stats``
    (``own_variance``: var_k is x's own per-group variance). Its node on x is named
    ``{prefix}{k}_centred`` (``segments`` finds the norm's input there)."""
    x, scale, bias = node.input
    p = f"{_PREFIX}{k}_"
    starts = _const(g, p + "starts", [0, offset])
    ends = _const(g, p + "ends", [2, offset + norm.groups])
    axes = _const(g, p + "slice_axes", [1, 2])
    split = _const(g, p + "split", [1, 1])
    spatial = _const(g, p + "spatial", _axes(norm.rank))
    eps = _const(g, p + "eps", norm.epsilon, np.float32)
    per_channel = _const(g, p + "per_channel", [-1] + [1] * (norm.rank - 2))
    if own_variance:  # x's own per-group variance, as InstanceNormalization computes it
        variance = [helper.make_node("ReduceMean", [x, spatial], [p + "own_mean"], keepdims=1, name=p + "own_mean"),
                    helper.make_node("Sub", [x, p + "own_mean"], [p + "own_centred"], name=p + "own_centred"),
                    helper.make_node("Mul", [p + "own_centred", p + "own_centred"], [p + "own_sq"], name=p + "own_sq"),
                    helper.make_node("ReduceMean", [p + "own_sq", spatial], [p + "var"], keepdims=1, name=p + "var")]
    else:
        variance = [helper.make_node("Squeeze", [p + "var2", p + "one"], [p + "var1"], name=p + "sq_v"),
                    helper.make_node("Unsqueeze", [p + "var1", spatial], [p + "var"], name=p + "var")]
    return [
        helper.make_node("Slice", [STATS_NAME, starts, ends, axes], [p + "stats"], name=p + "stats"),  # (N, 2, G)
        helper.make_node("Split", [p + "stats", split], [p + "mean2", p + "var2"], axis=1, name=p + "split"),
        helper.make_node("Squeeze", [p + "mean2", _const(g, p + "one", [1])], [p + "mean1"], name=p + "sq_m"),
        helper.make_node("Unsqueeze", [p + "mean1", spatial], [p + "mean"], name=p + "mean"),  # (N, G, 1[, 1])
        *variance,
        helper.make_node("Add", [p + "var", eps], [p + "var_eps"], name=p + "var_eps"),
        helper.make_node("Sqrt", [p + "var_eps"], [p + "std"], name=p + "std"),
        helper.make_node("Reciprocal", [p + "std"], [p + "inv_std"], name=p + "inv_std"),
        helper.make_node("Sub", [x, p + "mean"], [p + "centred"], name=p + "centred"),
        *_normalized(p, scale, bias, per_channel, node, norm.identity_affine),
    ]


def _normalized(p: str, scale: str, bias: str, per_channel: str, node: onnx.NodeProto,
                identity: bool) -> list[onnx.NodeProto]:
    """centred · inv_std (· scale + bias, unless they are ones and zeros) → the norm's output."""
    out = node.name or p + "out"
    if identity:  # two passes over the activation fewer
        return [helper.make_node("Mul", [p + "centred", p + "inv_std"], [node.output[0]], name=out)]
    return [helper.make_node("Mul", [p + "centred", p + "inv_std"], [p + "normed"], name=p + "normed"),
            helper.make_node("Reshape", [scale, per_channel], [p + "scale"], name=p + "scale"),
            helper.make_node("Reshape", [bias, per_channel], [p + "bias"], name=p + "bias"),
            helper.make_node("Mul", [p + "normed", p + "scale"], [p + "scaled"], name=p + "scaled"),
            helper.make_node("Add", [p + "scaled", p + "bias"], [node.output[0]], name=out)]


@dataclass(frozen=True)
class NormGraphs:
    """What ``write_norm_graphs`` wrote: the three graph files and every norm's group count."""

    stats: Path
    shared: Path
    means: Path
    groups: tuple[int, ...]


def write_norm_graphs(graph: Path) -> NormGraphs:
    """Write the statistics, shared-statistics and shared-means variants of the FP32 graph
    ``graph`` beside it (``STATS_GRAPH``, ``SHARED_GRAPH``, ``MEANS_GRAPH``); their weights stay
    in ``graph``'s external-data file."""
    model = onnx.load(str(graph), load_external_data=False)
    norms = find_norms(model, graph.parent)
    variants = {STATS_GRAPH: statistics_graph(model, norms), SHARED_GRAPH: shared_statistics_graph(model, norms),
                MEANS_GRAPH: shared_statistics_graph(model, norms, variances="own")}
    for name, variant in variants.items():
        onnx.save(variant, str(graph.with_name(name)))
        onnx.checker.check_model(str(graph.with_name(name)), full_check=False)
    return NormGraphs(*(graph.with_name(n) for n in variants), tuple(n.groups for n in norms))


__all__ = ["STATS_NAME", "STATS_GRAPH", "SHARED_GRAPH", "MEANS_GRAPH", "VARIANCES", "Norm", "NormGraphs", "find_norms", "statistics_graph",
           "shared_statistics_graph", "write_norm_graphs"]
