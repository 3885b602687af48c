"""Tiny random-weight Stable Diffusion / LCM folders in diffusers' layout, built in the test run.

The tokenizer is a character-level CLIP BPE: a vocabulary of single characters (with and
without CLIP's end-of-word marker) and an empty merges list.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CONTEXT = 77  # CLIP's context length, as the published text encoders
HIDDEN = 32
SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def write_tokenizer(folder: Path, *, pad_token: str = "<|endoftext|>") -> int:
    """A character-level CLIPTokenizer's files in ``folder``; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    vocab = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for s in SPECIALS:
        vocab[s] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CONTEXT,
                        pad_token=pad_token)
    tok.save_pretrained(str(folder))
    return len(vocab)


def text_encoder_config(vocab: int, *, projection: int | None = None):
    from transformers import CLIPTextConfig

    kw = {} if projection is None else {"projection_dim": projection}
    return CLIPTextConfig(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_size=HIDDEN,
                          intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=vocab, max_position_embeddings=CONTEXT, hidden_act="gelu", **kw)


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=64)


def tiny_unet(*, time_cond_proj_dim: int | None = 32, xl: bool = False):
    from diffusers import UNet2DConditionModel

    kw = {}
    if xl:
        kw = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=
                  HIDDEN + 6 * 8, transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
                  use_linear_projection=True)
    return UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=2 * HIDDEN if xl else HIDDEN, norm_num_groups=8,
                                time_cond_proj_dim=time_cond_proj_dim, **kw)


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", original_inference_steps=50,
                        timestep_scaling=10.0, set_alpha_to_one=True)


def save_sd_folder(out: Path, *, lcm: bool = True, seed: int = 0) -> Path:
    """A tiny SD 1.x-class folder: ``LatentConsistencyModelPipeline`` (``lcm``: a UNet with
    ``time_cond_proj_dim``) or ``StableDiffusionPipeline`` (a plain UNet, for LCM-LoRA)."""
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = write_tokenizer(out / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "_tok"))
    parts = dict(unet=tiny_unet(time_cond_proj_dim=32 if lcm else None), vae=tiny_vae(),
                 text_encoder=CLIPTextModel(text_encoder_config(vocab)).eval(), tokenizer=tokenizer,
                 scheduler=lcm_scheduler(), safety_checker=None, feature_extractor=None)
    cls = LatentConsistencyModelPipeline if lcm else StableDiffusionPipeline
    pipe = cls(**parts, requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    import shutil

    shutil.rmtree(out / "_tok")
    return out


def save_lcm_lora(folder: Path, out: Path, *, rank: int = 4, seed: int = 2, std: float = 0.2,
                  converted: bool = False) -> Path:
    """A random LoRA for the UNet of ``folder``, saved by ``save_lora_weights`` in PEFT's key layout
    (``unet.<module>.lora_A/lora_B.weight``, as cmrt's ``train lcm --lora-rank`` writes it), on
    the modules LCM-LoRA's training script targets. ``converted``: through
    ``convert_state_dict_to_diffusers`` first (``.lora.down/up``), a layout whose attention
    projections diffusers 0.42's ``load_lora_weights`` silently leaves out. Returns the file."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                                "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj"]))
    with torch.no_grad():  # peft zero-initializes lora_B: give it weights so the LoRA changes the images
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    layers = get_peft_model_state_dict(unet)
    if converted:
        layers = convert_state_dict_to_diffusers(layers)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def save_consistency_decoder(out: Path, *, seed: int = 5, std: float = 0.2) -> Path:
    """A tiny diffusers ``ConsistencyDecoderVAE`` folder (random weights; 32 channels per level)."""
    from diffusers import ConsistencyDecoderVAE

    torch.manual_seed(seed)
    vae = ConsistencyDecoderVAE(encoder_block_out_channels=(32, 32, 32, 32), encoder_layers_per_block=1,
                                decoder_block_out_channels=(32, 32, 32, 32), decoder_layers_per_block=1)
    with torch.no_grad():  # diffusers' init leaves the decoder's output near zero: give it weight
        for p in vae.decoder_unet.parameters():
            p.normal_(0, std) if p.dim() > 1 else p.zero_()
    vae.save_pretrained(str(out))
    return out


def save_sdxl_folder(out: Path, *, time_cond_proj_dim: int | None = 32, seed: int = 3) -> Path:
    """A tiny ``StableDiffusionXLPipeline`` folder: two text encoders (the second with a
    projection: pooled embeddings), a UNet with ``text_time`` added conditions; with
    ``time_cond_proj_dim`` a full LCM-SDXL (as ``latent-consistency/lcm-sdxl``)."""
    import shutil

    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = write_tokenizer(out / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "_tok"))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_encoder_config(vocab)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(vocab, projection=HIDDEN)).eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=tiny_unet(time_cond_proj_dim=time_cond_proj_dim, xl=True),
        scheduler=lcm_scheduler())
    pipe.save_pretrained(str(out))
    shutil.rmtree(out / "_tok")
    return out
