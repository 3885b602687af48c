"""``export``: model source → bundle (graph + manifest + parity data), checked against PyTorch."""

from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import __version__  # noqa: F401  (resolved eagerly in cmrt)
from .. import schedules as S
from .._io import sha256_file, staged_dir
from ..bundle import GRAPH_FILES, OUTPUT_NAME, VALUE_RANGE, Bundle, Manifest, save_parity
from ..errors import ConfigError
from ..models.denoisers import build_denoiser
from ..models.load import LoadedModel, load_model
from ..models.spec import ModelSpec
from ..parity import compare
from ..samplers import UnrolledConsistencySampler, UnrolledDecoderSampler
from .onnx import OPSET, describe_io, dynamic_shapes, export_graph, graph_files

PARITY_BATCH = 2
PARITY_LATENT_HW = (4, 6)  # decoder parity inputs: 32×48 images (non-square; cheap for the 620M decoder)
PARITY_SEED = 0


def resolve_schedule(spec: ModelSpec, steps: int | None, sigmas: Sequence[float] | None = None,
                     timesteps: Sequence[int] | None = None) -> tuple[list[float] | None, list[int] | None]:
    """The σ's (samplers) or timesteps (decoders) of every evaluation, validated.

    ``sigmas``/``timesteps`` set every evaluation explicitly; otherwise ``steps`` picks the
    default spacing (``schedules.default_cm_sigmas`` / ``schedules.decoder_timesteps``).
    """
    explicit = sigmas if spec.kind == "sampler" else timesteps
    if spec.kind == "decoder" and sigmas is not None:
        raise ConfigError("a decoder is scheduled by timesteps, not σ's: use --timesteps (e.g. 1008,512)")
    if spec.kind == "sampler" and timesteps is not None:
        raise ConfigError("a consistency model is scheduled by σ's: use --sigmas (e.g. 80,1.3824)")
    if explicit is not None:
        if steps is not None and steps != len(explicit):
            raise ConfigError(f"--steps {steps} disagrees with the {len(explicit)} values given")
        steps = len(explicit)
    if steps is None or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps}: use --steps 1, 2, ...")
    if spec.kind == "decoder":
        ts = list(timesteps) if timesteps is not None else _decoder_steps(steps)
        if any(not 0 <= int(t) < S.DECODER_T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ConfigError(f"decoder timesteps must be distinct, descending, in [0, {S.DECODER_T}); got {ts}")
        return None, [int(t) for t in ts]
    sig = [float(s) for s in sigmas] if sigmas is not None else S.default_cm_sigmas(
        steps, spec.grid_size, spec.sigma_min, spec.sigma_max, spec.rho)
    if any(not (math.isfinite(s) and spec.sigma_min < s <= spec.sigma_max) for s in sig):
        raise ConfigError(f"σ's must lie in ({spec.sigma_min}, {spec.sigma_max}]; got {sig}")
    if any(a <= b for a, b in zip(sig, sig[1:])):
        raise ConfigError(f"σ's must be strictly descending; got {sig}")
    return sig, None


def _decoder_steps(steps: int) -> list[int]:
    try:
        return S.decoder_timesteps(steps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_unrolled(model: LoadedModel, sigmas: list[float] | None, timesteps: list[int] | None,
                   clip: bool) -> torch.nn.Module:
    """The unrolled sampler module of a loaded model."""
    denoiser = build_denoiser(model.spec, model.unet)
    if model.spec.kind == "decoder":
        return UnrolledDecoderSampler(denoiser, timesteps, clip=clip).eval()
    return UnrolledConsistencySampler(denoiser, sigmas, sigma_min=model.spec.sigma_min, clip=clip,
                                      conditional=model.spec.num_classes is not None).eval()


def parity_inputs(spec: ModelSpec, steps: int, *, batch: int = PARITY_BATCH,
                  latent_hw: tuple[int, int] = PARITY_LATENT_HW, seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """Random inputs in the graph's order: realistic-scale SD latents (normalizing to N(0, 1)) or
    class labels, then standard-normal noise per step."""
    g = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    if spec.kind == "decoder":
        h, w = latent_hw
        feeds["latents"] = S.denormalize_latents(torch.randn(batch, S.LATENT_CHANNELS, h, w, generator=g))
        shape = (batch, spec.image_channels, S.DECODER_UPSCALE * h, S.DECODER_UPSCALE * w)
    else:
        if spec.num_classes is not None:
            feeds["class_labels"] = torch.randint(0, spec.num_classes, (batch,), generator=g)
        shape = (batch, spec.image_channels, spec.image_size, spec.image_size)
    for i in range(steps):
        feeds[f"noise_{i}"] = torch.randn(shape, generator=g)
    return feeds


def _manifest(model: LoadedModel, sampler: torch.nn.Module, graph: Path, sigmas, timesteps, clip,
              parity: dict) -> Manifest:
    import onnx
    import onnxruntime

    spec = model.spec
    inputs, outputs = describe_io(graph)
    files = graph_files(graph)
    steps = len(sigmas or timesteps)
    return Manifest(
        kind=spec.kind, steps=steps, inputs=inputs, outputs=outputs,
        graphs={"fp32": {"file": graph.name, "data": [f.name for f in files[1:]], "opset": OPSET,
                         "sha256": sha256_file(graph), "bytes": sum(f.stat().st_size for f in files)}},
        model=spec.to_dict(), source=model.source,
        versions={"cmrt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        sigmas=sigmas, timesteps=timesteps, clip=clip,
        image={"channels": spec.image_channels,
               "height": spec.image_size if spec.kind == "sampler" else f"{S.DECODER_UPSCALE}*h",
               "width": spec.image_size if spec.kind == "sampler" else f"{S.DECODER_UPSCALE}*w",
               "value_range": list(VALUE_RANGE), "layout": "NCHW", "dtype": "float32"},
        latent=None if spec.kind == "sampler" else {
            "channels": S.LATENT_CHANNELS, "scale_factor": S.LATENT_SCALE, "means": list(S.LATENT_MEANS),
            "stds": list(S.LATENT_STDS), "upscale": S.DECODER_UPSCALE, "space": "SD 1.x/2.x VAE, unscaled"},
        num_classes=spec.num_classes, parity=parity, precision={"fp32": {"io": "fp32"}},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def export(source: str | Path | None = None, out: str | Path = "bundle", *, steps: int | None = 2,
           sigmas: Sequence[float] | None = None, timesteps: Sequence[int] | None = None,
           clip: bool | None = None, overwrite: bool = False, model: LoadedModel | None = None,
           precision: str = "fp32", io: str = "fp32", **load_options) -> Bundle:
    """Export a model's fixed-step sampler to a bundle, and check it against PyTorch.

    Args:
        source: a model source (None: the bundled default model); ignored when ``model`` is given.
        out: the bundle folder to write; it must not exist (or be empty) unless ``overwrite``.
        steps: number of network evaluations (None when ``sigmas``/``timesteps`` say it).
        sigmas: the σ of every evaluation (consistency models).
        timesteps: the timestep of every evaluation (decoders).
        clip: clamp x0 to [-1, 1] after each evaluation; None follows the source's own sampler.
        overwrite: replace an existing ``out``.
        model: an already loaded model (for library users and tests).
        precision: "fp32", or "fp16" to also write a calibrated FP16 graph (``model.fp16.onnx``),
            verified against the FP32 PyTorch source with the fp16 tolerances.
        io: "fp32" (default) or "fp16": the FP16 graph's input/output dtype.

    Returns:
        The opened bundle. On a parity failure a ``ParityError`` is raised and ``out`` is untouched.
    """
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision must be fp32 or fp16, got {precision!r}")
    if io not in ("fp32", "fp16") or (io == "fp16" and precision != "fp16"):
        raise ConfigError(f"--io {io} needs --precision fp16 (choose --io fp32 or fp16)")
    model = model or load_model(source, **load_options)
    sig, ts = resolve_schedule(model.spec, steps, sigmas, timesteps)
    clip = model.spec.clip if clip is None else bool(clip)
    sampler = build_unrolled(model, sig, ts, clip)
    feeds = parity_inputs(model.spec, len(sig or ts))
    with staged_dir(out, overwrite=overwrite) as tmp:
        graph = tmp / GRAPH_FILES["fp32"]
        t0 = time.perf_counter()
        rewrites = export_graph(sampler, list(feeds.values()), list(feeds), dynamic_shapes(
            model.spec.kind, len(sig or ts), model.spec.num_classes is not None), graph)
        export_s = time.perf_counter() - t0
        report, reference = _check_graph(sampler, graph, feeds)
        save_parity(tmp / "parity.npz", {k: v.numpy() for k, v in feeds.items()}, reference)
        manifest = _manifest(model, sampler, graph, sig, ts, clip, {"onnxruntime-cpu/fp32": report.to_dict()})
        manifest.graphs["fp32"]["export_seconds"] = round(export_s, 2)
        manifest.graphs["fp32"]["rewrites"] = rewrites
        Bundle(tmp, manifest).save_manifest()
        report.raise_if_failed()
        if precision == "fp16":
            _add_fp16(sampler, graph, tmp, model, feeds, manifest, io)
    return Bundle.open(out)


def _add_fp16(sampler, graph: Path, tmp: Path, model: LoadedModel, feeds, manifest: Manifest, io: str) -> None:
    """The FP16 step (``precision.make_fp16``) inside the staged bundle; raises on a parity failure."""
    from .precision import make_fp16

    fp16 = make_fp16(sampler, graph, tmp / GRAPH_FILES["fp16"], model.spec,
                     {k: v.numpy() for k, v in feeds.items()}, io=io)
    manifest.graphs["fp16"] = fp16.graph
    manifest.precision["fp16"] = fp16.record
    manifest.parity["onnxruntime-cpu/fp16"] = fp16.reports["parity inputs"].to_dict()
    Bundle(tmp, manifest).save_manifest()
    fp16.raise_if_failed()


def _check_graph(sampler: torch.nn.Module, graph: Path, feeds: dict[str, torch.Tensor]):
    """Run PyTorch and ONNX Runtime (CPU) on the same inputs and compare."""
    from ..runtime.backends import OnnxRuntimeBackend

    with torch.no_grad():
        reference = {OUTPUT_NAME: sampler(*feeds.values()).numpy()}
    backend = OnnxRuntimeBackend(graph, device="cpu")
    actual = {OUTPUT_NAME: backend.run({k: v.numpy() for k, v in feeds.items()})}
    return compare(actual, reference, backend=backend.name, precision="fp32"), reference
