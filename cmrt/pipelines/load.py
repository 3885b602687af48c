"""A diffusers text-to-image folder → the parts cmrt exports (UNet, text encoders, tokenizers, VAE,
LCM scheduler settings), with an optional LCM-LoRA fused in.

Supported: folders whose ``model_index.json`` names ``LatentConsistencyModelPipeline``,
``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``. Whatever scheduler the folder names,
the sampler is LCM's (``LCMScheduler.from_config``: the folder's betas, LCM's own defaults for the
rest), as LCM-LoRA's model cards swap it in.
"""

from __future__ import annotations

import inspect
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, SourceError, require
from . import lcm as L

PIPELINES = {
    "LatentConsistencyModelPipeline": "sd",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
}
MODEL_INDEX = "model_index.json"


def pipeline_class(folder: str | Path) -> str | None:
    """The pipeline class a diffusers folder's ``model_index.json`` names (None: not a diffusers
    pipeline folder)."""
    index = Path(folder) / MODEL_INDEX
    if not index.is_file():
        return None
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise SourceError(f"{index} is not valid JSON: the folder is not a diffusers pipeline") from None
    return name if isinstance(name, str) else None


@dataclass
class PipelineParts:
    """What the export needs of a diffusers pipeline folder.

    Attributes:
        pipeline: the diffusers class name.
        family: "sd" (SD 1.x/2.x-class: one text encoder) or "sdxl" (two, pooled embeddings, time ids).
        pipe: the loaded diffusers pipeline (LoRA fused when given).
        lcm: the LCM scheduler settings.
        default_guidance_scale: the pipeline's own ``__call__`` default.
        vae_scale_factor: image pixels per latent pixel.
        default_size: the pipeline's default (height, width).
        force_zeros_for_empty_prompt: SDXL: a missing negative prompt means zero embeddings.
        lora: where an LCM-LoRA came from and its scale, else None.
    """

    pipeline: str
    family: str
    pipe: Any
    lcm: L.LCMConfig
    default_guidance_scale: float
    vae_scale_factor: int
    default_size: tuple[int, int]
    force_zeros_for_empty_prompt: bool
    lora: dict | None = None

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def embed_guidance(self) -> bool:
        return self.unet.config.time_cond_proj_dim is not None

    def text_encoders(self) -> list[tuple[str, Any, str]]:
        """(stage name, encoder module, tokenizer subfolder) of every text encoder, in order."""
        out = [("text_encoder", self.pipe.text_encoder, "tokenizer")]
        if self.family == "sdxl":
            out.append(("text_encoder_2", self.pipe.text_encoder_2, "tokenizer_2"))
        return out


def load_pipeline(folder: str | Path, *, lora: str | Path | None = None, lora_scale: float = 1.0) -> PipelineParts:
    """Load a diffusers text-to-image folder on the CPU in float32, fusing ``lora`` (an LCM-LoRA
    ``.safetensors`` in diffusers' or kohya's key layout) at ``lora_scale``."""
    folder = Path(folder)
    name = pipeline_class(folder)
    if name not in PIPELINES:
        raise SourceError(f"{folder / MODEL_INDEX} names {name!r}; cmrt exports text-to-image pipelines of the "
                          f"classes {', '.join(PIPELINES)}")
    diffusers = require("diffusers", "diffusers", "exporting a diffusers pipeline")
    import torch

    cls = getattr(diffusers, name)
    try:
        with _quiet():
            pipe = cls.from_pretrained(str(folder), torch_dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"{folder} could not be loaded as a {name} ({str(exc).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    try:
        config = L.LCMConfig.from_scheduler_config(dict(pipe.scheduler.config))
    except ValueError as exc:
        raise SourceError(f"{folder / 'scheduler'}: {exc}") from None
    lora_info = None
    if lora is not None:
        lora_info = fuse_lora(pipe, lora, lora_scale)
    pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    family = PIPELINES[name]
    vsf = int(pipe.vae_scale_factor)
    size = int(pipe.unet.config.sample_size) * vsf
    return PipelineParts(name, family, pipe, config, _default_guidance(cls), vsf, (size, size),
                         bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)), lora_info)


@contextmanager
def _quiet() -> Iterator[None]:
    """diffusers' and transformers' loading progress bars and advice off (the CLI prints one line)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def _default_guidance(cls) -> float:
    return float(inspect.signature(cls.__call__).parameters["guidance_scale"].default)


def fuse_lora(pipe, lora: str | Path, scale: float) -> dict:
    """Fuse an LCM-LoRA into the pipeline's UNet (and text encoders, where the file has their
    keys) with diffusers' own ``load_lora_weights``/``fuse_lora``; refuse a file that is not
    readable or whose keys do not all match the UNet."""
    from .._io import sha256_file

    path = Path(lora)
    if not path.is_file():
        raise ConfigError(f"--lora {path} does not exist: pass an LCM-LoRA .safetensors file")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"--lora-scale must be a finite number, got {scale!r}")
    keys = _lora_keys(path)
    _check_lora_keys(pipe, keys, path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pipe.load_lora_weights(str(path), adapter_name="lcm")
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"--lora {path} does not fit this {type(pipe.unet).__name__}: "
                              f"{str(exc).splitlines()[0]}") from None
    _check_lora_applied(pipe, keys, path)
    pipe.fuse_lora(lora_scale=float(scale))
    pipe.unload_lora_weights()
    return {"file": path.name, "sha256": sha256_file(path), "scale": float(scale), "keys": len(keys)}


def _lora_keys(path: Path) -> list[str]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ConfigError(f"--lora {path} is not a readable safetensors file ({str(exc).splitlines()[0]}): "
                          "the file is truncated or not a LoRA; download it again") from None


def _check_lora_keys(pipe, keys: list[str], path: Path) -> None:
    """Every LoRA key must name a module of the UNet or a text encoder, in one of the layouts
    diffusers' ``load_lora_weights`` reads: PEFT/diffusers (``unet.<module>.lora_A/lora_B`` or
    ``.lora.down/up``, with or without the ``unet.`` prefix), the older attention-processor layout
    (``<attn>.processor.to_q_lora.down``), kohya's ``lora_unet_<module with _>.lora_down/up`` and
    ``.alpha`` (diffusers' or SD's original block names), and ``text_encoder.``/``lora_te`` keys.
    The first key that names no module is reported with the UNet's class."""
    modules = {n for n, _ in pipe.unet.named_modules() if n}
    kohya = {n.replace(".", "_") for n in modules}
    for key in keys:
        if key.startswith(("text_encoder", "lora_te")) or _unet_module(key, modules, kohya):
            continue
        raise ConfigError(f"--lora {path}: key {key!r} matches no module of this {type(pipe.unet).__name__} "
                          "(an LCM-LoRA for another base model? lcm-lora-sdv1-5 fits SD 1.x UNets, "
                          "lcm-lora-sdxl SDXL UNets)")


def _check_lora_applied(pipe, keys: list[str], path: Path) -> None:
    """diffusers' ``load_lora_weights`` can leave out modules without a word (0.42 drops the
    attention projections of a file saved through ``convert_state_dict_to_diffusers``): every UNet
    module the file names must now carry the adapter, else the fused UNet is not the LoRA's."""
    named = {_lora_stem(k) for k in keys if not k.startswith(("text_encoder", "lora_te"))}
    carried = {n for n, m in pipe.unet.named_modules() if "lcm" in getattr(m, "lora_A", {})}
    if len(carried) >= len(named):
        return
    missed = sorted(named - carried - {n.replace(".", "_") for n in carried})
    first = f" (first: {missed[0]!r})" if missed else ""
    raise ConfigError(f"--lora {path}: diffusers' load_lora_weights applied {len(carried)} of the "
                      f"{len(named)} UNet modules the file names{first}; save the LoRA in PEFT's key "
                      "layout (get_peft_model_state_dict → save_lora_weights, without "
                      "convert_state_dict_to_diffusers) or kohya's")


def _lora_stem(key: str) -> str:
    """The module a LoRA key names, as written in the file (prefixes and LoRA suffixes removed)."""
    stem = key.split(".alpha")[0]
    for marker in (".lora_A", ".lora_B", ".lora.", ".lora_down", ".lora_up", ".lora_linear_layer"):
        stem = stem.split(marker)[0]
    stem = stem.removeprefix("unet.").removeprefix("lora_unet_")
    if ".processor." in stem:
        module, attr = stem.split(".processor.", 1)
        stem = f"{module}.{_PROCESSOR_NAMES.get(attr.split('.')[0], attr)}"
    return stem


_PROCESSOR_NAMES = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}


def _unet_module(key: str, modules: set[str], kohya: set[str]) -> bool:
    stem = _lora_stem(key)
    if key.startswith("lora_unet_"):
        # SD's original block names (input_blocks_…): diffusers converts them; diffusers' names must match
        return stem in kohya or stem.startswith(("input_blocks", "middle_block", "output_blocks"))
    return stem in modules


__all__ = ["PIPELINES", "PipelineParts", "load_pipeline", "pipeline_class", "fuse_lora"]
