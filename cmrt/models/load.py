"""cmrt's own checkpoints: a model source on disk → (ModelSpec, UNet with weights, source facts).

cmrt's own format is a safetensors file whose metadata holds the ``ModelSpec`` as JSON
(``cmrt.spec``); EMA weights, when present, are stored under the ``ema/`` prefix and preferred.
A training run folder holds ``model.safetensors`` or ``checkpoints/step_*.safetensors``.
The published formats are in ``formats``; ``sources.load_model`` picks the loader of a source.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .._io import sha256_path, write_atomic
from ..errors import SourceError
from .spec import ModelSpec
from .unet import UNet

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "digits16_cm.safetensors"
DEFAULT_DECODER = ASSETS / "digits_decoder.safetensors"  # with digits_encoder.safetensors (cmrt.train.autoencoder)
COLOR_MODEL = ASSETS / "digits_color16_cm.safetensors"  # RGB class-conditional digits CM (colorization demo)
PHOTOS_DECODER = ASSETS / "photos_decoder.safetensors"  # natural images; with photos_autoencoder.safetensors
#: The text-to-image LCM trained here (a diffusers LatentConsistencyModelPipeline folder) and the
#: consistency decoder trained on its VAE's latents (``cmrt.train.t2i``, docs/training.md).
T2I_MODEL = ASSETS / "digits_text_lcm"
T2I_DECODER = ASSETS / "digits_text_decoder.safetensors"
SPEC_KEY = "cmrt.spec"
FORMAT_KEY = "cmrt.format"
CHECKPOINT_FORMAT = "cmrt-checkpoint-v1"
EMA_PREFIX = "ema/"
TRAIN_CONFIG_KEY = "cmrt.train_config"  # the run's TrainConfig as JSON (``cmrt.train.runs``)


@dataclass
class LoadedModel:
    """A model ready to unroll: its spec, its backbone with weights, and where it came from."""

    spec: ModelSpec
    unet: UNet
    source: dict


def save_checkpoint(path: str | Path, spec: ModelSpec, state: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None) -> None:
    """Write a cmrt checkpoint (safetensors + spec in the metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if ema:
        tensors |= {EMA_PREFIX + k: v.detach().contiguous().cpu() for k, v in ema.items()}
    meta = {SPEC_KEY: spec.to_json(), FORMAT_KEY: CHECKPOINT_FORMAT} | (metadata or {})
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_checkpoint_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise SourceError(f"{path} is not a readable safetensors file ({exc})") from None


def load_checkpoint(path: str | Path, *, use_ema: bool = True) -> LoadedModel:
    """Load a cmrt checkpoint file."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_metadata(path)
    if SPEC_KEY not in meta:
        raise SourceError(f"{path} has no '{SPEC_KEY}' metadata: it is not a cmrt checkpoint")
    try:
        spec = ModelSpec.from_dict(json.loads(meta[SPEC_KEY]))
    except (ValueError, TypeError, KeyError) as exc:
        raise SourceError(f"{path}: its model spec is invalid ({exc})") from None
    if meta.get("cmrt.method") == "edm":
        raise SourceError(f"{path} is an EDM diffusion teacher (it needs a many-step Heun sampler, not the "
                          "consistency sampler): distill it with `cmrt train cd --teacher RUN` and export that")
    tensors = load_file(str(path))
    ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    state = ema if (use_ema and ema) else {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    unet = UNet(spec.unet)
    load_state(unet, state, str(path))
    source = {"path": str(path), "sha256": sha256_path(path), "format": CHECKPOINT_FORMAT,
              "weights": "ema" if (use_ema and ema) else "raw"}
    return LoadedModel(spec, unet.eval(), source)


def load_state(unet: UNet, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict strictly, with one clear error for missing, unexpected or mis-shaped keys."""
    own = unet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    if problems:
        raise SourceError(f"{where}: weights do not fit the model: " + "; ".join(problems))
    meta = any(p.is_meta for p in unet.parameters())  # built on the meta device: take the tensors as they are
    unet.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=meta)


def run_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a run folder exports: ``model.safetensors``, else the latest step."""
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    ckpts = sorted((folder / "checkpoints").glob("step_*.safetensors"),
                   key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    return ckpts[-1] if ckpts else None


def is_cmrt_file(p: Path) -> bool:
    return p.is_file() and p.suffix == ".safetensors" and SPEC_KEY in read_checkpoint_metadata(p)


def is_run_folder(p: Path) -> bool:
    ckpt = run_checkpoint(p) if p.is_dir() else None
    return ckpt is not None and is_cmrt_file(ckpt)


def is_toy_run(p: Path) -> bool:
    """A run folder or checkpoint of ``cmrt train`` on a 2-D toy set: a training config but no image spec."""
    ckpt = run_checkpoint(p) if p.is_dir() else p
    if ckpt is None or not ckpt.is_file() or ckpt.suffix != ".safetensors":
        return False
    meta = read_checkpoint_metadata(ckpt)
    return TRAIN_CONFIG_KEY in meta and SPEC_KEY not in meta


def reject_toy_run(p: Path) -> LoadedModel:
    ckpt = run_checkpoint(p) if p.is_dir() else p
    data = json.loads(read_checkpoint_metadata(ckpt)[TRAIN_CONFIG_KEY]).get("data", "?")
    raise SourceError(f"{p} is a 2-D toy run (--data {data}): its MLP samples points, not images, so it cannot be "
                      f"exported; score it with `cmrt eval {p}`, or train on an image data set to export")


def load_run(folder: Path) -> LoadedModel:
    """A training run folder's final (or latest) checkpoint."""
    ckpt = run_checkpoint(folder)
    if ckpt is None:
        raise SourceError(f"{folder}: no model.safetensors or checkpoints/step_*.safetensors")
    return load_checkpoint(ckpt)
