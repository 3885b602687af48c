"""The timed callables, one per backend: what users run today (PyTorch eager on the same module,
diffusers' own decoder or pipeline with the same weights, ``torch.compile``) and cmrt's exported
graph (through ``cmrt.Decoder``/``cmrt.Sampler``, through a bare ``InferenceSession.run``, and
stepped from a Python loop over single-step graphs), plus the GPU backends when present.

A backend that cannot run here raises ``Absent`` with the reason; the suite lists it as absent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cmrt import schedules as S
from cmrt.bundle import Bundle
from cmrt.models.load import LoadedModel

Call = Callable[[], Any]
NOISE_SEED = 0
CPU, CUDA = "cpu", "cuda"


class Absent(Exception):
    """A backend that cannot run on this machine or model; ``str(exc)`` is the reason."""


@dataclass
class Prepared:
    """Everything the backends of one case share.

    Attributes:
        model: the loaded model (spec + UNet with weights).
        bundle: the exported unrolled sampler for ``steps``.
        feeds: graph inputs (latents or class labels, then ``noise_i``) as numpy arrays.
        schedule: σ's (samplers) or timesteps (decoders) of every evaluation.
        single_step: one single-step bundle per evaluation (for the Python loop), or None.
        fp16_bundle: a bundle that also holds an FP16 graph (for TensorRT), or None.
    """

    model: LoadedModel
    bundle: Bundle
    feeds: dict[str, np.ndarray]
    schedule: list[float] | list[int]
    single_step: list[Bundle] | None = None
    fp16_bundle: Bundle | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.model.spec.kind

    @property
    def batch(self) -> int:
        return int(next(v for k, v in self.feeds.items() if k.startswith("noise_")).shape[0])

    @property
    def cond(self) -> np.ndarray | None:
        """Latents (decoder) or class labels (conditional sampler); None for an unconditional one."""
        return self.feeds.get("latents", self.feeds.get("class_labels"))


@dataclass(frozen=True)
class BenchBackend:
    """A backend of the suites: its name, precision, device, and its timed-callable factory."""

    name: str
    precision: str
    device: str
    make: Callable[[Prepared], Call]
    help: str
    #: a reduced-precision contender's FP32 counterpart (same code path in FP32): every suite times the
    #: two in paired rounds and measures the reduced one's PSNR against it (``REDUCED_PRECISION``)
    fp32_twin: str | None = None
    #: runs only when named (``--backends``), never in a suite's default list: INT8 quantizes at
    #: setup (minutes at the published sizes)
    opt_in: bool = False


# --- PyTorch ---------------------------------------------------------------------------
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _unrolled(p: Prepared):
    from cmrt.exporter.api import build_unrolled

    return build_unrolled(p.model, p.bundle.manifest.schedule)


def _torch_inputs(p: Prepared, device: str, dtype=None) -> list:
    import torch

    out = []
    for k, v in p.feeds.items():
        t = torch.from_numpy(v).to(device)
        out.append(t.to(dtype) if (dtype is not None and t.is_floating_point()) else t)
    return out


def _torch_call(module, args: list) -> Call:
    import torch

    def call():
        with torch.inference_mode():
            return module(*args)
    return call


def pytorch_eager(p: Prepared) -> Call:
    """cmrt's unrolled module in PyTorch eager mode (fp32; on the GPU when there is one)."""
    device = CUDA if _cuda_available() else CPU
    return _torch_call(_unrolled(p).to(device), _torch_inputs(p, device))


def pytorch_fp16(p: Prepared) -> Call:
    """cmrt's unrolled module in PyTorch eager mode, fp16 weights and activations (GPU only)."""
    import torch

    if not _cuda_available():
        raise Absent("no CUDA GPU: PyTorch fp16 eager is timed on GPUs only (CPU fp16 convolutions are "
                     "emulated and not what anyone runs)")
    return _torch_call(_unrolled(p).to(CUDA, torch.float16), _torch_inputs(p, CUDA, torch.float16))


def torch_compile(p: Prepared) -> Call:
    """``torch.compile`` (inductor) of cmrt's unrolled module; compiled during the warm-up."""
    import time

    import torch

    device = CUDA if _cuda_available() else CPU
    module = torch.compile(_unrolled(p).to(device))
    args = _torch_inputs(p, device)
    call = _torch_call(module, args)
    t0 = time.perf_counter()
    try:
        call()
    except Exception as exc:  # inductor raises many kinds (missing compiler, lowering errors): report it
        raise Absent(f"torch.compile failed here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    p.extra["compile_s"] = round(time.perf_counter() - t0, 1)
    return call


# --- diffusers -------------------------------------------------------------------------
def diffusers_unet_kwargs(p: Prepared) -> dict:
    """``UNet2DModel`` arguments for cmrt's UNet config (the inverse of
    ``cmrt.models.convert.unet_config_from_diffusers``, checked by a round trip)."""
    from cmrt.models.convert import unet_config_from_diffusers

    cfg, spec = p.model.unet.config, p.model.spec
    down = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in cfg.attention]
    up = ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(cfg.attention)]
    resample = "resnet" if cfg.resblock_updown else "conv"
    kwargs = dict(sample_size=spec.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                  block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                  down_block_types=tuple(down), up_block_types=tuple(up), downsample_type=resample,
                  upsample_type=resample, attention_head_dim=cfg.attention_head_dim,
                  num_class_embeds=cfg.num_classes, add_attention=cfg.mid_attention,
                  resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default",
                  time_embedding_type=cfg.time_embedding, num_train_timesteps=cfg.num_train_timesteps,
                  flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift, norm_num_groups=cfg.norm_groups,
                  attn_norm_num_groups=cfg.attn_norm_groups, norm_eps=cfg.norm_eps,
                  downsample_padding=cfg.downsample_padding, dropout=cfg.dropout)
    if not cfg.resblock_updown:
        raise Absent("diffusers' UNet2DModel cannot express conv up/down-sampling with these blocks")
    if unet_config_from_diffusers(kwargs, "benchmark") != cfg:
        raise Absent("this UNet configuration has no exact diffusers UNet2DModel equivalent")
    return kwargs


def diffusers_decoder(p: Prepared) -> Call:
    """diffusers' ``ConsistencyDecoderVAE.decode`` with cmrt's decoder weights."""
    import torch
    from diffusers import ConsistencyDecoderVAE

    cfg = p.model.unet.config
    device = CUDA if _cuda_available() else CPU
    vae = ConsistencyDecoderVAE(decoder_block_out_channels=cfg.block_out_channels,
                                decoder_layers_per_block=cfg.layers_per_block,
                                encoder_block_out_channels=(cfg.norm_groups,) * len(cfg.block_out_channels),
                                encoder_layers_per_block=1)
    del vae.encoder  # decode never uses it; keep the memory figure honest
    vae.decoder_unet.load_state_dict(p.model.unet.state_dict(), strict=True)
    vae = vae.to(device).eval()
    z = torch.from_numpy(p.feeds["latents"]).to(device)
    steps = len(p.schedule)
    if list(p.schedule) != S.decoder_timesteps(steps):
        raise Absent(f"diffusers' decoder runs its own timesteps for {steps} steps, not {p.schedule}")

    def call():
        with torch.inference_mode():
            return vae.decode(z, generator=torch.Generator(device).manual_seed(NOISE_SEED),
                              num_inference_steps=steps).sample
    return call


def diffusers_pipeline(p: Prepared) -> Call:
    """diffusers' ``ConsistencyModelPipeline`` with cmrt's UNet weights and the same σ grid."""
    import torch
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    spec = p.model.spec
    device = CUDA if _cuda_available() else CPU
    unet = UNet2DModel(**diffusers_unet_kwargs(p))
    unet.load_state_dict(p.model.unet.state_dict(), strict=True)
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=spec.grid_size, sigma_min=spec.sigma_min,
                                               sigma_max=spec.sigma_max, sigma_data=spec.sigma_data,
                                               rho=spec.rho, clip_denoised=bool(p.bundle.manifest.clip))
    pipe = ConsistencyModelPipeline(unet=unet.eval(), scheduler=scheduler).to(device)
    pipe.set_progress_bar_config(disable=True)
    labels = None if p.cond is None else torch.from_numpy(p.cond).to(device)
    steps = len(p.schedule)

    def call():
        with torch.inference_mode():
            return pipe(batch_size=p.batch, class_labels=labels, num_inference_steps=steps,
                        generator=torch.Generator(device).manual_seed(NOISE_SEED), output_type="pt").images
    return call


def diffusers_own(p: Prepared) -> Call:
    return diffusers_decoder(p) if p.kind == "decoder" else diffusers_pipeline(p)


# --- ONNX Runtime ----------------------------------------------------------------------
def _runner(p: Prepared, backend: str):
    from cmrt.runtime.decoder import Decoder
    from cmrt.runtime.sampler import Sampler

    return (Decoder if p.kind == "decoder" else Sampler)(p.bundle.path, backend=backend)


def _cmrt_call(p: Prepared, backend: str) -> Call:
    runner = _runner(p, backend)
    if p.kind == "decoder":
        return lambda: runner.decode(p.feeds["latents"], seed=NOISE_SEED)
    labels = p.feeds.get("class_labels")
    return lambda: runner.sample(p.batch, class_labels=labels, seed=NOISE_SEED)


def onnxruntime_cpu(p: Prepared) -> Call:
    """``cmrt.Decoder.decode`` / ``cmrt.Sampler.sample`` on ONNX Runtime CPU (noise drawn from a seed)."""
    return _cmrt_call(p, "onnxruntime-cpu")


def onnxruntime_cuda(p: Prepared) -> Call:
    """``cmrt.Decoder``/``Sampler`` on ONNX Runtime's CUDA provider."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Absent("onnxruntime has no CUDAExecutionProvider here (needs onnxruntime-gpu and a CUDA GPU)")
    return _cmrt_call(p, "onnxruntime-cuda")


def _session(graph) -> Any:
    import onnxruntime as ort

    from cmrt.runtime.backends import session_options

    return ort.InferenceSession(str(graph), session_options(), providers=["CPUExecutionProvider"])


def onnxruntime_session(p: Prepared) -> Call:
    """A bare ``InferenceSession.run`` on the same graph and session options, fixed feeds: the floor
    under ``cmrt.Decoder``/``Sampler`` (their overhead is the difference)."""
    sess, feeds = _session(p.bundle.graph_path("fp32")), dict(p.feeds)
    return lambda: sess.run(["images"], feeds)[0]


def loop_inputs(kind: str, schedule, i: int, x: np.ndarray | None, eps: np.ndarray, *,
                sigma_min: float = S.SIGMA_MIN) -> np.ndarray:
    """``noise_0`` for the single-step graph of evaluation i, so that it sees the same x_i as the
    unrolled sampler. A single-step graph starts from x = a·noise_0 (a = σ for consistency models,
    √(1−ᾱ_t) for the decoder); the unrolled sampler's x_i before evaluation i is
    x0 + √(σ_i² − σ_min²)·ε_i (consistency) or √ᾱ_t·x + √(1−ᾱ_t)·ε_i (decoder)."""
    if i == 0:
        return eps
    if kind == "sampler":
        sigma = float(schedule[i])
        return ((x + S.renoise_std(sigma, sigma_min) * eps) / sigma).astype(np.float32)
    s = S.decoder_scalings(int(schedule[i]))
    return (eps + x * (s["sqrt_alpha_bar"] / s["sqrt_one_minus_alpha_bar"])).astype(np.float32)


def loop_sample(steps_run: list[Callable[[dict], np.ndarray]], kind: str, schedule, feeds: dict[str, np.ndarray],
                *, sigma_min: float = S.SIGMA_MIN) -> np.ndarray:
    """The unrolled sampler's result, computed by calling one single-step graph per evaluation
    from Python with the noise injected in numpy."""
    cond = {k: v for k, v in feeds.items() if not k.startswith("noise_")}
    x = None
    for i, run in enumerate(steps_run):
        noise_0 = loop_inputs(kind, schedule, i, x, feeds[f"noise_{i}"], sigma_min=sigma_min)
        x = run(cond | {"noise_0": noise_0})
    return x


def onnxruntime_loop(p: Prepared) -> Call:
    """The same model stepped from a Python loop: one ONNX Runtime session per single-step graph,
    called once per evaluation, noise injected in numpy between calls."""
    if not p.single_step:
        raise Absent("no single-step graphs were exported for this case")
    sessions = [_session(b.graph_path("fp32")) for b in p.single_step]
    runs = [lambda f, s=s: s.run(["images"], f)[0] for s in sessions]
    feeds, sigma_min = dict(p.feeds), p.model.spec.sigma_min
    return lambda: loop_sample(runs, p.kind, p.schedule, feeds, sigma_min=sigma_min)


def _plain_graph(p: Prepared):
    """A plain ``torch.onnx.export(..., dynamo=True)`` of the same unrolled module, with the same
    input names and dynamic axes and every other argument at its default (exported once, cached
    beside the bundle)."""
    import torch

    from cmrt._io import staged_dir
    from cmrt.exporter.onnx import dynamic_shapes

    folder = p.bundle.path.with_name(p.bundle.path.name + "-plain")
    if not (folder / "model.onnx").is_file():
        spec = p.model.spec
        dyn = dynamic_shapes(spec.kind, len(p.feeds), spatial=spec.kind == "decoder")
        args = tuple(torch.from_numpy(v) for v in p.feeds.values())
        with warnings.catch_warnings():  # the exporter's notes on axis names are not the benchmark's
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_unrolled(p), args, input_names=list(p.feeds), output_names=["images"],
                                        dynamic_shapes=dyn, dynamo=True, verbose=False)
        with staged_dir(folder, overwrite=True) as tmp:
            program.save(str(tmp / "model.onnx"))
    return folder / "model.onnx"


def onnxruntime_plain(p: Prepared) -> Call:
    """A plain dynamo export of the same module, on ONNX Runtime with default ``SessionOptions``:
    what cmrt's graph clean-up and session options are measured against."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(_plain_graph(p)), providers=["CPUExecutionProvider"])
    feeds = dict(p.feeds)
    return lambda: sess.run(None, feeds)[0]


# --- reduced precision on the CPU (issue 23) -------------------------------------------
def diffusers_bf16(p: Prepared) -> Call:
    """diffusers' own decoder / pipeline with the same weights under ``torch.autocast("cpu",
    dtype=torch.bfloat16)``: what a user gets by writing one line."""
    import torch

    call = diffusers_own(p)

    def autocast_call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return call().float()
    return autocast_call


def _openvino(p: Prepared, backend: str) -> Call:
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise Absent("openvino is not installed (pip install 'cmrt[openvino]')")
    return _cmrt_call(p, backend)


def openvino_bf16(p: Prepared) -> Call:
    """``cmrt.Decoder``/``Sampler`` on OpenVINO with the BF16 precision hint (cmrt's FP32 graph)."""
    return _openvino(p, "openvino-bf16")


def openvino_f32(p: Prepared) -> Call:
    """``cmrt.Decoder``/``Sampler`` on OpenVINO in FP32 (cmrt's FP32 graph)."""
    return _openvino(p, "openvino-f32")


def openvino_int8(p: Prepared) -> Call:
    """``cmrt.Decoder``/``Sampler`` on OpenVINO running the INT8 model of ``cmrt export --int8``'s
    step (NNCF, ``cmrt.exporter.int8``), quantized once into a copy of the case's bundle (decoders
    calibrated on photos encoded by the natural-image autoencoder) and kept whatever its export-time
    speed (``min_speedup=0``: the benchmark measures it); absent where its parity failed."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        raise Absent("openvino and nncf are not installed (pip install 'cmrt[openvino]')")
    from dataclasses import replace

    from cmrt.exporter.int8 import summary_line

    shipped = p.bundle.manifest.int8 is not None and p.bundle.manifest.int8.shipped
    bundle = p.bundle if shipped else int8_bundle(p.bundle)  # the case's own INT8 model where it has one
    if not bundle.manifest.int8.shipped:
        raise Absent(summary_line(bundle.manifest.int8))
    return _cmrt_call(replace(p, bundle=bundle), "openvino-int8")


#: Calibration calls of the benchmarks' INT8 models (the export's default is 32): the speed does not
#: depend on it, and the published-size models take minutes per call on a loaded 2-core machine.
INT8_CALIBRATION_CALLS = 8


def int8_bundle(bundle: Bundle, min_speedup: float = 0.0) -> Bundle:
    """``<bundle>-int8`` (``min_speedup`` 0: shipped on parity alone) or ``<bundle>-int8-rule`` (any
    other ship rule, ``cmrt.exporter.int8.add_int8``): a copy of the case's bundle with its INT8
    model (made once, kept while the FP32 graph and the rule are the same)."""
    import shutil

    from cmrt.exporter.int8 import add_int8

    folder = bundle.path.with_name(bundle.path.name + ("-int8" if min_speedup == 0 else "-int8-rule"))
    if (folder / "cmrt.json").is_file():
        done = Bundle.open(folder)
        q = done.manifest.int8
        if q is not None and q.source_sha256 == bundle.manifest.graphs["fp32"].sha256 and q.min_speedup == min_speedup:
            return done
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bundle.path, folder)
    copy = Bundle.open(folder)
    latents = None
    if copy.manifest.kind == "decoder":
        from cmrt.train.calibration import photo_latents

        latents = photo_latents()
    add_int8(copy, latents=latents, samples=INT8_CALIBRATION_CALLS, min_speedup=min_speedup)
    return Bundle.open(folder)


# --- TensorRT --------------------------------------------------------------------------
def tensorrt(p: Prepared) -> Call:
    """``cmrt.Decoder``/``Sampler`` on a TensorRT engine built from the bundle's FP16 graph."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx")):
        raise Absent("neither tensorrt nor tensorrt_rtx is installed (pip install 'cmrt[trt]')")
    if not _cuda_available():
        raise Absent("no CUDA GPU: TensorRT engines run on NVIDIA GPUs (they can be built here, not timed)")
    if p.fp16_bundle is None:
        raise Absent("no FP16 bundle was exported for this case")
    from cmrt.tensorrt import build

    if not p.fp16_bundle.manifest.engines:
        build(p.fp16_bundle)
    fp16 = Prepared(p.model, Bundle.open(p.fp16_bundle.path), p.feeds, p.schedule)
    return _cmrt_call(fp16, "tensorrt")


#: name → backend, in the order the tables list them. ``pytorch-eager`` is the baseline of ratios.
BENCH_BACKENDS: dict[str, BenchBackend] = {b.name: b for b in (
    BenchBackend("pytorch-eager", "fp32", "auto", pytorch_eager, "cmrt's unrolled module, PyTorch eager"),
    BenchBackend("diffusers", "fp32", "auto", diffusers_own,
                 "diffusers' ConsistencyDecoderVAE.decode / ConsistencyModelPipeline, same weights"),
    BenchBackend("torch-compile", "fp32", "auto", torch_compile, "torch.compile (inductor) of the unrolled module"),
    BenchBackend("pytorch-fp16", "fp16", CUDA, pytorch_fp16, "PyTorch eager in fp16 (GPU only)"),
    BenchBackend("onnxruntime-cpu", "fp32", CPU, onnxruntime_cpu, "cmrt.Decoder/Sampler on ONNX Runtime CPU"),
    BenchBackend("onnxruntime-session", "fp32", CPU, onnxruntime_session,
                 "bare InferenceSession.run on the same graph (no cmrt API)"),
    BenchBackend("onnxruntime-plain", "fp32", CPU, onnxruntime_plain,
                 "a plain torch.onnx dynamo export of the same module, default ONNX Runtime options"),
    BenchBackend("onnxruntime-loop", "fp32", CPU, onnxruntime_loop,
                 "single-step graphs stepped from a Python loop (vs the one-graph unrolled sampler)"),
    BenchBackend("onnxruntime-cuda", "fp32", CUDA, onnxruntime_cuda, "cmrt on ONNX Runtime CUDA"),
    BenchBackend("tensorrt", "fp16", CUDA, tensorrt, "cmrt on a TensorRT engine (FP16 graph)"),
    BenchBackend("diffusers-bf16", "bf16", CPU, diffusers_bf16, "diffusers under torch.autocast('cpu', bfloat16)",
                 fp32_twin="diffusers"),
    BenchBackend("openvino-bf16", "bf16", CPU, openvino_bf16, "cmrt on OpenVINO, BF16 precision hint (FP32 graph)",
                 fp32_twin="onnxruntime-cpu"),
    BenchBackend("openvino-f32", "fp32", CPU, openvino_f32, "cmrt on OpenVINO in FP32"),
    BenchBackend("openvino-int8", "int8", CPU, openvino_int8, "cmrt on OpenVINO, its NNCF INT8 model (`--int8`)",
                 fp32_twin="onnxruntime-cpu", opt_in=True),
)}
BASELINE = "pytorch-eager"
#: The reduced-precision contenders every suite includes (issue 23), name → its FP32 twin: the
#: ``BENCH_BACKENDS`` entries with an ``fp32_twin`` that every suite runs by default (the opt-in
#: ``openvino-int8`` is paired with its twin only when named). A new one is one line above.
REDUCED_PRECISION: dict[str, str] = {b.name: b.fp32_twin for b in BENCH_BACKENDS.values()
                                     if b.fp32_twin and not b.opt_in}
