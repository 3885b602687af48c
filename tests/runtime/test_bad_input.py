"""Every bad input gets a clear CmrtError that is also a ValueError/TypeError/FileNotFoundError."""

import json
import shutil

import numpy as np
import pytest

import cmrt
from cmrt.exporter.api import export


@pytest.fixture(scope="module")
def dec(decoder_bundle):
    return cmrt.Decoder(decoder_bundle.path)


@pytest.fixture(scope="module")
def smp(cm_bundle):
    return cmrt.Sampler(cm_bundle.path)


Z = np.zeros((1, 4, 4, 4), np.float32)


@pytest.mark.parametrize("latents,exc,match", [
    (np.zeros((4, 4, 4), np.float32), ValueError, "rank 4"),
    (np.zeros((1, 3, 4, 4), np.float32), ValueError, "axis 1 is 3, expected 4"),
    (np.zeros((0, 4, 4, 4), np.float32), ValueError, "empty"),
    (np.full((1, 4, 4, 4), np.nan, np.float32), ValueError, "NaN or Inf"),
    (np.full((1, 4, 4, 4), np.inf, np.float32), ValueError, "NaN or Inf"),
    (np.zeros((1, 4, 4, 4), np.complex64), TypeError, "complex64"),
    (np.zeros((1, 4, 4, 4), bool), TypeError, "bool"),
    (np.array([["a"]]), TypeError, "cannot be used"),
    ([[1.0]], TypeError, "numpy array or torch tensor"),
])
def test_decoder_bad_latents(dec, latents, exc, match):
    with pytest.raises(exc, match=match) as info:
        dec.decode(latents, seed=0)
    assert isinstance(info.value, cmrt.CmrtError)


@pytest.mark.parametrize("noise,exc,match", [
    ([np.zeros((1, 3, 32, 32), np.float32)], ValueError, "needs 2 noise tensors, got 1"),
    ([np.zeros((1, 3, 32, 32), np.float32)] * 3, ValueError, "got 3"),
    ([np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 3, 16, 16), np.float32)], ValueError, "noise\\[1\\]"),
    ([np.zeros((2, 3, 32, 32), np.float32)] * 2, ValueError, "axis 0 is 2, expected 1"),
    (np.zeros((2, 1, 3, 32, 32), np.float32), TypeError, "list of 2 arrays"),
    ([np.full((1, 3, 32, 32), np.nan, np.float32)] * 2, ValueError, "NaN"),
])
def test_decoder_bad_noise(dec, noise, exc, match):
    with pytest.raises(exc, match=match):
        dec.decode(Z, noise=noise)


def test_seed_and_noise_together(dec):
    with pytest.raises(ValueError, match="either seed or noise"):
        dec.decode(Z, seed=1, noise=[np.zeros((1, 3, 32, 32), np.float32)] * 2)
    with pytest.raises(TypeError, match="seed must be an int"):
        dec.decode(Z, seed=1.5)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(batch_size=2, class_labels=[1, 10]), ValueError, r"\[0, 10\)"),
    (dict(batch_size=1, class_labels=[-1]), ValueError, r"\[0, 10\)"),
    (dict(batch_size=2, class_labels=[1.5, 2.0]), TypeError, "integers"),
    (dict(batch_size=3, class_labels=[1, 2]), ValueError, "disagree"),
    (dict(batch_size=0), ValueError, "≥ 1"),
    (dict(batch_size="4"), TypeError, "batch_size must be an int"),
    (dict(class_labels=np.zeros((2, 2), np.int64)), ValueError, "shape \\(B,\\)"),
])
def test_sampler_bad_input(smp, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        smp.sample(seed=0, **kwargs)


def test_missing_and_broken_files(cm_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cmrt.Sampler(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a cmrt bundle"):
        cmrt.Sampler(tmp_path)
    b = tmp_path / "b"
    shutil.copytree(cm_bundle.path, b)
    (b / "cmrt.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cmrt.Sampler(b)
    shutil.copy(cm_bundle.path / "cmrt.json", b / "cmrt.json")
    size = (b / "model.onnx").stat().st_size
    (b / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(cmrt.IntegrityError, match="has 7 bytes"):  # a changed size: refused on open
        cmrt.Sampler(b)
    (b / "model.onnx").write_bytes(b"g" * size)  # same size, not a graph: ONNX Runtime refuses it
    with pytest.raises(cmrt.BundleError, match="could not be loaded"):
        cmrt.Sampler(b)
    (b / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        cmrt.Sampler(b)


def test_manifest_not_matching_graph(cm_bundle, tmp_path):
    b = tmp_path / "m"
    shutil.copytree(cm_bundle.path, b)
    data = json.loads((b / "cmrt.json").read_text())
    data["inputs"] = data["inputs"][:-1]
    data["schedule"]["steps"] = 1
    (b / "cmrt.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="do not match the manifest"):
        cmrt.Sampler(b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "positive integer"),
    (dict(steps=2, sigmas=[80.0]), "disagrees"),
    (dict(steps=None, sigmas=[1.0, 80.0]), "descending"),
    (dict(steps=None, sigmas=[800.0]), "must lie in"),
    (dict(steps=None, timesteps=[1008]), "scheduled by σ"),
])
def test_export_bad_options(cm_model, tmp_path, kwargs, match):
    with pytest.raises(cmrt.ConfigError, match=match):
        export(out=tmp_path / "x", model=cm_model, **kwargs)
    assert not (tmp_path / "x").exists()


def test_export_refuses_nonempty_out(cm_model, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(out=tmp_path / "x", steps=1, model=cm_model)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_unknown_backend(cm_bundle):
    with pytest.raises(ValueError, match="unknown backend"):
        cmrt.Sampler(cm_bundle.path, backend="nope")
