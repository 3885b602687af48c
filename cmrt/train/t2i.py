"""Text to image on captioned digits, in diffusers' formats: an ``AutoencoderKL`` (``vae``), a
text-conditioned latent diffusion teacher (``ldm``: ``UNet2DConditionModel`` + a small
``CLIPTextModel`` trained with it), and latent consistency distillation (``lcm``; with
``--lora-rank R`` an LCM-LoRA of the teacher's UNet).

The methods plug into ``loop.train`` through ``T2ITrainer`` (the same loop, EMA, checkpoints,
exact resume, metrics and progress bar as cmrt's own methods). A finished run also holds
``diffusers/``, a folder diffusers' pipelines load (``AutoencoderKL.from_pretrained``,
``StableDiffusionPipeline``, ``LatentConsistencyModelPipeline``), or for LCM-LoRA
``lora/pytorch_lora_weights.safetensors`` in the key layout ``load_lora_weights`` reads.

Latent consistency distillation (Luo et al. 2023; diffusers' ``train_lcd_distill_sd_wds.py``):
a DDIM solver on the teacher's 1000-step schedule at every ``k``-th timestep; a start timestep
t_n+k drawn from that grid, x_{t_n+k} noised from the data latents; the teacher's ε at t_n+k
with and without the caption, guided with ω + 1 drawn from [guidance_min, guidance_max]
(x̂0 and ε each extrapolated by ω), one DDIM step to x̂_{t_n}; the student's consistency
function f(x, t) = c_skip(t)·x + c_out(t)·x̂0(x, t) (``LCMScheduler``'s boundary scalings,
timestep scaling 10) at (x_{t_n+k}, t_n+k) is pulled towards the EMA target's f at
(x̂_{t_n}, t_n). The full student has the guidance embedding (``time_cond_proj_dim``); the
LoRA student is the teacher's UNet plus a LoRA, its target the online network (as
``train_lcm_distill_lora_sd_wds.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, SourceError
from ..pipelines import lcm as L
from . import losses as LS
from .captions import CONTEXT, TEXT_SIZE, CaptionSet, load_captioned, write_tokenizer
from .ema import update_ema
from .loop import Dist, Trainer
from .methods import Batch, Method, Networks
from .models import TrainConfig

DIFFUSERS = "diffusers"  # a finished run's diffusers folder
LORA = "lora"  # an LCM-LoRA run's folder with pytorch_lora_weights.safetensors
LORA_FILE = "pytorch_lora_weights.safetensors"
TRAIN_T = 1000  # the DDPM schedule of Stable Diffusion: scaled-linear β from 0.00085 to 0.012
BETA_START, BETA_END = 0.00085, 0.012
LATENT_CHANNELS = 4
ENCODE_BATCH = 256
#: LCM-LoRA's target modules (diffusers' ``train_lcm_distill_lora_sd_wds.py``).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
TEXT_HEAD_DIM = 16  # channels per head of the text encoder
#: The text encoder's initial token and position embeddings (CLIP initializes both at std 0.02).
#: Measured here: from CLIP's init the digit words stayed nearly indistinguishable (swapping the
#: digit moved the hidden states by 1/8 of their norm, a colour word by all of it) and the teacher
#: never learned them; the colour words, whose signal is strong, grew out of it on their own.
TOKEN_INIT_STD, POSITION_INIT_STD = 1.0, 0.5


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the teacher's schedule (float32, as diffusers)."""
    return L.alphas_cumprod(L.betas(TRAIN_T, BETA_START, BETA_END, "scaled_linear"))


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def add_noise(z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε (``DDPMScheduler.add_noise``)."""
    a = ac[t]
    return _col(a.sqrt()) * z + _col((1 - a).sqrt()) * noise


# --- models ------------------------------------------------------------------------------------
def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.widths)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=cfg.widths,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=cfg.layers_per_block, latent_channels=LATENT_CHANNELS,
                         norm_num_groups=cfg.norm_groups, sample_size=TEXT_SIZE)


def build_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    if cfg.text_width % TEXT_HEAD_DIM:
        raise ConfigError(f"--text-width {cfg.text_width} must be a multiple of {TEXT_HEAD_DIM}")
    model = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_width // TEXT_HEAD_DIM,
        max_position_embeddings=CONTEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu"))
    with torch.no_grad():  # distinct words from the first step (``TOKEN_INIT_STD``)
        model.get_input_embeddings().weight.normal_(0.0, TOKEN_INIT_STD)
        model.embeddings.position_embedding.weight.normal_(0.0, POSITION_INIT_STD)
    return model


def build_unet(cfg: TrainConfig, sample_size: int, *, time_cond_proj_dim: int | None = None):
    """The teacher's ``UNet2DConditionModel``: a cross-attention block where ``--attention`` says
    so, and the caption also pooled into the time embedding (diffusers' ``addition_embed_type="text"``,
    as DeepFloyd IF's UNet: attention pooling of the prompt embeddings, computed inside the UNet
    from ``encoder_hidden_states``, so every diffusers pipeline runs it unchanged). Measured here:
    teachers with cross-attention alone, and with this pooled path, drew the digit at chance
    (9–14% after 2,000–3,000 steps) as long as the text encoder kept CLIP's initialisation; what
    made the digit learnable was ``TOKEN_INIT_STD``; the pooled path stayed in the shipped teacher
    (docs/training.md)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(sample_size=sample_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                block_out_channels=cfg.widths, layers_per_block=cfg.layers_per_block,
                                down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_width,
                                attention_head_dim=tuple(w // cfg.head_dim for w in cfg.widths),
                                norm_num_groups=cfg.norm_groups, time_cond_proj_dim=time_cond_proj_dim,
                                addition_embed_type="text", addition_embed_type_num_heads=cfg.text_width // TEXT_HEAD_DIM)


class TextToImage(nn.Module):
    """The teacher's trainable pair: the UNet and the text encoder."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.text_encoder(ids)[0]).sample


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=BETA_START, beta_end=BETA_END, beta_schedule="scaled_linear",
                        original_inference_steps=50, timestep_scaling=10.0, set_alpha_to_one=True,
                        clip_sample=False)


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=BETA_START, beta_end=BETA_END, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def diffusers_folder(run: str | Path) -> Path:
    """A finished t2i run's diffusers folder, or ``run`` itself if it is a diffusers pipeline folder."""
    p = Path(run)
    if (p / DIFFUSERS).is_dir():
        return p / DIFFUSERS
    if (p / "model_index.json").is_file():
        return p
    raise SourceError(f"{run}: no diffusers folder ({DIFFUSERS}/): train the run to its end with `cmrt train`")


# --- data on latents ----------------------------------------------------------------------------
def encode_posterior(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE's posterior of every image, unscaled."""
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(x), ENCODE_BATCH):
            d = vae.encode(x[i:i + ENCODE_BATCH]).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def token_ids(tokenizer, captions) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# --- methods -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAEMethod(Method):
    """An ``AutoencoderKL``: MSE reconstruction of a posterior sample + ``kl_weight``·KL."""

    name = "vae"
    kl_weight: float = 1e-6

    def loss(self, nets, batch, step, generator):
        d = nets.online.encode(batch.images).latent_dist
        rec = nets.online.decode(d.sample(generator=generator)).sample
        return LS.l2(rec - batch.images).mean() + self.kl_weight * d.kl().mean()


def timestep_weight(ac_t: torch.Tensor, cap: float) -> torch.Tensor:
    """min(1/ᾱ_t, cap): EDM's loss weighting written for ε-prediction on unit-variance latents
    (λ(σ)·σ² = 1 + σ² = 1/ᾱ with σ² = (1 − ᾱ)/ᾱ), capped; cap 1 is the plain ε-MSE."""
    return (1.0 / ac_t).clamp(max=cap)


@dataclass(frozen=True)
class LDMMethod(Method):
    """The teacher: ε-prediction on the scaled-linear DDPM schedule; ``batch.cond`` are token ids
    (empty captions already dropped in by ``T2ITrainer.batch``). ``weight_cap`` > 1 weights the
    noisier timesteps up (``timestep_weight``): there the caption, not the noisy latent, has to say
    which digit it is, and under the plain ε-MSE that term is worth about SNR(t) of its x̂0 error."""

    name = "ldm"
    weight_cap: float = 1.0

    def loss(self, nets, batch, step, generator):
        ac = alphas_cumprod()
        z = batch.images
        t = torch.randint(0, TRAIN_T, (len(z),), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        mse = LS.l2(nets.online(add_noise(z, noise, t, ac), t, batch.cond) - noise)
        return (timestep_weight(ac[t], self.weight_cap) * mse).mean()


@dataclass(frozen=True)
class LCDMethod(Method):
    """Latent consistency distillation (module docstring); ``batch.cond`` = (prompt embeddings,
    the empty caption's embeddings)."""

    name = "lcm"
    skip: int = 20
    guidance_min: float = 1.0
    guidance_max: float = 8.0
    target_ema: float = 0.95
    distance: str = "pseudo_huber"
    w_embedding: int | None = None  # the student's time_cond_proj_dim (None: LoRA, no embedding)

    def loss(self, nets, batch, step, generator):
        ac = alphas_cumprod()
        z, (emb, uncond) = batch.images, batch.cond
        n = len(z)
        grid = torch.arange(1, TRAIN_T // self.skip + 1) * self.skip - 1  # the DDIM solver's timesteps
        i = torch.randint(0, len(grid), (n,), generator=generator)
        t_start, t_end = grid[i], (grid[i] - self.skip).clamp_min(0)
        x = add_noise(z, torch.randn(z.shape, generator=generator), t_start, ac)
        omega = self.guidance_min - 1 + (self.guidance_max - self.guidance_min) * torch.rand(n, generator=generator)
        w_emb = None if self.w_embedding is None else L.guidance_embedding(omega, self.w_embedding)
        student = consistency_fn(nets.online, x, t_start, emb, w_emb, ac)
        with torch.no_grad():
            x_prev = guided_ddim_step(nets.teacher, x, t_start, t_end, emb, uncond, omega, ac)
            target = consistency_fn(nets.target, x_prev, t_end, emb, w_emb, ac)
        return LS.DISTANCES[self.distance](student - target).mean()

    def after_step(self, backbone, target):
        if target is not backbone:  # the full student's EMA target θ⁻ (LoRA: the online network)
            update_ema(target, backbone, self.target_ema)

    def state(self, target):
        return {"target": target.state_dict()} if self.w_embedding is not None else {}

    def load_state(self, target, state):
        if "target" in state:
            target.load_state_dict(state["target"])


def consistency_fn(unet, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, w_emb: torch.Tensor | None,
                   ac: torch.Tensor) -> torch.Tensor:
    """f(x, t) = c_skip(t)·x + c_out(t)·x̂0(x, t), ``LCMScheduler``'s boundary scalings."""
    a = ac[t]
    eps = unet(x, t, encoder_hidden_states=emb, timestep_cond=w_emb).sample
    x0 = L.predicted_x0(x, eps, _col(a.sqrt()), _col((1 - a).sqrt()))
    c_skip, c_out = L.boundary_scalings(t.float(), 10.0)
    return L.denoised(x0, x, _col(c_skip), _col(c_out))


def guided_ddim_step(teacher, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, emb: torch.Tensor,
                     uncond: torch.Tensor, omega: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """One DDIM step t → t_prev of the teacher, x̂0 and ε each guided as c + ω·(c − u)."""
    a, a_prev = _col(ac[t]), _col(ac[t_prev])
    eps = teacher(torch.cat([x, x]), torch.cat([t, t]),
                  encoder_hidden_states=torch.cat([emb, uncond.expand_as(emb)])).sample
    eps_c, eps_u = eps.chunk(2)
    x0_c, x0_u = (L.predicted_x0(x, e, a.sqrt(), (1 - a).sqrt()) for e in (eps_c, eps_u))
    w = _col(omega)
    x0, e = x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e


# --- the trainer ---------------------------------------------------------------------------------
class T2ITrainer(Trainer):
    """``Trainer`` for the text-to-image methods: the same step, EMA, checkpoints and resume; the
    models are diffusers', the data ``digits-text`` (latents and captions held in memory)."""

    def __init__(self, cfg: TrainConfig, data: CaptionSet | None = None, env: Dist | None = None) -> None:
        """Set up run ``cfg`` on ``data`` (default: the ``digits-text`` training split)."""
        if cfg.data != "digits-text":
            raise ConfigError(f"cmrt train {cfg.method} trains on --data digits-text, got {cfg.data!r}")
        self.cfg, self.env, self.out, self.spec, self.crops = cfg, env or Dist(), Path(cfg.out), None, False
        self.data = data if data is not None else load_captioned("train")
        torch.manual_seed(cfg.seed)
        build = {"vae": self._setup_vae, "ldm": self._setup_ldm, "lcm": self._setup_lcm}[cfg.method]
        teacher, target = build()
        self.ema = copy.deepcopy(self.backbone).requires_grad_(False)
        self.model = self._wrap(self.backbone)
        self.nets = Networks(self.model, target if target is not None else self.backbone, teacher)
        self.cond = None
        self.opt = torch.optim.Adam([p for p in self.backbone.parameters() if p.requires_grad], lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank + 1)
        self.step = 0

    # each returns (teacher, target) and sets backbone, method and what batches draw from
    def _setup_vae(self):
        self.method = VAEMethod(self.cfg.kl_weight)
        self.backbone = build_vae(self.cfg)
        return None, None

    def _setup_ldm(self):
        from diffusers import AutoencoderKL
        from transformers import CLIPTokenizer

        self.method = LDMMethod(self.cfg.weight_cap)
        self.vae = AutoencoderKL.from_pretrained(str(diffusers_folder(self.cfg.vae))).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer(self.out / "tokenizer")))
        self.mean, self.std = encode_posterior(self.vae, self.data.x)
        self.ids = token_ids(self.tokenizer, self.data.captions)
        self.empty_ids = token_ids(self.tokenizer, [""])
        unet = build_unet(self.cfg, self.mean.shape[-1])
        self.backbone = TextToImage(unet, build_text_encoder(self.cfg, self.tokenizer))
        return None, None

    def _setup_lcm(self):
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        cfg = self.cfg
        teacher = StableDiffusionPipeline.from_pretrained(str(diffusers_folder(cfg.teacher)), safety_checker=None)
        self.vae, self.tokenizer, self.text_encoder = teacher.vae.eval(), teacher.tokenizer, teacher.text_encoder.eval()
        t_unet = teacher.unet.eval().requires_grad_(False)
        self.mean, self.std = encode_posterior(self.vae, self.data.x)
        with torch.no_grad():
            self.emb = torch.cat([self.text_encoder(ids)[0] for ids in token_ids(self.tokenizer, self.data.captions)
                                  .split(ENCODE_BATCH)])
            self.uncond = self.text_encoder(token_ids(self.tokenizer, [""]))[0]
        lora = cfg.lora_rank > 0
        self.method = LCDMethod(cfg.lcm_skip, cfg.guidance_min, cfg.guidance_max, cfg.target_ema, cfg.loss_distance,
                                None if lora else cfg.time_cond_dim)
        if lora:
            from peft import LoraConfig

            self.backbone = copy.deepcopy(t_unet)
            self.backbone.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                                 init_lora_weights="gaussian", target_modules=LORA_TARGETS))
            for name, p in self.backbone.named_parameters():
                p.requires_grad_("lora_" in name)
            return t_unet, None  # LCM-LoRA's target is the online network
        self.backbone = UNet2DConditionModel.from_config({**t_unet.config, "time_cond_proj_dim": cfg.time_cond_dim})
        missing, unexpected = self.backbone.load_state_dict(t_unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
            raise SourceError(f"--teacher {cfg.teacher}: its UNet does not match the student ({missing}, {unexpected})")
        return t_unet, copy.deepcopy(self.backbone).requires_grad_(False)

    def batch(self) -> Batch:
        """Images (vae), or posterior samples of their latents, scaled, with their captions
        (ldm: token ids, ``cond_dropout`` of them empty; lcm: prompt embeddings and the empty one's)."""
        cfg = self.cfg
        idx = torch.randint(0, len(self.data), (cfg.batch_size,), generator=self.data_gen)
        if cfg.method == "vae":
            return Batch(self.data.x[idx])
        eps = torch.randn(self.mean[idx].shape, generator=self.data_gen)
        z = (self.mean[idx] + self.std[idx] * eps) * self.vae.config.scaling_factor
        if cfg.method == "lcm":
            return Batch(z, None, (self.emb[idx], self.uncond))
        drop = torch.rand(cfg.batch_size, generator=self.data_gen) < cfg.cond_dropout
        return Batch(z, None, torch.where(drop[:, None], self.empty_ids, self.ids[idx]))

    def load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        from ..models.load import EMA_PREFIX

        tensors = load_file(str(path))
        self.backbone.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)})
        self.ema.load_state_dict({k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)})

    def finish(self) -> Path:
        """The final checkpoint, and the EMA weights as a diffusers folder (or an LCM-LoRA file)."""
        final = super().finish()
        save = {"vae": self._save_vae, "ldm": self._save_ldm, "lcm": self._save_lcm}[self.cfg.method]
        save(self.ema)
        return final

    def _save_vae(self, vae) -> None:
        """The AutoencoderKL with SD's convention of a scaling factor: 1/std of the training latents."""
        mean, _ = encode_posterior(vae, self.data.x)
        vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
        vae.save_pretrained(str(self.out / DIFFUSERS))

    def _save_ldm(self, ema: TextToImage) -> None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=ema.text_encoder, tokenizer=self.tokenizer,
                                       unet=ema.unet, scheduler=ddim_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(self.out / DIFFUSERS))

    def _save_lcm(self, ema) -> None:
        if self.cfg.lora_rank > 0:
            from diffusers import StableDiffusionPipeline
            from peft.utils import get_peft_model_state_dict

            # PEFT's key layout (``unet.<module>.lora_A/B.weight``): diffusers 0.42's
            # convert_state_dict_to_diffusers renames only the attention projections (to
            # ``lora.down/up``), and load_lora_weights then drops exactly those, silently
            layers = get_peft_model_state_dict(ema)
            StableDiffusionPipeline.save_lora_weights(str(self.out / LORA), unet_lora_layers=layers,
                                                      safe_serialization=True)
            return
        from diffusers import LatentConsistencyModelPipeline

        pipe = LatentConsistencyModelPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                              unet=ema, scheduler=lcm_scheduler(), safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(self.out / DIFFUSERS))


def train_t2i(cfg: TrainConfig, **options) -> Path:
    """``loop.train`` with ``T2ITrainer`` (``data``: a ``captions.CaptionSet``, default ``digits-text``'s
    training split); the other options as ``loop.train``'s."""
    from .loop import train

    return train(cfg, trainer_cls=T2ITrainer, **options)

