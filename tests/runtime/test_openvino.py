"""The OpenVINO backend (``cmrt.runtime.openvino``): parity on every bundle kind, its manifest
record, the default choice with and without native BF16, concurrency, the compiled-model cache
across processes, and refusals. The CPU's flags are set through ``$CMRT_CPU_FLAGS`` (the seam)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import cmrt
from cmrt.bundle import MANIFEST, Bundle, manifest_schema
from cmrt.errors import ConfigError
from cmrt.runtime.stored import StoredRun
from cmrt.parity import compare, psnr
from cmrt.runtime import openvino as ovb
from cmrt.runtime.backends import default_backend_name, open_backend
from tests.conftest import timed_as

pytest.importorskip("openvino")

BF16 = "avx512f avx512_bf16 avx512_vnni avx2"  # a CPU with native BF16 (AVX512_BF16)
NO_BF16 = "avx512f avx512_vnni avx2"  # the same without it
AMX = "avx512f avx512_bf16 amx_tile amx_bf16 avx2"  # another class with native BF16
ROOT = Path(__file__).resolve().parents[2]
KEY = "openvino-bf16/avx512-bf16"


@pytest.fixture
def flags(monkeypatch):
    def set_flags(text: str) -> None:
        monkeypatch.setenv(ovb.CPU_FLAGS_ENV, text)
    return set_flags


def test_cpu_class_from_flags(flags):
    assert ovb.isa_class(frozenset(AMX.split())) == "amx-bf16"
    assert ovb.isa_class(frozenset(BF16.split())) == "avx512-bf16"
    assert ovb.isa_class(frozenset(NO_BF16.split())) == "avx512"
    assert ovb.isa_class(frozenset({"avx2"})) == "avx2" and ovb.isa_class(frozenset()) == "baseline"
    flags("avx512f,avx512_bf16")
    assert ovb.native_bf16() and ovb.this_cpu().flags == ("avx512_bf16", "avx512f")
    flags("")
    assert not ovb.native_bf16()


@pytest.mark.parametrize("fixture", ["cm_bundle", "decoder_bundle", "edit_colorize"])
def test_check_passes_and_records_on_every_kind(request, fixture, bundle_copy, flags):
    """`cmrt check --backend openvino-bf16` on the stored inputs: within the BF16 (FP16-class)
    tolerance of PyTorch, recorded in the manifest, read back, schema-valid, digest intact."""
    bundle = bundle_copy(request.getfixturevalue(fixture))  # exported (shared) before the flags change
    flags(BF16)
    report = cmrt.check(bundle.path, backend="openvino-bf16")
    assert report.passed, report.lines()
    assert report.parity.backend == "openvino-bf16" and report.parity.precision == "bf16"
    assert report.parity.tolerance.min_psnr == 40.0
    assert any(line.startswith("backend openvino-bf16/avx512-bf16: passed") for line in report.lines())
    reopened = Bundle.open(bundle.path)
    rec = reopened.manifest.backends["openvino-bf16/avx512-bf16"]
    assert rec.passed and rec.precision == "bf16" and rec.non_finite == 0 and rec.seconds > 0
    assert rec.cpu.isa == "avx512-bf16" and "avx512_bf16" in rec.cpu.flags and rec.cpu.model
    assert rec.library == "openvino" and rec.library_version.startswith("20")
    assert rec.graph_sha256 == reopened.manifest.graphs["fp32"].sha256
    assert rec.result.outputs[0].psnr >= 40.0
    kind = reopened.manifest.kind  # timed against ONNX Runtime FP32 on the stored inputs (a decoder's at 256²)
    timed_on = ("the stored latents tiled to 256² pixels: latents (1, 4, 32, 32)" if kind == "decoder"
                else "the stored parity inputs: ")
    assert rec.speed.against == "onnxruntime-cpu" and rec.speed.inputs.startswith(timed_on)
    assert reopened.verify().passed
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((bundle.path / MANIFEST).read_text()), manifest_schema())


def test_outputs_match_onnxruntime_on_new_inputs(cm_bundle, decoder_bundle, edit_colorize):
    """Beyond the stored inputs: each runner kind on other seeds and shapes, FP32 on OpenVINO to
    FP32 rounding, BF16 within the BF16 tolerance, against ONNX Runtime's FP32."""
    z = np.random.default_rng(1).normal(size=(3, 4, 5, 3)).astype(np.float32)
    gray = np.random.default_rng(2).uniform(-1, 1, size=(2, 1, 16, 16)).astype(np.float32)
    cases = [(cmrt.Sampler, cm_bundle, lambda r: r.sample(3, seed=5)),
             (cmrt.Decoder, decoder_bundle, lambda r: r.decode(z, seed=5)),
             (cmrt.Editor, edit_colorize, lambda r: r.edit(gray, seed=5))]
    for runner, bundle, call in cases:
        with runner(bundle.path, backend="onnxruntime-cpu") as ref_runner:
            ref = call(ref_runner)
        for name, precision in (("openvino-f32", "fp32"), ("openvino-bf16", "bf16")):
            with runner(bundle.path, backend=name) as r:
                assert (r.backend.name, r.backend.precision) == (name, precision)
                got = call(r)
            assert compare({"images": got}, {"images": ref}, backend=name, precision=precision).passed, \
                (runner.__name__, name, float(np.abs(got - ref).max()), psnr(got, ref))


def test_tiled_and_chunked_decodes_run_other_shapes(decoder_bundle):
    """Tiles and batch chunks run the same compiled model at other shapes (dynamic axes)."""
    z = np.random.default_rng(3).normal(size=(3, 4, 12, 10)).astype(np.float32)
    with cmrt.Decoder(decoder_bundle.path, backend="onnxruntime-cpu") as d:
        ref = d.decode(z, seed=0, tile=8, overlap=2, norm="tile", max_batch=2)
    with cmrt.Decoder(decoder_bundle.path, backend="openvino-f32") as d:
        got = d.decode(z, seed=0, tile=8, overlap=2, norm="tile", max_batch=2)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_concurrent_calls_equal_serial(decoder_bundle):
    backend = ovb.open_openvino(Bundle.open(decoder_bundle.path), "openvino-bf16")
    rng = np.random.default_rng(0)
    feeds = [{"latents": rng.normal(size=(1, 4, 2 + k % 3, 3)).astype(np.float32)} for k in range(12)]
    for f in feeds:
        h, w = f["latents"].shape[2:]
        f.update({f"noise_{i}": rng.normal(size=(1, 3, 8 * h, 8 * w)).astype(np.float32) for i in range(2)})
    serial = [backend.run(f) for f in feeds]
    results: list = [None] * len(feeds)
    start = threading.Barrier(4)

    def worker(t: int) -> None:
        start.wait()
        for i in range(t, len(feeds), 4):
            results[i] = backend.run(feeds[i])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)
    backend.close()
    with pytest.raises(cmrt.RunnerClosedError):
        backend.run(feeds[0])


def test_threads_as_asked(decoder_bundle, monkeypatch):
    with ovb.OpenVinoBackend(decoder_bundle.path / "model.onnx", precision="fp32", threads=1) as b:
        assert b.threads_used == 1
    monkeypatch.setenv("CMRT_THREADS", "1")  # the default of every CPU backend, as ONNX Runtime's
    with ovb.OpenVinoBackend(decoder_bundle.path / "model.onnx", precision="fp32") as b:
        assert b.threads_used == 1
    with pytest.raises(ConfigError, match="threads"):
        ovb.OpenVinoBackend(decoder_bundle.path / "model.onnx", threads=0)


_OPEN = """
import json, sys
from cmrt.runtime.openvino import OpenVinoBackend
b = OpenVinoBackend(sys.argv[1], precision="bf16")
print(json.dumps(bool(b.compiled.get_property("LOADED_FROM_CACHE"))))
"""


@pytest.mark.integration
def test_compiled_model_is_cached_across_processes(decoder_bundle, tmp_path):
    """A second process loads the compiled model from CMRT_CACHE_DIR/openvino: no new cache file."""
    env = {**os.environ, "CMRT_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    graph = str(decoder_bundle.path / "model.onnx")

    def run() -> bool:
        out = subprocess.run([sys.executable, "-c", _OPEN, graph], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run() is False
    cache = tmp_path / "openvino"
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(p.suffix == ".blob" for p in files)
    assert run() is True
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files


def test_the_record_times_the_backend_and_the_default_follows(decoder_bundle, bundle_copy, flags):
    """The check times OpenVINO BF16 and then ONNX Runtime FP32 on the stored inputs; the default
    takes BF16 only where that timing says it is faster (a record without one, from before cmrt
    took it, counts as faster)."""
    flags(BF16)
    bundle = bundle_copy(decoder_bundle)
    rec = ovb.check_and_record(bundle)
    t = rec.speed
    assert rec.passed and t.against == "onnxruntime-cpu" and t.calls == 5 and t.seconds > 0 and t.against_seconds > 0
    assert t.speedup > 0 and t.order.startswith("paired rounds")
    assert t.inputs == ("the stored latents tiled to 256² pixels: latents (1, 4, 32, 32), noise_0 (1, 3, 256, 256), "
                        "noise_1 (1, 3, 256, 256)")  # a decoder's stored inputs are too small to rank backends at
    assert default_backend_name(Bundle.open(bundle.path)) == ("openvino-bf16" if t.speedup >= 1 else "onnxruntime")
    assert default_backend_name(timed_as(Bundle.open(bundle.path), 0.8)) == "onnxruntime"
    reopened = timed_as(Bundle.open(bundle.path), 1.25)
    assert default_backend_name(reopened) == "openvino-bf16" and reopened.verify().passed
    assert "1.25× onnxruntime-cpu" in cmrt.check(bundle.path, backend="onnxruntime").lines()[-2]
    old = replace(reopened.manifest.backends[KEY], speed=None)
    reopened.update(backends={KEY: old})
    assert default_backend_name(Bundle.open(bundle.path)) == "openvino-bf16"
    assert Bundle.open(bundle.path).verify().passed and '"speed"' not in (bundle.path / MANIFEST).read_text()


def test_default_choice_with_and_without_native_bf16(decoder_bundle, bundle_copy, flags):
    flags(BF16)
    bundle = bundle_copy(decoder_bundle)
    assert default_backend_name(bundle) == "onnxruntime"  # nothing recorded yet
    assert ovb.check_and_record(bundle).passed
    timed_as(bundle, 1.5)  # measured faster (the test's statement: the choice is what it is about)
    with cmrt.Decoder(bundle.path) as d:
        assert (d.backend.name, d.backend.precision) == ("openvino-bf16", "bf16")
    with cmrt.Decoder(bundle.path, backend="onnxruntime") as d:  # backend= overrides
        assert d.backend.name.startswith("onnxruntime")
    with cmrt.Decoder(bundle.path, backend="openvino") as d:  # the recorded precision
        assert d.backend.precision == "bf16"
    with cmrt.Decoder(bundle.path / "model.onnx") as d:  # the FP32 graph named: still the FP32 graph's record
        assert d.backend.name == "openvino-bf16"
    lines = cmrt.check(bundle.path).lines()
    assert lines[-1] == "backend: openvino-bf16 [bf16] (the default here)"

    flags(NO_BF16)  # no native BF16: ONNX Runtime FP32 as before, whatever is recorded
    assert default_backend_name(Bundle.open(bundle.path)) == "onnxruntime"
    with cmrt.Decoder(bundle.path, backend="openvino") as d:
        assert d.backend.precision == "fp32"
    flags(AMX)  # native BF16, but the record is from another class of CPU
    assert default_backend_name(Bundle.open(bundle.path)) == "onnxruntime"


def test_default_on_fp16_graph_stays_onnxruntime(dec16, bundle_copy, flags):
    flags(BF16)
    bundle = bundle_copy(dec16)
    ovb.check_and_record(bundle)
    assert default_backend_name(timed_as(Bundle.open(bundle.path), 1.5)) == "openvino-bf16"
    fp16 = Bundle.open(bundle.path / "model.fp16.onnx")
    assert default_backend_name(fp16) == "onnxruntime"
    with pytest.raises(ConfigError, match="runs the FP32 graph model.onnx"):
        open_backend(fp16, "openvino-bf16")


def test_failed_record_is_never_chosen_and_refused(decoder_bundle, bundle_copy, flags):
    """A record whose comparison failed (here: the backend's outputs with an error added, compared
    by the same function) keeps the default on ONNX Runtime and refuses an explicit request; a
    re-check by `cmrt check` replaces it."""
    flags(BF16)
    bundle = bundle_copy(decoder_bundle)
    backend = ovb.open_openvino(bundle, "openvino-bf16")
    inputs, expected = bundle.parity_data()
    actual = {"images": backend.run(inputs) + 0.1}
    report = compare(actual, expected, backend=backend.name, precision=backend.precision)
    assert not report.passed
    rec = ovb.record_parity(bundle, backend, StoredRun(report, 0.01, actual))
    backend.close()
    assert not rec.passed and not Bundle.open(bundle.path).manifest.backends["openvino-bf16/avx512-bf16"].passed
    assert default_backend_name(Bundle.open(bundle.path)) == "onnxruntime"
    with pytest.raises(ConfigError, match=r"recorded parity .* FAILED .*backend='onnxruntime'.*cmrt check") as info:
        cmrt.Decoder(bundle.path, backend="openvino-bf16")
    assert isinstance(info.value, ValueError)
    with cmrt.Decoder(bundle.path, backend="openvino") as d:  # "the recorded precision": FP32
        assert d.backend.precision == "fp32"
    assert any("FAILED" in line for line in cmrt.check(bundle.path, backend="onnxruntime").lines())
    assert cmrt.check(bundle.path, backend="openvino-bf16").passed  # re-check (real outputs) records a pass
    assert default_backend_name(timed_as(Bundle.open(bundle.path), 1.5)) == "openvino-bf16"


def test_bad_backend_names(decoder_bundle):
    with pytest.raises(ConfigError, match=r"unknown backend 'openvino-fp16'.*openvino-bf16") as info:
        cmrt.Decoder(decoder_bundle.path, backend="openvino-fp16")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="precision must be one of"):
        ovb.OpenVinoBackend(decoder_bundle.path / "model.onnx", precision="fp16")
    with pytest.raises(ConfigError, match="no quantized operations"):  # "int8" runs an INT8 model only
        ovb.OpenVinoBackend(decoder_bundle.path / "model.onnx", precision="int8", cache=False)
    with pytest.raises(ConfigError, match="unknown OpenVINO backend"):
        ovb.resolve(Bundle.open(decoder_bundle.path), "openvino-int4")


def test_export_records_only_on_native_bf16(decoder_model, tmp_path, flags):
    """`cmrt export` checks and records OpenVINO BF16 itself on a CPU with native BF16, not elsewhere."""
    flags(BF16)
    made = cmrt.export(out=tmp_path / "bf16", model=decoder_model, steps=1)
    rec = made.manifest.backends["openvino-bf16/avx512-bf16"]
    assert rec.passed and rec.graph_sha256 == made.manifest.graphs["fp32"].sha256
    flags(NO_BF16)
    assert cmrt.export(out=tmp_path / "plain", model=decoder_model, steps=1).manifest.backends is None


def test_cli_check_prints_the_record_and_choice(decoder_bundle, bundle_copy, flags, capsys):
    from cmrt.cli import main

    flags(BF16)
    bundle = bundle_copy(decoder_bundle)
    assert main(["check", str(bundle.path), "--backend", "openvino-bf16"]) == 0
    out = capsys.readouterr().out
    assert "openvino-bf16 [bf16] vs PyTorch" in out and "backend openvino-bf16/avx512-bf16: passed" in out
    assert "× onnxruntime-cpu (" in out  # its timing
    timed_as(Bundle.open(bundle.path), 1.5)
    assert main(["check", str(bundle.path)]) == 0
    assert "backend: openvino-bf16 [bf16] (the default here)" in capsys.readouterr().out


def _tiled(bundle, backend: str, norm: str | None):
    """A tiled decode on ``backend`` and what its norm graphs were opened as."""
    z = np.random.default_rng(4).normal(size=(1, 4, 12, 12)).astype(np.float32)
    with cmrt.Decoder(bundle.path, backend=backend) as d:
        out = d.decode(z, seed=0, tile=8, norm=norm)
        opened = list(d._graphs.backends.values())
        segments = list(d._graphs.layer_sync.sessions) if d._graphs.layer_sync is not None else []
    return out, opened, segments


@pytest.mark.parametrize("norm", [None, "canvas", "shared", "shared-means", "tile"])
def test_every_tiled_mode_runs_on_openvino(stats_bundle, norm):
    """An OpenVINO runner decodes tiled in every normalization mode. The statistics and
    shared-statistics graphs are opened by the runner's own backend (``open_like``: OpenVINO in its
    precision); the layer-synchronous segments stay on ONNX Runtime FP32 (measured faster there:
    ``OpenVinoBackend.segments_on_onnxruntime``). FP32 equals ONNX Runtime's tiled decode within the
    FP32 tolerance, BF16 within BF16's tier; the default stays the layer-synchronous one."""
    from cmrt.runtime.tiled.layer_sync import _OrtSegment

    ref, _, _ = _tiled(stats_bundle, "onnxruntime-cpu", norm)
    for name, precision in (("openvino-f32", "fp32"), ("openvino-bf16", "bf16")):
        got, opened, segments = _tiled(stats_bundle, name, norm)
        report = compare({"images": got}, {"images": ref}, backend=name, precision=precision)
        assert report.passed, (name, norm, report)
        assert all(isinstance(b, ovb.OpenVinoBackend) and b.precision == precision for b in opened), opened
        assert len(opened) == (2 if norm in ("shared", "shared-means") else 0)  # statistics + shared graph
        assert all(isinstance(s, _OrtSegment) for s in segments)
        assert bool(segments) == (norm in ("canvas", None))


@pytest.mark.slow
def test_layer_sync_segments_on_openvino_when_asked(stats_bundle, monkeypatch):
    """With ``segments_on_onnxruntime`` off, the layer-synchronous segments run on OpenVINO (how
    their cost was measured): the same decode as ONNX Runtime's, within the FP32 tolerance."""
    ref, _, _ = _tiled(stats_bundle, "onnxruntime-cpu", "canvas")
    monkeypatch.setattr(ovb.OpenVinoBackend, "segments_on_onnxruntime", False)
    got, _, segments = _tiled(stats_bundle, "openvino-f32", "canvas")
    assert segments and all(isinstance(s, ovb.OpenVinoBackend) for s in segments)
    assert compare({"images": got}, {"images": ref}, backend="openvino-f32", precision="fp32").passed
