"""Loaders for the published model formats (listed in ``cmrt.models.sources.FORMATS``).

* a diffusers ``ConsistencyDecoderVAE`` folder (``config.json`` + safetensors): its
  ``decoder_unet.*`` weights; diffusers' decode does not clamp, so ``clip`` is False;
* a diffusers ``ConsistencyModelPipeline`` folder (``unet/`` + ``scheduler/``): the scheduler's
  σ_min, σ_max, σ_data, ρ, grid size and ``clip_denoised`` go into the spec;
* a bare diffusers ``UNet2DModel`` folder: a consistency model with OpenAI's defaults;
* an OpenAI consistency-model checkpoint (``cd_imagenet64_l2.pt``, ...): a plain state dict read
  with ``torch.load(weights_only=True)``, its architecture inferred from keys and shapes
  (``arch="imagenet64"|"lsun256"`` checks it against a published configuration);
* OpenAI's ``decoder.pt`` (TorchScript): loaded only when its SHA-256 is the published one or
  ``trust=True``; the time-embedding table comes from ``embedding=embedding.safetensors`` when
  the archive lacks it. OpenAI's decoder clamps x0 after each step, so ``clip`` is True.

diffusers itself is not needed: folders are read with json + safetensors. Weights load into a
UNet built on the meta device (``assign``), so no second copy of a large model is made.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import json
import zipfile
from pathlib import Path

import torch

from .. import schedules as S
from .._io import sha256_file, sha256_path
from ..errors import ConfigError, SourceError
from . import convert as C
from .load import LoadedModel, load_state
from .spec import ModelSpec
from .unet import UNet

#: SHA-256 of OpenAI's published ``decoder.pt`` (the path segment of its download URL).
DECODER_PT_SHA256 = "c9cebd3132dd9c42936d803e33424145a748843c8f716c0814838bdc8a2fe7cb"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = DIFFUSERS_WEIGHTS + ".index.json"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"
VAE_PREFIX = "decoder_unet."
VAE_CLASS, PIPELINE_CLASS, UNET_CLASS = "ConsistencyDecoderVAE", "ConsistencyModelPipeline", "UNet2DModel"
CM_SCHEDULER_CLASS = "CMStochasticIterativeScheduler"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
DECODER_IMAGE_CHANNELS = 3  # the decoder's first 3 output channels are the image


# --- reading ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return data


def _class_name(path: Path) -> str | None:
    """``_class_name`` of a diffusers config file, or None when absent/unreadable."""
    try:
        return json.loads(path.read_text()).get("_class_name") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def read_diffusers_weights(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a diffusers model folder (single or sharded safetensors) whose names start with
    ``prefix`` (stripped), read one by one so that other weights never enter memory."""
    from safetensors import safe_open

    index = folder / DIFFUSERS_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted({folder / f for k, f in weight_map.items() if k.startswith(prefix)})
    elif (folder / DIFFUSERS_WEIGHTS).is_file():
        files = [folder / DIFFUSERS_WEIGHTS]
    elif (folder / PICKLE_WEIGHTS).is_file():
        raise SourceError(f"{folder}: only pickle weights ({PICKLE_WEIGHTS}); cmrt does not unpickle model files: "
                          "re-save with save_pretrained(..., safe_serialization=True)")
    else:
        raise SourceError(f"{folder}: no {DIFFUSERS_WEIGHTS} (or sharded index) found")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = st.get_tensor(key)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SourceError(f"{f}: not a readable safetensors file ({exc})") from None
    if not out:
        raise SourceError(f"{folder}: no weights named {prefix}* found")
    return out


def _build(spec: ModelSpec, state: dict[str, torch.Tensor], path: Path, source: dict) -> LoadedModel:
    """A UNet on the meta device, filled with ``state`` by assignment (no second copy). ``source``
    (format, details) gets ``path`` and, unless it has one, the SHA-256 of ``path``, computed while
    the UNet is built (hashlib releases the GIL: gigabytes of official weights hash meanwhile)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = None if "sha256" in source else pool.submit(sha256_path, path)
        with torch.device("meta"):
            unet = UNet(spec.unet)
        load_state(unet, {k: v.float() for k, v in state.items()}, str(path))
        hashed = {} if digest is None else {"sha256": digest.result()}
    return LoadedModel(spec, unet.eval(), {"path": str(path), **hashed, **source})


def _spec(where: str, **fields) -> ModelSpec:
    try:
        return ModelSpec(**fields)
    except ValueError as exc:
        raise SourceError(f"{where}: {exc}") from None


# --- diffusers ConsistencyDecoderVAE -----------------------------------------------------
def is_diffusers_vae(p: Path) -> bool:
    return p.is_dir() and _class_name(p / "config.json") == VAE_CLASS


def load_diffusers_vae(path: Path) -> LoadedModel:
    """A diffusers ``ConsistencyDecoderVAE`` folder → a decoder (no clamping, as diffusers)."""
    cfg = _read_json(path / "config.json")
    where = str(path / "config.json")
    _check_vae_latent_space(cfg, where)
    unet_cfg = C.unet_config_from_diffusers(
        {k[len("decoder_"):]: v for k, v in cfg.items() if k.startswith("decoder_")}, where)
    if unet_cfg.in_channels != DECODER_IMAGE_CHANNELS + S.LATENT_CHANNELS or unet_cfg.time_embedding != "learned":
        raise SourceError(f"{where}: decoder_in_channels must be {DECODER_IMAGE_CHANNELS + S.LATENT_CHANNELS} with a "
                          "learned time embedding (OpenAI's consistency decoder)")
    spec = _spec(where, kind="decoder", unet=unet_cfg, image_channels=DECODER_IMAGE_CHANNELS, clip=False,
                 name="consistency-decoder (diffusers)")
    state = read_diffusers_weights(path, VAE_PREFIX)
    return _build(spec, state, path, {"format": "diffusers ConsistencyDecoderVAE"})


def _check_vae_latent_space(cfg: dict, where: str) -> None:
    """cmrt's decoder graph bakes in the SD 1.x/2.x latent space: scale, channels and ×8."""
    scale = cfg.get("scaling_factor", S.LATENT_SCALE)
    if abs(float(scale) - S.LATENT_SCALE) > 1e-9:
        raise SourceError(f"{where}: scaling_factor {scale} is not the SD 1.x/2.x VAE's {S.LATENT_SCALE} "
                          "(SDXL latents, scale 0.13025, do not work with the consistency decoder)")
    if cfg.get("latent_channels", S.LATENT_CHANNELS) != S.LATENT_CHANNELS:
        raise SourceError(f"{where}: latent_channels {cfg['latent_channels']} is not {S.LATENT_CHANNELS}")
    levels = len(cfg.get("encoder_block_out_channels", cfg.get("block_out_channels", (0,) * 4)))
    if 2 ** (levels - 1) != S.DECODER_UPSCALE:
        raise SourceError(f"{where}: an encoder with {levels} levels upsamples ×{2 ** (levels - 1)}; "
                          f"the consistency decoder needs ×{S.DECODER_UPSCALE} (4 levels)")


# --- diffusers ConsistencyModelPipeline / UNet2DModel ---------------------------------------
def is_diffusers_pipeline(p: Path) -> bool:
    return p.is_dir() and (_class_name(p / "model_index.json") == PIPELINE_CLASS or (
        (p / "unet" / "config.json").is_file() and (p / "scheduler" / "scheduler_config.json").is_file()))


def is_diffusers_unet(p: Path) -> bool:
    return p.is_dir() and _class_name(p / "config.json") == UNET_CLASS


def _sampler_spec(unet_cfg: dict, where: str, *, name: str, image_size: int | None = None,
                  **schedule) -> ModelSpec:
    cfg = C.unet_config_from_diffusers(unet_cfg, where)
    if cfg.time_embedding != "positional":
        raise SourceError(f"{where}: a consistency model needs a positional (sinusoidal) time embedding, "
                          f"got {cfg.time_embedding!r}")
    size = image_size or unet_cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise SourceError(f"{where}: non-square sample_size {size} is not supported")
        size = size[0]
    if not size:
        raise ConfigError(f"{where}: sample_size is not set: pass image_size=... (the image side in pixels)")
    return _spec(where, kind="sampler", unet=cfg, image_channels=cfg.in_channels, image_size=int(size),
                 num_classes=cfg.num_classes, name=name, **schedule)


def _scheduler_fields(path: Path) -> dict:
    """ModelSpec schedule fields from a ``CMStochasticIterativeScheduler`` config."""
    cfg = _read_json(path)
    if cfg.get("_class_name", CM_SCHEDULER_CLASS) != CM_SCHEDULER_CLASS:
        raise SourceError(f"{path}: scheduler {cfg['_class_name']} is not {CM_SCHEDULER_CLASS}: "
                          "cmrt exports consistency-model pipelines only")
    if float(cfg.get("s_noise", 1.0)) != 1.0:
        raise SourceError(f"{path}: s_noise={cfg['s_noise']} is not supported (1.0)")
    return {"sigma_min": float(cfg.get("sigma_min", S.SIGMA_MIN)), "sigma_max": float(cfg.get("sigma_max", S.SIGMA_MAX)),
            "sigma_data": float(cfg.get("sigma_data", S.SIGMA_DATA)), "rho": float(cfg.get("rho", S.RHO)),
            "grid_size": int(cfg.get("num_train_timesteps", 40)), "clip": bool(cfg.get("clip_denoised", True))}


def load_diffusers_pipeline(path: Path, *, image_size: int | None = None) -> LoadedModel:
    """A diffusers ``ConsistencyModelPipeline`` folder → a sampler following its scheduler."""
    unet_dir = path / "unet"
    where = str(unet_dir / "config.json")
    if _class_name(unet_dir / "config.json") not in (UNET_CLASS, None):
        raise SourceError(f"{where}: the unet is a {_class_name(unet_dir / 'config.json')}, not a {UNET_CLASS}")
    spec = _sampler_spec(_read_json(unet_dir / "config.json"), where, name="consistency model (diffusers)",
                         image_size=image_size, **_scheduler_fields(path / "scheduler" / "scheduler_config.json"))
    state = read_diffusers_weights(unet_dir)
    return _build(spec, state, path, {"format": "diffusers ConsistencyModelPipeline"})


def load_diffusers_unet(path: Path, *, image_size: int | None = None) -> LoadedModel:
    """A bare diffusers ``UNet2DModel`` folder → a sampler with OpenAI's σ range and clamping;
    use ``--sigmas`` to set every evaluation's σ."""
    where = str(path / "config.json")
    spec = _sampler_spec(_read_json(path / "config.json"), where, name="consistency model (diffusers UNet2DModel)",
                         image_size=image_size)
    state = read_diffusers_weights(path)
    return _build(spec, state, path, {"format": "diffusers UNet2DModel"})


# --- OpenAI files -----------------------------------------------------------------------------
def _is_torchscript(p: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a ``torch.save`` zip has none)."""
    try:
        with zipfile.ZipFile(p) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_openai_cm(p: Path) -> bool:
    return p.is_file() and p.suffix in TORCH_SUFFIXES and not _is_torchscript(p)


def is_openai_decoder(p: Path) -> bool:
    return p.is_file() and p.suffix in TORCH_SUFFIXES and _is_torchscript(p)


def _torch_load_state(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects."""
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise SourceError(f"{path}: cannot be read as a plain state dict with weights_only=True "
                          f"(cmrt never unpickles code): {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_openai_cm(path: Path, *, arch: str | None = None, image_size: int | None = None) -> LoadedModel:
    """An OpenAI consistency-model checkpoint → a sampler (OpenAI's σ range, clamped x0).

    Args:
        path: a plain state dict (``cd_imagenet64_l2.pt``, ``ct_bedroom256.pt``, ...).
        arch: "imagenet64" or "lsun256": check the file against that published configuration.
        image_size: the image side in pixels (needed only when the layout is not a published one).

    The Karras grid that ``--steps N`` spaces on is recognized from the published file name
    (``convert.openai_grid``: 201 for ``ct_imagenet64``, 151 for the LSUN-256 CT files, else 40).
    """
    state = _torch_load_state(path)
    cfg = C.infer_openai_cm_config(state, str(path))
    ref = C.check_arch(cfg, arch, str(path)) if arch else C.OPENAI_ARCHS.get(C.match_arch(cfg) or "")
    size = image_size or (ref.image_size if ref else None)
    if not size:
        raise ConfigError(f"{path}: the layout is not a published one (--arch {'|'.join(C.OPENAI_ARCHS)}), "
                          "so the image size is unknown: pass --image-size")
    grid, grid_rule = C.openai_grid(path.name)
    spec = _spec(str(path), kind="sampler", unet=cfg, image_channels=cfg.in_channels, image_size=int(size),
                 num_classes=cfg.num_classes, clip=True, grid_size=grid, name=f"openai consistency model ({path.name})")
    converted = C.openai_cm_to_cmrt(state, cfg, str(path))
    return _build(spec, converted, path, {"format": "openai consistency model", "arch": arch or C.match_arch(cfg),
                                          "grid": grid, "grid_rule": grid_rule})


def load_openai_decoder(path: Path, *, trust: bool = False, embedding: str | Path | None = None) -> LoadedModel:
    """OpenAI's ``decoder.pt`` (TorchScript) → a decoder that clamps x0 after each step, as the original.

    Args:
        path: the TorchScript archive.
        trust: load it although its SHA-256 is not the published one (TorchScript carries code).
        embedding: ``embedding.safetensors`` with the 1024-row time-embedding table, needed when the
            archive lacks it (the published one does).
    """
    digest = sha256_file(path)
    if digest != DECODER_PT_SHA256 and not trust:
        raise SourceError(f"{path}: SHA-256 {digest[:16]}… is not the published decoder.pt "
                          f"({DECODER_PT_SHA256[:16]}…); TorchScript carries code, so cmrt loads it only "
                          "with --trust (trust=True) if you trust this file")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise SourceError(f"{path}: not a loadable TorchScript archive ({str(exc).splitlines()[0]})") from None
    state = C.openai_decoder_to_cmrt(dict(module.state_dict()), str(path))
    del module
    if C.DECODER_EMBEDDING_KEY not in state:
        state[C.DECODER_EMBEDDING_KEY] = _read_embedding(path, embedding)
    cfg = C.infer_decoder_config(state, str(path))
    spec = _spec(str(path), kind="decoder", unet=cfg, image_channels=DECODER_IMAGE_CHANNELS, clip=True,
                 name="consistency-decoder (OpenAI decoder.pt)")
    source = {"sha256": digest, "format": "openai decoder.pt (torchscript)", "trusted": digest != DECODER_PT_SHA256}
    if embedding is not None:
        source["embedding"] = {"path": str(embedding), "sha256": sha256_file(embedding)}
    return _build(spec, state, path, source)


def _read_embedding(path: Path, embedding: str | Path | None) -> torch.Tensor:
    if embedding is None:
        raise ConfigError(f"{path} lacks the decoder's time-embedding table: pass --embedding embedding.safetensors "
                          "(the (1024, 320) table the diffusers and ComfyUI ports use)")
    from safetensors.torch import load_file

    emb = Path(embedding)
    if not emb.is_file():
        raise SourceError(f"embedding file {emb} does not exist")
    try:
        tensors = load_file(str(emb))
    except (OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{emb}: not a readable safetensors file ({exc})") from None
    if len(tensors) != 1:
        keys = sorted(tensors)
        if "weight" not in tensors:
            raise SourceError(f"{emb}: expected one tensor (or one named 'weight'), found {keys[:5]}")
        return tensors["weight"]
    return next(iter(tensors.values()))


# --- unknown folders ------------------------------------------------------------------------
def is_other_diffusers(p: Path) -> bool:
    return p.is_dir() and ((p / "config.json").is_file() or (p / "model_index.json").is_file())


def reject_other_diffusers(p: Path) -> LoadedModel:
    cfg = p / ("model_index.json" if (p / "model_index.json").is_file() else "config.json")
    name = _class_name(cfg) or "an unnamed config"
    raise SourceError(f"{cfg}: {name} is not a format cmrt exports (expected a {VAE_CLASS} folder, a {PIPELINE_CLASS} "
                      f"folder with unet/ and scheduler/, or a {UNET_CLASS} folder)")


__all__ = ["DECODER_PT_SHA256", "read_diffusers_weights", "load_diffusers_vae", "load_diffusers_pipeline",
           "load_diffusers_unet", "load_openai_cm", "load_openai_decoder"]
