"""The TensorRT backend: cheap import, refusal of engines built for another library version or GPU
(from the facts ``cmrt build`` records), shape checks against the profile, missing GPU/library
errors, inputs on another GPU, the TensorRT-RTX runtime cache beside the engine; engine execution
on a GPU (marked ``gpu``, skipped without one)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import cmrt
from cmrt import BundleError, InputError, MissingDependencyError
from cmrt._io import sha256_file
from cmrt.bundle import MANIFEST, Bundle, EngineRecord, EngineValidity, Gpu, ProfileRange, RuntimeCache
from cmrt.runtime import tensorrt as R
from cmrt.runtime.backends import default_backend_name

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def _record(target: str, version: str, ccs, gpu=None) -> EngineRecord:
    """An engine record as ``cmrt build`` writes it (see cmrt.exporter.tensorrt._record), for a plan
    that need not exist (the backend refuses before reading it)."""
    module = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}[target]
    return EngineRecord(
        file=f"engine.{target}.plan", bytes=0, sha256="", target=target, library=module, library_version=version,
        compute_capabilities=tuple(ccs) if isinstance(ccs, list) else ccs, gpu=None if gpu is None else Gpu(**gpu),
        graph="fp16", graph_sha256="", strongly_typed=True, io="fp32",
        profiles=({"latents": ProfileRange((1, 4, 4, 4), (1, 4, 8, 8), (2, 4, 16, 16))},), profile_spec={},
        workspace_bytes=None, build_seconds=0.0, peak_rss_mib=0.0, validity=EngineValidity(checked=False),
        built="")


@pytest.mark.integration  # a fresh process
def test_module_imports_without_tensorrt_or_cuda():
    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['tensorrt_rtx'] = None\n"
            "import cmrt.runtime.tensorrt, cmrt.exporter.tensorrt, cmrt.exporter.precision, cmrt.exporter.cli\n"
            "assert 'torch' not in sys.modules and 'onnxconverter_common' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_mismatch_is_refused_with_rebuild_advice():
    msg = R.compatibility_problem(_record("tensorrt-rtx", "1.6.0.1", "library default (portable set)"), "1.7.1.116",
                                  RTX4090)
    assert "1.6.0.1" in msg and "1.7.1.116" in msg and "cmrt build BUNDLE --target tensorrt-rtx" in msg


def test_gpu_mismatch_is_refused():
    rec = _record("tensorrt", "11.4.0", ["8.0"], gpu=A100)
    assert R.compatibility_problem(rec, "11.4.0", A100) is None
    msg = R.compatibility_problem(rec, "11.4.0", H100)
    assert "A100" in msg and "H100" in msg and "rebuild" in msg


def test_rtx_engines_refuse_hopper_and_unbuilt_capabilities():
    portable = _record("tensorrt-rtx", "1.7.1.116", "library default (portable set)")
    assert R.compatibility_problem(portable, "1.7.1.116", RTX4090) is None
    assert "not Hopper" in R.compatibility_problem(portable, "1.7.1.116", H100)
    only_86 = _record("tensorrt-rtx", "1.7.1.116", ["SM86"])
    msg = R.compatibility_problem(only_86, "1.7.1.116", RTX4090)
    assert "['8.6']" in msg and "--compute-capability 8.9" in msg


def test_shapes_outside_the_profile_are_refused():
    rec = _record("tensorrt-rtx", "1.7.1.116", ["SM86"])
    R.check_shapes(rec, {"latents": (2, 4, 16, 16), "noise_0": (2, 3, 128, 128)})
    with pytest.raises(InputError, match=r"outside the engine's profile \(1, 4, 4, 4\)..\(2, 4, 16, 16\)"):
        R.check_shapes(rec, {"latents": (1, 4, 32, 32)})
    with pytest.raises(InputError, match="outside"):
        R.check_shapes(rec, {"latents": (3, 4, 8, 8)})


def test_bundle_without_engine(cm_bundle):
    with pytest.raises(BundleError, match="cmrt build"):
        cmrt.Sampler(cm_bundle.path, backend="tensorrt")


@pytest.fixture
def bundle_with_engine_record(decoder_bundle, tmp_path) -> Bundle:
    """A copy of the tiny decoder bundle whose manifest lists an engine built by the installed
    TensorRT-RTX (no plan file is needed: the backend refuses before reading it)."""
    trt = pytest.importorskip("tensorrt_rtx")
    bundle = Bundle.open(shutil.copytree(decoder_bundle.path, tmp_path / "b"))
    plan = bundle.path / "engine.tensorrt-rtx.plan"
    plan.write_bytes(b"not opened: the backend refuses before reading it")
    record = _record("tensorrt-rtx", trt.__version__, "library default (portable set)")
    bundle.update(engines={"tensorrt-rtx": replace(record, bytes=plan.stat().st_size, sha256=sha256_file(plan))})
    return Bundle.open(bundle.path)


def test_no_gpu_is_one_actionable_error(bundle_with_engine_record):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MissingDependencyError, match="needs an NVIDIA GPU"):
        cmrt.Decoder(bundle_with_engine_record.path, backend="tensorrt")
    assert default_backend_name(bundle_with_engine_record) == "onnxruntime"
    assert R.select_engine(bundle_with_engine_record).target == "tensorrt-rtx"
    with pytest.raises(BundleError, match="has no tensorrt engine"):
        R.select_engine(bundle_with_engine_record, "tensorrt")


def test_cuda_inputs_on_another_gpu_are_refused():
    import torch

    class OnGpu1:  # a CUDA tensor's device, without a GPU here
        device = torch.device("cuda", 1)

    with pytest.raises(InputError, match=r"latents is on cuda:1, but this engine was loaded on cuda:0.*\.to"):
        R.check_devices({"latents": OnGpu1()}, torch.device("cuda", 0))
    R.check_devices({"latents": torch.zeros(1), "n": np.zeros(1)}, torch.device("cuda", 0))  # host data: copied up


GPU = {"name": "a GPU", "compute_capability": "8.6"}


class _Cache:
    """``IRuntimeCache.serialize`` returns a buffer (tensorrt_rtx 1.7.1); its content here is fixed."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self):
        return memoryview(self.data)


def test_runtime_cache_is_saved_beside_the_engine_and_recorded(bundle_with_engine_record):
    b = bundle_with_engine_record
    record = b.manifest.engines["tensorrt-rtx"]
    gpu = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    info = R.save_runtime_cache(b.path, record, _Cache(b"kernels"), library_version="1.7.1.116", gpu=gpu)
    path = b.path / "engine.tensorrt-rtx.cache"
    assert path.read_bytes() == b"kernels"
    assert info == RuntimeCache("engine.tensorrt-rtx.cache", hashlib.sha256(b"kernels").hexdigest(), 7, "1.7.1.116",
                                Gpu(**gpu))
    on_disk = json.loads((b.path / MANIFEST).read_text())["engines"]["tensorrt-rtx"]["runtime_cache"]
    assert on_disk == {"file": info.file, "sha256": info.sha256, "bytes": 7, "library_version": "1.7.1.116", "gpu": gpu}
    assert not list(b.path.glob(".engine.tensorrt-rtx.cache.*"))  # written through a temporary file
    record = Bundle.open(b.path).manifest.engines["tensorrt-rtx"]
    assert R.runtime_cache_blob(b.path, record) == b"kernels"
    assert cmrt.check(b.path).integrity.passed  # the cache file is hashed like every other file
    # unchanged: not written again; changed: replaced
    assert R.save_runtime_cache(b.path, record, _Cache(b"kernels"), library_version="1", gpu=gpu) is None
    assert R.save_runtime_cache(b.path, record, _Cache(b"more kernels"), library_version="1", gpu=gpu) is not None
    record = Bundle.open(b.path).manifest.engines["tensorrt-rtx"]
    assert R.runtime_cache_blob(b.path, record) == b"more kernels"


def test_a_runtime_cache_that_does_not_match_the_manifest_is_not_used(bundle_with_engine_record):
    b = bundle_with_engine_record
    record = b.manifest.engines["tensorrt-rtx"]
    assert R.runtime_cache_blob(b.path, record) is None  # none yet
    R.save_runtime_cache(b.path, record, _Cache(b"kernels"), library_version="1", gpu=GPU)
    record = Bundle.open(b.path).manifest.engines["tensorrt-rtx"]
    (b.path / "engine.tensorrt-rtx.cache").write_bytes(b"tampered!")
    with pytest.warns(UserWarning, match="does not match the SHA-256"):
        assert R.runtime_cache_blob(b.path, record) is None


def test_an_unwritable_runtime_cache_is_a_warning(bundle_with_engine_record):
    b = bundle_with_engine_record
    record = b.manifest.engines["tensorrt-rtx"]
    (b.path / "engine.tensorrt-rtx.cache").mkdir()  # writing the file fails (as in a read-only bundle)
    with pytest.warns(UserWarning, match="could not save the TensorRT-RTX runtime cache.*JIT-compile"):
        assert R.save_runtime_cache(b.path, record, _Cache(b"k"), library_version="1", gpu=GPU) is None
    assert json.loads((b.path / MANIFEST).read_text())["engines"]["tensorrt-rtx"]["runtime_cache"] is None


# --- on a GPU -------------------------------------------------------------------------------
def _gpu_bundle(tmp_path):
    """A tiny FP16 decoder bundle with an engine for this GPU (TensorRT, else TensorRT-RTX)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (engine execution needs one)")
    from conftest import loaded, tiny_decoder_spec
    from cmrt.exporter.api import export
    from cmrt.exporter.tensorrt import ProfileSpec, build, resolve_target

    target = resolve_target(None)
    if target.name == "tensorrt-rtx" and torch.cuda.get_device_capability() == (9, 0):
        pytest.skip("TensorRT for RTX does not run on Hopper GPUs; install cmrt[trt] to test TensorRT here")
    bundle = export(out=tmp_path / "b", steps=2, model=loaded(tiny_decoder_spec()), precision="fp16")
    build(bundle.path, target=target.name, profile=ProfileSpec(batch=(1, 2, 2), latent=((4, 4), (8, 8), (8, 8))))
    return Bundle.open(bundle.path)


@pytest.mark.gpu
def test_engine_matches_pytorch_on_gpu(tmp_path):
    bundle = _gpu_bundle(tmp_path)
    report = cmrt.check(bundle.path, backend="tensorrt")
    assert report.precision == "fp16" and report.passed, report.lines()


@pytest.mark.gpu
def test_torch_cuda_in_and_out_and_cuda_graph(tmp_path):
    import torch

    bundle = _gpu_bundle(tmp_path)
    inputs, expected = bundle.parity_data()
    feeds = {k: torch.from_numpy(v).cuda() for k, v in inputs.items()}
    plain = R.TensorRTBackend(bundle).run_torch(feeds)
    graphed = R.TensorRTBackend(bundle, cuda_graph=True)
    first, second = graphed.run_torch(feeds), graphed.run_torch(feeds)
    assert plain.is_cuda and plain.dtype == torch.float32
    assert torch.equal(first, second) and torch.allclose(first, plain, atol=1e-3)
    assert np.abs(plain.cpu().numpy() - expected["images"]).max() <= 2e-2


@pytest.mark.gpu
def test_decoder_api_keeps_cuda_tensors_on_device(tmp_path):
    """cmrt.Decoder with CUDA latents and noise runs the engine's run_torch and returns a CUDA tensor."""
    import torch

    bundle = _gpu_bundle(tmp_path)
    inputs, expected = bundle.parity_data()
    dec = cmrt.Decoder(bundle.path, backend="tensorrt")
    z = torch.from_numpy(inputs["latents"]).cuda()
    noise = [torch.from_numpy(inputs[n]).cuda() for n in bundle.manifest.noise_names]
    out = dec.decode(z, noise=noise)
    assert out.is_cuda and out.dtype == torch.float32
    assert np.abs(out.cpu().numpy() - expected["images"]).max() <= 2e-2
    assert dec.decode(z, seed=0).is_cuda


@pytest.mark.gpu
def test_alternating_shapes_keep_their_buffers_and_graphs(tmp_path):
    """Batch 1 and 2 alternate: one slot (and, with TensorRT, one graph) each, no re-capture; with
    TensorRT-RTX the library captures graphs itself (WHOLE_GRAPH_CAPTURE) and cmrt captures none."""
    import torch

    bundle = _gpu_bundle(tmp_path)
    inputs, _ = bundle.parity_data()
    one = {k: torch.from_numpy(v).cuda() for k, v in inputs.items()}
    two = {k: torch.cat([v, v]) for k, v in one.items()}
    backend = R.TensorRTBackend(bundle, cuda_graph=True)
    outs = [backend.run_torch(feeds) for feeds in (one, two, one, two)]
    assert len(backend.runner.slots) == 2 and backend.runner.graphs_off is None
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert torch.allclose(outs[1][:1], outs[0], atol=1e-3)
    if backend.setup.whole_graph:
        assert backend.runner.capture is None and backend.runner.launches == 4
    else:
        assert all(s.graph is not None for s in backend.runner.slots.values()) and backend.runner.launches == 4


@pytest.mark.gpu
def test_run_torch_waits_for_the_callers_stream(tmp_path):
    import torch

    bundle = _gpu_bundle(tmp_path)
    inputs, _ = bundle.parity_data()
    backend = R.TensorRTBackend(bundle)
    expected = backend.run_torch({k: torch.from_numpy(v).cuda() for k, v in inputs.items()})
    pending = {k: torch.zeros(v.shape, device="cuda") for k, v in inputs.items()}
    torch.cuda._sleep(50_000_000)  # the caller's stream writes the inputs late
    for k, v in inputs.items():
        pending[k].copy_(torch.from_numpy(v).cuda())
    assert torch.equal(backend.run_torch(pending), expected)


@pytest.mark.gpu
def test_rtx_runtime_cache_is_written_and_reused(tmp_path):
    bundle = _gpu_bundle(tmp_path)
    if "tensorrt-rtx" not in bundle.manifest.engines:
        pytest.skip("the runtime cache is TensorRT-RTX's; this GPU runs TensorRT")
    first = R.TensorRTBackend(bundle, target="tensorrt-rtx")
    info = json.loads((bundle.path / MANIFEST).read_text())["engines"]["tensorrt-rtx"]["runtime_cache"]
    cache = bundle.path / info["file"]
    assert first.setup.cache_loaded is None and cache.is_file() and info["sha256"]
    second = R.TensorRTBackend(Bundle.open(bundle.path), target="tensorrt-rtx")
    assert second.setup.cache_loaded is True


def test_engine_parity_is_recorded_and_reported(bundle_with_engine_record):
    """What `cmrt check --backend tensorrt` writes after running an engine on a GPU (the comparison
    here is the stored outputs against themselves: the recording, not the engine, is under test)."""
    from cmrt.parity import compare
    from cmrt.runtime.check import check, engine_lines, record_engine_parity

    b = bundle_with_engine_record
    assert "never checked" in engine_lines(b)[0]
    assert b.manifest.engines["tensorrt-rtx"].parity.checked is False
    _, expected = b.parity_data()
    report = compare(expected, expected, backend="tensorrt-rtx", precision="fp16")
    record_engine_parity(b, "tensorrt-rtx", report, gpu=Gpu(**RTX4090), library_version="1.7.1.116")
    rec = Bundle.open(b.path).manifest.engines["tensorrt-rtx"].parity
    assert rec.checked and rec.gpu.name == RTX4090["name"] and rec.result.passed and rec.when
    line = engine_lines(Bundle.open(b.path))[0]
    assert "passed on NVIDIA GeForce RTX 4090 (1.7.1.116" in line
    assert check(b.path).passed  # the updated manifest still verifies (its digest was rewritten)
