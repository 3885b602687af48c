"""The published latent-consistency-model configurations, built with random weights and saved as
diffusers folders (nothing is downloaded): the ``lcm`` suite's models and the export measurements.

Where each configuration comes from:

- ``UNET_SD15``: Stable Diffusion 1.5's ``unet/config.json`` (``stable-diffusion-v1-5``), i.e.
  diffusers' ``create_unet_diffusers_config_from_ldm`` applied to SD's ``v1-inference.yaml``
  (model_channels 320, channel_mult 1/2/4/4, attention at 4/2/1, 2 res blocks, 8 heads,
  context_dim 768, 64² latents), plus ``time_cond_proj_dim`` 256 as ``SimianLuo/LCM_Dreamshaper_v7``'s
  UNet has it (``/work/shared/FACTS.md`` §7). 859.5M parameters.
- ``CLIP_L14_TEXT``: the text tower of ``openai/clip-vit-large-patch14`` (SD 1.x's text encoder;
  diffusers' ``single_file_utils`` loads SD 1.x's with that config): width 768, 12 layers,
  12 heads, MLP 3072, quick_gelu, 77 positions, vocabulary 49408 (bos 49406, eos 49407). 123.1M.
- ``VAE_SD``: SD's ``AutoencoderKL`` (``create_vae_diffusers_config_from_ldm`` on the same yaml:
  ch 128, ch_mult 1/2/4/4, 2 res blocks, 4 latent channels, scale factor 0.18215). 83.7M.
- ``LCM_SCHEDULER``: LCM_Dreamshaper_v7's ``scheduler_config.json`` (FACTS §7).
- ``UNET_SDXL`` / ``CLIP_BIGG14_TEXT`` / ``VAE_SDXL``: SDXL base 1.0's ``unet/config.json``
  (``sd_xl_base.yaml`` through the same diffusers converter: widths 320/640/1280, transformer
  depth 1/2/10, head dims 5/10/20, context 2048, ``text_time`` added conditions of 2816),
  ``time_cond_proj_dim`` 256 as ``latent-consistency/lcm-sdxl``; the second text encoder is
  OpenCLIP ViT-bigG/14's text tower (width 1280, 32 layers, 20 heads, MLP 5120, gelu,
  projection 1280); the VAE is SD's with scaling factor 0.13025. UNet ≈ 2.57B parameters.

The tokenizer is a character-level CLIP BPE (a vocabulary of single characters, padded with
filler entries to CLIP's 49408 so that bos/eos keep their published ids; an empty merges list):
the text encoder's cost depends only on its 77-token context, not on what the tokens are.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CONTEXT = 77
CLIP_VOCAB = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

UNET_SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, time_cond_proj_dim=256)
CLIP_L14_TEXT = dict(
    vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
VAE_SD = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215)
LCM_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    original_inference_steps=50, timestep_scaling=10.0, set_alpha_to_one=True, prediction_type="epsilon")

UNET_SDXL = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, time_cond_proj_dim=256)
CLIP_BIGG14_TEXT = dict(
    vocab_size=CLIP_VOCAB, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=CONTEXT, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
VAE_SDXL = VAE_SD | dict(sample_size=1024, scaling_factor=0.13025)

#: Tiny stand-ins with the same structure (the suite's smoke test): seconds, not minutes.
UNET_TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=8, time_cond_proj_dim=32)
CLIP_TINY_TEXT = CLIP_L14_TEXT | dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                      projection_dim=32)
VAE_TINY = dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4)

#: size → (pipeline class, UNet, text encoders (name → (transformers class, config)), VAE)
SIZES = {
    "sd15": ("LatentConsistencyModelPipeline", UNET_SD15, {"text_encoder": ("CLIPTextModel", CLIP_L14_TEXT)}, VAE_SD),
    "tiny": ("LatentConsistencyModelPipeline", UNET_TINY, {"text_encoder": ("CLIPTextModel", CLIP_TINY_TEXT)},
             VAE_TINY),
    "sdxl": ("StableDiffusionXLPipeline", UNET_SDXL,
             {"text_encoder": ("CLIPTextModel", CLIP_L14_TEXT),
              "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIGG14_TEXT)}, VAE_SDXL),
}


def write_tokenizer(folder: Path) -> None:
    """A character-level ``CLIPTokenizer`` (CLIP's vocabulary size and special-token ids) in ``folder``."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    while len(vocab) < CLIP_VOCAB - 2:
        vocab[f"<|filler{len(vocab)}|>"] = len(vocab)
    vocab[BOS], vocab[EOS] = CLIP_VOCAB - 2, CLIP_VOCAB - 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CONTEXT,
                  pad_token=EOS).save_pretrained(str(folder))


#: Sizes whose folder is stored in FP16 (half the memory to build and the disk; the exporter and
#: diffusers load it as FP32, ``torch_dtype=torch.float32``): SDXL's 3.5B parameters are 13 GiB in FP32.
STORED_FP16 = ("sdxl",)


def save_folder(size: str, out: Path, *, seed: int = 0) -> Path:
    """A random-weight diffusers folder of ``size`` ("sd15", "sdxl", "tiny") in ``out``, written
    one component at a time (only the largest is ever in memory) with a hand-written
    ``model_index.json``, as ``save_pretrained`` of the whole pipeline writes it. Sizes in
    ``STORED_FP16`` are built and stored in FP16."""
    import diffusers
    import torch
    import transformers

    cls, unet_cfg, encoders, vae_cfg = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if size in STORED_FP16:
        torch.set_default_dtype(torch.float16)
    index: dict = {"_class_name": cls, "_diffusers_version": diffusers.__version__}
    for name, (klass, cfg) in encoders.items():
        model = getattr(transformers, klass)(transformers.CLIPTextConfig(**cfg)).eval()
        model.save_pretrained(str(out / name))
        del model
        tok = name.replace("text_encoder", "tokenizer")
        write_tokenizer(out / tok)
        index |= {name: ["transformers", klass], tok: ["transformers", "CLIPTokenizer"]}
    for name, klass, cfg in (("vae", "AutoencoderKL", vae_cfg), ("unet", "UNet2DConditionModel", unet_cfg)):
        model = getattr(diffusers, klass)(**cfg).eval()
        model.save_pretrained(str(out / name))
        del model
        index[name] = ["diffusers", klass]
    diffusers.LCMScheduler(**LCM_SCHEDULER).save_pretrained(str(out / "scheduler"))
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    if cls == "LatentConsistencyModelPipeline":
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
                  "requires_safety_checker": False}
    else:
        index |= {"image_encoder": [None, None], "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def weights_bytes(folder: Path) -> int:
    """Bytes of the folder's weight files (``*.safetensors``, ``*.bin``)."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in Path(folder).rglob(pattern))


def fp32_bytes(folder: Path) -> int:
    """Bytes of the folder's weights in FP32 (as the exporter holds them), from the parameter counts."""
    return 4 * sum(parameter_counts(folder).values())


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component, from the safetensors headers (no weights loaded)."""
    import struct

    counts: dict[str, int] = {}
    for f in sorted(Path(folder).rglob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        n = 0
        for k, v in header.items():
            if k != "__metadata__":
                size = 1
                for d in v["shape"]:
                    size *= d
                n += size
        counts[f.parent.name] = counts.get(f.parent.name, 0) + n
    return counts


__all__ = ["SIZES", "UNET_SD15", "CLIP_L14_TEXT", "VAE_SD", "LCM_SCHEDULER", "UNET_SDXL", "CLIP_BIGG14_TEXT",
           "VAE_SDXL", "save_folder", "write_tokenizer", "weights_bytes", "fp32_bytes", "parameter_counts"]
