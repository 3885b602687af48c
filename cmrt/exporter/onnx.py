"""PyTorch sampler → ONNX graph (dynamo exporter, the network traced once), cleaned up, checked
and described."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from ..bundle import OUTPUT_NAME, TensorSpec

OPSET = 20  # TensorRT 10.x/11 and TensorRT-RTX parse it; ORT runs it
EXTERNAL_DATA_ABOVE = 1 << 20  # weights go to a side file once the graph holds more than 1 MiB
INLINE_BELOW = 1024  # bytes: smaller tensors (shapes, scalars) stay inside the graph, as parsers need


def dynamic_shapes(kind: str, n_inputs: int, *, spatial: bool):
    """torch.export dynamic shapes of an unrolled sampler's inputs: batch always; with ``spatial``
    (decoders) the latent h, w of input 0 and 8h, 8w of the noise inputs.

    The structure mirrors the samplers' signatures: ``forward(latents, *noise)`` and
    ``forward(*inputs)``.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    if spatial:
        h, w = Dim("h", min=1, max=512), Dim("w", min=1, max=512)
        return ({0: batch, 2: h, 3: w}, tuple({0: batch, 2: 8 * h, 3: 8 * w} for _ in range(n_inputs - 1)))
    return (tuple([{0: batch}] * n_inputs),)


@dataclass(frozen=True)
class GraphExport:
    """What ``export_graph`` did: clean-up counts, network calls spliced, whether the network and
    sampler graphs came from the cache, and the wall time of each stage."""

    rewrites: dict[str, int]
    network_calls: int
    network_cached: bool
    sampler_cached: bool
    seconds: dict[str, float]


def export_graph(sampler, network, args: Sequence, input_names: list[str], dyn, path: Path, *,
                 spatial: bool, opset: int = OPSET, cache: bool = True) -> GraphExport:
    """Export ``sampler(*args)`` to ``path`` with named inputs, output ``images`` and dynamic axes.

    ``network`` (a submodule of ``sampler``, called once per step) is traced once and spliced into
    every step (``cmrt.exporter.trace``); the graph is then cleaned up for the fixed schedule
    (``cmrt.exporter.optimize``). Both traced graphs are cached (``cache``). Weights go to
    ``<path>.data`` when large. The graph is checked with ``onnx.checker`` (by path, so graphs above
    2 GB work).
    """
    import onnx_ir as ir

    from .metadata import strip_ir_metadata
    from .optimize import optimize
    from .trace import first_network_call, splice, trace_network, trace_sampler

    clock = _Clock()
    call = first_network_call(sampler, network, args)
    net, net_cached = trace_network(network, call, spatial=spatial, opset=opset, cache=cache)
    clock.lap("network")
    model, sampler_cached = trace_sampler(sampler, network, network.config.out_channels, args, input_names, dyn,
                                          opset=opset, cache=cache)
    clock.lap("sampler")
    state = network.state_dict()
    calls = splice(model, net, state)
    rewrites = optimize(model).to_dict()
    strip_ir_metadata(model)
    clock.lap("splice_optimize")
    n_bytes = sum(t.numel() * t.element_size() for t in state.values())
    data = path.with_name(path.name + ".data")
    ir.save(model, str(path), external_data=data.name if n_bytes > EXTERNAL_DATA_ABOVE else None,
            size_threshold_bytes=INLINE_BELOW)
    onnx.checker.check_model(str(path), full_check=False)
    clock.lap("save")
    return GraphExport(rewrites, calls, net_cached, sampler_cached, clock.laps)


class _Clock:
    def __init__(self) -> None:
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


def describe_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Names, dtypes and (symbolic) shapes of a graph's inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def one(v) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
        return TensorSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)

    return tuple(one(v) for v in model.graph.input), tuple(one(v) for v in model.graph.output)


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return [path] + ([data] if data.exists() else [])


__all__ = ["OPSET", "OUTPUT_NAME", "GraphExport", "export_graph", "dynamic_shapes", "describe_io", "graph_files"]


def save_one_data_file(model, path: Path, *, source: Path | None = None, inline_below: int = 1024) -> None:
    """Save ``model`` to ``path`` with every initializer of ``inline_below`` bytes or more in one
    ``<path>.data``, streamed tensor by tensor: initializers still in external files under
    ``source`` (``onnx.load(..., load_external_data=False)`` of the TorchScript exporter's
    per-tensor files) are copied without ever holding the model's weights in memory, and the
    ``ModelProto`` is left pointing at ``<path>.data``. Files get the umask's modes."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    data = path.with_name(path.name + ".data")
    written = 0
    with open(data, "wb") as out:
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                if source is None:
                    raise ValueError(f"initializer {tensor.name} is external but no source folder was given")
                blob = _read_range(source / info.location, info.offset or 0, info.length)
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= inline_below:
                blob = tensor.raw_data
            else:
                continue
            del tensor.external_data[:]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", written), ("length", len(blob))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            out.write(blob)
            written += len(blob)
    if not written:
        data.unlink()
    onnx.save_model(model, str(path))


def _read_range(file: Path, offset: int, length: int | None) -> bytes:
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)

