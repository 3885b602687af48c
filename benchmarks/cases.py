"""What the benchmarks time, in one leaf module: the models (random weights at published sizes, from
``cmrt.models.zoo``), a case (model, resolution, steps, batch), the digests that key the bundle
cache, and preparing a case's bundles and inputs.

Every other module of ``benchmarks`` imports from here; this module imports nothing of
``benchmarks`` but ``backends.Prepared`` (and ``backends`` imports nothing of ``benchmarks``), so
the suites, the paired rounds and the editing suite form no circle.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cmrt._io import sha256_files, sha256_tensors
from cmrt.bundle import Bundle
from cmrt.errors import ConfigError
from cmrt.models import zoo
from cmrt.models.load import LoadedModel

from .backends import Prepared

RANDOM_WEIGHTS_SEED = 0
GIGA = 1e9
DEFAULT_CACHE = Path.home() / ".cache" / "cmrt" / "bench"
DIGEST_CHARS = 16  # of a weights or code digest in a cache key


# --- models ----------------------------------------------------------------------------
def random_model(spec) -> LoadedModel:
    """``spec`` with PyTorch's default initialization, seeded (timing does not need trained weights)."""
    return zoo.random_model(spec, seed=RANDOM_WEIGHTS_SEED, std=None)


def _digits() -> LoadedModel:
    from cmrt.models.sources import load_model

    return load_model(None)


@dataclass(frozen=True)
class BenchModel:
    key: str
    description: str
    load: Callable[[], LoadedModel]


MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel("decoder-reduced", "consistency decoder, official depth, widths 32/64/64/64, random weights",
               lambda: random_model(zoo.decoder_spec(zoo.REDUCED_DECODER_WIDTHS, name="decoder-reduced"))),
    BenchModel("decoder-official", "consistency decoder, official widths 320/640/1024/1024 (621M), random weights",
               lambda: random_model(zoo.decoder_spec(zoo.OFFICIAL_DECODER_WIDTHS, name="decoder-official"))),
    BenchModel("digits", "the bundled default digits consistency model (16², 1 channel)", _digits),
    BenchModel("imagenet64", "OpenAI ImageNet-64 CM UNet (296M), random weights",
               lambda: random_model(zoo.openai_cm_spec("imagenet64"))),
    BenchModel("lsun256", "OpenAI LSUN-256 CM UNet (526M), random weights",
               lambda: random_model(zoo.openai_cm_spec("lsun256"))),
    BenchModel("tiny-decoder", "a tiny decoder (widths 32×4, 1 layer) for smoke tests",
               lambda: random_model(zoo.tiny_decoder_spec())),
    BenchModel("tiny-cm", "a tiny class-conditional CM (16²) for smoke tests",
               lambda: random_model(zoo.tiny_cm_spec())),
)}


# --- cases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One timed configuration. ``resolution``: output image side in pixels."""

    model: str
    resolution: int
    steps: int
    batch: int = 1


def case_flops(model: LoadedModel, case: Case) -> float:
    """GFLOP per image: one UNet evaluation at the output resolution × steps."""
    from cmrt.models.unet import unet_flops

    return unet_flops(model.unet.config, case.resolution, case.resolution) * case.steps / GIGA


# --- digests ---------------------------------------------------------------------------
def weights_digest(model: LoadedModel) -> str:
    """A short digest of a model's spec and weights (a cache key part)."""
    return sha256_tensors(model.unet.state_dict(), header=model.spec.to_json())[:DIGEST_CHARS]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of cmrt's source: a cached bundle is reused only if the code that exported it is unchanged."""
    import cmrt

    root = Path(cmrt.__file__).parent
    return sha256_files(root, sorted(root.rglob("*.py")))[:DIGEST_CHARS]


def cache_key(*parts) -> str:
    """A short digest of ``parts`` (JSON-serializable) with the code digest: a cache folder's name part."""
    return hashlib.sha256(json.dumps([code_digest(), *parts]).encode()).hexdigest()[:12]


# --- bundles ---------------------------------------------------------------------------
def cached_bundle(model: LoadedModel, digest: str, cache: Path, schedule: Sequence, *, fp16: bool = False) -> Bundle:
    """The exported bundle of ``model`` at ``schedule`` (σ's or timesteps), exported on first use."""
    from cmrt import __version__
    from cmrt.exporter.api import export

    key = cache_key(__version__, digest, [round(float(s), 6) for s in schedule], fp16)
    out = cache / f"{model.spec.name.split()[0]}-{key}"
    if (out / "cmrt.json").is_file():
        return Bundle.open(out)
    kw = {"timesteps": list(schedule)} if model.spec.kind == "decoder" else {"sigmas": list(schedule)}
    if fp16:
        kw["precision"] = "fp16"
    return export(out=out, model=model, steps=None, overwrite=True, **kw)


def prepare(model: LoadedModel, digest: str, case: Case, cache: Path, backends: Sequence[str],
            gpu: bool) -> Prepared:
    """Export (or reuse) the bundles a case needs and draw its inputs."""
    from cmrt.exporter.api import parity_inputs, resolve_schedule
    from cmrt.schedules import DECODER_UPSCALE

    spec = model.spec
    resolved = resolve_schedule(spec, case.steps)
    schedule = list(resolved.sigmas or resolved.timesteps)
    if spec.kind == "decoder":
        side = case.resolution // DECODER_UPSCALE
        feeds = parity_inputs(spec, case.steps, batch=case.batch, latent_hw=(side, side))
    else:
        if case.resolution != spec.image_size:
            raise ConfigError(f"{spec.name} makes {spec.image_size}² images, not {case.resolution}²")
        feeds = parity_inputs(spec, case.steps, batch=case.batch)
    bundle = cached_bundle(model, digest, cache, schedule)
    single = None
    if "onnxruntime-loop" in backends:
        single = [cached_bundle(model, digest, cache, [s]) for s in schedule]
    fp16 = cached_bundle(model, digest, cache, schedule, fp16=True) if ("tensorrt" in backends and gpu) else None
    return Prepared(model, bundle, {k: v.numpy() for k, v in feeds.items()}, list(schedule), single, fp16)
