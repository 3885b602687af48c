"""PyTorch module → ONNX graph (dynamo exporter), checked and described."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import onnx

from ..bundle import OUTPUT_NAME

OPSET = 20  # TensorRT 10.x/11 and TensorRT-RTX parse it; ORT runs it
EXTERNAL_DATA_ABOVE = 1 << 20  # weights go to a side file once the graph holds more than 1 MiB


def dynamic_shapes(kind: str, n_noise: int, conditional: bool):
    """torch.export dynamic shapes: batch always; for decoders latent h, w and noise 8h, 8w.

    The structure mirrors the samplers' signatures: ``forward(latents, *noise)`` and
    ``forward(*inputs)``.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    if kind == "decoder":
        h, w = Dim("h", min=1, max=512), Dim("w", min=1, max=512)
        return ({0: batch, 2: h, 3: w}, tuple({0: batch, 2: 8 * h, 3: 8 * w} for _ in range(n_noise)))
    return (tuple([{0: batch}] * (int(conditional) + n_noise)),)


def export_graph(module: torch.nn.Module, args: Sequence[torch.Tensor], input_names: list[str],
                 dyn: tuple, path: Path, *, opset: int = OPSET) -> dict[str, int]:
    """Export ``module(*args)`` to ``path`` with named inputs, output ``images`` and dynamic axes.

    The graph is cleaned up for a fixed schedule (``cmrt.export.optimize``; what it did is
    returned). Weights go to ``<path>.data`` when large. The graph is checked with
    ``onnx.checker`` (by path, so graphs above 2 GB work).
    """
    from .optimize import optimize

    import torch  # heavy: imported where used, so the module (and precision.py) import cheaply

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), tuple(args), input_names=input_names,
                                    output_names=[OUTPUT_NAME], dynamic_shapes=dyn, opset_version=opset,
                                    dynamo=True, external_data=True, optimize=True, verbose=False)
    n_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    rewrites = optimize(program.model).to_dict()
    strip_ir_metadata(program.model, KEEP_METADATA)
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_ABOVE)
    onnx.checker.check_model(str(path), full_check=False)
    return rewrites


#: Per-node exporter metadata kept in cmrt's graphs: module scopes and the FX node (the FP16 pass
#: reads both). Stack traces (with the exporting machine's file paths) and the rest are dropped:
#: they can outweigh a small model's weights.
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
FX_NODE_KEY = "pkg.torch.onnx.fx_node"
KEEP_METADATA = frozenset({SCOPES_KEY, FX_NODE_KEY})


def strip_metadata(graph, keep: frozenset[str] = KEEP_METADATA) -> None:
    """Drop every per-node metadata entry whose key is not in ``keep``."""
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


def describe_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Names, dtypes and (symbolic) shapes of a graph's inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def one(v) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    return [one(v) for v in model.graph.input], [one(v) for v in model.graph.output]


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return [path] + ([data] if data.exists() else [])
