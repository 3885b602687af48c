"""Unroll a traced sampler step into the K-step sampler graph, in ONNX.

TorchScript tracing and conversion of the K-step sampler took K times as long as one step's (an
SD 1.5-sized UNet: about 100 s of the export at K = 4), for the same K copies of the same UNet
sharing its weights. So the pipeline exporter traces one step (``LCMStepGraph``: the step's
schedule values are graph inputs) and ``unroll`` stacks K copies of that graph here: every copy's
nodes and intermediate values renamed ``<name>/step<k>``, its schedule values constants of its
own, its ``x`` the previous copy's ``x_next`` (``noise_0`` for the first), its ``noise_next`` the
graph input ``noise_<k+1>``; the initializers (the weights) are shared, once. The last copy keeps
only the nodes its ``denoised`` needs, which becomes the graph's ``latents``. The result is
checked against the PyTorch K-step sampler like every stage.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

STEP_SUFFIX = "/step{}"


def _needed(nodes: Sequence, outputs: set[str]) -> list:
    """The nodes (in order) that ``outputs`` depend on."""
    want, keep = set(outputs), []
    for node in reversed(nodes):
        if want.intersection(node.output):
            keep.append(node)
            want.update(i for i in node.input if i)
    return keep[::-1]


def unroll(step, values: Sequence[Mapping[str, np.ndarray]], *, output: str = "latents"):
    """Turn ``step``, an ONNX ``ModelProto`` of one step, into the K-step graph (K = ``len(values)``),
    in place: its initializers (the weights, gigabytes at SD sizes) are neither copied nor moved.

    Args:
        step: inputs: the conditioning (kept as graph inputs of the result), ``x``, ``noise_next``
            and the schedule values named in ``values``; outputs ``denoised`` and ``x_next``.
        values: per step, the schedule values (name → scalar array) that become its constants.
        output: the result's output name (the last step's ``denoised``).

    Returns:
        ``step``, now with inputs the conditioning, then ``noise_0 … noise_{K-1}``, and output ``output``.
    """
    import onnx
    from onnx import numpy_helper

    g = step.graph
    initializers = {i.name for i in g.initializer}
    step_inputs = {"x", "noise_next", *values[0]}
    kept_inputs = [_copy(onnx.ValueInfoProto, i) for i in g.input
                   if i.name not in step_inputs and i.name not in initializers]
    x_input = next(i for i in g.input if i.name == "x")
    nodes, constants, value_info = [], [], []
    previous = "noise_0"
    for k, vals in enumerate(values):
        last = k == len(values) - 1
        suffix = STEP_SUFFIX.format(k)
        renamed = {"x": previous, "noise_next": f"noise_{k + 1}"}
        body = _needed(g.node, {"denoised"}) if last else list(g.node)
        used = {i for node in body for i in node.input}
        for name, v in vals.items():
            renamed[name] = f"{name}{suffix}"
            if name in used:  # the last step uses none of the next step's values
                constants.append(numpy_helper.from_array(np.asarray(v), renamed[name]))
        for node in body:
            for o in node.output:
                if o:
                    renamed[o] = f"{output}" if last and o == "denoised" else f"{o}{suffix}"
        for node in body:
            copy = _copy(onnx.NodeProto, node, name=f"{node.name}{suffix}")
            copy.input[:] = [renamed.get(i, i) for i in node.input]
            copy.output[:] = [renamed.get(o, o) for o in node.output]
            nodes.append(copy)
        value_info += [_copy(onnx.ValueInfoProto, v, name=renamed[v.name]) for v in g.value_info if v.name in renamed]
        previous = previous if last else renamed["x_next"]
    noise = [_copy(onnx.ValueInfoProto, x_input, name=f"noise_{k}") for k in range(len(values))]
    result = _copy(onnx.ValueInfoProto, next(o for o in g.output if o.name == "denoised"), name=output)
    for field, items in ((g.node, nodes), (g.input, [*kept_inputs, *noise]), (g.output, [result]),
                         (g.value_info, value_info)):
        del field[:]
        field.extend(items)
    g.initializer.extend(constants)
    return step


def _copy(kind, proto, **fields):
    out = kind()
    out.CopyFrom(proto)
    for k, v in fields.items():
        setattr(out, k, v)
    return out
