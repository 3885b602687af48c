"""Cut a shared-statistics graph at its norms into self-contained segments (``segments``).

The runtime runs the segments layer by layer across all tiles with the full canvas's statistics
(``cmrt.runtime.tiled.layer_sync``, ``norm="canvas"``); they are made when a decode first needs them, not
stored in the bundle. The graph they cut is ``norm_stats.shared_statistics_graph`` (means and
variances shared).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from ..errors import ExportError
from .norm_stats import _PREFIX, Norm, _const


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
    tiles, and go on (a layer-synchronous tiled decode, ``cmrt.runtime.tiled.layer_sync``).

    Every node goes to the earliest segment its inputs allow (norm k's statistics enter at segment
    k + 1), except each norm's grouping Reshape, which goes with the norm (its input, the
    spatial tensor, is what the segment measures). Nodes computing only from weights are copied into
    every segment that reads them. ``base``: the folder of ``shared``'s external weight file.

    Raises:
        ExportError: the graph's norms are not the shared-statistics graph's.
    """
    g = shared.graph
    slice_of = {f"{_PREFIX}{k}_stats": k for k in range(len(norms))}
    spatial, grouping = _spatial_tensors(g, norms, _norm_inputs(g, norms, slice_of))
    node_level, is_static = _levels(g, slice_of, grouping)
    count = len(norms) + 1
    graph_outputs = {o.name for o in g.output}
    last_use = _last_use(g, node_level, is_static, graph_outputs, count)
    types = _tensor_types(shared)
    weights = _static_closure(g, is_static, base)  # static tensor → (nodes, initializers) that make it
    out = []
    for j in range(count):
        nodes = [i for i, lvl in node_level.items() if lvl == j]
        norm = j if j < len(norms) else None
        inputs, outputs = _segment_io(g, nodes, is_static, spatial.get(j), last_use, graph_outputs, j)
        model = _segment_model(shared, g, nodes, inputs, outputs, weights, types, f"segment{j}")
        if norm is not None:  # measure the owned part of the norm's input (while it is hot, if made here)
            _add_owned_stats(model, spatial[j], norms[j].groups)
        out.append(Segment(model, inputs, outputs, norm, spatial.get(j), last_use))
    return out


def _norm_inputs(g: onnx.GraphProto, norms: list[Norm], slice_of: dict[str, int]) -> dict[int, str]:
    """Norm index → its input, found at the shared norm's ``{prefix}{k}_centred`` node.

    Raises:
        ExportError: a norm's Slice or Sub node is missing (not a shared-statistics graph).
    """
    centred = {f"{_PREFIX}{k}_centred": k for k in range(len(norms))}
    norm_input = {centred[node.name]: node.input[0] for node in g.node if node.name in centred}
    slices = sorted(n.name for n in g.node if n.name in slice_of)
    if sorted(norm_input) != list(range(len(norms))) or sorted(slice_of) != slices:
        raise ExportError("not a shared-statistics graph (its norms' Slice/Sub nodes are missing)")
    return norm_input


def _spatial_tensors(g: onnx.GraphProto, norms: list[Norm],
                     norm_input: dict[int, str]) -> tuple[dict[int, str], dict[int, int]]:
    """Each norm's spatial tensor (the grouping Reshape's input for a rank-3 norm, else the norm's
    input itself) and each rank-3 norm's grouping Reshape node index."""
    producer = {o: i for i, node in enumerate(g.node) for o in node.output}
    spatial: dict[int, str] = {}
    grouping: dict[int, int] = {}
    for k, norm in enumerate(norms):
        x = norm_input[k]
        if norm.rank == 3:
            r = g.node[producer[x]]
            if r.op_type != "Reshape":
                raise ExportError(f"norm {k}: its grouped input is not a Reshape's output")
            spatial[k], grouping[k] = r.input[0], producer[x]
        else:
            spatial[k] = x
    return spatial, grouping


def _levels(g: onnx.GraphProto, slice_of: dict[str, int],
            grouping: dict[int, int]) -> tuple[dict[int, int], set[str]]:
    """Node index → its segment (the earliest its inputs allow; norm k's statistics Slice at k + 1;
    a grouping Reshape with its norm), and the tensors computed from weights only (no segment)."""
    level: dict[str, int] = {}  # tensor → segment that computes it
    node_level: dict[int, int] = {}
    is_static = {t.name for t in g.initializer}
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
    return node_level, is_static


def _last_use(g: onnx.GraphProto, node_level: dict[int, int], is_static: set[str], graph_outputs: set[str],
              count: int) -> dict[str, int]:
    """Tensor → the last segment that reads it (the graph's outputs: the last segment)."""
    readers: dict[str, set[int]] = {}
    for i, lvl in node_level.items():
        for x in g.node[i].input:
            if x and x not in is_static:
                readers.setdefault(x, set()).add(lvl)
    last_use = {x: max(r) for x, r in readers.items()}
    for o in graph_outputs:
        last_use[o] = count - 1
    return last_use


def _tensor_types(shared: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's type (shape inference), for the segments' inputs and outputs."""
    g = shared.graph
    known = onnx.shape_inference.infer_shapes(shared).graph
    return {v.name: v for v in (*known.value_info, *g.value_info, *g.input, *g.output)}


def _segment_io(g: onnx.GraphProto, nodes: list[int], is_static: set[str], spatial: str | None,
                last_use: dict[str, int], graph_outputs: set[str], j: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Segment ``j``'s inputs (what its nodes read that no node of it makes, plus its norm's spatial
    tensor when an earlier segment made it) and outputs (what later segments or the caller read)."""
    made = {o for i in nodes for o in g.node[i].output}
    reads = [x for i in nodes for x in g.node[i].input if x and x not in is_static and x not in made]
    if spatial is not None and spatial not in made:  # the norm's input was made earlier: measure it here
        reads.append(spatial)
    wanted = {x for x in made if last_use.get(x, -1) > j or x in graph_outputs}
    outputs = tuple(o for i in nodes for o in g.node[i].output if o in wanted)
    return tuple(dict.fromkeys(reads)), outputs


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
