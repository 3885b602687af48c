"""What the OpenVINO backend changes in a graph it has read, before compiling it: GroupNorms in
4-D, so the whole network keeps one memory layout.

A GroupNorm with several channels per group reaches OpenVINO the way ``torch.onnx`` exports it:
``Reshape(x, [N, G, -1]) → MVN → ·1 + 0 → Reshape(back to x's shape)``. OpenVINO's CPU plugin runs
convolutions channels-last (``acdb``) but reshapes only planar tensors (``abcd``), so every such
GroupNorm costs a reorder into planar before it and one back after it. Measured on the reduced
decoder at 256² in BF16 (``benchmarks/RESULTS.md``, "GroupNorm in 4-D on OpenVINO"): 239 reorders,
16% of the run.

``group_norms_in_4d`` rewrites each of them into 4-D operations the plugin runs channels-last:

* per-channel means ``ReduceMean(x, [2, 3])``, averaged over each group's channels by a grouped
  1×1 convolution of constant weights ``G/C`` (shape ``(N, C, 1, 1)`` throughout: no reshape);
* the group variance the same way, of ``(x − mean)²`` (two passes, as the MVN it replaces: no
  ``E[x²] − E[x]²`` cancellation);
* ``(x − mean) · (variance + ε)^−½``, which the plugin fuses with the affine and activation after it.

The same arithmetic as the MVN it replaces (ONNX Runtime FP32 agrees with the original graph to
~1e-6, ``tests/runtime/test_openvino_graph.py``); the backend's recorded parity is taken on the
rewritten graph. Only the graph OpenVINO compiles changes; the bundle's ONNX file does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Nodes a constant may pass through on its way to the MVN's ``·scale + bias`` (the ONNX importer
#: reshapes InstanceNormalization's scale and bias to broadcast).
_SHAPING = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Broadcast", "Convert"})


@dataclass(frozen=True)
class GroupNormMatch:
    """One GroupNorm found around an MVN: its 4-D input, group count, epsilon, and the output of
    the back-reshape that the 4-D form replaces."""

    x: Any  # openvino.Output, shape (N, C, H, W)
    channels: int
    groups: int
    eps: float
    out: Any  # openvino.Output of the back-Reshape


def _constant(value: Any) -> np.ndarray | None:
    """The values of ``value`` when it is a constant, through reshapes and conversions."""
    node = value.get_node()
    while node.get_type_name() in _SHAPING:
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _only(value: Any, type_name: str) -> Any | None:
    """The one consumer of ``value`` of type ``type_name`` (ShapeOf consumers aside), else None."""
    users = [i.get_node() for i in value.get_target_inputs() if i.get_node().get_type_name() != "ShapeOf"]
    return users[0] if len(users) == 1 and users[0].get_type_name() == type_name else None


def _same(a: Any, b: Any) -> bool:
    """Whether two ``openvino.Output``s are the same output of the same node."""
    return a.get_node() is b.get_node() and a.get_index() == b.get_index()


def _other_input(node: Any, value: Any) -> Any:
    """The input of a binary ``node`` that is not ``value``."""
    a, b = node.input_value(0), node.input_value(1)
    return b if _same(a, value) else a


def match(mvn: Any) -> GroupNormMatch | None:
    """The GroupNorm around ``mvn``, or None where the MVN is anything else (an instance norm,
    a layer norm, a GroupNorm with its own affine inside, shapes not known)."""
    attrs = mvn.get_attributes()
    if not attrs.get("normalize_variance") or attrs.get("eps_mode", "").upper() != "INSIDE_SQRT":
        return None
    axes = _constant(mvn.input_value(1))
    grouping = mvn.input_value(0).get_node()
    if axes is None or sorted(int(a) % 3 for a in np.ravel(axes)) != [2] or grouping.get_type_name() != "Reshape":
        return None
    x = grouping.input_value(0)
    shape, target = x.get_partial_shape(), _constant(grouping.input_value(1))
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[1].is_dynamic or target is None:
        return None
    channels, target = shape[1].get_length(), [int(t) for t in np.ravel(target)]
    if len(target) != 3 or target[2] != -1:
        return None
    copies_batch = target[0] == 0 and grouping.get_attributes().get("special_zero")
    if not (copies_batch or shape[0].is_static and target[0] == shape[0].get_length()):
        return None
    groups = target[1]
    if not 1 < groups < channels or channels % groups:
        return None
    scaled = _only(mvn.output(0), "Multiply")
    shifted = _only(scaled.output(0), "Add") if scaled is not None else None
    back = _only(shifted.output(0), "Reshape") if shifted is not None else None
    if back is None:
        return None
    scale, bias = _constant(_other_input(scaled, mvn.output(0))), _constant(_other_input(shifted, scaled.output(0)))
    if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return None
    restore = back.input_value(1).get_node()
    if restore.get_type_name() != "ShapeOf" or not _same(restore.input_value(0), x):
        return None
    return GroupNormMatch(x, channels, groups, float(attrs["eps"]), back.output(0))


def normalized(m: GroupNormMatch) -> Any:
    """``(x − group mean) · (group variance + ε)^−½`` in 4-D operations."""
    from openvino import opset13 as ops

    per_group = m.channels // m.groups
    weights = np.full((m.groups, per_group, per_group, 1, 1), 1.0 / per_group, np.float32)
    spatial = ops.constant(np.array([2, 3], np.int64))

    def group_mean(v: Any) -> Any:
        per_channel = ops.reduce_mean(v, spatial, keep_dims=True)
        filters = ops.convert_like(ops.constant(weights), per_channel)
        return ops.group_convolution(per_channel, filters, [1, 1], [0, 0], [0, 0], [1, 1])

    def scalar(v: float) -> Any:
        return ops.convert_like(ops.constant(np.array(v, np.float32)), m.x)

    mean = group_mean(m.x)
    variance = group_mean(ops.power(ops.subtract(m.x, mean), scalar(2.0)))
    inv_std = ops.power(ops.add(variance, scalar(m.eps)), scalar(-0.5))
    # x·s − mean·s, not (x − mean)·s: the subtraction above then has one user and fuses into the
    # square, and this into whatever eltwise follows (affine, activation): two passes over x, not four.
    out = ops.add(ops.multiply(m.x, inv_std), ops.negative(ops.multiply(mean, inv_std)))
    return out.output(0)


def group_norms_in_4d(model: Any) -> int:
    """Rewrite every GroupNorm of ``model`` (an ``openvino.Model``) into 4-D operations, in place;
    the number rewritten."""
    found = [m for m in (match(op) for op in model.get_ordered_ops() if op.get_type_name() == "MVN") if m]
    for m in found:
        m.out.replace(normalized(m))
    if found:
        model.validate_nodes_and_infer_types()
    return len(found)
