"""Graph against graph on ONNX Runtime's CPU provider, in paired rounds.

``graphs``: two or more ONNX graphs taking the same inputs (e.g. a bundle's graph exported before
and after a rewrite); each gets cmrt's session options. ``--no-nchwc`` adds the first graph with
ONNX Runtime's NCHWc layout transformer disabled. Inputs are drawn from the first graph's input
signature (``batch``, ``h``/``w`` = side/8, ``8*h``/``8*w`` = side; integer inputs are class labels);
the outputs are compared (max abs against the first), the ratios are per-round medians.

    python -m benchmarks.graph_ab OLD/model.onnx NEW/model.onnx --side 256 [--batch 1] [--threads 2]
        [--rounds 8] [--no-nchwc]
    python -m benchmarks.graph_ab --attention [--tokens 1024 --heads 6 --head-dim 64]
    python -m benchmarks.graph_ab BUNDLE/model.onnx --openvino bf16 --side 256 [--batch 1]

``--attention`` times ONNX's opset-23 ``Attention`` against MatMul → Softmax → MatMul on the
same q, k, v. ``--openvino PRECISION`` times one graph on OpenVINO as read against the same graph
with its GroupNorms in 4-D (``cmrt.runtime.openvino_graph``, what cmrt's OpenVINO backend
compiles), each output's PSNR against ONNX Runtime FP32 on the same inputs beside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.paired import paired_rounds


def _session(model, threads: int, disabled: list[str] | None = None):
    import onnxruntime as ort

    from cmrt.runtime.backends import session_options

    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled or [])


def feeds_for(session, side: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching ``session``'s signature for a ``side``² output and ``batch``."""
    rng = np.random.default_rng(seed)
    dims = {"batch": batch, "h": side // 8, "w": side // 8, "8*h": side, "8*w": side}
    out = {}
    for i in session.get_inputs():
        if "int" in i.type:
            out[i.name] = rng.integers(0, 10, batch).astype(np.int64)
        else:
            shape = [dims[d] if isinstance(d, str) else d for d in i.shape]
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def compare(sessions: dict, feeds: dict, rounds: int) -> dict:
    """Max abs difference against the first session's output, median times and per-round ratios."""
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    first = next(iter(sessions))
    samples = paired_rounds({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, rounds)
    result = {}
    for k, v in samples.items():
        r = np.asarray(samples[first]) / np.asarray(v)
        result[k] = {"max_abs_vs_first": float(np.abs(outs[k] - outs[first]).max()), "median_ms": float(np.median(v)),
                     "speedup_vs_first": float(np.median(r)), "range": [float(r.min()), float(r.max())]}
    return result


class _OpenVino:
    """A graph compiled by OpenVINO, with or without cmrt's GroupNorm rewrite, run the way an ONNX
    Runtime session is (``run(None, feeds)``)."""

    def __init__(self, graph: Path, precision: str, threads: int, rewrite: bool) -> None:
        import openvino as ov

        from cmrt.runtime.openvino_graph import group_norms_in_4d

        core = ov.Core()
        model = core.read_model(str(graph))
        self.rewritten = group_norms_in_4d(model) if rewrite else 0
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    def run(self, _names, feeds: dict) -> list[np.ndarray]:
        return [np.array(self.request.infer(feeds)[0], copy=True)]


def attention_graphs(tokens: int, heads: int, head_dim: int) -> dict[str, bytes]:
    """The same attention as opset-20 MatMul → Softmax → MatMul and as opset-23 ``Attention``."""
    from onnx import TensorProto, helper

    shape = [1, heads, tokens, head_dim]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"]
    out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [head_dim ** -0.5])
    decomposed = helper.make_graph([
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"])], "matmul_softmax", io, out, [scale])
    fused = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["o"])], "attention", io, out)
    return {"matmul-softmax (opset 20)": helper.make_model(decomposed, opset_imports=[helper.make_opsetid("", 20)]),
            "Attention (opset 23)": helper.make_model(fused, opset_imports=[helper.make_opsetid("", 23)])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="*", type=Path)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--no-nchwc", action="store_true", help="add the first graph without the NCHWc layout")
    p.add_argument("--attention", action="store_true", help="opset-23 Attention vs MatMul → Softmax → MatMul")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--openvino", choices=["bf16", "f32"], help="the graph on OpenVINO as read vs its GroupNorms in 4-D")
    a = p.parse_args(argv)
    if a.attention:
        sessions = {k: _session(m.SerializeToString(), a.threads)
                    for k, m in attention_graphs(a.tokens, a.heads, a.head_dim).items()}
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal((1, a.heads, a.tokens, a.head_dim)).astype(np.float32) for n in "qkv"}
    elif a.openvino:
        from cmrt.parity import psnr

        if len(a.graphs) != 1:
            p.error("--openvino takes one graph")
        reference = _session(a.graphs[0], a.threads)
        feeds = feeds_for(reference, a.side, a.batch)
        fp32 = reference.run(None, feeds)[0]
        sessions = {f"openvino-{a.openvino} as read": _OpenVino(a.graphs[0], a.openvino, a.threads, False)}
        rewritten = _OpenVino(a.graphs[0], a.openvino, a.threads, True)
        sessions[f"openvino-{a.openvino}, {rewritten.rewritten} GroupNorms in 4-D"] = rewritten
        for name, s in sessions.items():
            print(f"{name}: {psnr(s.run(None, feeds)[0], fp32):.1f} dB from ONNX Runtime FP32")
    else:
        if len(a.graphs) < (1 if a.no_nchwc else 2):
            p.error("give two graphs or more (one is enough with --no-nchwc)")
        sessions = {str(g): _session(g, a.threads) for g in a.graphs}
        if a.no_nchwc:
            sessions[f"{a.graphs[0]} without NCHWc"] = _session(a.graphs[0], a.threads, ["NchwcTransformer"])
        feeds = feeds_for(next(iter(sessions.values())), a.side, a.batch)
    for name, r in compare(sessions, feeds, a.rounds).items():
        print(f"{name}: {r['median_ms']:.1f} ms, first/this {r['speedup_vs_first']:.3f} "
              f"({r['range'][0]:.3f}–{r['range'][1]:.3f}), max abs vs first {r['max_abs_vs_first']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
