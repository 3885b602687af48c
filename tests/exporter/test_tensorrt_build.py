"""TensorRT-RTX engine builds on the CPU (real, from the FP16 graphs), profile logic and errors."""

from __future__ import annotations

import json
import shutil

import pytest

from cmrt import BundleError, ConfigError, MissingDependencyError
from cmrt.bundle import MANIFEST, Bundle
from cmrt.cli import main
from cmrt.export import tensorrt as T
from cmrt.runtime.backends import default_backend_name

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")

DEC_PROFILE = T.ProfileSpec(batch=(1, 1, 2), latent=((4, 4), (8, 8), (16, 16)))
CM_PROFILE = T.ProfileSpec(batch=(1, 2, 4))


def _fp16_tensors(graph) -> int:
    """How many layer outputs of the parsed network are FP16."""
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network, _parser = T.network_from_graph(trt, builder, graph)
    assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return sum(network.get_layer(i).get_output(j).dtype == trt.DataType.HALF
               for i in range(network.num_layers) for j in range(network.get_layer(i).num_outputs))


@pytest.mark.trt
@pytest.mark.parametrize("which, profile, ccs", [("dec16", DEC_PROFILE, None), ("cm16", CM_PROFILE, ["8.6"])])
def test_rtx_engine_builds_on_the_cpu(which, profile, ccs, request):
    bundle = request.getfixturevalue(which)
    assert _fp16_tensors(bundle.graph_path("fp16")) > 0  # strongly typed, and FP16 where the graph says
    record = T.build(bundle.path, target="tensorrt-rtx", profile=profile, compute_capabilities=ccs)
    plan = bundle.path / "engine.tensorrt-rtx.plan"
    assert plan.is_file() and plan.stat().st_size == record["bytes"] > 0
    assert record["library_version"] == trt.__version__ and record["strongly_typed"]
    assert record["validity"]["checked"] and record["validity"]["header_ok"]
    assert record["compute_capabilities"] == (["SM86"] if ccs else T.PORTABLE)
    shapes = T.profile_shapes(bundle.manifest, profile)
    assert record["profiles"] == [{k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])}
                                   for k, v in shapes.items()}]
    # the header check is real: the plan passes it, a corrupted copy does not
    data = plan.read_bytes()
    assert T.validity_problem(T.engine_validity(trt, data)) is None
    assert "MALFORMED_ENGINE" in T.validity_problem(T.engine_validity(trt, b"\0" * 8 + data[8:]))
    # the manifest on disk records it, and the plan is a file the bundle knows
    on_disk = json.loads((bundle.path / MANIFEST).read_text())["engines"]["tensorrt-rtx"]
    assert on_disk["sha256"] == record["sha256"] and on_disk["graph_sha256"] == bundle.manifest.graphs["fp16"]["sha256"]
    opened = Bundle.open(plan)
    assert opened.selected == plan.name and default_backend_name(opened) == "tensorrt"
    assert default_backend_name(Bundle.open(bundle.path)) == "onnxruntime"  # no GPU here: ORT stays default


def test_profile_shapes_decoder_and_sampler(dec16, cm16):
    d = T.profile_shapes(dec16.manifest, DEC_PROFILE)
    assert d["latents"] == ((1, 4, 4, 4), (1, 4, 8, 8), (2, 4, 16, 16))
    assert d["noise_0"] == d["noise_1"] == ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))
    c = T.profile_shapes(cm16.manifest, CM_PROFILE)
    assert c["class_labels"] == ((1,), (2,), (4,))
    assert c["noise_1"] == ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))


@pytest.mark.parametrize("kwargs, match", [
    ({"batch": (2, 1, 4)}, "min ≤ opt ≤ max"), ({"batch": (0, 1, 1)}, "min ≤ opt ≤ max"),
    ({"latent": ((8, 8), (8, 8), (1024, 8))}, "exceeds the graph's limit"), ({"batch": (1, 2)}, "three integers")])
def test_bad_profiles_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        T.ProfileSpec(**kwargs)


def test_compute_capability_parsing():
    assert T.parse_compute_capabilities(["8.6", "89", "sm120"]) == ["SM86", "SM89", "SM120"]
    assert T.parse_compute_capabilities(None) is None
    with pytest.raises(ConfigError, match="Hopper"):
        T.parse_compute_capabilities(["9.0"])
    assert all(hasattr(trt.ComputeCapability, v) for v in T.RTX_COMPUTE_CAPABILITIES.values())


def test_cli_build_without_the_library_is_one_line(dec16, capsys):
    assert main(["build", str(dec16.path), "--target", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cmrt[trt]'" in err and "Traceback" not in err


def test_cli_build_needs_an_fp16_graph(decoder_bundle, tmp_path, capsys):
    fp32_only = shutil.copytree(decoder_bundle.path, tmp_path / "b")
    assert main(["build", str(fp32_only), "--target", "tensorrt-rtx"]) == 2
    err = capsys.readouterr().err
    assert "cmrt export --precision fp16" in err and len(err.strip().splitlines()) == 1
    assert not list(fp32_only.glob("*.plan"))


def test_target_option_mismatches(dec16):
    with pytest.raises(ConfigError, match="timing-cache"):
        T.build(dec16.path, target="tensorrt-rtx", timing_cache="cache.bin")
    with pytest.raises(ConfigError, match="compute-capability"):
        T.build(dec16.path, target="tensorrt", compute_capabilities=["8.6"])
    with pytest.raises(ConfigError, match="unknown --target"):
        T.resolve_target("tensorrt-llm")
    assert T.resolve_target(None).name == "tensorrt-rtx"  # the one installed here


def test_tensorrt_target_without_gpu_is_refused(dec16):
    """The full-TensorRT path needs its library and a GPU; here both are missing, and the first
    missing piece is named."""
    with pytest.raises(MissingDependencyError, match=r"cmrt\[trt\]|GPU"):
        T.build(dec16.path, target="tensorrt")


def test_parse_errors_are_reported(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["images"], domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1])],
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    with pytest.raises(T.EngineBuildError, match="could not parse bad.onnx"):
        T.network_from_graph(trt, trt.Builder(trt.Logger(trt.Logger.ERROR)), path)


def test_missing_fp16_file_is_a_bundle_error(cm16, tmp_path):
    copy = Bundle.open(shutil.copytree(cm16.path, tmp_path / "c"))
    (copy.path / "model.fp16.onnx").unlink()
    with pytest.raises((BundleError, FileNotFoundError), match="missing"):
        T.build(copy.path, target="tensorrt-rtx")
