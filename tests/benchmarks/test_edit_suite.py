"""The ``edit`` suite's contenders (``benchmarks/edit.py``) on a shared tiny editing bundle: the
FP32 pair (PyTorch eager, ``cmrt.Editor`` on ONNX Runtime) and the reduced-precision pair (the same
module under BF16 autocast, ``cmrt.Editor`` on OpenVINO BF16) on the same inputs and noise, and the
rows: BF16 rows against the BF16 GEMM rate, each paired with its FP32 twin, ``diffusers-bf16``
listed absent with its reason. No timing assertions."""

import numpy as np

from benchmarks import edit
from cmrt.parity import compare
from tests.conftest import tiny_cm


def test_edit_contenders_compute_the_same_edit(edit_colorize):
    timed = edit.calls(tiny_cm(), edit_colorize, batch=2)
    out = {k: np.asarray(c(), dtype=np.float32) for k, c in timed.items()}
    assert compare({"images": out["onnxruntime-cpu"]}, {"images": out["pytorch-eager"]}, backend="onnxruntime-cpu",
                   precision="fp32").passed
    assert compare({"images": out["pytorch-eager-bf16"]}, {"images": out["pytorch-eager"]}, backend="autocast",
                   precision="bf16").passed
    if "openvino-bf16" in out:  # OpenVINO installed
        assert compare({"images": out["openvino-bf16"]}, {"images": out["onnxruntime-cpu"]}, backend="openvino-bf16",
                       precision="bf16").passed

    case = edit.EditCase("digits-color", "colorize", 3)
    samples = {k: [10.0, 12.0] for k in out} | {"openvino-bf16": [5.0, 4.0]}
    env = {"machine": "test"}
    rows = {r["backend"]: r for r in edit._rows(case, tiny_cm(), {k: samples[k] for k in out}, env,
                                                {"fp32": 100.0, "bf16": 300.0}, out)}
    assert rows["onnxruntime-cpu"]["pct_peak_of"] == "fp32 GEMM" and "paired_with" not in rows["onnxruntime-cpu"]
    bf16 = rows["pytorch-eager-bf16"]
    assert bf16["precision"] == "bf16" and bf16["pct_peak_of"] == "bf16 GEMM" and bf16["paired_with"] == "pytorch-eager"
    assert bf16["psnr_vs_fp32_twin"] >= 40 and bf16["non_finite"] == 0
    if "openvino-bf16" in rows:
        assert rows["openvino-bf16"]["speedup_vs_fp32_twin"] == {"median": 2.5, "min": 2.0, "max": 3.0}
    absent = edit._absent(case, "diffusers-bf16", edit.ABSENT["diffusers-bf16"], env)
    assert absent["status"] == "absent" and "diffusers has no pipeline" in absent["reason"]
