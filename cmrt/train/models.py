"""What each training method trains: model specs from a config, denoisers, and the 2-D toy MLP.

``TrainConfig`` is the one typed configuration of a run; it is resolved once (defaults < ``--config``
JSON < command-line options) and written as JSON beside every checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from .. import schedules as S
from ..errors import ConfigError
from ..models.spec import ModelSpec
from ..models.unet import UNet, UNetConfig, timestep_embedding

METHODS = ("edm", "ct", "cd", "decoder", "vae", "ldm", "lcm")
#: The text-to-image methods (``cmrt.train.t2i``): diffusers models on ``--data digits-text``.
T2I_METHODS = ("vae", "ldm", "lcm")
DEFAULT_DISTANCE = {"edm": "l2", "ct": "pseudo_huber", "cd": "l2", "decoder": "pseudo_huber", "vae": "l2", "ldm": "l2",
                    "lcm": "pseudo_huber"}


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Options of other methods are ignored (and recorded)."""

    method: str = "ct"
    data: str = "digits"
    out: str = "run"
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    image_size: int = 16
    channels: int = 1
    widths: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (False, True, True)
    head_dim: int = 32
    norm_groups: int = 32
    dropout: float = 0.0
    distance: str = ""  # "" = the method's default (DEFAULT_DISTANCE)
    init: str = ""  # initialize the network from this run's EMA weights (e.g. the teacher)
    ct_s0: int = 10
    ct_s1: int = 1280
    teacher: str = ""  # cd: the EDM teacher run
    cd_grid: int = 18
    target_ema: float = 0.95  # cd: the EMA of the target network θ⁻
    encoder: str = ""  # decoder: the frozen encoder (cmrt autoencoder file)
    denoise_weight: float = 0.25  # decoder: weight of the x0 anchor term
    vae: str = ""  # ldm: the AutoencoderKL run (``cmrt train vae``)
    kl_weight: float = 1e-6  # vae: weight of the KL term
    text_width: int = 64  # ldm: the CLIP text encoder's hidden size
    text_layers: int = 2  # ldm: its transformer layers
    cond_dropout: float = 0.1  # ldm: caption dropout (classifier-free guidance)
    weight_cap: float = 1.0  # ldm: per-timestep loss weight min(1/ᾱ_t, cap); 1 = plain ε-MSE
    guidance_min: float = 1.0  # lcm: guidance scales ω + 1 drawn uniformly from [min, max]
    guidance_max: float = 8.0
    lcm_skip: int = 20  # lcm: the skipping step k on the 1000-step schedule (DDIM solver on 1000/k steps)
    time_cond_dim: int = 64  # lcm: the w-embedding size (``time_cond_proj_dim``)
    lora_rank: int = 0  # lcm: > 0 learns LCM-LoRA of this rank instead of a full student
    mlp_width: int = 128  # 2-D toys
    log_every: int = 50
    ckpt_every: int = 1000
    threads: int = 0  # torch CPU threads, 0 = torch's default
    amp: bool = True  # bf16 autocast on a GPU
    name: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "cd" and not self.teacher:
            raise ConfigError("cmrt train cd needs --teacher RUN (an EDM teacher trained with `cmrt train edm`)")
        if self.method in ("ldm",) and not self.vae:
            raise ConfigError("cmrt train ldm needs --vae RUN (an autoencoder trained with `cmrt train vae`)")
        if self.method == "lcm" and not self.teacher:
            raise ConfigError("cmrt train lcm needs --teacher RUN (a teacher trained with `cmrt train ldm`)")
        if self.method == "lcm" and not 1.0 <= self.guidance_min <= self.guidance_max:
            raise ConfigError(f"--guidance-min/--guidance-max must satisfy 1 ≤ min ≤ max, got {self.guidance_min}, "
                              f"{self.guidance_max}")
        if self.method == "lcm" and (self.lcm_skip < 1 or 1000 % self.lcm_skip or self.lora_rank < 0):
            raise ConfigError(f"--lcm-skip must divide 1000 and --lora-rank be ≥ 0, got {self.lcm_skip}, {self.lora_rank}")
        if self.weight_cap < 1.0:
            raise ConfigError(f"--weight-cap must be ≥ 1 (1: the plain ε-prediction loss), got {self.weight_cap}")
        if self.method == "decoder" and not self.encoder:
            raise ConfigError("cmrt train decoder needs --encoder FILE (train one with `cmrt train-autoencoder`)")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ConfigError("--max-steps and --batch-size must be ≥ 1")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        self._check_architecture()
        if self.distance and self.distance not in ("l2", "pseudo_huber"):
            raise ConfigError(f"--distance must be l2 or pseudo_huber, got {self.distance!r}")

    def _check_architecture(self) -> None:
        """The UNet options, checked with the command line's names before any model is built."""
        widths = ",".join(map(str, self.widths))
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"--widths must be positive integers, got {widths!r}")
        if self.norm_groups < 1 or any(w % self.norm_groups for w in self.widths):
            raise ConfigError(f"--widths {widths}: every width must be divisible by --norm-groups {self.norm_groups}")
        flags = self.method not in ("decoder", "vae")
        if flags and len(self.attention) != len(self.widths):
            raise ConfigError(f"--attention needs one flag per --widths level ({len(self.widths)}), got "
                              f"{len(self.attention)}")
        bad = [w for w, a in zip(self.widths, self.attention) if a and w % self.head_dim]
        if flags and (bad or self.widths[-1] % self.head_dim):
            raise ConfigError(f"--widths {widths}: attention widths must be multiples of --head-dim {self.head_dim}")
        if self.layers_per_block < 1 or self.image_size < 1 or self.channels < 1:
            raise ConfigError("--layers-per-block, --image-size and --channels must be ≥ 1")

    @property
    def loss_distance(self) -> str:
        return self.distance or DEFAULT_DISTANCE[self.method]

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "TrainConfig":
        return replace(self, **changes)

    @classmethod
    def from_sources(cls, file: str | Path | None, overrides: dict) -> "TrainConfig":
        """Defaults < JSON ``file`` < ``overrides`` (options given on the command line)."""
        d: dict = {}
        if file:
            try:
                d = json.loads(Path(file).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"--config {file}: cannot read a JSON config ({exc})") from None
        d |= {k: v for k, v in overrides.items() if v is not None}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)


class ToyMLP(nn.Module):
    """A small MLP backbone F(x, t) for 2-D points, called like the UNet: ``forward(x, t, labels)``."""

    def __init__(self, width: int = 128, dim: int = 2, temb: int = 32) -> None:
        super().__init__()
        self.temb = temb
        self.net = nn.Sequential(nn.Linear(dim + temb, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = timestep_embedding(t.expand(x.shape[0]) if t.numel() == 1 else t, self.temb)
        return self.net(torch.cat([x, emb.to(x.dtype)], dim=1))


def unet_config(cfg: TrainConfig, num_classes: int | None, kind: str) -> UNetConfig:
    """The backbone of an image run of ``kind`` "sampler" or "decoder"."""
    if kind == "decoder":
        return UNetConfig(in_channels=cfg.channels + S.LATENT_CHANNELS, out_channels=cfg.channels,
                          block_out_channels=cfg.widths, layers_per_block=cfg.layers_per_block,
                          attention=(False,) * len(cfg.widths), mid_attention=False, time_embedding="learned",
                          num_train_timesteps=S.DECODER_T, norm_groups=cfg.norm_groups, dropout=cfg.dropout)
    return UNetConfig(in_channels=cfg.channels, out_channels=cfg.channels, block_out_channels=cfg.widths,
                      layers_per_block=cfg.layers_per_block, attention=cfg.attention,
                      attention_head_dim=cfg.head_dim, num_classes=num_classes, norm_groups=cfg.norm_groups,
                      attn_norm_groups=cfg.norm_groups, dropout=cfg.dropout)


def model_spec(cfg: TrainConfig, num_classes: int | None, data_name: str, kind: str) -> ModelSpec:
    """The ``ModelSpec`` written into every checkpoint of an image run."""
    name = cfg.name or f"{data_name}-{cfg.method}"
    if kind == "decoder":
        return ModelSpec(kind="decoder", unet=unet_config(cfg, None, kind), image_channels=cfg.channels, clip=False,
                         name=name, trained=True)
    return ModelSpec(kind="sampler", unet=unet_config(cfg, num_classes, kind), image_channels=cfg.channels,
                     image_size=cfg.image_size, num_classes=num_classes, name=name, trained=True)


def build_backbone(cfg: TrainConfig, spec: ModelSpec | None) -> nn.Module:
    return ToyMLP(cfg.mlp_width) if spec is None else UNet(spec.unet)
