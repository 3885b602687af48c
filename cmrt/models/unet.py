"""The UNet backbone shared by consistency models and the consistency decoder.

One ADM-family UNet (guided-diffusion / ``openai/consistency_models``), configurable in width,
depth, attention levels, class conditioning, scale-shift norm, res-block or conv up/down and the
time embedding (sinusoidal for consistency models, a learned table for the decoder). Parameter
names follow diffusers' ``UNet2DModel``, so a diffusers state dict loads without renaming and
the OpenAI layouts need one documented mapping (``cmrt.models.convert``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError


@dataclass(frozen=True)
class UNetConfig:
    """A UNet configuration. ``attention[i]`` says whether level i has self-attention."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (False, True)
    mid_attention: bool = True
    attention_head_dim: int = 64  # OpenAI's 64-channel heads
    num_classes: int | None = None
    scale_shift: bool = True
    resblock_updown: bool = True
    time_embedding: str = "positional"  # "positional" (sinusoidal, cos first) or "learned"
    num_train_timesteps: int = 1000  # rows of the learned time table
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    norm_groups: int = 32
    attn_norm_groups: int | None = 32  # GroupNorm groups of the mid-block attention, None = no norm
    norm_eps: float = 1e-5
    downsample_padding: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        if len(self.attention) != len(self.block_out_channels):
            raise ConfigError("attention needs one flag per level of block_out_channels "
                             f"({len(self.block_out_channels)}), got {len(self.attention)}")
        if self.time_embedding not in ("positional", "learned"):
            raise ConfigError(f"time_embedding must be 'positional' or 'learned', got {self.time_embedding!r}")
        for c in self.block_out_channels:
            if c % self.norm_groups:
                raise ConfigError(f"channel count {c} is not divisible by norm_groups={self.norm_groups}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown UNet config keys: {sorted(unknown)}")
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) float timesteps → (B, dim); cos first when flipped."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Linear → SiLU → Linear (``linear_1``, ``linear_2``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim_out)
        self.linear_2 = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResBlock(nn.Module):
    """GN → SiLU → [up/down] → conv → time conditioning → GN → SiLU → conv, plus a skip."""

    def __init__(self, c_in: int, c_out: int, temb: int, cfg: UNetConfig, *, up: bool = False,
                 down: bool = False) -> None:
        super().__init__()
        self.scale_shift, self.up, self.down = cfg.scale_shift, up, down
        self.norm1 = nn.GroupNorm(cfg.norm_groups, c_in, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, 2 * c_out if cfg.scale_shift else c_out)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, c_out, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        x, h = self._resample(x), self._resample(h)
        h = self.conv1(h)
        t = self.time_emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            c = t.shape[1] // 2  # slices, not chunk: a fixed-step export folds them to constants
            scale, shift = t[:, :c], t[:, c:]
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Spatial self-attention with a residual: GN → q, k, v (per-head) → SDPA → out."""

    def __init__(self, channels: int, head_dim: int, norm_groups: int | None, eps: float) -> None:
        super().__init__()
        if channels % head_dim:
            raise ConfigError(f"attention channels {channels} are not a multiple of head_dim {head_dim}")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups else None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        h = h.reshape(b, c, hgt * wid).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(h).reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.to_out[0](h.transpose(1, 2).reshape(b, -1, c))
        return x + h.transpose(1, 2).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    """Strided 3×3 conv (``conv``), used when res-block down-sampling is off."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)
        self.padding = padding

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv (``conv``), used when res-block up-sampling is off."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: res blocks (+ attention) and an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()


class MidBlock(nn.Module):
    def __init__(self, c: int, temb: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(c, c, temb, cfg), ResBlock(c, c, temb, cfg)])
        self.attentions = nn.ModuleList(
            [Attention(c, cfg.attention_head_dim, cfg.attn_norm_groups, cfg.norm_eps)] if cfg.mid_attention else [])

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h, emb)
        for attn in self.attentions:
            h = attn(h)
        return self.resnets[1](h, emb)


class UNet(nn.Module):
    """The ADM-family UNet: ``forward(x, t, class_labels=None) -> F(x, t, y)``."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        ch, temb = cfg.block_out_channels, cfg.time_embed_dim
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        if cfg.time_embedding == "learned":
            self.time_proj = nn.Embedding(cfg.num_train_timesteps, ch[0])
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        if cfg.num_classes is not None:
            self.class_embedding = nn.Embedding(cfg.num_classes, temb)
        self.down_blocks = nn.ModuleList(self._down_level(i) for i in range(len(ch)))
        self.mid_block = MidBlock(ch[-1], temb, cfg)
        self.up_blocks = nn.ModuleList(self._up_level(i) for i in range(len(ch)))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def _down_level(self, i: int) -> Level:
        cfg, ch = self.config, self.config.block_out_channels
        level, c_out = Level(), ch[i]
        for j in range(cfg.layers_per_block):
            level.resnets.append(ResBlock(ch[max(i - 1, 0)] if j == 0 else c_out, c_out, cfg.time_embed_dim, cfg))
            if cfg.attention[i]:
                level.attentions.append(Attention(c_out, cfg.attention_head_dim, cfg.norm_groups, cfg.norm_eps))
        if i < len(ch) - 1:
            level.downsamplers = nn.ModuleList([
                ResBlock(c_out, c_out, cfg.time_embed_dim, cfg, down=True) if cfg.resblock_updown
                else Downsample(c_out, cfg.downsample_padding)])
        return level

    def _up_level(self, i: int) -> Level:
        cfg, rev = self.config, self.config.block_out_channels[::-1]
        level, c_out, prev = Level(), rev[i], rev[max(i - 1, 0)]
        c_skip_last = rev[min(i + 1, len(rev) - 1)]
        n = cfg.layers_per_block + 1
        for j in range(n):
            c_res = c_skip_last if j == n - 1 else c_out
            level.resnets.append(ResBlock((prev if j == 0 else c_out) + c_res, c_out, cfg.time_embed_dim, cfg))
            if cfg.attention[len(rev) - 1 - i]:
                level.attentions.append(Attention(c_out, cfg.attention_head_dim, cfg.norm_groups, cfg.norm_eps))
        if i < len(rev) - 1:
            level.upsamplers = nn.ModuleList([
                ResBlock(c_out, c_out, cfg.time_embed_dim, cfg, up=True) if cfg.resblock_updown
                else Upsample(c_out)])
        return level

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Time (and class) embedding, (B, 4·C0). ``t`` is (B,): float, or int for a learned table."""
        cfg = self.config
        if cfg.time_embedding == "learned":
            t_emb = self.time_proj(t.long())
        else:
            t_emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(t_emb.to(self.conv_in.weight.dtype))
        if cfg.num_classes is not None:
            if class_labels is None:
                raise InputError("this UNet is class-conditional: pass class_labels")
            emb = emb + self.class_embedding(class_labels)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t[None]  # (1,) broadcasts over the batch: a fixed t folds to constants in a graph
        emb = self.embed(t, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for j, res in enumerate(level.resnets):
                h = res(h, emb)
                if len(level.attentions):
                    h = level.attentions[j](h)
                skips.append(h)
            if hasattr(level, "downsamplers"):
                h = level.downsamplers[0](h, emb)
                skips.append(h)
        h = self.mid_block(h, emb)
        for level in self.up_blocks:
            for j, res in enumerate(level.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attentions):
                    h = level.attentions[j](h)
            if hasattr(level, "upsamplers"):
                h = level.upsamplers[0](h, emb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_flops(cfg: UNetConfig, height: int, width: int) -> int:
    """Multiply-accumulate count ×2 of one UNet evaluation at (height, width), batch 1.

    Counts convolutions, linear layers and attention matmuls (the work that matters); norms and
    pointwise ops are left out. Computed by tracing shapes with a meta-device model.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = UNet(cfg)
        x = torch.empty(1, cfg.in_channels, height, width)
        t = torch.zeros(1)
        y = torch.zeros(1, dtype=torch.long) if cfg.num_classes else None
    with FlopCounterMode(display=False) as counter:
        model(x, t, y)
    return int(counter.get_total_flops())


__all__ = ["UNetConfig", "UNet", "count_parameters", "unet_flops", "timestep_embedding"]
