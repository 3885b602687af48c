"""A pipeline bundle's stages on backends (``cmrt.runtime.stages``): OpenVINO BF16/FP32 against the
FP32 pipeline, OpenVINO parity recorded per stage in ``pipeline.json`` and read back, the default
choice per stage with and without native BF16 (``$CMRT_CPU_FLAGS``, the seam), failed records,
refusals, and TensorRT-RTX engines built per stage on this CPU."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.bundle import PIPELINE_MANIFEST, PipelineManifest, ProfileRange, pipeline_schema, update_stages
from cmrt.cli import main
from cmrt.errors import CmrtError, ConfigError, InputTypeError, MissingDependencyError
from cmrt.runtime import openvino as ovb
from cmrt.runtime import stages as S
from cmrt.runtime.pipeline import Pipeline, check_pipeline_report
from cmrt.runtime.stored import StoredRun

pytest.importorskip("openvino")

BF16 = "avx512f avx512_bf16 avx512_vnni avx2"  # a CPU with native BF16 (AVX512_BF16)
NO_BF16 = "avx512f avx512_vnni avx2"
AMX = "avx512f avx512_bf16 amx_tile amx_bf16 avx2"  # native BF16, another class
KEY = "openvino-bf16/avx512-bf16"
PROMPTS = ["a red cat on a mat", "blue"]
CALL = {"guidance_scale": 8.5, "height": 40, "width": 56, "seed": 3}


@pytest.fixture
def flags(monkeypatch):
    def set_flags(text: str) -> None:
        monkeypatch.setenv(ovb.CPU_FLAGS_ENV, text)
    return set_flags


@pytest.fixture
def copy(lcm_bundles, tmp_path) -> Path:
    """A private copy of the shared 1-step bundle (records are written into it)."""
    return Path(shutil.copytree(lcm_bundles(1), tmp_path / "b"))


@pytest.fixture(scope="module")
def fp32_images(lcm_bundle) -> np.ndarray:
    with Pipeline(lcm_bundle, backend="onnxruntime-cpu") as pipe:
        return pipe.generate(PROMPTS, **CALL)


def _within(images: np.ndarray, expected: np.ndarray, tier: str) -> bool:
    return parity.compare({"images": images}, {"images": expected}, backend="openvino", precision=tier).passed


# --- OpenVINO against the FP32 pipeline ------------------------------------------------------------
def test_openvino_bf16_pipeline_within_the_bf16_tier(lcm_bundle, fp32_images):
    """No record yet: the sampler and decoder run BF16, the text encoder stays FP32."""
    with Pipeline(lcm_bundle, backend="openvino-bf16") as pipe:
        assert pipe.stage_backends == {"text_encoder": ("openvino-f32", "fp32"),
                                       "sampler": ("openvino-bf16", "bf16"), "decoder": ("openvino-bf16", "bf16")}
        images = pipe.generate(PROMPTS, **CALL)
        results: list = [None, None]

        def work(i: int) -> None:
            results[i] = pipe.generate(PROMPTS[i], **CALL)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        serial = [pipe.generate(p, **CALL) for p in PROMPTS]
    assert all(np.array_equal(a, b) for a, b in zip(results, serial))  # concurrent calls equal serial ones
    assert images.shape == (2, 3, 40, 56) and np.isfinite(images).all()
    assert _within(images, fp32_images, "bf16"), (float(np.abs(images - fp32_images).max()),
                                                  parity.psnr(images, fp32_images))
    assert not np.array_equal(images, fp32_images)  # BF16 really ran


def test_openvino_f32_pipeline_within_fp32(lcm_bundle, fp32_images):
    with Pipeline(lcm_bundle, backend="openvino-f32") as pipe:
        assert set(pipe.stage_backends.values()) == {("openvino-f32", "fp32")}
        images = pipe.generate(PROMPTS, **CALL)
    assert np.abs(images - fp32_images).max() <= parity.TOLERANCES["fp32"].max_abs


def test_consistency_decoder_stage_takes_the_backend(lcm_cd_bundle):
    """A consistency-decoder stage is a cmrt bundle of its own: its ``Decoder`` opens the same backend."""
    call = {"height": 32, "width": 40, "seed": 2}
    with Pipeline(lcm_cd_bundle, backend="onnxruntime-cpu") as pipe:
        assert pipe.stage_backends["decoder"] == ("onnxruntime-cpu", "fp32")
        ref = pipe.generate("a cat", **call)
    with Pipeline(lcm_cd_bundle, backend="openvino-f32") as pipe:
        assert set(pipe.stage_backends.values()) == {("openvino-f32", "fp32")}
        images = pipe.generate("a cat", **call)
    assert np.abs(images - ref).max() <= parity.TOLERANCES["fp32"].max_abs


# --- records ------------------------------------------------------------------------------------------
def _timed(m: PipelineManifest, **speedups: float) -> dict:
    """Stage changes giving each named stage's BF16 record the speed-up stated (the timing the
    default choice reads, set by the test: the tiny stages' real timings sit near 1×)."""
    return {n: {"backends": {KEY: replace(rec, speed=replace(rec.speed, speedup=x))}}
            for n, x in speedups.items() for rec in [m.stages[n].backends[KEY]]}


def test_records_per_stage_the_default_and_a_failed_record(copy, flags, capsys):
    """OpenVINO BF16 recorded per stage (as `cmrt export --model` does on a CPU with native BF16),
    with its timing against ONNX Runtime FP32, read back schema-valid with the digest intact; the
    default per CPU class and per timing; a failed sampler record (its real BF16 latents with an
    error added, compared by the same function) is never chosen and refused when asked for;
    `cmrt check PIPELINE --backend openvino-bf16` re-checks it."""
    flags("")
    assert S.record_at_export(copy) is None and PipelineManifest.open(copy).stages["sampler"].backends is None
    flags(BF16)
    checks = S.record_at_export(copy)
    assert {n: c.run.report.precision for n, c in checks.items()} == {
        "text_encoder": "bf16-features", "sampler": "bf16-features", "decoder": "bf16"}
    m = PipelineManifest.open(copy)  # the digest still matches
    for name, s in m.stages.items():
        rec = s.backends[KEY]
        assert rec.passed and rec.precision == "bf16" and rec.library == "openvino" and rec.non_finite == 0
        assert rec.cpu.isa == "avx512-bf16" and "avx512_bf16" in rec.cpu.flags and rec.graph_sha256 == s.graph.sha256
        assert rec.result.min_psnr == 40.0 and rec.result.outputs[0].psnr >= 40.0
        t = rec.speed  # timed on the stage's stored inputs, then ONNX Runtime FP32 on them
        assert t.against == "onnxruntime-cpu" and t.calls == 3 and t.seconds > 0 and t.against_seconds > 0
        assert t.speedup == pytest.approx(t.against_seconds / t.seconds, rel=1e-3)
        assert t.inputs.startswith("the stored parity inputs: ")
        assert all(f"{k} {tuple(v.shape)}" in t.inputs for k, v in S.stored_data(copy, s)[0].items())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((copy / PIPELINE_MANIFEST).read_text()), pipeline_schema())
    with Pipeline(copy) as pipe:  # each stage where its own timing put it
        assert pipe.stage_backends == {n: ("openvino-bf16", "bf16") if s.backends[KEY].speed.speedup >= 1.0
                                       else ("onnxruntime-cpu", "fp32") for n, s in m.stages.items()}

    m = update_stages(copy, _timed(m, text_encoder=2.0, sampler=0.9, decoder=1.5))
    with Pipeline(copy) as pipe:  # passed, but measured slower than ONNX Runtime FP32: not chosen
        assert pipe.stage_backends == {"text_encoder": ("openvino-bf16", "bf16"),
                                       "sampler": ("onnxruntime-cpu", "fp32"), "decoder": ("openvino-bf16", "bf16")}
    m = update_stages(copy, _timed(m, sampler=1.8))
    with Pipeline(copy) as pipe:  # native BF16, records passed and faster here: BF16 everywhere
        assert set(pipe.stage_backends.values()) == {("openvino-bf16", "bf16")}
        assert "sampler openvino-bf16 [bf16]" in pipe.describe()
    assert any("1.80× onnxruntime-cpu" in line for line in S.record_lines(m))  # `cmrt check` shows the timing
    for other in ("", NO_BF16, AMX):  # no native BF16, or another class with no record: ONNX Runtime
        flags(other)
        with Pipeline(copy) as pipe:
            assert set(pipe.stage_backends.values()) == {("onnxruntime-cpu", "fp32")}

    flags(BF16)
    stage = m.stages["sampler"]
    backend = S.open_stage(copy, stage, "openvino-bf16")
    inputs, expected = S.stored_data(copy, stage)
    actual = {"latents": backend.run_all(inputs)["latents"] + 5.0}
    report = parity.compare(actual, expected, backend=backend.name, precision="bf16-features")
    assert not report.passed
    rec = ovb.backend_record(backend, StoredRun(report, 0.01, actual), stage.graph)
    backend.close()
    update_stages(copy, {"sampler": {"backends": {KEY: rec}}})
    with Pipeline(copy) as pipe:
        assert pipe.stage_backends == {"text_encoder": ("openvino-bf16", "bf16"),
                                       "sampler": ("onnxruntime-cpu", "fp32"), "decoder": ("openvino-bf16", "bf16")}
    with pytest.raises(ConfigError, match=r"stage sampler.*FAILED.*backend='onnxruntime'.*cmrt check") as info:
        Pipeline(copy, backend="openvino-bf16")
    assert isinstance(info.value, ValueError)
    with Pipeline(copy, backend="openvino") as pipe:  # the recorded precision: BF16 where it passed, else FP32
        assert pipe.stage_backends["sampler"] == ("openvino-f32", "fp32")
        assert pipe.stage_backends["text_encoder"] == ("openvino-bf16", "bf16")

    assert main(["check", str(copy), "--backend", "openvino-bf16"]) == 0  # the re-check runs it and records a pass
    out = capsys.readouterr().out
    for name in ("text_encoder", "sampler", "decoder"):
        assert f"stage {name} backend {KEY}: passed" in out
    assert "stage sampler: openvino-bf16 [bf16-features]" in out and "stage decoder: openvino-bf16 [bf16]" in out
    rechecked = PipelineManifest.open(copy).stages["sampler"].backends[KEY]
    assert rechecked.passed and rechecked.speed.speedup != 1.8  # a new record, timed anew
    with Pipeline(copy) as pipe:
        assert pipe.stage_backends["sampler"] == (("openvino-bf16", "bf16") if rechecked.speed.speedup >= 1.0
                                                  else ("onnxruntime-cpu", "fp32"))


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"backend": "onnx"}, ConfigError, "unknown backend 'onnx'.*openvino-bf16"),
    ({"backend": 3}, InputTypeError, "backend must be a backend name"),
    ({"backend": "openvino-bf16", "precision": "fp16"}, ConfigError, "precision='fp16'.*backend 'openvino-bf16'"),
    ({"backend": "openvino-f32", "device": "cuda"}, ConfigError, "backend 'openvino-f32' runs on the CPU"),
    ({"backend": "tensorrt"}, ConfigError, r"backend 'tensorrt'.*no engine.*cmrt build"),
    ({"backend": "openvino-int8"}, ConfigError, "unknown backend 'openvino-int8' for a pipeline bundle"),
])
def test_bad_backend_requests(lcm_bundle, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        Pipeline(lcm_bundle, **kwargs)
    assert isinstance(info.value, CmrtError) and isinstance(info.value, (ValueError, TypeError))


def test_cli_bad_backend_is_one_line(lcm_bundle, tmp_path, capsys):
    for argv in (["generate", str(lcm_bundle), "a", "--backend", "bogus", "--out", str(tmp_path / "x.png")],
                 ["check", str(lcm_bundle), "--backend", "bogus"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "unknown backend 'bogus'" in err and err.count("\n") == 1 and "Traceback" not in err


def test_generate_prints_the_stage_backends(lcm_bundle, tmp_path, capsys):
    assert main(["generate", str(lcm_bundle), "a cat", "--backend", "openvino-f32", "--height", "32", "--width", "32",
                 "--out", str(tmp_path / "x.png")]) == 0
    assert "stages: text_encoder openvino-f32 [fp32], sampler openvino-f32 [fp32]" in capsys.readouterr().out


# --- TensorRT-RTX engines per stage ------------------------------------------------------------------------
TRT_ARGS = ["--target", "tensorrt-rtx", "--min-batch", "1", "--opt-batch", "1", "--max-batch", "2",
            "--min-latent", "4", "--opt-latent", "5x7", "--max-latent", "8"]


def test_stage_profile_shapes(lcm_bundle):
    from cmrt.tensorrt import ProfileSpec
    from cmrt.tensorrt.stages import stage_profile_shapes

    m = PipelineManifest.open(lcm_bundle)
    profile = ProfileSpec(batch=(1, 2, 4), latent=((4, 4), (5, 7), (8, 8)))
    assert stage_profile_shapes(m.stages["text_encoder"], profile) == {"input_ids": ((1, 77), (2, 77), (4, 77))}
    sampler = stage_profile_shapes(m.stages["sampler"], profile)
    assert sampler["noise_3"] == ((1, 4, 4, 4), (2, 4, 5, 7), (4, 4, 8, 8))
    assert sampler["guidance_scale"] == ((1,), (2,), (4,)) and sampler["prompt_embeds"][2] == (4, 77, 32)
    assert stage_profile_shapes(m.stages["decoder"], profile) == {"latents": sampler["noise_0"]}


def test_build_needs_fp16_stage_graphs(copy, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")
    assert main(["build", str(copy), *TRT_ARGS]) == 2
    err = capsys.readouterr().err
    assert "stage sampler has no FP16 graph" in err and "--precision fp16" in err and err.count("\n") == 1
    assert not list(copy.glob("*.plan"))


@pytest.mark.slow  # ~22 s wall here (three engines)
@pytest.mark.trt
def test_rtx_engines_build_per_stage_on_the_cpu(lcm16_bundle, tmp_path, capsys):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")
    from cmrt import tensorrt as T
    from cmrt.tensorrt.stages import stage_profile_shapes

    folder = Path(shutil.copytree(lcm16_bundle, tmp_path / "b16"))
    assert main(["build", str(folder), *TRT_ARGS]) == 0
    assert capsys.readouterr().out.count("stage ") == 3
    m = PipelineManifest.open(folder)  # every plan listed with its size (open checks them)
    profile = T.ProfileSpec(batch=(1, 1, 2), latent=((4, 4), (5, 7), (8, 8)))
    for name, graph in (("text_encoder", "fp32"), ("sampler", "fp16"), ("decoder", "fp16")):
        s = m.stages[name]
        e = s.engines["tensorrt-rtx"]
        assert e.file == f"{name}.tensorrt-rtx.plan" and e.graph == graph and e.strongly_typed
        assert e.graph_sha256 == (s.graph if graph == "fp32" else s.graphs["fp16"]).sha256
        assert e.library_version == trt.__version__ and e.validity.header_ok and not e.parity.checked
        assert e.profiles == ({k: ProfileRange(*v) for k, v in stage_profile_shapes(s, profile).items()},)
        assert T.validity_problem(T.engine_validity(trt, (folder / e.file).read_bytes())) is None
    assert any(f.file == "sampler.tensorrt-rtx.plan" for f in m.files())
    lines = check_pipeline_report(folder, backend="onnxruntime").lines()  # integrity covers the plans
    assert any("engine sampler.tensorrt-rtx.plan (tensorrt-rtx, fp16 graph): never checked" in line for line in lines)
    if not torch.cuda.is_available():
        with Pipeline(folder) as pipe:  # no GPU: the engines are not the default
            assert pipe.stage_backends["sampler"] == ("onnxruntime-cpu", "fp32")
        with pytest.raises(MissingDependencyError, match="GPU"):
            Pipeline(folder, backend="tensorrt")


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (running an engine needs one)")
def test_engine_pipeline_on_the_gpu(lcm16_bundle, tmp_path, fp32_images):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")
    folder = Path(shutil.copytree(lcm16_bundle, tmp_path / "b16"))
    assert main(["build", str(folder), *TRT_ARGS]) == 0
    with Pipeline(folder, backend="onnxruntime-cpu") as ref_pipe:
        ref = ref_pipe.generate(PROMPTS, **CALL)
    with Pipeline(folder, backend="tensorrt") as pipe:
        assert pipe.stage_backends == {"text_encoder": ("tensorrt-rtx", "fp32"), "sampler": ("tensorrt-rtx", "fp16"),
                                       "decoder": ("tensorrt-rtx", "fp16")}
        images = pipe.generate(PROMPTS, **CALL)
    assert _within(images, ref, "fp16")
    assert check_pipeline_report(folder, backend="tensorrt").passed
    assert PipelineManifest.open(folder).stages["sampler"].engines["tensorrt-rtx"].parity.checked
