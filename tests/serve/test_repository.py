"""``cmrt triton``: the repository's layout, its configurations (parsed with Triton's own
ModelConfig protobuf from tritonclient), names and options checked, nothing half-written."""

from __future__ import annotations

import os
import shutil

import pytest

from cmrt._io import sha256_file
from cmrt.bundle import Bundle, EngineRecord, EngineValidity, ProfileRange
from cmrt.errors import ConfigError
from cmrt.serve.repository import RepositoryOptions, write_repository


def parse(path):
    """A config.pbtxt through Triton's ModelConfig message: unknown fields or enum values fail."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims(tensor) -> list[int]:
    return list(tensor.dims)


def dtype(name: str) -> int:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Value(name)


def test_layout_and_configs(repo, cm_bundle, decoder_bundle):
    assert sorted(os.listdir(repo)) == ["cm2", "cm2_onnx", "dec2", "dec2_onnx", "edit_inpaint", "edit_inpaint_onnx"]
    for name, bundle in (("cm2", cm_bundle), ("dec2", decoder_bundle)):
        version = repo / name / "1"
        assert "from cmrt.serve.model import TritonPythonModel" in (version / "model.py").read_text()
        assert sorted(os.listdir(version / "bundle")) == sorted(p.name for p in bundle.path.iterdir())
        assert sorted(os.listdir(repo / f"{name}_onnx" / "1")) == ["model.onnx", "model.onnx.data"]

    dec = parse(repo / "dec2" / "config.pbtxt")
    assert (dec.name, dec.backend, dec.max_batch_size) == ("dec2", "python", 8)
    lat, seed = dec.input
    assert (lat.name, dims(lat), lat.optional) == ("latents", [4, -1, -1], False)
    assert (seed.name, dims(seed), seed.optional) == ("seed", [1], True)
    assert (lat.data_type, seed.data_type) == (dtype("TYPE_FP32"), dtype("TYPE_INT64"))
    assert (dec.output[0].name, dims(dec.output[0])) == ("images", [3, -1, -1])
    assert dec.dynamic_batching.max_queue_delay_microseconds == 20_000
    assert dec.instance_group[0].count == 1 and dec.parameters["bundle"].string_value == "bundle"

    cm = parse(repo / "cm2" / "config.pbtxt")
    assert [(i.name, dims(i), i.optional) for i in cm.input] == [("class_labels", [1], True), ("seed", [1], True)]
    assert dims(cm.output[0]) == [3, 16, 16]

    edit = parse(repo / "edit_inpaint" / "config.pbtxt")  # Editor.edit's arguments, the batch axis first
    assert [(i.name, dims(i), i.optional) for i in edit.input] == [
        ("image", [3, 16, 16], False), ("mask", [1, 16, 16], False), ("class_labels", [1], True), ("seed", [1], True)]
    assert "(inpaint, 2 step(s))" in (repo / "edit_inpaint" / "config.pbtxt").read_text()
    plain = parse(repo / "edit_inpaint_onnx" / "config.pbtxt")
    assert [i.name for i in plain.input] == ["image", "mask", "class_labels", "noise_0", "noise_1"]


def test_plain_onnx_configs_take_the_noise(repo):
    dec = parse(repo / "dec2_onnx" / "config.pbtxt")
    assert (dec.platform, dec.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
    assert [(i.name, dims(i)) for i in dec.input] == [("latents", [4, -1, -1]), ("noise_0", [3, -1, -1]),
                                                       ("noise_1", [3, -1, -1])]
    cm = parse(repo / "cm2_onnx" / "config.pbtxt")
    labels = cm.input[0]
    assert (labels.name, dims(labels), list(labels.reshape.shape)) == ("class_labels", [1], [])
    assert [i.name for i in cm.input[1:]] == ["noise_0", "noise_1"]
    assert "Bring your own noise" in (repo / "cm2_onnx" / "config.pbtxt").read_text()


def _with_engine(bundle, tmp_path, max_batch=4, target="tensorrt"):
    """A copy of ``bundle`` whose manifest lists a (dummy) FP16-I/O engine with a batch range 1..max_batch."""
    b = Bundle.open(shutil.copytree(bundle.path, tmp_path / bundle.path.name))
    plan = b.path / "engine.tensorrt.plan"
    plan.write_bytes(b"plan")
    shape = lambda n: (n, 4, 8, 8)  # noqa: E731
    record = EngineRecord(
        file=plan.name, bytes=plan.stat().st_size, sha256=sha256_file(plan), target=target, library="tensorrt",
        library_version="10.13", compute_capabilities=("8.9",), gpu=None, graph="fp16", graph_sha256="",
        strongly_typed=True, io="fp16", profiles=({"latents": ProfileRange(shape(1), shape(2), shape(max_batch))},),
        profile_spec={}, workspace_bytes=None, build_seconds=0.0, peak_rss_mib=0.0,
        validity=EngineValidity(checked=False), built="")
    b.update(engines={target: record})
    return b.path


def test_tensorrt_plan_config_and_profile_limit(decoder_bundle, tmp_path):
    b = _with_engine(decoder_bundle, tmp_path)
    entries = write_repository([b], tmp_path / "repo")
    assert [(e.name, e.platform, e.max_batch) for e in entries] == [
        ("dec2", "python", 4), ("dec2_onnx", "onnxruntime_onnx", 4), ("dec2_trt", "tensorrt_plan", 4)]
    trt = parse(tmp_path / "repo" / "dec2_trt" / "config.pbtxt")
    assert (trt.platform, dict(trt.cc_model_filenames)) == ("tensorrt_plan", {"8.9": "model.plan"})
    assert trt.input[0].data_type == dtype("TYPE_FP16")  # an FP16-I/O engine
    assert (tmp_path / "repo" / "dec2_trt" / "1" / "model.plan").read_bytes() == b"plan"
    with pytest.raises(ConfigError, match=r"batch ≤ 4"):
        write_repository([b], tmp_path / "repo2", options=RepositoryOptions(max_batch=16))
    assert not (tmp_path / "repo2").exists()


def test_tensorrt_rtx_engines_get_no_plan_model(decoder_bundle, tmp_path):
    b = _with_engine(decoder_bundle, tmp_path, target="tensorrt-rtx")
    assert [e.name for e in write_repository([b], tmp_path / "repo")] == ["dec2", "dec2_onnx"]


def test_no_dynamic_batching_and_instances(decoder_bundle, tmp_path):
    write_repository([decoder_bundle.path], tmp_path / "r", options=RepositoryOptions(
        dynamic_batching=False, instances=3, plain=False, backend="onnxruntime-cpu"))
    assert os.listdir(tmp_path / "r") == ["dec2"]
    c = parse(tmp_path / "r" / "dec2" / "config.pbtxt")
    assert not c.HasField("dynamic_batching") and c.instance_group[0].count == 3
    assert c.parameters["backend"].string_value == "onnxruntime-cpu"


@pytest.mark.parametrize("folder, message", [("bad name", "not a valid model name"), ("-x", "not a valid model name")])
def test_invalid_names_are_refused(decoder_bundle, tmp_path, folder, message):
    b = tmp_path / folder
    shutil.copytree(decoder_bundle.path, b)
    with pytest.raises(ConfigError, match=message):
        write_repository([b], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_duplicate_names_are_refused(decoder_bundle, tmp_path):
    shutil.copytree(decoder_bundle.path, tmp_path / "a" / "dec2")
    with pytest.raises(ConfigError, match="distinct folder names"):
        write_repository([decoder_bundle.path, tmp_path / "a" / "dec2"], tmp_path / "repo")


def test_cli_writes_and_refuses_in_one_line(cm_bundle, tmp_path, capsys):
    from cmrt.cli import main

    code = main(["triton", str(cm_bundle.path), "--out", str(tmp_path / "r"), "--max-batch", "4", "--instances", "2",
                 "--max-queue-delay-us", "500"])
    assert code == 0 and "cm2 (python, max batch 4)" in capsys.readouterr().out
    c = parse(tmp_path / "r" / "cm2" / "config.pbtxt")
    assert (c.max_batch_size, c.instance_group[0].count, c.dynamic_batching.max_queue_delay_microseconds) == (4, 2, 500)
    for args in ([tmp_path / "missing", "--out", tmp_path / "x"], [cm_bundle.path, "--out", tmp_path / "r"],
                 [cm_bundle.path, "--out", tmp_path / "y", "--instances", "0"]):
        assert main(["triton", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("cmrt: error: ") and "Traceback" not in err


def test_plain_onnx_models_agree_with_their_graphs(repo, cm_bundle, decoder_bundle):
    """What Triton's onnxruntime backend would do (it is not in PyTriton's wheel): feed the graph in
    the model folder with inputs shaped by its config (batch axis first, ``reshape`` applied) and get
    the images that cmrt gives for the same noise."""
    import numpy as np
    import onnxruntime as ort

    import cmrt
    from cmrt.runtime.backends import session_options

    dtypes = {dtype("TYPE_FP32"): np.float32, dtype("TYPE_INT64"): np.int64}
    for name, bundle in (("cm2_onnx", cm_bundle), ("dec2_onnx", decoder_bundle)):
        config = parse(repo / name / "config.pbtxt")
        session = ort.InferenceSession(str(repo / name / "1" / config.default_model_filename), session_options(),
                                       providers=["CPUExecutionProvider"])
        graph = {i.name: i for i in session.get_inputs()}
        assert [i.name for i in config.input] == list(graph)
        rng, feeds = np.random.default_rng(0), {}
        for i in config.input:
            shape = [2] + [4 if d == -1 and i.name == "latents" else 32 if d == -1 else d for d in i.dims]
            a = (rng.integers(0, 10, shape) if i.name == "class_labels" else rng.standard_normal(shape)).astype(
                dtypes[i.data_type])
            if i.HasField("reshape"):
                a = a.reshape([2, *i.reshape.shape])
            assert a.ndim == len(graph[i.name].shape), i.name
            feeds[i.name] = a
        (images,) = session.run(["images"], feeds)
        noise = [feeds[k] for k in sorted(feeds) if k.startswith("noise_")]
        if bundle.manifest.kind == "decoder":
            ref = cmrt.Decoder(bundle.path).decode(feeds["latents"], noise=noise)
        else:
            ref = cmrt.Sampler(bundle.path).sample(class_labels=feeds["class_labels"], noise=noise)
        assert np.abs(images - ref).max() <= 1e-5
        assert list(images.shape[1:]) == [d if d != -1 else images.shape[k + 1] for k, d in enumerate(config.output[0].dims)]
