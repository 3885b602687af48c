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
from cmrt import tensorrt as R
from cmrt.runtime.backends import default_backend_name

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def _record(target: str, version: str, ccs, gpu=None) -> EngineRecord:
    """An engine record as ``cmrt build`` writes it (see cmrt.tensorrt.builder._record), for a plan
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
            "import cmrt.tensorrt, cmrt.runtime.backends, cmrt.exporter.precision, cmrt.exporter.cli\n"
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
    from cmrt.tensorrt import ProfileSpec, build, resolve_target

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


# --- issue 21 item 8: the runtime defects, through stand-ins where a GPU would be needed ----
TURING = {"name": "NVIDIA GeForce RTX 2080 Ti", "compute_capability": "7.5"}


def test_portable_rtx_engines_do_not_cover_turing():
    """A: TensorRT-RTX's portable set leaves out Turing (its support matrix and api_usage.py);
    an engine built for SM75 explicitly runs there."""
    portable = _record("tensorrt-rtx", "1.7.1.116", R.PORTABLE)
    msg = R.compatibility_problem(portable, "1.7.1.116", TURING)
    assert "portable set" in msg and "2080 Ti" in msg and "--compute-capability 7.5" in msg
    assert R.compatibility_problem(_record("tensorrt-rtx", "1.7.1.116", ["SM75"]), "1.7.1.116", TURING) is None
    assert R.compatibility_problem(portable, "1.7.1.116", RTX4090) is None
    assert "7.5" not in R.covered_capabilities(portable) and "8.9" in R.covered_capabilities(portable)


def test_the_default_backend_falls_back_to_onnxruntime_on_turing(bundle_with_engine_record, monkeypatch):
    """A: with a portable engine on a Turing GPU the default backend is ONNX Runtime, not a
    TensorRT backend that would fail at load; on an Ada GPU it is TensorRT."""
    import cmrt.tensorrt.backend as B

    b = bundle_with_engine_record
    monkeypatch.setattr(B, "cuda_device", lambda: TURING)
    assert not R.usable(b) and default_backend_name(b) == "onnxruntime"
    monkeypatch.setattr(B, "cuda_device", lambda: RTX4090)
    assert R.usable(b) and default_backend_name(b) == "tensorrt"


class _EngineStandIn:
    """What ``cmrt check`` needs of an opened TensorRT backend, for the bundle's engine record:
    opening saves a runtime cache (as ``TensorRTBackend.__init__`` does after its JIT compile);
    running returns the stored PyTorch outputs (no GPU here to run the engine)."""

    name, precision, thread_safe, limits = "tensorrt-rtx", "fp16", False, None

    def __init__(self, bundle: Bundle) -> None:
        self.record = bundle.manifest.engines["tensorrt-rtx"]
        self.input_names = bundle.manifest.input_names
        self.engine_target, self.gpu, self.library_version = "tensorrt-rtx", RTX4090, self.record.library_version
        R.save_runtime_cache(bundle.path, self.record, _Cache(b"kernels"), library_version=self.library_version,
                             gpu=RTX4090)
        self.expected = bundle.parity_data()[1]["images"]

    def run(self, feeds):
        return self.expected

    def close(self) -> None:
        pass


def test_check_with_the_tensorrt_backend_keeps_the_runtime_cache_hash(bundle_with_engine_record, monkeypatch,
                                                                        capsys):
    """B: `cmrt check --backend tensorrt` records the engine's parity without resetting the
    runtime cache's hash that opening the backend recorded (the cache stays integrity-checked)."""
    from cmrt.cli import main
    from cmrt.runtime import backends

    b = bundle_with_engine_record
    monkeypatch.setitem(backends.BACKENDS, "tensorrt", _EngineStandIn)
    assert main(["check", str(b.path), "--backend", "tensorrt"]) == 0
    record = Bundle.open(b.path).manifest.engines["tensorrt-rtx"]
    assert record.parity.checked and record.parity.result.passed
    assert record.runtime_cache.sha256 == hashlib.sha256(b"kernels").hexdigest()
    report = cmrt.check(b.path)
    assert report.integrity.passed and "engine.tensorrt-rtx.cache" in report.integrity.checked


def test_the_runtime_cache_lock_is_respected(bundle_with_engine_record):
    """C: a save waits while another holder (process or thread) has the bundle's lock, the file
    Polygraphy's LockFile would use (``<cache>.lock``, as TensorRT-RTX's demo locks its cache)."""
    import threading

    b = bundle_with_engine_record
    record = b.manifest.engines["tensorrt-rtx"]
    cache_file = b.path / "engine.tensorrt-rtx.cache"
    save = threading.Thread(target=R.save_runtime_cache, args=(b.path, record, _Cache(b"kernels")),
                            kwargs={"library_version": "1", "gpu": GPU})
    with R.bundle_lock(b.path):
        save.start()
        save.join(0.5)
        assert save.is_alive() and not cache_file.exists()  # waiting for the lock
    save.join(10)
    assert not save.is_alive() and cache_file.read_bytes() == b"kernels"
    assert (b.path / R.LOCK_FILE).exists()


def test_concurrent_opens_leave_a_consistent_manifest(bundle_with_engine_record):
    """C: two openers of one bundle (Triton instances) saving their runtime caches at once leave
    a manifest that records the file on disk: every later open passes the integrity check."""
    from concurrent.futures import ThreadPoolExecutor

    b = bundle_with_engine_record
    record = b.manifest.engines["tensorrt-rtx"]

    def opener(name: bytes) -> None:
        for i in range(12):
            R.save_runtime_cache(b.path, record, _Cache(name + b"%d" % i), library_version="1", gpu=GPU)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(opener, [b"instance-a/", b"instance-b/"]))
    after = Bundle.open(b.path)  # the size check at open passes ...
    assert after.verify().passed  # ... and so do the hashes
    stored = after.manifest.engines["tensorrt-rtx"].runtime_cache
    assert hashlib.sha256((b.path / stored.file).read_bytes()).hexdigest() == stored.sha256


class _Cuda:
    """``torch.cuda`` as far as close uses it: ``device(d)`` makes ``d`` current for the block."""

    def __init__(self, log: list) -> None:
        self.log, self.current = log, 1  # the caller has made another GPU current

    def device(self, d):
        import contextlib

        @contextlib.contextmanager
        def current():
            before, self.current = self.current, d
            self.log.append(("current", d))
            try:
                yield
            finally:
                self.current = before
        return current()


class _Stream:
    def __init__(self, cuda: _Cuda) -> None:
        self.cuda = cuda

    def synchronize(self) -> None:
        self.cuda.log.append(("synchronize on", self.cuda.current))


def _opened_backend(bundle: Bundle):
    """A ``TensorRTBackend`` as ``__init__`` leaves it on GPU 0, with stand-ins for torch's CUDA
    calls, the stream, the context and TensorRT-RTX's runtime cache (``trt_fakes``)."""
    import types

    import trt_fakes as F

    log: list = []
    cuda = _Cuda(log)
    cache = F.RuntimeCache(b"gpu-a")
    backend = object.__new__(R.TensorRTBackend)
    backend.torch, backend.device, backend.stream = types.SimpleNamespace(cuda=cuda), 0, _Stream(cuda)
    backend.record, backend.bundle_path, backend.gpu = bundle.manifest.engines["tensorrt-rtx"], bundle.path, RTX4090
    backend.trt = types.SimpleNamespace(__version__=backend.record.library_version)
    backend.engine, backend.runner = object(), object()
    backend.setup = R.ContextSetup(F.Context(), F.RuntimeConfig(), cache, None)
    backend.context = backend.setup.context
    serialize = cache.serialize
    cache.serialize = lambda: (log.append(("serialize on", cuda.current)), serialize())[1]
    return backend, cache, log


def test_close_saves_kernels_compiled_after_open(bundle_with_engine_record):
    """D: kernels compiled lazily after open (shape-specialized) are saved at close, as
    TensorRT-RTX's demo saves its runtime cache in ``Engine.deactivate``."""
    b = bundle_with_engine_record
    backend, cache, _ = _opened_backend(b)
    assert backend.save_runtime_cache() is not None  # at open, after the JIT compile
    at_open = (b.path / "engine.tensorrt-rtx.cache").read_bytes()
    cache.entries = b"kernels for a shape first seen after open"
    backend.close()
    saved = (b.path / "engine.tensorrt-rtx.cache").read_bytes()
    assert saved != at_open and b"first seen after open" in saved
    assert Bundle.open(b.path).manifest.engines["tensorrt-rtx"].runtime_cache.sha256 == hashlib.sha256(saved).hexdigest()
    assert cmrt.check(b.path).integrity.passed


def test_close_synchronizes_on_the_engines_gpu_before_releasing(bundle_with_engine_record):
    """E: close makes the engine's GPU current (the caller's is another), synchronizes the stream
    and saves the cache there, then releases context and engine; a second close does nothing."""
    backend, _, log = _opened_backend(bundle_with_engine_record)
    backend.close()
    assert log == [("current", 0), ("synchronize on", 0), ("serialize on", 0)]
    assert backend.engine is None and backend.context is None and backend.setup is None and backend.runner is None
    backend.close()
    assert len(log) == 3
