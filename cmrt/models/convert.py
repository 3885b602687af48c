"""Key mappings and architecture inference for the published model formats, each written once.

cmrt's ``UNet`` uses diffusers' ``UNet2DModel`` parameter names, so diffusers folders need no
renaming, only their ``config.json`` translated (``unet_config_from_diffusers``). The OpenAI
formats need one mapping each, with its inverse (used by the tests to write a model out in the
OpenAI layout):

* OpenAI consistency models (``openai/consistency_models``, guided-diffusion names:
  ``input_blocks.{k}.{0|1}``, ``middle_block``, ``output_blocks``, ``in_layers``/``emb_layers``/
  ``out_layers``). Attention ``qkv``/``proj_out`` are 1×1 **Conv2d** weights, (3C, C, 1, 1) and
  (C, C, 1, 1): ``cm/unet.py`` builds ``AttentionBlock`` with ``conv_nd(dims=2, ...)``.
  guided-diffusion's own checkpoints use 1×1 Conv1d, (3C, C, 1); both load. qkv rows are in
  flash-attention order ``(three heads dim)`` (``QKVFlashAttention``, the default of every
  published model): the 3C rows split into contiguous q, k, v blocks. The layout of a file is
  inferred from its keys and shapes alone (``infer_openai_cm_config``).
* OpenAI's consistency decoder (``decoder.pt``, TorchScript: ``down_{i}_conv_{j}``,
  ``down_{i}_downsamp``, ``mid_{i}``, ``up_{i}_conv_{j}``, ``up_{i}_upsamp``, leaves ``gn_1``,
  ``f_1``, ``f_t``, ``gn_2``, ``f_2``, ``f_s``, parameters ``.w``/``.g``/``.b``; optionally under
  ``blocks.``), as documented by diffusers' ``scripts/convert_consistency_decoder.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import ConfigError, SourceError
from .unet import UNetConfig

# --- OpenAI consistency models ----------------------------------------------------------
OPENAI_HEAD_CHANNELS = 64  # openai/consistency_models: num_head_channels=64
OPENAI_NORM_GROUPS = 32  # guided-diffusion GroupNorm32
QKV_PARTS = ("to_q", "to_k", "to_v")

#: OpenAI res-block leaf → cmrt/diffusers leaf.
_CM_RES_LEAVES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_PARAMS = ("weight", "bias")


@dataclass(frozen=True)
class OpenAIArch:
    """A published OpenAI consistency-model configuration (``--arch``)."""

    unet: UNetConfig
    image_size: int
    description: str


OPENAI_ARCHS: dict[str, OpenAIArch] = {
    "imagenet64": OpenAIArch(
        UNetConfig(in_channels=3, out_channels=3, block_out_channels=(192, 384, 576, 768), layers_per_block=3,
                   attention=(False, True, True, True), mid_attention=True, attention_head_dim=OPENAI_HEAD_CHANNELS,
                   num_classes=1000, scale_shift=True, resblock_updown=True, attn_norm_groups=OPENAI_NORM_GROUPS),
        64, "ImageNet 64×64, class-conditional (cd_imagenet64_*.pt, ct_imagenet64.pt)"),
    "lsun256": OpenAIArch(
        UNetConfig(in_channels=3, out_channels=3, block_out_channels=(256, 256, 512, 512, 1024, 1024),
                   layers_per_block=2, attention=(False, False, False, True, True, True), mid_attention=True,
                   attention_head_dim=OPENAI_HEAD_CHANNELS, num_classes=None, scale_shift=False,
                   resblock_updown=True, attn_norm_groups=OPENAI_NORM_GROUPS),
        256, "LSUN 256×256, unconditional (cd/ct_bedroom256*.pt, cd/ct_cat256*.pt)"),
}


#: Karras grid points each published checkpoint was sampled on (``scripts/launch.sh`` ``--steps``;
#: diffusers' ``convert_consistency_to_diffusers.py`` sets the same ``num_train_timesteps``):
#: consistency distillation 40, consistency training 201 (ImageNet-64) and 151 (LSUN-256).
OPENAI_CD_GRID = 40
OPENAI_CT_GRIDS = {"ct_imagenet64": 201, "ct_bedroom256": 151, "ct_cat256": 151}


def openai_grid(filename: str) -> tuple[int, str]:
    """(grid points, why) for an OpenAI checkpoint, recognized by its published file name."""
    stem = filename.lower().rsplit(".", 1)[0]
    for prefix, n in OPENAI_CT_GRIDS.items():
        if stem.startswith(prefix):
            return n, f"the published {n}-point grid of {prefix}"
    if stem.startswith("cd_"):
        return OPENAI_CD_GRID, f"the published {OPENAI_CD_GRID}-point grid of OpenAI's CD checkpoints"
    return OPENAI_CD_GRID, (f"assumed: the {OPENAI_CD_GRID}-point CD grid (an unrecognized file name); for a CT "
                            "checkpoint pass --grid 201 (ImageNet-64) or --grid 151 (LSUN-256)")


def openai_cm_layout(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    """(OpenAI prefix, cmrt prefix, kind) of every module of a UNet; kind is "plain", "res", "attn",
    "down" (a strided conv ``op``) or "up" (a conv after nearest ×2). Both directions use it."""
    levels, nrb = len(cfg.block_out_channels), cfg.layers_per_block
    yield "input_blocks.0.0", "conv_in", "plain"
    yield "time_embed.0", "time_embedding.linear_1", "plain"
    yield "time_embed.2", "time_embedding.linear_2", "plain"
    if cfg.num_classes is not None:
        yield "label_emb", "class_embedding", "plain"
    k = 1
    for i in range(levels):
        for j in range(nrb):
            yield f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", "res"
            if cfg.attention[i]:
                yield f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", "attn"
            k += 1
        if i < levels - 1:
            if cfg.resblock_updown:
                yield f"input_blocks.{k}.0", f"down_blocks.{i}.downsamplers.0", "res"
            else:
                yield f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"
            k += 1
    yield "middle_block.0", "mid_block.resnets.0", "res"
    if cfg.mid_attention:
        yield "middle_block.1", "mid_block.attentions.0", "attn"
    yield f"middle_block.{2 if cfg.mid_attention else 1}", "mid_block.resnets.1", "res"
    k = 0
    for i in range(levels):
        attn = cfg.attention[levels - 1 - i]
        for j in range(nrb + 1):
            yield f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", "res"
            if attn:
                yield f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", "attn"
            if j == nrb and i < levels - 1:
                sub = 2 if attn else 1
                if cfg.resblock_updown:
                    yield f"output_blocks.{k}.{sub}", f"up_blocks.{i}.upsamplers.0", "res"
                else:
                    yield f"output_blocks.{k}.{sub}.conv", f"up_blocks.{i}.upsamplers.0.conv", "plain"
            k += 1
    yield "out.0", "conv_norm_out", "plain"
    yield "out.2", "conv_out", "plain"


def _leaf_pairs(kind: str) -> list[tuple[str, str]]:
    if kind == "res":
        return list(_CM_RES_LEAVES.items())
    if kind == "attn":
        return [("norm", "group_norm"), ("proj_out", "to_out.0")]
    return [("", "")]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def openai_cm_to_cmrt(state: dict[str, torch.Tensor], cfg: UNetConfig, where: str) -> dict[str, torch.Tensor]:
    """Rename an OpenAI consistency-model state dict to cmrt names (qkv split in flash order).

    Every key must be consumed: leftovers raise ``SourceError`` (missing keys are reported by
    ``load_state`` when the result is loaded).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for old, new, kind in openai_cm_layout(cfg):
        for old_leaf, new_leaf in _leaf_pairs(kind):
            for p in _PARAMS:
                key = _join(old, old_leaf, p)
                if key in state:
                    v = state[key]
                    out[_join(new, new_leaf, p)] = _conv1x1_as_linear(v, key, where) if kind == "attn" else v
                    used.add(key)
        if kind == "attn":
            for p in _PARAMS:
                key = _join(old, "qkv", p)
                if key not in state:
                    continue
                used.add(key)
                v = _conv1x1_as_linear(state[key], key, where)
                if v.shape[0] % 3:
                    raise SourceError(f"{where}: {key} has {v.shape[0]} rows, not a multiple of 3 (q, k, v)")
                for part, chunk in zip(QKV_PARTS, v.chunk(3, dim=0)):
                    out[_join(new, part, p)] = chunk
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise SourceError(f"{where}: {len(unexpected)} unexpected keys for the inferred architecture "
                          f"(e.g. {unexpected[:3]}): the file is not an OpenAI consistency-model state dict "
                          "of this layout")
    return out


def _conv1x1_as_linear(v: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """A 1×1 Conv2d (out, in, 1, 1) or Conv1d (out, in, 1) weight as a Linear (out, in) one;
    biases and 2-D weights pass through."""
    if v.dim() <= 2:
        return v
    if v.dim() > 4 or any(d != 1 for d in v.shape[2:]):
        raise SourceError(f"{where}: {key} has shape {tuple(v.shape)}, not a 1×1 convolution weight")
    return v.reshape(v.shape[0], v.shape[1])


def cmrt_to_openai_cm(state: dict[str, torch.Tensor], cfg: UNetConfig, *, conv_dims: int = 2) -> dict[str, torch.Tensor]:
    """The inverse of ``openai_cm_to_cmrt``: cmrt names → OpenAI names, q/k/v stacked into a
    flash-order qkv. Attention weights are written as ``openai/consistency_models`` writes them,
    1×1 Conv2d (``conv_dims=2``), or as guided-diffusion's 1×1 Conv1d (``conv_dims=1``). Used to
    write test models in the OpenAI layout."""
    if conv_dims not in (1, 2):
        raise ConfigError(f"conv_dims must be 1 or 2, got {conv_dims}")
    as_conv = (lambda w: w[..., None]) if conv_dims == 1 else (lambda w: w[..., None, None])
    out: dict[str, torch.Tensor] = {}
    for old, new, kind in openai_cm_layout(cfg):
        for old_leaf, new_leaf in _leaf_pairs(kind):
            for p in _PARAMS:
                key = _join(new, new_leaf, p)
                if key in state:
                    v = state[key]
                    conv = kind == "attn" and new_leaf == "to_out.0" and p == "weight"  # proj_out: a 1×1 conv
                    out[_join(old, old_leaf, p)] = as_conv(v) if conv else v
        if kind == "attn":
            for p in _PARAMS:
                qkv = torch.cat([state[_join(new, part, p)] for part in QKV_PARTS], dim=0)
                out[_join(old, "qkv", p)] = as_conv(qkv) if p == "weight" else qkv
    return {k: v.contiguous() for k, v in out.items()}


def _block_index(key: str, prefix: str) -> int | None:
    m = re.match(rf"{prefix}\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def _has(state: dict, *keys: str) -> bool:
    return all(k in state for k in keys)


def infer_openai_cm_config(state: dict[str, torch.Tensor], where: str, *,
                           head_dim: int = OPENAI_HEAD_CHANNELS) -> UNetConfig:
    """Infer an OpenAI consistency-model UNet's configuration from its keys and shapes alone.

    Base width, channel multipliers, res blocks per level, attention levels, mid attention,
    class conditioning, scale-shift norm and res-block vs conv up/down are read from the
    tensors; attention heads are OpenAI's ``head_dim``-channel heads (64).
    """
    need = ("input_blocks.0.0.weight", "out.2.weight", "time_embed.0.weight", "middle_block.0.in_layers.0.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise SourceError(f"{where}: not an OpenAI consistency-model state dict (missing {missing})")
    n_in = 1 + max(_block_index(k, "input_blocks") or 0 for k in state)
    n_out = 1 + max((_block_index(k, "output_blocks") for k in state if k.startswith("output_blocks.")), default=-1)
    ups = [k for k in range(n_out) if any(
        _has(state, f"output_blocks.{k}.{s}.in_layers.0.weight") or _has(state, f"output_blocks.{k}.{s}.conv.weight")
        for s in (1, 2))]
    levels = len(ups) + 1
    if n_out % levels or n_in != 1 + levels * (n_out // levels - 1) + levels - 1:
        raise SourceError(f"{where}: {n_in} input and {n_out} output blocks with {levels} levels do not form "
                          "a guided-diffusion UNet")
    nrb = n_out // levels - 1
    widths, attention = [], []
    for i in range(levels):
        k = 1 + i * (nrb + 1)  # first res block of level i
        widths.append(int(state[f"input_blocks.{k}.0.out_layers.3.weight"].shape[0]))
        attention.append(_has(state, f"input_blocks.{k}.1.qkv.weight"))
    first = "input_blocks.1.0.emb_layers.1.weight"
    scale_shift = int(state[first].shape[0]) == 2 * widths[0]
    updown = levels == 1 or _has(state, f"input_blocks.{1 + nrb}.0.in_layers.0.weight")
    mid_attention = _has(state, "middle_block.1.qkv.weight")
    for w, a in zip(widths + [widths[-1]], attention + [mid_attention]):
        if a and w % head_dim:
            raise SourceError(f"{where}: attention width {w} is not a multiple of OpenAI's {head_dim}-channel heads")
    label = state.get("label_emb.weight")
    ch0 = state["input_blocks.0.0.weight"]
    try:
        return UNetConfig(in_channels=int(ch0.shape[1]), out_channels=int(state["out.2.weight"].shape[0]),
                          block_out_channels=tuple(widths), layers_per_block=nrb, attention=tuple(attention),
                          mid_attention=mid_attention, attention_head_dim=head_dim,
                          num_classes=None if label is None else int(label.shape[0]), scale_shift=scale_shift,
                          resblock_updown=updown, norm_groups=OPENAI_NORM_GROUPS,
                          attn_norm_groups=OPENAI_NORM_GROUPS)
    except ValueError as exc:
        raise SourceError(f"{where}: the inferred architecture is invalid ({exc})") from None


def check_arch(cfg: UNetConfig, arch: str, where: str) -> OpenAIArch:
    """The named reference configuration, checked against an inferred one (field by field)."""
    if arch not in OPENAI_ARCHS:
        raise SourceError(f"unknown --arch {arch!r}: choose one of {sorted(OPENAI_ARCHS)}")
    ref = OPENAI_ARCHS[arch]
    diffs = [f"{f}: file {getattr(cfg, f)!r}, {arch} {getattr(ref.unet, f)!r}"
             for f in ref.unet.__dataclass_fields__ if getattr(cfg, f) != getattr(ref.unet, f)]
    if diffs:
        raise SourceError(f"{where} does not match --arch {arch}: " + "; ".join(diffs))
    return ref


def match_arch(cfg: UNetConfig) -> str | None:
    """The name of the published configuration equal to ``cfg``, if any."""
    return next((name for name, a in OPENAI_ARCHS.items() if a.unet == cfg), None)


# --- OpenAI consistency decoder (decoder.pt) ---------------------------------------------
_DEC_LEAVES = {"gn_1": "norm1", "f_1": "conv1", "f_t": "time_emb_proj", "gn_2": "norm2", "f_2": "conv2",
               "f_s": "conv_shortcut"}
_DEC_PARAMS = {"w": "weight", "g": "weight", "b": "bias"}
_DEC_FIXED = {"embed_image.f": "conv_in", "embed_time.f_1": "time_embedding.linear_1",
              "embed_time.f_2": "time_embedding.linear_2", "output.gn": "conv_norm_out", "output.f": "conv_out"}
DECODER_EMBEDDING_KEY = "time_proj.weight"
_DEC_EMBED_RAW = ("embed_time.emb.weight", "embed_time.emb.w")
_DEC_BLOCK = re.compile(r"^(?:blocks\.)?(?:(down|up)_(\d+)_(?:conv_(\d+)|(downsamp|upsamp))|mid_(\d+))\.(\w+)\.(\w+)$")


def openai_decoder_to_cmrt(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Rename a ``decoder.pt`` state dict to cmrt names. Up level i of the TorchScript model is
    cmrt's ``up_blocks.{L-1-i}`` (cmrt and diffusers order up levels from the bottom)."""
    levels = 1 + max((int(m.group(2)) for k in state if (m := _DEC_BLOCK.match(k)) and m.group(1) == "down"),
                     default=-1)
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        new = _decoder_key(key, levels)
        if new is None:
            raise SourceError(f"{where}: unexpected key {key!r}: not a consistency-decoder (decoder.pt) weight")
        out[new] = v
    return out


def _decoder_key(key: str, levels: int) -> str | None:
    key = key.removeprefix("blocks.")
    if key in _DEC_EMBED_RAW:
        return DECODER_EMBEDDING_KEY
    head, _, param = key.rpartition(".")
    if head in _DEC_FIXED and param in _DEC_PARAMS:
        return f"{_DEC_FIXED[head]}.{_DEC_PARAMS[param]}"
    m = _DEC_BLOCK.match(key)
    if not m or m.group(6) not in _DEC_LEAVES or m.group(7) not in _DEC_PARAMS:
        return None
    side, level, conv, resample, mid, leaf, p = m.groups()
    if mid is not None:
        block = f"mid_block.resnets.{mid}"
    elif side == "down":
        block = f"down_blocks.{level}." + (f"resnets.{conv}" if conv is not None else "downsamplers.0")
    else:
        block = f"up_blocks.{levels - 1 - int(level)}." + (f"resnets.{conv}" if conv is not None else "upsamplers.0")
    return f"{block}.{_DEC_LEAVES[leaf]}.{_DEC_PARAMS[p]}"


def cmrt_to_openai_decoder(state: dict[str, torch.Tensor], *, blocks_prefix: bool = True,
                           with_embedding: bool = False) -> dict[str, torch.Tensor]:
    """The inverse of ``openai_decoder_to_cmrt`` (for tests): cmrt names → ``decoder.pt`` names.
    The time-embedding table is left out unless ``with_embedding`` (the published archive lacks it)."""
    levels = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down_blocks."))
    fixed = {v: k for k, v in _DEC_FIXED.items()}
    leaves = {v: k for k, v in _DEC_LEAVES.items()}
    out: dict[str, torch.Tensor] = {}
    pre = "blocks." if blocks_prefix else ""
    for key, v in state.items():
        if key == DECODER_EMBEDDING_KEY:
            if with_embedding:
                out[_DEC_EMBED_RAW[0]] = v
            continue
        head, _, param = key.rpartition(".")
        if head in fixed:
            short = "g" if head.endswith(("gn", "conv_norm_out")) and param == "weight" else param[0]
            out[f"{fixed[head]}.{short}"] = v
            continue
        block, leaf = head.rsplit(".", 1)
        short = "g" if leaf.startswith("norm") and param == "weight" else param[0]
        parts = block.split(".")
        if parts[0] == "mid_block":
            name = f"mid_{parts[2]}"
        elif parts[0] == "down_blocks":
            name = f"down_{parts[1]}_" + (f"conv_{parts[3]}" if parts[2] == "resnets" else "downsamp")
        else:
            name = f"up_{levels - 1 - int(parts[1])}_" + (f"conv_{parts[3]}" if parts[2] == "resnets" else "upsamp")
        out[f"{pre}{name}.{leaves[leaf]}.{short}"] = v
    return out


def infer_decoder_config(state: dict[str, torch.Tensor], where: str) -> UNetConfig:
    """The decoder UNet configuration of a cmrt-named consistency-decoder state dict."""
    try:
        levels = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down_blocks."))
        widths = tuple(int(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels))
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("down_blocks.0.resnets."))
        temb = state["down_blocks.0.resnets.0.time_emb_proj.weight"]
        return UNetConfig(in_channels=int(state["conv_in.weight"].shape[1]),
                          out_channels=int(state["conv_out.weight"].shape[0]), block_out_channels=widths,
                          layers_per_block=layers, attention=(False,) * levels, mid_attention=False,
                          scale_shift=int(temb.shape[0]) == 2 * widths[0], resblock_updown=True,
                          time_embedding="learned", num_train_timesteps=int(state[DECODER_EMBEDDING_KEY].shape[0]))
    except (KeyError, ValueError) as exc:
        raise SourceError(f"{where}: cannot infer the decoder architecture ({exc!s}): "
                          "is this OpenAI's consistency decoder?") from None


# --- diffusers UNet2DModel config.json ---------------------------------------------------
_DOWN_TYPES = {"DownBlock2D": "conv", "ResnetDownsampleBlock2D": "resnet", "AttnDownBlock2D": None}
_UP_TYPES = {"UpBlock2D": "conv", "ResnetUpsampleBlock2D": "resnet", "AttnUpBlock2D": None}
_DIFFUSERS_FIXED = {"center_input_sample": False, "class_embed_type": None, "act_fn": "silu",
                    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2D"}


def unet_config_from_diffusers(cfg: dict, where: str) -> UNetConfig:
    """Translate a diffusers ``UNet2DModel`` config into a ``UNetConfig``; features cmrt's UNet
    does not have raise ``SourceError`` naming the setting."""
    for key, want in _DIFFUSERS_FIXED.items():
        if cfg.get(key, want) != want:
            raise SourceError(f"{where}: {key}={cfg[key]!r} is not supported (cmrt supports {want!r})")
    widths = tuple(int(c) for c in cfg.get("block_out_channels", ()))
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    bad = [t for t in down if t not in _DOWN_TYPES] + [t for t in up if t not in _UP_TYPES]
    if bad or not widths or len(down) != len(widths) or len(up) != len(widths):
        raise SourceError(f"{where}: unsupported block layout {down} / {up} (cmrt supports "
                          f"{sorted(_DOWN_TYPES)} and {sorted(_UP_TYPES)}, one per block_out_channels entry)")
    attention = tuple(t.startswith("Attn") for t in down)
    if tuple(t.startswith("Attn") for t in reversed(up)) != attention:
        raise SourceError(f"{where}: up-block attention {up} does not mirror the down blocks {down}")
    resample = {_DOWN_TYPES[t] or cfg.get("downsample_type", "conv") for t in down[:-1]}
    resample |= {_UP_TYPES[t] or cfg.get("upsample_type", "conv") for t in up[:-1]}
    if len(resample) > 1:
        raise SourceError(f"{where}: mixed resnet and conv up/down-sampling {sorted(resample)} is not supported")
    time_type = cfg.get("time_embedding_type", "positional")
    if time_type not in ("positional", "learned"):
        raise SourceError(f"{where}: time_embedding_type={time_type!r} is not supported (positional or learned)")
    if cfg.get("time_embedding_dim") not in (None, 4 * widths[0]):
        raise SourceError(f"{where}: time_embedding_dim={cfg['time_embedding_dim']} is not supported "
                          f"(cmrt uses 4 × {widths[0]})")
    shift = cfg.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise SourceError(f"{where}: resnet_time_scale_shift={shift!r} is not supported")
    groups = cfg.get("norm_num_groups", 32)
    add_attention = bool(cfg.get("add_attention", True))
    attn_groups = cfg.get("attn_norm_num_groups")
    if attn_groups is None and shift == "default":
        attn_groups = groups  # diffusers' UNetMidBlock2D rule
    try:
        return UNetConfig(
            in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
            block_out_channels=widths, layers_per_block=int(cfg.get("layers_per_block", 2)), attention=attention,
            mid_attention=add_attention, attention_head_dim=_head_dim(cfg, widths, attention, add_attention, where),
            num_classes=cfg.get("num_class_embeds"), scale_shift=shift == "scale_shift",
            resblock_updown=resample == {"resnet"}, time_embedding=time_type,
            num_train_timesteps=int(cfg.get("num_train_timesteps") or 1000),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)), freq_shift=float(cfg.get("freq_shift", 0)),
            norm_groups=int(groups), attn_norm_groups=attn_groups, norm_eps=float(cfg.get("norm_eps", 1e-5)),
            downsample_padding=int(cfg.get("downsample_padding", 1)), dropout=float(cfg.get("dropout", 0.0)))
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{where}: invalid UNet config ({exc})") from None


def _head_dim(cfg: dict, widths: tuple[int, ...], attention: tuple[bool, ...], mid: bool, where: str) -> int:
    """diffusers' ``attention_head_dim`` (None means one head spanning the channels)."""
    head = cfg.get("attention_head_dim", 8)
    if head is not None:
        return int(head)
    attn_widths = {w for w, a in zip(widths, attention) if a} | ({widths[-1]} if mid else set())
    if len(attn_widths) > 1:
        raise SourceError(f"{where}: attention_head_dim=None with attention at widths {sorted(attn_widths)} "
                          "(one head per block of different widths) is not supported")
    return attn_widths.pop() if attn_widths else OPENAI_HEAD_CHANNELS


__all__ = ["OPENAI_ARCHS", "OpenAIArch", "openai_cm_layout", "openai_cm_to_cmrt", "cmrt_to_openai_cm",
           "infer_openai_cm_config", "check_arch", "match_arch", "openai_decoder_to_cmrt", "cmrt_to_openai_decoder",
           "infer_decoder_config", "unet_config_from_diffusers", "DECODER_EMBEDDING_KEY"]
