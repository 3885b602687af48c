"""export → bundle → check → runtime round trips on tiny models built in the test."""

import json

import numpy as np
import onnx
import pytest
import torch

import cmrt
from cmrt import parity
from cmrt.bundle import Bundle
from cmrt.exporter.api import build_unrolled, export
from tests.conftest import tiny_decoder_spec


def _torch_reference(model, bundle, feeds):
    m = bundle.manifest
    module = build_unrolled(model, m.schedule)
    with torch.no_grad():
        return module(*[torch.as_tensor(feeds[n]) for n in m.input_names]).numpy()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_cm_round_trip(cm_model, cm_bundle, tmp_path, steps):
    bundle = cm_bundle if steps == 2 else export(out=tmp_path / "b", steps=steps, model=cm_model)
    m = bundle.manifest
    assert m.kind == "sampler" and m.steps == steps and len(m.sigmas) == steps
    assert m.input_names == ["class_labels"] + [f"noise_{i}" for i in range(steps)]
    assert cmrt.check(bundle.path).passed
    sampler = cmrt.Sampler(bundle.path)
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(5, 3, 16, 16, generator=g) for _ in range(steps)]  # batch 5: dynamic batch
    labels = torch.tensor([0, 3, 9, 2, 2])
    out = sampler.sample(class_labels=labels, noise=noise)
    ref = _torch_reference(cm_model, bundle, {"class_labels": labels, **{f"noise_{i}": n for i, n in enumerate(noise)}})
    assert isinstance(out, torch.Tensor) and out.shape == (5, 3, 16, 16)
    assert np.abs(out.numpy() - ref).max() <= parity.TOLERANCES["fp32"].max_abs


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_decoder_round_trip(decoder_model, decoder_bundle, tmp_path, steps):
    bundle = decoder_bundle if steps == 2 else export(out=tmp_path / "d", steps=steps, model=decoder_model)
    m = bundle.manifest
    assert m.kind == "decoder" and m.timesteps == cmrt.schedules.decoder_timesteps(steps)
    assert cmrt.check(bundle.path).passed
    dec = cmrt.Decoder(bundle.path)
    z = np.random.default_rng(0).normal(size=(3, 4, 9, 13)).astype(np.float32) * 5  # odd, dynamic size
    out = dec.decode(z, seed=11)
    assert isinstance(out, np.ndarray) and out.shape == (3, 3, 72, 104) and out.dtype == np.float32
    g = torch.Generator().manual_seed(11)
    noise = [torch.randn(3, 3, 72, 104, generator=g).numpy() for _ in range(steps)]
    ref = _torch_reference(decoder_model, bundle, {"latents": z, **{f"noise_{i}": n for i, n in enumerate(noise)}})
    assert np.abs(out - ref).max() <= parity.TOLERANCES["fp32"].max_abs


def test_manifest_and_files(decoder_bundle):
    b = decoder_bundle
    data = json.loads((b.path / "cmrt.json").read_text())
    for key in ("format_version", "kind", "task", "schedule", "inputs", "outputs", "image", "latent", "graphs",
                "parity_inputs", "source", "versions", "parity", "precision", "model", "digest"):
        assert key in data, key
    assert data["format_version"] == 2 and data["task"]["name"] == "decode"
    assert data["schedule"]["timesteps"] == [1008, 512] and data["schedule"]["rule"] == "published"
    assert data["latent"]["scale_factor"] == pytest.approx(0.18215) and len(data["latent"]["means"]) == 4
    assert data["image"]["value_range"] == [-1.0, 1.0]
    assert {"cmrt", "torch", "onnx", "onnxruntime"} == set(data["versions"])
    assert data["inputs"][0]["shape"] == ["batch", 4, "h", "w"]
    assert data["outputs"][0]["shape"] == ["batch", 3, "8*h", "8*w"]
    rep = data["parity"]["onnxruntime-cpu/fp32"]
    assert rep["passed"] and rep["outputs"][0]["max_abs"] <= 1e-4
    files = {f["file"]: f for f in data["graphs"]["fp32"]["files"]}
    assert set(files) == {"model.onnx"} | ({"model.onnx.data"} if (b.path / "model.onnx.data").exists() else set())
    for name, rec in files.items():
        assert rec["bytes"] == (b.path / name).stat().st_size
    graph = b.path / data["graphs"]["fp32"]["file"]
    model = onnx.load(str(graph), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    onnx.checker.check_model(str(graph))
    assert (b.path / "parity.npz").is_file()
    assert not list(b.path.parent.glob(".dec2.tmp-*"))  # nothing staged left behind


def test_network_traced_once_and_spliced_into_every_step(cm_bundle):
    """The 2-step graph holds the network twice (every step), with one shared copy of each weight."""
    m = cm_bundle.manifest
    rewrites = m.graphs["fp32"].rewrites
    assert rewrites["network_calls_spliced"] == 2
    model = onnx.load(str(cm_bundle.path / "model.onnx"), load_external_data=False)
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]  # no placeholder left
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    per_step = len(convs) // 2
    weights = {n.input[1] for n in convs}
    assert len(convs) == 2 * per_step and len(weights) == per_step  # the same weight feeds both steps
    scopes = [p.value for n in convs for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
    assert len(scopes) == len(convs) and all("denoiser.unet." in s for s in scopes)


def test_large_weights_go_to_external_data(cm_bundle):
    g = cm_bundle.manifest.graphs["fp32"]
    assert [f.file for f in g.files] == ["model.onnx", "model.onnx.data"]
    assert (cm_bundle.path / "model.onnx.data").stat().st_size > 1 << 20


def test_check_needs_no_source_model(cm_bundle, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(cm_bundle.path, moved)
    report = cmrt.check(moved / "model.onnx", backend="onnxruntime-cpu")
    assert report.passed and report.parity.outputs[0].max_abs <= 1e-4


def test_parity_failure_leaves_nothing(cm_model, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCES, "fp32", parity.Tolerance(max_abs=0.0, min_psnr=1e9))
    with pytest.raises(cmrt.ParityError, match="parity check failed"):
        export(out=tmp_path / "never", steps=1, model=cm_model)
    assert not (tmp_path / "never").exists() and not list(tmp_path.iterdir())


def test_check_detects_tampered_reference(cm_bundle, tmp_path):
    """A changed reference output is an integrity failure, reported before (and instead of) any
    numerical comparison with it."""
    import shutil

    b = tmp_path / "t"
    shutil.copytree(cm_bundle.path, b)
    with np.load(b / "parity.npz") as d:
        arrays = dict(d)
    arrays["output/images"] = arrays["output/images"] + 1e-3
    np.savez(b / "parity.npz", **arrays)
    report = cmrt.check(b)
    assert not report.passed and not report.integrity.passed and report.parity is None
    assert any("parity.npz" in p for p in report.integrity.problems)
    with pytest.raises(cmrt.IntegrityError, match="parity.npz"):
        report.raise_if_failed()


def test_seeds_repeat_and_match_torch_generator(cm_bundle):
    s = cmrt.Sampler(cm_bundle.path)
    a = s.sample(4, class_labels=[1, 2, 3, 4], seed=3)
    assert np.array_equal(a, s.sample(4, class_labels=[1, 2, 3, 4], seed=3))
    assert not np.array_equal(a, s.sample(4, class_labels=[1, 2, 3, 4], seed=4))
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(4, 3, 16, 16, generator=g).numpy() for _ in range(2)]
    assert np.array_equal(a, s.sample(class_labels=np.array([1, 2, 3, 4]), noise=noise))
    unseeded = [s.sample(2, class_labels=0) for _ in range(2)]
    assert not np.array_equal(*unseeded)


def test_labels_drawn_from_seed(cm_bundle):
    s = cmrt.Sampler(cm_bundle.path)
    a, b = s.sample(6, seed=5), s.sample(6, seed=5)
    assert np.array_equal(a, b)
    g = torch.Generator().manual_seed(5)
    noise = [torch.randn(6, 3, 16, 16, generator=g) for _ in range(2)]
    labels = torch.randint(0, 10, (6,), generator=g)  # after the noise draws
    assert np.array_equal(a, s.sample(class_labels=labels.numpy(), noise=[n.numpy() for n in noise]))


def test_numpy_and_torch_io(decoder_bundle):
    d = cmrt.Decoder(decoder_bundle.path)
    z = torch.randn(1, 4, 4, 4) * 5
    out_t = d.decode(z, seed=0)
    out_n = d.decode(z.numpy(), seed=0)
    assert isinstance(out_t, torch.Tensor) and isinstance(out_n, np.ndarray)
    assert np.array_equal(out_t.numpy(), out_n)
    assert np.array_equal(d.decode(z.double(), seed=0), out_t.numpy())  # float64 is cast
    assert np.array_equal(d.decode(z.half().float().numpy(), seed=0), d.decode(z.half(), seed=0).numpy())


def test_open_by_graph_path_and_kind_mismatch(cm_bundle, decoder_bundle):
    assert cmrt.Sampler(cm_bundle.path / "model.onnx").steps == 2
    with pytest.raises(cmrt.BundleError, match="cmrt.Sampler"):
        cmrt.Decoder(cm_bundle.path)
    assert Bundle.open(decoder_bundle.path).manifest.latent.upscale == 8


def test_sessions_spin_only_while_running(decoder_bundle):
    """cmrt's ONNX Runtime sessions spin their threads during a run and stop when it ends, so idle
    cmrt objects do not slow PyTorch or each other (benchmarks/interleaved.py measures the effect)."""
    options = cmrt.Decoder(decoder_bundle.path, backend="onnxruntime-cpu").backend.session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_export_has_an_explicit_signature_and_refuses_unknown_options(cm_model, tmp_path):
    import inspect

    params = inspect.signature(cmrt.export).parameters
    assert {"source", "out", "steps", "sigmas", "grid", "precision", "arch", "model"} <= set(params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "source")
    with pytest.raises(TypeError, match="stpes"):
        cmrt.export(out=tmp_path / "b", stpes=4, model=cm_model)
    with pytest.raises(cmrt.ConfigError, match=r"--arch \(arch=\) does not apply: .* is a cmrt checkpoint"):
        cmrt.export(out=tmp_path / "b", arch="imagenet64")
    with pytest.raises(cmrt.ConfigError, match=r"--embedding \(embedding=\) does not apply"):
        cmrt.export(out=tmp_path / "b", model=cm_model, embedding="e.safetensors")
    assert not (tmp_path / "b").exists()


def test_grid_sets_the_default_spacing(cm_model):
    from cmrt import schedules as S
    from cmrt.exporter.api import resolve_schedule

    s = resolve_schedule(cm_model.spec, 2, grid=201)
    assert s.grid == 201 and s.sigmas == tuple(S.sigmas_from_indices([0, 100], 201))
    assert "201-point" in s.rule
    with pytest.raises(cmrt.ConfigError, match="--steps 41 exceeds the 40-point Karras grid"):
        resolve_schedule(cm_model.spec, 41)
    with pytest.raises(cmrt.ConfigError, match="--grid applies to consistency models"):
        resolve_schedule(tiny_decoder_spec(), grid=40)
