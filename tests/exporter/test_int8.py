"""INT8 where it holds (``cmrt.exporter.int8``, ``backend="openvino-int8"``): the quantized model and
its records written where its parity passes the int8 tier, the backend within that tier of FP32,
a failed check writing no model and refused by its figures, and ``--int8`` refused where it does
not apply. Calibration here is small (4 calls of 2) to keep the tests fast."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import cmrt
from cmrt.bundle import Bundle
from cmrt.errors import CmrtError, ConfigError
from cmrt.exporter.int8 import add_int8, calibration_items
from cmrt.parity import TOLERANCES, Tolerance, compare
from cmrt.runtime.backends import default_backend_name, open_backend
from tests.conftest import run_shared

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SMALL = dict(samples=4, batch=2, min_speedup=0.0)  # ship on parity alone: the tiny models' INT8 is not faster


def _latents(decoder_bundle: Bundle) -> np.ndarray:
    """Latents at the parity inputs' scale, drawn afresh (not the checked ones)."""
    g = np.random.default_rng(3)
    return g.standard_normal((8, 4, 4, 4)).astype(np.float32)


def test_calibration_draws_like_the_runtime(cm_bundle):
    items = calibration_items(cm_bundle, samples=3, batch=2)
    m = cm_bundle.manifest
    assert len(items) == 3 and all(list(i) == m.input_names for i in items)
    labels = np.concatenate([i["class_labels"] for i in items])
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < m.num_classes
    assert items[0]["noise_0"].shape == (2, m.image.channels, int(m.image.height), int(m.image.width))
    assert not np.array_equal(items[0]["noise_0"], items[1]["noise_0"])  # fresh draws per call


BF16_FLAGS = "avx512f avx512_bf16 avx512_vnni avx2"  # a CPU with native BF16 (the seam's flags)


@dataclass(frozen=True)
class _Added:
    """What ``add_int8`` returned, as the tests read it."""

    shipped: bool
    text: str

    def line(self) -> str:
        return self.text


@pytest.fixture(scope="module")
def int8_cm(cm_bundle, tmp_path_factory):
    """The tiny CM with its INT8 model added once per test run, whichever worker comes first (the
    quantization is the slow part), on a CPU stated to have native BF16, so it is timed against
    ``openvino-bf16``; tests work on copies of it. Returns the bundle and what ``add_int8`` said."""
    import shutil

    from cmrt.runtime import openvino as ovb

    def make(out: Path) -> None:
        shutil.copytree(cm_bundle.path, out / "cm")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ovb.CPU_FLAGS_ENV, BF16_FLAGS)
            result = add_int8(Bundle.open(out / "cm"), **SMALL)
        (out / "added.json").write_text(json.dumps({"shipped": result.shipped, "line": result.line()}))

    out = run_shared(tmp_path_factory, "int8-cm", make, "added.json")
    added = json.loads((out / "added.json").read_text())
    return Bundle.open(out / "cm"), _Added(added["shipped"], added["line"])


def test_int8_export_ships_model_and_records(int8_cm, bundle_copy):
    """The tiny CM quantizes within the int8 tier: IR files, graph, quantization and backend records
    written; the backend's output within the int8 tier of the ONNX Runtime FP32 one; opt-in only."""
    shipped, result = int8_cm
    assert result.shipped, result.line()
    b = bundle_copy(shipped)
    m = b.manifest
    assert (b.path / "model.int8.xml").is_file() and (b.path / "model.int8.bin").is_file()
    assert m.graphs["int8"].file == "model.int8.xml" and len(m.graphs["int8"].files) == 2
    assert m.int8.shipped and m.int8.quantized_ops > 0 and m.int8.parity.precision == "int8"
    assert m.int8.options["model_type"] == "transformer"  # the tiny CM has attention
    assert m.int8.parity.min_psnr == TOLERANCES["int8"].min_psnr
    t = m.int8.speed  # timed on the first calibration call against the path it would replace
    assert m.int8.min_speedup == 0.0 and t.against in ("openvino-bf16", "onnxruntime-cpu") and t.calls == 5
    assert t.seconds > 0 and t.against_seconds > 0
    assert t.inputs.startswith("the first calibration call: class_labels (2,), noise_0 (2, ")
    assert f"× {t.against} (" in result.line()
    rec = next(r for k, r in m.backends.items() if k.startswith("openvino-int8/"))
    assert rec.passed and rec.graph_sha256 == m.graphs["int8"].sha256
    assert b.verify().passed
    assert default_backend_name(b) == "onnxruntime"  # never the default
    with cmrt.Sampler(b.path, backend="openvino-int8") as s8, cmrt.Sampler(b.path, backend="onnxruntime") as s32:
        assert (s8.backend.name, s8.backend.precision) == ("openvino-int8", "int8")
        x8 = s8.sample(4, class_labels=[0, 1, 2, 3], seed=5)
        x32 = s32.sample(4, class_labels=[0, 1, 2, 3], seed=5)
    report = compare({"images": np.asarray(x8)}, {"images": np.asarray(x32)}, backend="openvino-int8",
                     precision="int8")
    assert report.passed, report.lines()
    assert cmrt.check(b.path, backend="openvino-int8").passed
    with pytest.raises(ConfigError, match="openvino-int8"):  # ONNX Runtime cannot read the IR
        open_backend(Bundle.open(b.path / "model.int8.xml"), "onnxruntime")


def test_failed_int8_writes_nothing_and_is_refused(decoder_bundle, bundle_copy, monkeypatch):
    """Under a tier no INT8 model can meet, the check fails: no model is written, the record says
    so, and asking for the backend names the failed figures (the gate, not the tier's value)."""
    monkeypatch.setitem(TOLERANCES, "int8", Tolerance(max_abs=1e-9, min_psnr=200.0))
    bundle = bundle_copy(decoder_bundle)
    result = add_int8(bundle, latents=_latents(bundle), **SMALL)
    assert not result.shipped and "NOT shipped" in result.line()
    b = Bundle.open(bundle.path)
    assert "int8" not in b.manifest.graphs and not (b.path / "model.int8.xml").exists()
    assert not b.manifest.int8.shipped and not b.manifest.int8.parity.passed
    assert b.manifest.int8.speed.inputs.startswith(  # a decoder is timed at 256², whatever its calibration crops
        "a calibration image's real latents tiled to 256² pixels: latents (1, 4, 32, 32), noise_0 (1, 3, 256, 256)")
    assert not any(k.startswith("openvino-int8/") for k in (b.manifest.backends or {}))
    assert not list(b.path.glob(".int8-*"))  # the staged model went with its folder
    with pytest.raises(ConfigError, match="FAILED at export"):
        cmrt.Decoder(b.path, backend="openvino-int8")


def _stated(bundle: Bundle, *, speedup: float, psnr: float, max_abs: float) -> Bundle:
    """The bundle with its INT8 record's timing and parity figures replaced by the ones stated (the
    default choice's inputs, set by the test that is about the choice)."""
    q = bundle.manifest.int8
    out = replace(q.parity.outputs[0], psnr=psnr, max_abs=max_abs)
    bundle.update(int8=replace(q, speed=replace(q.speed, speedup=speedup), parity=replace(q.parity, outputs=(out,))))
    return Bundle.open(bundle.path)


def test_int8_is_the_default_only_where_it_holds_bf16s_tier(int8_cm, bundle_copy, monkeypatch):
    """On a CPU with native BF16, a shipped INT8 model timed faster than BF16 there becomes the
    default only where its parity is within BF16's tier too; otherwise, or on another CPU class,
    or when the FP32 graph is named, the BF16/FP32 rules decide."""
    from cmrt.runtime import openvino as ovb

    monkeypatch.setenv(ovb.CPU_FLAGS_ENV, BF16_FLAGS)
    shipped, result = int8_cm
    assert result.shipped
    b = bundle_copy(shipped)
    q = b.manifest.int8
    assert q.speed.against == "openvino-bf16" and q.cpu.isa == "avx512-bf16"  # timed against the BF16 path here
    b = _stated(b, speedup=1.6, psnr=45.0, max_abs=0.05)
    assert default_backend_name(b) == "openvino-int8"
    with cmrt.Sampler(b.path) as s:
        assert (s.backend.name, s.backend.precision) == ("openvino-int8", "int8")
    assert default_backend_name(Bundle.open(b.path / "model.onnx")) == "onnxruntime"  # the FP32 graph named
    assert default_backend_name(_stated(b, speedup=1.6, psnr=36.0, max_abs=0.05)) == "onnxruntime"  # int8 tier only
    assert default_backend_name(_stated(b, speedup=1.6, psnr=45.0, max_abs=0.3)) == "onnxruntime"
    assert default_backend_name(_stated(b, speedup=0.9, psnr=45.0, max_abs=0.05)) == "onnxruntime"  # slower
    b = _stated(b, speedup=1.6, psnr=45.0, max_abs=0.05)
    monkeypatch.setenv(ovb.CPU_FLAGS_ENV, "avx512f avx512_bf16 amx_tile amx_bf16 avx2")  # another class
    assert default_backend_name(b) == "onnxruntime"
    monkeypatch.setenv(ovb.CPU_FLAGS_ENV, "")
    assert default_backend_name(b) == "onnxruntime"


def test_int8_not_faster_writes_nothing_and_is_refused(cm_bundle, bundle_copy):
    """INT8 that passes its parity but does not reach the speed-up asked ships nothing; the record
    keeps both figures and asking for the backend names them."""
    bundle = bundle_copy(cm_bundle)
    result = add_int8(bundle, **{**SMALL, "min_speedup": 1e6})
    assert not result.shipped and result.report.passed
    assert "NOT shipped, not fast enough" in result.line() and "1e+06× asked" in result.line()
    b = Bundle.open(bundle.path)
    assert "int8" not in b.manifest.graphs and not (b.path / "model.int8.xml").exists()
    assert b.manifest.int8.parity.passed and b.manifest.int8.speed.speedup < 1e6 and b.verify().passed
    with pytest.raises(ConfigError, match=r"short of the 1e\+06× asked \(its parity passed"):
        cmrt.Sampler(b.path, backend="openvino-int8")


@pytest.mark.parametrize("value", [-1.0, float("nan"), "2", True])
def test_bad_min_speedup_is_refused(tmp_path, value):
    from cmrt.exporter.api import export
    from tests.conftest import tiny_cm

    with pytest.raises(CmrtError, match="int8_min_speedup"):
        export(model=tiny_cm(), out=tmp_path / "x", int8=True, int8_min_speedup=value)
    assert not (tmp_path / "x").exists()


def test_int8_refused_where_it_does_not_apply(tmp_path, cm_bundle):
    from cmrt.exporter.api import export
    from tests.conftest import tiny_cm, tiny_decoder

    with pytest.raises(CmrtError, match="--int8"):
        export(model=tiny_cm(), out=tmp_path / "e", task="inpaint", int8=True)
    with pytest.raises(CmrtError, match="int8_latents"):
        export(model=tiny_decoder(), out=tmp_path / "d", int8=True)
    with pytest.raises(CmrtError, match="--int8-latents"):
        export(model=tiny_cm(), out=tmp_path / "s", int8_latents=np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(CmrtError, match="--int8-min-speedup.*needs --int8"):
        export(model=tiny_cm(), out=tmp_path / "s", int8_min_speedup=1.0)
    with pytest.raises(ConfigError, match="holds no INT8 model"):
        cmrt.Sampler(cm_bundle.path, backend="openvino-int8")
    assert not any((tmp_path / n).exists() for n in ("e", "d", "s"))
