"""Tracing a fixed-step sampler with its network traced once.

An unrolled K-step sampler calls the same network K times. Tracing it as it is costs K network
traces (``torch.export``, decomposition, translation) and K times the exporter's graph clean-up.
cmrt instead traces two small programs and splices them:

1. ``trace_network``: the network alone, once, with the exact arguments its first call receives
   (captured by running the sampler). Its weights become the graph's inputs, so the traced graph
   depends only on the architecture and is cached on disk (``network_cache_dir``).
2. ``trace_sampler``: the sampler with the network replaced by ``NetworkCall``, a custom op that
   exports as one placeholder node (domain ``cmrt.trace``): only the sampler's own arithmetic is
   traced (noise injection, scalings, clamps, per-step time inputs as constants).
3. ``splice``: the network graph becomes a model-local function whose extra inputs are the
   weights (one shared initializer each), every placeholder a call of it, and onnx_ir's inliner
   expands the calls. The result is the graph a whole-sampler trace gives (same ops, weights
   shared between steps); each step's constant time path is folded afterwards
   (``optimize.optimize``). Node scopes are rewritten to the network's place in the sampler, so
   the FP16 pass tells network nodes from sampler arithmetic as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import onnx_ir as ir
import torch
from torch import nn

from .._io import sha256_files, write_atomic
from .metadata import SCOPES_KEY

PLACEHOLDER_DOMAIN = "cmrt.trace"
PLACEHOLDER_OP = "Network"
NETWORK_INPUT_NAMES = ("x", "t", "labels")
CACHE_ENV = "CMRT_CACHE_DIR"
#: Source files whose code decides a traced graph (part of the cache key).
_TRACED_SOURCES = ("models/unet.py", "models/denoisers.py", "samplers.py", "schedules.py", "exporter/trace.py",
                   "exporter/optimize.py")


# --- the placeholder op -----------------------------------------------------------------------
@torch.library.custom_op("cmrt::network_call", mutates_args=())
def network_call(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, out_channels: int) -> torch.Tensor:
    """Stands for the network inside a traced sampler; it is never executed."""
    raise RuntimeError("cmrt::network_call is a tracing placeholder and cannot run")


@network_call.register_fake
def _network_call_fake(x, t, labels, out_channels):
    return x.new_empty((x.shape[0], out_channels, *x.shape[2:]))


class NetworkCall(nn.Module):
    """A stand-in for the UNet with its call signature ``(x, t, class_labels=None)``."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return network_call(x, t, class_labels, self.out_channels)


def _placeholder_translation():
    """The ONNX translation of ``network_call``: one node of the placeholder domain."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    if not onnx.defs.has(PLACEHOLDER_OP, PLACEHOLDER_DOMAIN):
        param = OpSchema.FormalParameter
        optional = OpSchema.FormalParameterOption.Optional
        onnx.defs.register_schema(OpSchema(
            PLACEHOLDER_OP, PLACEHOLDER_DOMAIN, 1,
            inputs=[param("x", "T"), param("t", "U"), param("labels", "V", param_option=optional)],
            outputs=[param("y", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""),
                              ("U", ["tensor(float)", "tensor(int64)"], ""), ("V", ["tensor(int64)"], "")]))
    op = getattr(onnxscript.values.Opset(PLACEHOLDER_DOMAIN, 1), PLACEHOLDER_OP)

    def translate(x, t, labels=None, out_channels: int = 0):
        return op(x, t) if labels is None else op(x, t, labels)

    return {torch.ops.cmrt.network_call.default: translate}


# --- capturing the network's arguments ----------------------------------------------------------
class _Captured(Exception):
    """Stops the sampler at its first network call (the arguments are all ``trace_network`` needs)."""


def first_network_call(sampler: nn.Module, network: nn.Module, args: Sequence[torch.Tensor]) -> tuple:
    """The positional arguments (trailing Nones dropped) of the sampler's first call of ``network``.
    The sampler runs only up to that call; the network does not run."""
    seen: list[tuple] = []

    def hook(_module, call_args):
        seen.append(tuple(call_args))
        raise _Captured

    handle = network.register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_Captured), torch.no_grad():  # the hook stops the run at the first call
            sampler(*args)
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the sampler never called its network")
    call = list(seen[0])
    while call and call[-1] is None:
        call.pop()
    return tuple(call)


# --- tracing --------------------------------------------------------------------------------------
def _export(module: nn.Module, args: tuple, names: list[str], outputs: list[str], dyn, **kw):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(module.eval(), args, input_names=names, output_names=outputs, dynamic_shapes=dyn,
                                 opset_version=kw.pop("opset"), dynamo=True, optimize=False, verbose=False, **kw)


def network_dynamic_shapes(call: tuple, spatial: bool):
    """Batch is dynamic; for decoders also the image height and width (multiples of 8)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    x = {0: batch}
    if spatial:
        x |= {2: 8 * Dim("h", min=1, max=512), 3: 8 * Dim("w", min=1, max=512)}
    return tuple([x, None] + ([{0: batch}] if len(call) > 2 else []))


def trace_network(network: nn.Module, call: tuple, *, spatial: bool, opset: int,
                  cache: bool = True) -> tuple[ir.Model, bool]:
    """The network's graph with its weights as named graph inputs (no values), from the cache or
    traced now; and whether it came from the cache. ``call``: its example arguments
    (``first_network_call``)."""
    facts = {"config": _config_facts(network), "state": sorted((k, list(v.shape), str(v.dtype))
                                                               for k, v in network.state_dict().items()),
             "call": _tensor_facts(call), "spatial": spatial, "opset": opset}
    return _cached("network", facts, lambda: _trace_network(network, call, spatial=spatial, opset=opset), cache)


def _trace_network(network: nn.Module, call: tuple, *, spatial: bool, opset: int) -> ir.Model:
    from .optimize import tidy

    names = list(NETWORK_INPUT_NAMES[: len(call)])
    program = _export(network, call, names, ["y"], network_dynamic_shapes(call, spatial), opset=opset)
    model = program.model
    weights = set(network.state_dict())
    for name in [n for n in model.graph.initializers if n in weights]:
        value = model.graph.initializers.pop(name)
        value.const_value = None
        model.graph.inputs.append(value)
    tidy(model)
    return model


def trace_sampler(sampler: nn.Module, network: nn.Module, out_channels: int, args: Sequence[torch.Tensor],
                  names: list[str], dyn, *, opset: int, cache: bool = True) -> tuple[ir.Model, bool]:
    """The sampler's graph with ``network`` replaced by ``NetworkCall`` placeholder nodes, from the
    cache or traced now (and typed, folded: ``optimize.tidy``); and whether it came from the cache.

    Its cache key holds every plain attribute of the sampler's modules other than the network
    (σ's or timesteps, scalings' constants, clamping), the inputs' names, shapes and dtypes, and the
    code that defines the sampler; a stale entry could only fail the export's parity check.
    """
    facts = {"modules": _module_facts(sampler, network), "inputs": list(names), "args": _tensor_facts(args),
             "out_channels": out_channels, "dynamic": repr(dyn), "opset": opset}

    def make() -> ir.Model:
        from .optimize import tidy

        with swapped(sampler, network, NetworkCall(out_channels)):
            program = _export(sampler, tuple(args), names, ["images"], dyn, opset=opset,
                              custom_translation_table=_placeholder_translation())
        tidy(program.model)
        return program.model

    return _cached("sampler", facts, make, cache)


@contextmanager
def swapped(root: nn.Module, old: nn.Module, new: nn.Module) -> Iterator[None]:
    """Temporarily replace submodule ``old`` of ``root`` by ``new`` (wherever it is attached)."""
    places = [(parent, name) for parent in root.modules() for name, child in parent.named_children() if child is old]
    if not places:
        raise RuntimeError("the network is not a submodule of the sampler")
    for parent, name in places:
        setattr(parent, name, new)
    try:
        yield
    finally:
        for parent, name in places:
            setattr(parent, name, old)


# --- splicing -----------------------------------------------------------------------------------------
def splice(outer: ir.Model, network: ir.Model, state: dict[str, torch.Tensor]) -> int:
    """Replace every placeholder node of ``outer`` by the network graph (weights from ``state``,
    shared by all calls). Returns the number of calls expanded."""
    from onnx_ir.passes.common import InlinePass

    calls = [n for n in outer.graph if n.domain == PLACEHOLDER_DOMAIN]
    if not calls:
        raise RuntimeError("the traced sampler has no network call to expand")
    g = network.graph
    n_args = len(g.inputs) - sum(1 for v in g.inputs if v.name in state)
    params = list(g.inputs[n_args:]) + list(g.initializers.values())
    shared = [_shared_initializer(outer, p, state) for p in params]
    _rescope(g, _scopes(calls[0]))
    nodes, ins, outs = list(g), list(g.inputs[:n_args]), list(g.outputs)
    for value in list(g.initializers):
        g.initializers.pop(value)
    g.inputs.clear()
    g.outputs.clear()
    for node in nodes:
        g.remove(node)
    body = ir.Graph([*ins, *params], outs, nodes=nodes, opset_imports=dict(network.opset_imports),
                    name=PLACEHOLDER_OP)
    function = ir.Function(PLACEHOLDER_DOMAIN, PLACEHOLDER_OP, graph=body, attributes=[])
    for call in calls:
        if len(call.inputs) != n_args:
            raise RuntimeError(f"a network call has {len(call.inputs)} inputs, the network takes {n_args}")
        call.resize_inputs(n_args + len(shared))
        for i, value in enumerate(shared):
            call.replace_input_with(n_args + i, value)
    outer.functions[function.identifier()] = function
    for domain, version in network.opset_imports.items():
        outer.opset_imports.setdefault(domain, version)
    InlinePass()(outer)
    outer.functions.pop(function.identifier(), None)
    outer.opset_imports.pop(PLACEHOLDER_DOMAIN, None)
    return len(calls)


def _shared_initializer(outer: ir.Model, param: ir.Value, state: dict[str, torch.Tensor]) -> ir.Value:
    if param.const_value is not None:
        tensor = param.const_value
    elif param.name in state:
        tensor = ir.Tensor(state[param.name].detach().contiguous().numpy(), name=param.name)
    else:
        raise RuntimeError(f"the network graph needs weight {param.name!r}, which the model does not have")
    name = param.name  # weights keep their module path; the network's own constants get a prefix
    if param.const_value is not None or name in outer.graph.initializers:
        name = _free_name(outer.graph, f"network.{name}")
    value = ir.Value(name=name, shape=param.shape, type=param.type, const_value=tensor)
    outer.graph.register_initializer(value)
    return value


def _free_name(graph: ir.Graph, name: str) -> str:
    taken, k, candidate = graph.initializers, 1, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _scopes(node: ir.Node) -> list[str]:
    import ast

    raw = node.metadata_props.get(SCOPES_KEY)
    return [s for s in ast.literal_eval(raw)] if raw else []


def _rescope(graph: ir.Graph, call_scopes: list[str]) -> None:
    """Network node scopes (relative to the network module) → their place in the sampler: the
    call's module path (e.g. ``denoiser.unet``) prefixes every module path of the network."""
    modules = [s for s in call_scopes[:-1] if s]  # the call's enclosing modules, without the op name
    prefix = modules[-1] if modules else ""
    for node in graph:
        scopes = _scopes(node)
        if not scopes:
            continue
        inner = [f"{prefix}.{s}" if prefix and s else s for s in scopes[1:-1] if s]
        node.metadata_props[SCOPES_KEY] = repr(["", *modules, *inner, scopes[-1]])


# --- the cache ------------------------------------------------------------------------------------
def network_cache_dir() -> Path:
    """Where traced graphs are kept: the ``networks`` folder of cmrt's cache, which is
    ``$CMRT_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/cmrt``, else ``~/.cache/cmrt``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmrt"
    return root / "networks"


def _cached(kind: str, facts: dict, make: Callable[[], ir.Model], cache: bool) -> tuple[ir.Model, bool]:
    """``make()``'s graph, kept in the cache under a digest of ``facts`` and of everything else that
    decides it (library versions, cmrt's code). A parallel export of the same graph waits for the
    first, then reuses it."""
    if not cache:
        return make(), False
    from filelock import FileLock

    path = network_cache_dir() / f"{kind}-{_digest(facts)}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return ir.load(str(path)), True
        model = make()
        _save_atomic(model, path)
    return model, False


def _digest(facts: dict) -> str:
    import onnx
    import onnxscript

    from .. import __version__

    root = Path(__file__).resolve().parent.parent
    code = sha256_files(root, _TRACED_SOURCES)
    versions = [__version__, torch.__version__, onnx.__version__, onnxscript.__version__, ir.__version__]
    text = json.dumps({"facts": facts, "code": code, "versions": versions}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _tensor_facts(values: Sequence) -> list:
    return [None if a is None else [list(a.shape), str(a.dtype)] for a in values]


def _config_facts(network: nn.Module):
    config = getattr(network, "config", None)
    return {"module": type(network).__qualname__,
            "config": config.to_dict() if hasattr(config, "to_dict") else repr(config)}


def _module_facts(root: nn.Module, skip: nn.Module) -> list:
    """Every module of ``root`` outside ``skip``: its path, class and plain attributes."""
    inside = {id(m) for m in skip.modules()}
    facts = []
    for name, module in root.named_modules():
        if id(module) in inside:
            continue
        attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and _plain(v)}
        facts.append([name, type(module).__qualname__, attrs])
    return facts


def _plain(value) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _save_atomic(model: ir.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: ir.save(model, str(tmp)))