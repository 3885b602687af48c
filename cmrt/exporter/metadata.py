"""Per-node metadata the exporter writes into graphs, and what cmrt keeps of it.

Module scopes and the FX node are kept (the FP16 pass reads both: which module a node belongs to,
and which aten op it came from). Stack traces (with the exporting machine's file paths) and the
rest are dropped: they can outweigh a small model's weights.
"""

from __future__ import annotations

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
FX_NODE_KEY = "pkg.torch.onnx.fx_node"
KEEP_METADATA = frozenset({SCOPES_KEY, FX_NODE_KEY})


def strip_metadata(graph, keep: frozenset[str] = KEEP_METADATA) -> None:
    """Drop every per-node metadata entry of an ``onnx.GraphProto`` whose key is not in ``keep``."""
    for node in graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key in keep]
        del node.metadata_props[:]
        for key, value in kept:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value


def strip_ir_metadata(model, keep: frozenset[str] = KEEP_METADATA) -> None:
    """``strip_metadata`` on an ``onnx_ir`` model (the exporter's, before it is saved)."""
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k not in keep]:
            del node.metadata_props[key]
