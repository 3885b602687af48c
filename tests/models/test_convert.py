"""Key mappings and architecture inference (``cmrt.models.convert``), without export."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from cmrt.errors import SourceError
from cmrt.models import convert as C
from cmrt.models.load import load_state
from cmrt.models.unet import UNet, UNetConfig, count_parameters
from tests.conftest import randomize

DECODER_PARAMS = 621_277_702  # diffusers' ConsistencyDecoderVAE().decoder_unet (FACTS §1)


def small_cm_cfg(**over) -> UNetConfig:
    base = dict(in_channels=3, out_channels=3, block_out_channels=(64, 64, 128), layers_per_block=2,
                attention=(False, True, True), mid_attention=True, attention_head_dim=64, num_classes=10,
                scale_shift=True, resblock_updown=True, attn_norm_groups=32)
    return UNetConfig(**(base | over))


@pytest.mark.parametrize("over", [{}, {"scale_shift": False, "num_classes": None},
                                  {"resblock_updown": False, "layers_per_block": 1},
                                  {"attention": (False, False, True), "block_out_channels": (64, 128, 128)}])
def test_openai_cm_roundtrip_and_inference(over):
    """Written as openai/consistency_models writes it (attention as 1×1 Conv2d), the file's layout
    is inferred and every weight maps back exactly."""
    cfg = small_cm_cfg(**over)
    unet = randomize(UNet(cfg))
    openai = C.cmrt_to_openai_cm(unet.state_dict(), cfg)
    assert "input_blocks.0.0.weight" in openai and "middle_block.1.qkv.weight" in openai
    c = cfg.block_out_channels[-1]
    assert openai["middle_block.1.qkv.weight"].shape == (3 * c, c, 1, 1)  # cm/unet.py: conv_nd(2, C, 3C, 1)
    assert openai["middle_block.1.proj_out.weight"].shape == (c, c, 1, 1)
    assert C.infer_openai_cm_config(openai, "x") == cfg
    back = C.openai_cm_to_cmrt(openai, cfg, "x")
    own = unet.state_dict()
    assert set(back) == set(own) and all(torch.equal(back[k], own[k]) for k in own)


def test_guided_diffusion_conv1d_attention_also_loads():
    cfg = small_cm_cfg()
    unet = randomize(UNet(cfg))
    conv1d = C.cmrt_to_openai_cm(unet.state_dict(), cfg, conv_dims=1)
    assert conv1d["middle_block.1.qkv.weight"].dim() == 3
    back = C.openai_cm_to_cmrt(conv1d, cfg, "x")
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())


def test_attention_weight_that_is_not_1x1_is_refused():
    cfg = small_cm_cfg()
    openai = C.cmrt_to_openai_cm(randomize(UNet(cfg)).state_dict(), cfg)
    openai["middle_block.1.proj_out.weight"] = torch.zeros(128, 128, 3, 3)
    with pytest.raises(SourceError, match=r"proj_out.weight has shape \(128, 128, 3, 3\), not a 1×1"):
        C.openai_cm_to_cmrt(openai, cfg, "ckpt.pt")


def _openai_flash_attention(x, sd, prefix, heads):
    """openai/consistency_models' AttentionBlock (cm/unet.py, dims=2) with flash ordering, written
    from its description: qkv = Conv2d₁ₓ₁(GN(x)) flattened to (b, 3c, s); rows split as
    (three, heads, dim); softmax(q·k/√d)·v; proj_out = Conv2d₁ₓ₁ on the (b, c, h, w) map; + x."""
    b, c, h, w = x.shape
    hn = F.group_norm(x, 32, sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"])
    qkv = F.conv2d(hn, sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"]).reshape(b, 3 * c, h * w)
    q, k, v = qkv.reshape(b, 3, heads, c // heads, h * w).unbind(1)  # flash order: (three h d)
    attn = torch.softmax(torch.einsum("bhds,bhdt->bhst", q, k) / (c // heads) ** 0.5, dim=-1)
    out = torch.einsum("bhst,bhdt->bhds", attn, v).reshape(b, c, h, w)
    out = F.conv2d(out, sd[f"{prefix}.proj_out.weight"], sd[f"{prefix}.proj_out.bias"])
    return x + out


def test_qkv_is_split_in_flash_order():
    """cmrt's attention on the converted weights equals OpenAI's flash-order attention on the
    OpenAI weights (the legacy per-head interleaved order would not)."""
    cfg = small_cm_cfg()
    unet = randomize(UNet(cfg), std=0.2)
    openai = C.cmrt_to_openai_cm(unet.state_dict(), cfg)
    x = torch.randn(2, 128, 4, 4)
    prefix = "middle_block.1"
    ref = _openai_flash_attention(x, openai, prefix, heads=128 // 64)
    with torch.no_grad():
        got = unet.mid_block.attentions[0](x)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    legacy = openai[f"{prefix}.qkv.weight"].reshape(2, 3, 64, 128, 1, 1).transpose(0, 1).reshape(384, 128, 1, 1)
    bad = _openai_flash_attention(x, openai | {f"{prefix}.qkv.weight": legacy}, prefix, heads=2)
    assert (bad - ref).abs().max() > 1e-3  # the ordering is observable


@pytest.mark.parametrize("arch", sorted(C.OPENAI_ARCHS))
def test_official_cm_architecture_every_key_consumed(arch):
    """diffusers' own UNet2DModel for the published configuration (as its conversion script sets it
    up), written under OpenAI names: inference recovers the published config, and every key maps
    back onto cmrt's UNet with matching shapes and the same parameter count."""
    diffusers = pytest.importorskip("diffusers")
    ref = C.OPENAI_ARCHS[arch]
    cfg = ref.unet
    attn = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in cfg.attention]
    with torch.device("meta"):
        dm = diffusers.UNet2DModel(
            sample_size=ref.image_size, block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            down_block_types=attn, up_block_types=[t.replace("Down", "Up") for t in reversed(attn)],
            downsample_type="resnet", upsample_type="resnet", attention_head_dim=64, num_class_embeds=cfg.num_classes,
            resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default", attn_norm_num_groups=32)
        mine = UNet(cfg)
    sd = dm.state_dict()
    openai = C.cmrt_to_openai_cm(sd, cfg)
    assert C.infer_openai_cm_config(openai, arch) == cfg
    assert C.match_arch(C.infer_openai_cm_config(openai, arch)) == arch
    back = C.openai_cm_to_cmrt(openai, cfg, arch)
    load_state(mine, back, arch)  # strict: no missing/unexpected keys, all shapes equal
    assert count_parameters(mine) == count_parameters(dm)
    assert all(re.match(r"^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)\.", k) for k in openai)


def test_arch_mismatch_names_the_difference():
    cfg = small_cm_cfg()
    with pytest.raises(SourceError, match=r"does not match --arch imagenet64: block_out_channels"):
        C.check_arch(cfg, "imagenet64", "f.pt")
    with pytest.raises(SourceError, match="unknown --arch"):
        C.check_arch(cfg, "cifar10", "f.pt")


def test_unexpected_and_missing_keys():
    cfg = small_cm_cfg()
    openai = C.cmrt_to_openai_cm(UNet(cfg).state_dict(), cfg)
    with pytest.raises(SourceError, match="unexpected keys.*extra.weight"):
        C.openai_cm_to_cmrt(openai | {"extra.weight": torch.zeros(1)}, cfg, "f.pt")
    with pytest.raises(SourceError, match="not an OpenAI consistency-model state dict"):
        C.infer_openai_cm_config({k: v for k, v in openai.items() if k != "out.2.weight"}, "f.pt")
    partial = C.openai_cm_to_cmrt({k: v for k, v in openai.items() if k != "out.0.bias"}, cfg, "f.pt")
    with pytest.raises(SourceError, match="missing keys.*conv_norm_out.bias"):
        load_state(UNet(cfg), partial, "f.pt")


def test_official_decoder_keys_roundtrip():
    """The full-size decoder (meta device): cmrt → decoder.pt names → cmrt is the identity, every
    name follows the documented TorchScript pattern, and the parameter count is diffusers'."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        dm = diffusers.ConsistencyDecoderVAE().decoder_unet
    sd = dm.state_dict()
    raw = C.cmrt_to_openai_decoder(sd)
    assert "embed_time.emb.weight" not in raw and len(raw) == len(sd) - 1  # the archive lacks the table
    pattern = re.compile(r"^(embed_image\.f\.[wb]|embed_time\.f_[12]\.[wb]|output\.(gn\.[gb]|f\.[wb])|"
                         r"blocks\.(down_\d_(conv_\d|downsamp)|up_\d_(conv_\d|upsamp)|mid_\d)\.(gn_[12]\.[gb]|f_[12ts]\.[wb]))$")
    assert all(pattern.match(k) for k in raw), [k for k in raw if not pattern.match(k)][:3]
    assert "blocks.up_3_upsamp.f_1.w" in raw and "blocks.up_0_conv_3.f_s.w" in raw  # up level 3 is the bottom
    back = C.openai_decoder_to_cmrt(raw | {"embed_time.emb.weight": sd["time_proj.weight"]}, "decoder.pt")
    assert set(back) == set(sd) and all(back[k].shape == sd[k].shape for k in sd)
    cfg = C.infer_decoder_config(back, "decoder.pt")
    with torch.device("meta"):
        mine = UNet(cfg)
    load_state(mine, back, "decoder.pt")
    assert count_parameters(mine) == DECODER_PARAMS == count_parameters(dm)
    assert cfg.block_out_channels == (320, 640, 1024, 1024) and cfg.layers_per_block == 3
    plain = C.cmrt_to_openai_decoder(sd, blocks_prefix=False)  # names without ``blocks.`` load too
    assert set(C.openai_decoder_to_cmrt(plain, "d")) == set(sd) - {"time_proj.weight"}


def test_decoder_unknown_key_is_rejected():
    with pytest.raises(SourceError, match="unexpected key 'foo.w'"):
        C.openai_decoder_to_cmrt({"foo.w": torch.zeros(1)}, "decoder.pt")


@pytest.mark.parametrize("bad,match", [
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]}, "unsupported block layout"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, "does not mirror"),
])
def test_diffusers_config_unsupported_features(bad, match):
    cfg = {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
           "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    assert C.unet_config_from_diffusers(cfg, "c").attention == (False, True)
    with pytest.raises(SourceError, match=match):
        C.unet_config_from_diffusers(cfg | bad, "config.json")
