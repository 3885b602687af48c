"""``cmrt bench``: bad input fails in one line; the smoke suite writes rows with every required
key, a markdown table and a PNG; the Python-loop backend reproduces the unrolled graph. No
timing assertions: the figures depend on the machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.paired import cm_suite
from benchmarks.backends import loop_sample, onnxruntime_loop, onnxruntime_session
from benchmarks.report import REQUIRED_KEYS
from benchmarks.cases import MODELS, Case, prepare, weights_digest
from benchmarks.suites import SMOKE_GEMM_SIZE
from tests.conftest import run_shared

pytestmark = pytest.mark.integration  # `cmrt bench` in fresh processes

# the console script: under `python -m cmrt.cli` plugins register in a second copy of cmrt.cli
CMRT = [str(Path(sys.executable).parent / "cmrt")]
# onnxruntime-plain (a whole-sampler torch.onnx export per model, ~60 s here) runs in the slow test below
SMOKE_BACKENDS = ("pytorch-eager,diffusers,onnxruntime-cpu,onnxruntime-session,onnxruntime-loop,onnxruntime-cuda,"
                  "diffusers-bf16,openvino-bf16")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOOP_TOLERANCE = 1e-4  # the fp32 parity tolerance (cmrt.parity.TOLERANCES)


def run(*args):
    return subprocess.run([*CMRT, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=900)


def assert_one_line_error(p, needle):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("cmrt")]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_unknown_suite():
    assert_one_line_error(run("bench", "--suite", "huge"), "unknown suite 'huge'")


def test_unknown_backend():
    assert_one_line_error(run("bench", "--suite", "smoke", "--backend", "onnxruntime-cpu,warp-drive"),
                          "unknown backend(s) 'warp-drive'")


@pytest.mark.parametrize("flag,where,needle", [("--json", "missing/out.json", "does not exist"),
                                                ("--markdown", "file/out.md", "does not exist"),
                                                ("--plot", ".", "is a folder")])
def test_unwritable_output(tmp_path, flag, where, needle):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run("bench", "--suite", "smoke", flag, tmp_path / where), needle)


def _run_smoke(out: Path) -> None:
    out.mkdir()
    p = run("bench", "--suite", "smoke", "--backend", SMOKE_BACKENDS, "--warmup", "0", "--repeats", "1",
            "--cache", out / "cache", "--json", out / "r.json", "--markdown", out / "r.md", "--plot", out / "r.png")
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cm_bundle, decoder_bundle):
    """The smoke suite, run once per test run whichever worker needs it first. After the shared tiny
    bundles (exported for many tests anyway): the suite's tiny models are theirs in architecture
    (weights aside), so its exports find the networks traced in this run's cache, as a user's second
    export does, instead of tracing them again (about a minute here)."""
    return run_shared(tmp_path_factory, "bench-smoke", _run_smoke, "r.json")


def test_smoke_rows_have_required_keys(smoke):
    result = json.loads((smoke / "r.json").read_text())
    rows = result["rows"]
    assert result["gemm_gflops"]["peak"] > 0 and result["environment"]["machine"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["model"], r["backend"]) for r in ok} >= {
        (m, b) for m in ("tiny-decoder", "tiny-cm")
        for b in ("pytorch-eager", "diffusers", "onnxruntime-cpu", "onnxruntime-session", "onnxruntime-loop")}
    for r in ok:
        missing = [k for k in REQUIRED_KEYS if r.get(k) is None]
        assert not missing, (r["backend"], missing)
        assert r["median_ms"] > 0 and r["gflop"] > 0 and r["peak_mem_mb"] > 0 and r["pct_peak"] > 0
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    eager = [r for r in ok if r["backend"] == "pytorch-eager"]
    assert eager and all(r["speedup_vs_eager"] == pytest.approx(1.0) for r in eager)
    assert {r["steps"] for r in ok} == {2}


@pytest.mark.slow
def test_plain_export_backend_rows(tmp_path):
    p = run("bench", "--suite", "smoke", "--backend", "onnxruntime-plain", "--warmup", "0", "--repeats", "1",
            "--cache", tmp_path / "cache", "--json", tmp_path / "r.json")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert {(r["model"], r["status"]) for r in rows} == {("tiny-decoder", "ok"), ("tiny-cm", "ok")}
    assert all(r["median_ms"] > 0 and r["gflop"] > 0 for r in rows)


def test_smoke_reduced_precision_rows_paired_with_their_fp32_twins(smoke):
    """``diffusers-bf16`` and ``openvino-bf16`` rows on both tiny models: BF16 rows, their share of
    the roofline read against the measured BF16 GEMM rate, each timed against its FP32 twin in
    paired rounds with its PSNR against the twin's images (BF16's tier: ≥ 40 dB) and no
    non-finite values; the markdown lists them under the table."""
    import importlib.util

    result = json.loads((smoke / "r.json").read_text())
    rows = {(r["model"], r["backend"]): r for r in result["rows"]}
    assert result["gemm_gflops"]["bf16 peak"] > 0 and result["gemm_gflops"]["fp32 peak"] > 0
    names = ["diffusers-bf16"] + (["openvino-bf16"] if importlib.util.find_spec("openvino") else [])
    for model in ("tiny-decoder", "tiny-cm"):
        assert rows[(model, "onnxruntime-cpu")]["pct_peak_of"] == "fp32 GEMM"
        for name in names:
            r = rows[(model, name)]
            assert r["status"] == "ok" and r["precision"] == "bf16" and r["pct_peak_of"] == "bf16 GEMM"
            assert r["paired_with"] == {"diffusers-bf16": "diffusers", "openvino-bf16": "onnxruntime-cpu"}[name]
            assert r["paired_rounds"] == 2 and r["speedup_vs_fp32_twin"]["median"] > 0
            assert r["psnr_vs_fp32_twin"] >= 40.0 and r["non_finite"] == 0
    md = (smoke / "r.md").read_text()
    assert "Reduced precision (% peak of BF16 rows: of the measured BF16 GEMM rate):" in md
    assert "tiny-decoder 16² b1 s2: diffusers-bf16" in md and "paired rounds)" in md


def test_smoke_absent_backend_listed_with_reason(smoke):
    rows = json.loads((smoke / "r.json").read_text())["rows"]
    import onnxruntime as ort

    cuda = [r for r in rows if r["backend"] == "onnxruntime-cuda"]
    assert len(cuda) == 2  # one per case: never silently dropped
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert all(r["status"] == "absent" and "CUDAExecutionProvider" in r["reason"] for r in cuda)


def test_smoke_markdown_and_plot(smoke):
    md = (smoke / "r.md").read_text()
    assert "| model | res | batch | steps | backend |" in md and "GEMM" in md
    for backend in SMOKE_BACKENDS.split(","):
        assert f"| {backend} |" in md
    png = (smoke / "r.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    from PIL import Image

    with Image.open(smoke / "r.png") as im:
        assert im.size[0] > im.size[1] > 100  # one panel per model, side by side


@pytest.mark.parametrize("model,res,steps", [("tiny-decoder", 16, 2), ("tiny-cm", 16, 2)])
def test_python_loop_reproduces_unrolled_graph(smoke, model, res, steps):
    """The loop backend times the same sampler: single-step graphs stepped from Python give the
    unrolled graph's images (within the fp32 parity tolerance)."""
    m = MODELS[model].load()
    p = prepare(m, weights_digest(m), Case(model, res, steps), smoke / "cache", ["onnxruntime-loop"], gpu=False)
    assert len(p.single_step) == steps
    unrolled, looped = onnxruntime_session(p)(), onnxruntime_loop(p)()
    assert np.abs(looped - unrolled).max() <= LOOP_TOLERANCE
    assert np.abs(unrolled).max() > 0.01  # not a trivial all-zero output
    # and the loop really injects noise between steps: dropping the step-1 noise changes the result
    sessions = [lambda f, b=b: onnxruntime_session(type(p)(m, b, f, [s]))() for b, s in zip(p.single_step, p.schedule)]
    zeroed = dict(p.feeds) | {"noise_1": np.zeros_like(p.feeds["noise_1"])}
    assert np.abs(loop_sample(sessions, m.spec.kind, p.schedule, zeroed) - unrolled).max() > LOOP_TOLERANCE


def test_cm_suite_rows_on_a_tiny_model(smoke):
    """The ``cm`` suite's runner on a tiny class-conditional CM: real exports, real diffusers
    pipeline and PyTorch eager (the smoke suite's cached bundle), rows in the suites' format."""
    result = cm_suite(smoke / "cache", log=lambda _: None, models={"tiny-cm": (16, 1)}, steps=(2,), batches=(1, 2),
                      gemm_size=SMOKE_GEMM_SIZE)
    rows = result["rows"]
    reduced = ("diffusers-bf16", "openvino-bf16")
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("diffusers", "onnxruntime-cpu",
                                                                           "pytorch-eager", *reduced) for n in (1, 2)}
    for r in rows:
        assert r["precision"] == ("bf16" if r["backend"] in reduced else "fp32")
        assert r["pct_peak_of"] == f"{r['precision']} GEMM" and r["pct_peak"] > 0
        assert (r["backend"] in reduced) == ("speedup_vs_fp32_twin" in r)
    for r in rows:
        assert all(k in r for k in REQUIRED_KEYS), r
        assert r["median_ms"] > 0 and r["steps"] == 2 and r["resolution"] == 16
    eager = [r for r in rows if r["backend"] == "pytorch-eager"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in eager)


@pytest.mark.slow  # about 20 s on a quiet 2-core CPU, 140 s under load: the table's logic is tested fast below
def test_bf16_table_on_tiny_models(smoke):
    """``cmrt bench --suite bf16``'s runner on the tiny models (the smoke suite's cached bundles):
    every contender of the issue's table timed in paired rounds, its PSNR against diffusers FP32
    (cmrt's FP32 graph on the same seeded noise: the same images), non-finite counts, the default
    backend and each target's verdict; rows in the suites' format and the table in the notes."""
    from benchmarks import bf16
    from benchmarks.report import markdown

    cases = (bf16.TableCase("decoder 256² (here: the tiny decoder at 16²)", "tiny-decoder", 16, 2, 1, False),
             bf16.TableCase("ImageNet-64 (here: the tiny CM)", "tiny-cm", 16, 2, 2, True))
    result = bf16.suite(smoke / "cache", rounds=1, cases=cases, log=lambda _: None, gemm_size=SMOKE_GEMM_SIZE)
    table = result["table"]
    for row in table["cases"]:
        assert row["reference_same_noise"], row["quality"]  # cmrt FP32 ≈ diffusers FP32: a valid reference
        assert row["default_contender"] in bf16.CONTENDERS
        for name, q in row["quality"].items():
            assert q["non_finite"] == 0
            if name != "diffusers":
                assert q["psnr_db"] >= 40.0, (name, q)
        assert set(row["samples_ms"]) | set(row["absent"]) == set(bf16.CONTENDERS)
    verdicts = {(v["case"][:12], v["target"]) for v in table["targets"]}
    assert verdicts == {("decoder 256²", "default ≥ 1.5× diffusers + BF16 autocast"),
                        ("ImageNet-64 ", "default ≥ 1.3× diffusers + BF16 autocast"),
                        ("decoder 256²", "default ≥ 2.0× diffusers FP32"), ("ImageNet-64 ", "default ≥ 2.0× diffusers FP32")}
    assert all(isinstance(v["met"], bool) for v in table["targets"])
    assert {r["backend"] for r in result["rows"]} >= {"diffusers", "diffusers-bf16", "onnxruntime-cpu"}
    assert all(r["pct_peak_of"] == f"{r['precision']} GEMM" for r in result["rows"] if r["status"] == "ok")
    md = markdown(result)
    assert "| target | case | median | min | PSNR | non-finite | met |" in md and "diffusers + BF16 autocast" in md


def _table_row(label, medians, default="openvino-bf16", psnr=60.0, non_finite=0):
    from benchmarks import bf16
    from benchmarks.paired import ratios

    samples = {k: [v, v * 1.1] for k, v in medians.items()}
    return {"label": label, "rounds": 2, "utc": "00:00–00:01", "load_1m": [1.0, 1.0], "samples_ms": samples,
            "median_ms": {k: v * 1.05 for k, v in medians.items()}, "default_backend": default,
            "default_contender": bf16.DEFAULT_CONTENDER[default], "default_speedup": ratios(samples, default),
            "quality": {k: {"psnr_db": None if k == "diffusers" else psnr, "non_finite": non_finite} for k in medians},
            "reference_same_noise": True, "absent": {}}


def test_bf16_targets_met_or_not():
    """The issue's targets from paired samples: met when the default's median per-round speed-up
    reaches the factor at ≥ 40 dB with no non-finite value; the table names every contender."""
    from benchmarks import bf16

    times = {"diffusers": 800.0, "diffusers-bf16": 600.0, "cmrt": 500.0, "openvino-f32": 900.0}
    rows = [_table_row("decoder 256², 2 steps, batch 1", times | {"openvino-bf16": 300.0}),  # 2.0×, 2.67×
            _table_row("ImageNet-64 CM, 1 step, batch 4", times | {"openvino-bf16": 500.0})]  # 1.2×, 1.6×
    v = {(r["case"].split()[0], r["target"]): r["met"] for r in bf16.verdicts(rows)}
    assert v == {("decoder", "default ≥ 1.5× diffusers + BF16 autocast"): True,
                 ("decoder", "default ≥ 2.0× diffusers FP32"): True,
                 ("ImageNet-64", "default ≥ 1.3× diffusers + BF16 autocast"): False,
                 ("ImageNet-64", "default ≥ 2.0× diffusers FP32"): False}
    low = bf16.verdicts([_table_row("decoder 256², 2 steps, batch 1", times | {"openvino-bf16": 300.0}, psnr=35.0)])
    assert not any(r["met"] for r in low)  # fast enough, but under 40 dB
    text = bf16.table({"cases": rows, "targets": bf16.verdicts(rows), "gemm_gflops": {"before": {}, "after": {}},
                       "environment": {"load_1m_start": 1.0, "load_1m_end": 2.0}})
    assert all(name in text for name in bf16.CONTENDERS.values()) and "**not met**" in text and "**met**" in text
    assert "absent: not run" in text  # the INT8 column of rows run without --int8
    int8 = _table_row("ImageNet-64 CM, 1 step, batch 4", times | {"openvino-bf16": 500.0, "openvino-int8": 400.0},
                      default="openvino-int8", psnr=42.2)  # the INT8 default (--int8): 1.5×, 2.0×
    assert all(r["met"] for r in bf16.verdicts([int8]))
