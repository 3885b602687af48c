"""TensorRT-RTX engine builds on the CPU (real, from the FP16 graphs), profile logic and errors,
checked builder return codes, the timing-cache file handling, and the runtime-cache record."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

import cmrt
from cmrt import BundleError, ConfigError, EngineBuildError, MissingDependencyError
from cmrt.bundle import MANIFEST, Bundle, ProfileRange, RuntimeCache
from cmrt.cli import main
from cmrt import tensorrt as T
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
def test_rtx_engine_builds_on_the_cpu(which, profile, ccs, request, bundle_copy):
    bundle = bundle_copy(request.getfixturevalue(which))
    assert _fp16_tensors(bundle.graph_path("fp16")) > 0  # strongly typed, and FP16 where the graph says
    stale = bundle.path / "engine.tensorrt-rtx.cache"
    stale.write_bytes(b"kernels of an older engine")
    record = T.build(bundle.path, target="tensorrt-rtx", profile=profile, compute_capabilities=ccs)
    assert not stale.exists() and record.runtime_cache == RuntimeCache(stale.name)  # no hash until a GPU ran it
    assert record.timing_cache is None and not record.parity.checked  # never run: the manifest says so
    plan = bundle.path / "engine.tensorrt-rtx.plan"
    assert plan.is_file() and plan.stat().st_size == record.bytes > 0
    assert record.library_version == trt.__version__ and record.strongly_typed
    assert record.validity.checked and record.validity.header_ok
    assert record.compute_capabilities == (("SM86",) if ccs else T.PORTABLE)
    shapes = T.profile_shapes(bundle.manifest, profile)
    assert record.profiles == ({k: ProfileRange(*v) for k, v in shapes.items()},)
    # the header check is real: the plan passes it, a corrupted copy does not
    data = plan.read_bytes()
    assert T.validity_problem(T.engine_validity(trt, data)) is None
    assert "MALFORMED_ENGINE" in T.validity_problem(T.engine_validity(trt, b"\0" * 8 + data[8:]))
    # the manifest on disk records it, and the plan is a file the bundle knows
    on_disk = json.loads((bundle.path / MANIFEST).read_text())["engines"]["tensorrt-rtx"]
    assert on_disk["sha256"] == record.sha256 and on_disk["graph_sha256"] == bundle.manifest.graphs["fp16"].sha256
    assert on_disk["parity"]["checked"] is False
    report = cmrt.check(bundle.path)  # the integrity check covers the plan too
    assert report.passed and any("never checked against PyTorch" in line for line in report.lines())
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


# --- checked builder calls, without building a graph --------------------------------------------
def test_engine_build_error_is_public():
    assert T.EngineBuildError is cmrt.EngineBuildError is EngineBuildError
    assert issubclass(EngineBuildError, cmrt.CmrtError) and issubclass(EngineBuildError, RuntimeError)
    assert "EngineBuildError" in cmrt.__all__


def _builder():
    return trt.Builder(trt.Logger(trt.Logger.INTERNAL_ERROR))


def test_an_invalid_profile_is_refused():
    builder = _builder()
    config = builder.create_builder_config()
    assert T.add_profile(builder, config, {"x": ((1, 4), (2, 4), (4, 4))}) == 0
    with pytest.raises(EngineBuildError, match=r"refused the optimization profile \(x \(4, 4\)..\(1, 4\)"):
        T.add_profile(builder, config, {"x": ((4, 4), (2, 4), (1, 4))})  # min > max: TensorRT answers -1


def test_a_refused_compute_capability_is_an_error():
    config = _builder().create_builder_config()
    T.set_compute_capabilities(trt, config, ["SM86", "SM89"])
    assert config.num_compute_capabilities == 2
    with pytest.raises(EngineBuildError, match="refused compute capability NONE"):
        T.set_compute_capabilities(trt, config, ["NONE"])  # "cannot be kNONE": set_compute_capability → False


def test_the_plan_is_written_without_a_copy(dec16, tmp_path):
    builder = _builder()
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    x = network.add_input("x", trt.DataType.FLOAT, (2, 4))
    network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
    plan = T.build_serialized(builder, network, builder.create_builder_config())
    assert type(plan).__name__ == "IHostMemory" and plan.nbytes > 0  # TensorRT's buffer, not bytes
    copy = Bundle.open(shutil.copytree(dec16.path, tmp_path / "b"))
    path = T.write_engine(copy, "engine.tensorrt-rtx.plan", plan)
    assert path.read_bytes() == bytes(memoryview(plan)) and T.engine_validity(trt, plan)["header_ok"]


class _TimingConfig:
    """A builder config of full TensorRT: ``set_timing_cache(cache, ignore_mismatch=False)`` returns
    False for a cache from another GPU (NvInfer.h ``setTimingCache``); ``get_timing_cache`` returns
    the cache in use, whose ``serialize`` gives a buffer."""

    def __init__(self, accept: bool) -> None:
        self.accept, self.cache = accept, None

    def create_timing_cache(self, blob):
        return {"blob": bytes(blob)}

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        self.cache = cache if self.accept else None
        return self.accept

    def get_timing_cache(self):
        class Cache:
            def serialize(_self):
                return memoryview(b"timings+" + self.cache["blob"])

        return None if self.cache is None else Cache()


def test_a_rejected_timing_cache_is_warned_about_and_left_unchanged(tmp_path):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"from another GPU")
    cache = T.TimingCacheFile(path)
    config = _TimingConfig(accept=False)
    with pytest.warns(UserWarning, match="was rejected .*leaving the file unchanged"):
        assert cache.attach(config) is False
    assert cache.save(config) is False and path.read_bytes() == b"from another GPU"


def test_an_accepted_timing_cache_is_updated_atomically(tmp_path):
    path = tmp_path / "trt.cache"
    cache = T.TimingCacheFile(path)  # no file yet: TensorRT starts from b""
    config = _TimingConfig(accept=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert cache.attach(config) and config.cache == {"blob": b""}
    assert cache.save(config) and path.read_bytes() == b"timings+"
    assert [p.name for p in tmp_path.iterdir()] == ["trt.cache"]


def test_timing_cache_calls_match_the_real_binding(tmp_path):
    """The real TensorRT-RTX config takes the same calls (timing caches are no-ops there: True)."""
    config = _builder().create_builder_config()
    cache = T.TimingCacheFile(tmp_path / "none")
    assert cache.attach(config) is True


def test_an_unwritable_timing_cache_is_a_warning(tmp_path):
    """F: an error writing the user's --timing-cache file is warned about, not raised: the
    engine, written before it, is kept."""
    path = tmp_path / "cache-dir"
    path.mkdir()  # writing the file fails, as on a read-only or wrong path
    cache = T.TimingCacheFile(path)
    config = _TimingConfig(accept=True)
    cache.attach(config)
    with pytest.warns(UserWarning, match="engine was written, but the timing cache could not be saved"):
        assert cache.save(config) is False
    assert path.is_dir() and not list(path.iterdir())


@pytest.mark.trt
def test_the_engine_is_written_before_the_timing_cache(dec16, bundle_copy, monkeypatch):
    """F: a real build whose timing-cache path cannot be written keeps its engine and its
    manifest record (TensorRT-RTX builds here; its config's timing-cache calls are stand-ins, as
    full TensorRT's need a GPU)."""
    from cmrt.tensorrt import builder

    bundle = bundle_copy(dec16, "timing")
    plan = bundle.path / "engine.tensorrt-rtx.plan"
    bad = bundle.path.parent / "timing-cache-dir"
    bad.mkdir()
    seen = []
    stand_in = _TimingConfig(accept=True)
    real_attach, real_save = builder.TimingCacheFile.attach, builder.TimingCacheFile.save
    monkeypatch.setattr(builder, "_check_target_options", lambda *a: None)  # a timing cache with TensorRT-RTX
    monkeypatch.setattr(builder.TimingCacheFile, "attach", lambda self, config: real_attach(self, stand_in))
    monkeypatch.setattr(builder.TimingCacheFile, "save",
                        lambda self, config: (seen.append(plan.is_file()), real_save(self, stand_in))[1])
    with pytest.warns(UserWarning, match="engine was written, but the timing cache could not be saved"):
        record = T.build(bundle.path, target="tensorrt-rtx", profile=DEC_PROFILE, timing_cache=bad)
    assert seen == [True]  # the plan was on disk when the cache was saved
    assert plan.is_file() and plan.stat().st_size == record.bytes
    assert Bundle.open(bundle.path).manifest.engines["tensorrt-rtx"].sha256 == record.sha256
    assert record.timing_cache.file == str(bad) and cmrt.check(bundle.path).integrity.passed
