"""The UNet backbone: shapes, sizes, and equality with diffusers' UNet2DModel on the same weights."""

import pytest
import torch

from cmrt.models.unet import UNet, UNetConfig, count_parameters, unet_flops
from conftest import randomize


def _diffusers():
    return pytest.importorskip("diffusers")


def test_cm_shapes_and_labels():
    cfg = UNetConfig(block_out_channels=(32, 64), attention=(False, True), attention_head_dim=32, num_classes=10)
    out = UNet(cfg)(torch.randn(3, 3, 16, 16), torch.tensor([10.0]), torch.tensor([0, 5, 9]))
    assert out.shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="class_labels"):
        UNet(cfg)(torch.randn(1, 3, 16, 16), torch.tensor([1.0]))


def test_decoder_shapes_odd_sizes():
    cfg = UNetConfig(in_channels=7, out_channels=6, block_out_channels=(32, 32, 32, 32), attention=(False,) * 4,
                     mid_attention=False, time_embedding="learned", num_train_timesteps=1024)
    assert UNet(cfg)(torch.randn(2, 7, 72, 104), torch.tensor([512])).shape == (2, 6, 72, 104)


def test_config_validation():
    with pytest.raises(ValueError, match="attention"):
        UNetConfig(block_out_channels=(32, 64), attention=(True,))
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(block_out_channels=(30, 64), attention=(False, False))


OFFICIAL = {
    "decoder": (UNetConfig(in_channels=7, out_channels=6, block_out_channels=(320, 640, 1024, 1024), layers_per_block=3,
                           attention=(False,) * 4, mid_attention=False, time_embedding="learned",
                           num_train_timesteps=1024), 621_277_702),
    "imagenet64": (UNetConfig(block_out_channels=(192, 384, 576, 768), layers_per_block=3,
                              attention=(False, True, True, True), num_classes=1000), None),
}


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_sizes_match_diffusers(name):
    diffusers = _diffusers()
    cfg, expected = OFFICIAL[name]
    with torch.device("meta"):
        ours = count_parameters(UNet(cfg))
        if name == "decoder":
            ref = diffusers.UNet2DModel(in_channels=7, out_channels=6, block_out_channels=(320, 640, 1024, 1024),
                                        layers_per_block=3, down_block_types=("ResnetDownsampleBlock2D",) * 4,
                                        up_block_types=("ResnetUpsampleBlock2D",) * 4, time_embedding_type="learned",
                                        num_train_timesteps=1024, resnet_time_scale_shift="scale_shift",
                                        add_attention=False)
        else:
            ref = diffusers.UNet2DModel(sample_size=64, layers_per_block=3, num_class_embeds=1000,
                                        block_out_channels=(192, 384, 576, 768), attention_head_dim=64,
                                        down_block_types=("ResnetDownsampleBlock2D",) + ("AttnDownBlock2D",) * 3,
                                        up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
                                        resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
                                        upsample_type="resnet", downsample_type="resnet")
    assert ours == count_parameters(ref)
    if expected:
        assert ours == expected
    assert set(UNet(cfg).to("meta").state_dict()) == set(ref.state_dict())


CASES = {
    "cm-scale-shift-attn-resnet-updown": (
        dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention=(False, True, True),
             attention_head_dim=16, num_classes=10),
        dict(layers_per_block=2, num_class_embeds=10, block_out_channels=(32, 64, 64), attention_head_dim=16,
             down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
             resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32, upsample_type="resnet",
             downsample_type="resnet")),
    "cm-default-shift-conv-updown": (
        dict(block_out_channels=(32, 64), attention=(False, True), attention_head_dim=32, scale_shift=False,
             resblock_updown=False),
        dict(layers_per_block=1, block_out_channels=(32, 64), attention_head_dim=32,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))),
    "decoder-learned-time": (
        dict(in_channels=7, out_channels=6, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
             attention=(False,) * 4, mid_attention=False, time_embedding="learned", num_train_timesteps=1024),
        dict(in_channels=7, out_channels=6, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
             down_block_types=("ResnetDownsampleBlock2D",) * 4, up_block_types=("ResnetUpsampleBlock2D",) * 4,
             time_embedding_type="learned", num_train_timesteps=1024, resnet_time_scale_shift="scale_shift",
             add_attention=False)),
}


@pytest.mark.parametrize("name", CASES)
def test_equals_diffusers_unet(name):
    diffusers = _diffusers()
    ours_kw, ref_kw = CASES[name]
    ref = randomize(diffusers.UNet2DModel(**ref_kw)).eval()
    ours = UNet(UNetConfig(**ours_kw)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    c = ours_kw.get("in_channels", 3)
    x = torch.randn(2, c, 16, 24)
    t = torch.tensor([1008, 512]) if "decoder" in name else torch.tensor([1095.5, -300.25])
    y = torch.tensor([3, 7]) if ours_kw.get("num_classes") else None
    with torch.no_grad():
        assert torch.allclose(ours(x, t, y), ref(x, t, y).sample, atol=1e-5)


def test_flops_scale_with_area():
    cfg = UNetConfig(block_out_channels=(32, 64), attention=(False, False), mid_attention=False)
    assert unet_flops(cfg, 32, 32) == pytest.approx(4 * unet_flops(cfg, 16, 16), rel=0.01)
