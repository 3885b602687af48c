"""The roofline tooling (issue 14): the operator-class split read from a real ONNX Runtime
profile, the table and PNG, the paired-rounds summary. No timing assertions (the ``cm``
suite's runner is tested on the smoke suite's bundles in ``test_bench_cli.py``)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks import paired, roofline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
C_TEST = 16  # the test graph's channels


def _conv_norm_graph(path, channels=16, side=32):
    """Conv → InstanceNormalization → Sigmoid → Mul → Conv: what a UNet block looks like to ORT."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1, "w2")
    scale = numpy_helper.from_array(np.ones(channels, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(channels, np.float32), "bias")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c1", "scale", "bias"], ["n"]),
             helper.make_node("Sigmoid", ["n"], ["s"]),
             helper.make_node("Mul", ["n", "s"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1])]
    shape = [1, channels, side, side]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [w1, w2, scale, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def test_profile_split_from_a_real_onnxruntime_profile(tmp_path):
    feeds = _conv_norm_graph(tmp_path / "g.onnx")
    run_ms, op_ms = roofline.profile_graph(tmp_path / "g.onnx", feeds, runs=3, threads=1)
    assert len(run_ms) == 3 and all(t > 0 for t in run_ms)  # the first (warm-up) run is left out
    assert "Conv" in op_ms and "InstanceNormalization" in op_ms
    classes = roofline.by_class(op_ms)
    assert set(classes) == set(roofline.CLASSES)
    assert np.isclose(sum(classes.values()), sum(op_ms.values()))
    assert classes["convolution"] > 0 and classes["normalization"] > 0
    assert sum(op_ms.values()) <= 1.05 * float(np.mean(run_ms))  # kernel time within a run's time (both averaged over the runs)


def test_parse_profile_leaves_out_the_first_run_and_averages():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 90, "args": {"op_name": "Conv"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
              {"cat": "Node", "name": "b_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "b_fence_before", "ts": 209, "dur": 5, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "c_kernel_time", "ts": 240, "dur": 10, "args": {"op_name": "ReorderOutput"}},
              {"cat": "Session", "name": "model_run", "ts": 300, "dur": 70},
              {"cat": "Node", "name": "d_kernel_time", "ts": 310, "dur": 50, "args": {"op_name": "Conv"}}]
    run_ms, op_ms = roofline.parse_profile(events)
    assert run_ms == [0.05, 0.07]
    assert op_ms == {"Conv": 0.04, "ReorderOutput": 0.005}
    assert roofline.op_class("ReorderOutput") == "layout" and roofline.op_class("FusedMatMul") == "matmul/attention"


def test_roofline_table_and_png(tmp_path):
    result = {"gemm_gflops": {"peak": 100.0}, "profiles": [
        {"case": "m:64:1:2", "gflop": 8.0, "median_ms": 100.0, "gflop_per_s": 80.0, "pct_of_gemm": 80.0,
         "op_ms": {"Conv": 70.0, "InstanceNormalization": 20.0, "ReorderInput": 10.0},
         "class_ms": roofline.by_class({"Conv": 70.0, "InstanceNormalization": 20.0, "ReorderInput": 10.0})}]}
    table = roofline.markdown(result)
    assert "| m:64:1:2 | 8.0 | 100.0 ms | 80.0 | **80%** | 70.0% | 0.0% | 20.0% | 0.0% | 10.0% | 0.0% |" in table
    roofline.plot(result, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_summary_ratios_are_medians_of_per_round_ratios():
    samples = {"cmrt": [10.0, 20.0, 10.0], "diffusers": [20.0, 20.0, 40.0], "session": [10.0, 18.0, 10.0]}
    s = paired.summarize(samples, gflop=2.0, peak=100.0)
    assert s["cmrt_speedup"]["diffusers"] == {"median": 2.0, "min": 1.0, "max": 4.0}
    assert np.isclose(s["api_overhead"], 0.0) and np.isclose(s["cmrt_gflop_per_s"], 200.0)
    assert np.isclose(s["cmrt_pct_of_gemm_peak"], 200.0)


def test_graph_ab_compares_graphs_and_the_layout_switch(tmp_path):
    """``benchmarks.graph_ab``: the same graph twice gives identical outputs; without the NCHWc
    layout the output agrees to float rounding; opset-23 Attention equals the decomposed form."""
    from benchmarks import graph_ab

    feeds = _conv_norm_graph(tmp_path / "g.onnx")
    path = tmp_path / "g.onnx"
    sessions = {"a": graph_ab._session(path, 1), "b": graph_ab._session(path, 1),
                "no-nchwc": graph_ab._session(path, 1, ["NchwcTransformer"])}
    result = graph_ab.compare(sessions, feeds, rounds=1)
    assert result["b"]["max_abs_vs_first"] == 0.0 and result["a"]["speedup_vs_first"] == 1.0
    assert result["no-nchwc"]["max_abs_vs_first"] < 1e-4 and result["no-nchwc"]["median_ms"] > 0
    models = graph_ab.attention_graphs(tokens=16, heads=2, head_dim=8)
    rng = np.random.default_rng(0)
    qkv = {n: rng.standard_normal((1, 2, 16, 8)).astype(np.float32) for n in "qkv"}
    outs = [graph_ab._session(m.SerializeToString(), 1).run(None, qkv)[0] for m in models.values()]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    assert graph_ab.feeds_for(sessions["a"], side=32, batch=1)["x"].shape == (1, C_TEST, 32, 32)


def test_roofline_reads_each_precision_against_its_own_gemm_rate():
    """An OpenVINO BF16 run's rate is a share of the BF16 GEMM rate, ONNX Runtime's of the FP32 one."""
    p = roofline.Profile("m:64:1:2", 8.0, [100.0, 100.0], {"Conv": 90.0}, roofline.by_class({"Conv": 90.0}),
                         [40.0, 50.0, 60.0])
    rates = roofline._rates(p, peak=100.0, bf16_peak=400.0)
    assert rates["pct_of_gemm"] == 80.0 and rates["bf16_gflop_per_s"] == 160.0
    assert rates["bf16_pct_of_bf16_gemm"] == 40.0
    result = {"gemm_gflops": {"peak": 100.0}, "bf16_gemm_gflops": {"peak": 400.0},
              "profiles": [{"case": p.case, "gflop": p.gflop, "op_ms": p.op_ms, "class_ms": p.class_ms} | rates]}
    assert "| m:64:1:2 | 100.0 ms, 80.0 GFLOP/s | 80% | 50.0 ms, 160.0 GFLOP/s | 40% |" in roofline.markdown(result)


def test_gemm_rates_in_both_precisions():
    """``measure.gemm_rates``: an FP32 and a BF16 rate (PyTorch's, and OpenVINO's where installed)."""
    from benchmarks import measure

    r = measure.gemm_rates(128, repeats=1)
    assert r["fp32"]["peak"] == max(r["fp32"]["torch"], r["fp32"]["onnxruntime"]) > 0
    assert r["bf16"]["peak"] == max(v for k, v in r["bf16"].items() if k != "peak") > 0
