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

``segments`` cuts the shared-statistics graph at its norms into self-contained pieces, which the
runtime runs layer by layer across all tiles with the full canvas's statistics
(``cmrt.runtime.layer_sync``, ``norm="canvas"``); they are made when a decode first needs them,
not stored in the bundle.

All three are standard ONNX (ReduceMean, Sub, Mul, Add, Slice, Split, Squeeze, Unsqueeze,
Reshape, Sqrt, Reciprocal, Concat) and read the FP32 graph's weight file, so they add no weights
to the bundle. Only ONNX Runtime runs them (``cmrt.Decoder``): there are no FP16 variants and no
TensorRT engines of them.
"""

from __future__ import annotations

import functools
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


# --- layer-synchronous segments -------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One piece of the shared-statistics graph between two GroupNorms (``segments``).

    Attributes:
        model: the piece as a self-contained ONNX model (its weights inside): inputs ``inputs``,
            outputs ``outputs``.
        inputs: what it reads: the sampler's inputs (``latents``, ``noise_i``, ``norm_stats``) and
            tensors earlier segments output.
        outputs: what later segments (or the caller) read of what it computes.
        norm: the norm whose statistics can be measured once every tile has run this segment
            (its input is computed by now), or None for the last segment.
        spatial: that norm's input as an (N, C, H, W) tensor (before the grouping Reshape), one of
            the tensors this or an earlier segment outputs.
        last_use: tensor name → the index of the last segment that reads it: a runner frees it
            after that segment (shared by all segments).

    A segment with a ``norm`` also takes an owned window (``OWNED_STARTS``, ``OWNED_ENDS``) and
    outputs its norm's input's per-group statistics over it (``OWNED_MEAN``, ``OWNED_M2``).
    """

    model: onnx.ModelProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    norm: int | None
    spatial: str | None
    last_use: dict[str, int]


def segments(shared: onnx.ModelProto, norms: list[Norm], base: Path) -> list[Segment]:
    """Cut a shared-statistics graph (``shared_statistics_graph``, means and variances shared) at
    its norms: segment k computes everything that needs the statistics of norms before k and no
    later ones, so a runner can run segment k on every tile, measure norm k's statistics over all
    tiles, and go on (a layer-synchronous tiled decode, ``cmrt.runtime.layer_sync``).

    Every node goes to the earliest segment its inputs allow (norm k's statistics enter at segment
    k + 1), except each norm's grouping Reshape, which goes with the norm (its input, the
    spatial tensor, is what the segment measures). Nodes computing only from weights are copied into
    every segment that reads them. ``base``: the folder of ``shared``'s external weight file.

    Raises:
        ExportError: the graph's norms are not the shared-statistics graph's.
    """
    g = shared.graph
    static = {t.name for t in g.initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for o in node.output:
            producer[o] = i
    slice_of = {f"{_PREFIX}{k}_stats": k for k in range(len(norms))}
    centred = {f"{_PREFIX}{k}_centred": k for k in range(len(norms))}
    norm_input: dict[int, str] = {}
    for node in g.node:
        if node.name in centred:
            norm_input[centred[node.name]] = node.input[0]
    if sorted(norm_input) != list(range(len(norms))) or sorted(slice_of) != sorted(
            n.name for n in g.node if n.name in slice_of):
        raise ExportError("not a shared-statistics graph (its norms' Slice/Sub nodes are missing)")
    # each norm's spatial tensor: the grouping Reshape's input (rank 3), or the norm input itself
    spatial: dict[int, str] = {}
    grouping: dict[int, int] = {}  # norm → its grouping Reshape node
    for k, norm in enumerate(norms):
        x = norm_input[k]
        if norm.rank == 3:
            r = g.node[producer[x]]
            if r.op_type != "Reshape":
                raise ExportError(f"norm {k}: its grouped input is not a Reshape's output")
            spatial[k], grouping[k] = r.input[0], producer[x]
        else:
            spatial[k] = x
    level: dict[str, int] = {}  # tensor → segment that computes it
    node_level: dict[int, int] = {}
    is_static = set(static)
    deferred = {i: k + 1 for k, i in grouping.items()}
    for i, node in enumerate(g.node):
        ins = [x for x in node.input if x]
        if all(x in is_static for x in ins) and node.name not in slice_of:
            is_static.update(node.output)
            continue
        lvl = max((level.get(x, 0) for x in ins if x not in is_static), default=0)
        if node.name in slice_of:
            lvl = max(lvl, slice_of[node.name] + 1)
        lvl = max(lvl, deferred.get(i, 0))
        node_level[i] = lvl
        for o in node.output:
            level[o] = lvl
    count = len(norms) + 1
    readers: dict[str, set[int]] = {}
    for i, lvl in node_level.items():
        for x in g.node[i].input:
            if x and x not in is_static:
                readers.setdefault(x, set()).add(lvl)
    last_use = {x: max(r) for x, r in readers.items()}
    graph_outputs = {o.name for o in g.output}
    for o in graph_outputs:
        last_use[o] = count - 1
    known = onnx.shape_inference.infer_shapes(shared).graph  # every tensor's type, for the segments' inputs
    types = {v.name: v for v in (*known.value_info, *g.value_info, *g.input, *g.output)}
    weights = _static_closure(g, is_static, base)  # static tensor → (nodes, initializers) that make it
    out = []
    for j in range(count):
        nodes = [i for i, lvl in node_level.items() if lvl == j]
        made = {o for i in nodes for o in g.node[i].output}
        reads = [x for i in nodes for x in g.node[i].input if x and x not in is_static and x not in made]
        if j < len(norms) and spatial[j] not in made:  # the norm's input was made earlier: measure it here
            reads.append(spatial[j])
        inputs = tuple(dict.fromkeys(reads))
        wanted = {x for x in made if last_use.get(x, -1) > j or x in graph_outputs}
        outputs = tuple(o for i in nodes for o in g.node[i].output if o in wanted)
        model = _segment_model(shared, g, nodes, inputs, outputs, weights, types, f"segment{j}")
        if j < len(norms):  # measure the owned part of the norm's input (while it is hot, if made here)
            _add_owned_stats(model, spatial[j], norms[j].groups)
        out.append(Segment(model, inputs, outputs, j if j < len(norms) else None, spatial.get(j), last_use))
    return out


#: Inputs and outputs a segment gets when it measures its norm's input: the owned window's
#: (row, col) starts and ends, and that window's per-group mean and sum of squared deviations.
OWNED_STARTS, OWNED_ENDS, OWNED_MEAN, OWNED_M2 = "cmrt_owned_starts", "cmrt_owned_ends", "cmrt_owned_mean", "cmrt_owned_m2"


def _add_owned_stats(model: onnx.ModelProto, x: str, groups: int) -> None:
    """Append to a segment: x[:, :, starts[0]:ends[0], starts[1]:ends[1]]'s per-group mean and sum
    of squared deviations from it, both (N, G) outputs (``OWNED_MEAN``, ``OWNED_M2``)."""
    g, p = model.graph, f"{_PREFIX}_owned_"
    axes = _const(g, p + "axes", [2, 3])
    shape = _const(g, p + "shape", [0, groups, -1])
    last = _const(g, p + "last", [2])
    g.node.extend([
        helper.make_node("Slice", [x, OWNED_STARTS, OWNED_ENDS, axes], [p + "part"], name=p + "part"),
        helper.make_node("Reshape", [p + "part", shape], [p + "grouped"], name=p + "grouped"),
        helper.make_node("ReduceMean", [p + "grouped", last], [p + "mean_k"], keepdims=1, name=p + "mean_k"),
        helper.make_node("Sub", [p + "grouped", p + "mean_k"], [p + "centred"], name=p + "centred"),
        helper.make_node("Mul", [p + "centred", p + "centred"], [p + "squared"], name=p + "squared"),
        helper.make_node("ReduceSum", [p + "squared", last], [OWNED_M2], keepdims=0, name=OWNED_M2),
        helper.make_node("Squeeze", [p + "mean_k", last], [OWNED_MEAN], name=OWNED_MEAN)])
    g.input.extend([helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [2]) for n in (OWNED_STARTS, OWNED_ENDS)])
    g.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in (OWNED_MEAN, OWNED_M2)])


def _static_closure(g: onnx.GraphProto, is_static: set[str], base: Path):
    """A memoized function: static tensor → the nodes and (loaded) initializers that make it, for
    copying into the segments that read it."""
    inits = {t.name: t for t in g.initializer}
    made_by = {o: n for n in g.node for o in n.output if o in is_static}

    @functools.cache
    def closure(name: str) -> tuple[tuple[onnx.NodeProto, ...], tuple[tuple[str, onnx.TensorProto], ...]]:
        if name in inits:
            t = inits[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t = numpy_helper.from_array(numpy_helper.to_array(t, str(base)), name)
            return (), ((name, t),)
        node = made_by[name]
        nodes: list[onnx.NodeProto] = []
        loaded: dict[str, onnx.TensorProto] = {}
        for x in filter(None, node.input):
            n, i = closure(x)
            nodes += [m for m in n if all(m is not k for k in nodes)]
            loaded.update(i)
        return (*nodes, node), tuple(loaded.items())

    return closure


def _segment_model(shared: onnx.ModelProto, g: onnx.GraphProto, nodes: list[int], inputs: tuple[str, ...],
                   outputs: tuple[str, ...], weights, types: dict, name: str) -> onnx.ModelProto:
    """Segment ``nodes`` as a model: the weights and weight-only nodes they read copied in."""
    made = {o for i in nodes for o in g.node[i].output}
    static_nodes: list[onnx.NodeProto] = []
    inits: dict[str, onnx.TensorProto] = {}
    seen: set[int] = set()
    for i in nodes:
        for x in g.node[i].input:
            if not x or x in inputs or x in made:
                continue
            made_here, loaded = weights(x)
            for n in made_here:
                if id(n) not in seen:
                    seen.add(id(n))
                    static_nodes.append(n)
            inits.update(loaded)
    graph = helper.make_graph(static_nodes + [g.node[i] for i in nodes], name,
                              [_value_info(types, x) for x in inputs], [_value_info(types, x) for x in outputs],
                              initializer=list(inits.values()))
    return helper.make_model(graph, opset_imports=shared.opset_import, ir_version=shared.ir_version)


def _value_info(types: dict, name: str) -> onnx.ValueInfoProto:
    if name not in types:
        raise ExportError(f"the type of {name!r} is unknown (shape inference found none): cannot cut the graph there")
    return types[name]
