"""Seeded parity with diffusers' own samplers: models built here with random weights (every
parameter randomized), saved with ``save_pretrained``, exported by cmrt and run on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmrt
from cmrt import schedules as S
from cmrt.parity import TOLERANCES
from tests.conftest import randomize

diffusers = pytest.importorskip("diffusers")

ATOL = TOLERANCES["fp32"].max_abs  # 1e-4
WEIGHT_STD = 0.2  # large enough that the network's output shapes the image (see _assert_network_matters)
SEEDS = (0, 7)


def _to_unit(images) -> np.ndarray:
    """cmrt's [-1, 1] images → diffusers' "pt" output range [0, 1]."""
    return np.clip(np.asarray(images) / 2 + 0.5, 0.0, 1.0)


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# --- consistency models --------------------------------------------------------------------
def _cm_pipeline(tmp_path, *, conditional: bool, clip: bool = True, seed: int = 0):
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    if conditional:  # ImageNet-64-like: scale-shift, attention below the top level, classes
        unet = UNet2DModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                           down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), downsample_type="resnet",
                           upsample_type="resnet", attention_head_dim=32, num_class_embeds=10,
                           resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32)
    else:  # LSUN-256-like: no scale-shift, attention at the lowest levels only, unconditional
        unet = UNet2DModel(sample_size=16, block_out_channels=(32, 32, 64), layers_per_block=1,
                           down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                           downsample_type="resnet", upsample_type="resnet", attention_head_dim=32,
                           resnet_time_scale_shift="default")
    randomize(unet, std=WEIGHT_STD, seed=seed)
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0,
                                               clip_denoised=clip)
    pipe = ConsistencyModelPipeline(unet=unet.eval(), scheduler=scheduler)
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def _diffusers_images(pipe, n, labels, seed, **schedule) -> np.ndarray:
    with torch.no_grad():
        out = pipe(batch_size=n, class_labels=labels, generator=torch.Generator().manual_seed(seed),
                   output_type="pt", **schedule).images
    return out.numpy()


@pytest.fixture(scope="module")
def cond_cm(tmp_path_factory):
    return _cm_pipeline(tmp_path_factory.mktemp("cm"), conditional=True)


@pytest.mark.parametrize("steps,schedule", [(1, {"num_inference_steps": 1}), (2, {"timesteps": [22, 0]})])
def test_conditional_cm_matches_pipeline(cond_cm, tmp_path, steps, schedule):
    pipe, folder = cond_cm
    sigmas = S.sigmas_from_indices([0, 22], 40) if "timesteps" in schedule else None
    bundle = cmrt.export(folder, out=tmp_path / "b", steps=steps, sigmas=sigmas)
    assert bundle.manifest.clip is True and bundle.manifest.num_classes == 10
    sampler = cmrt.Sampler(bundle.path)
    labels = torch.tensor([3, 9, 0])
    for seed in SEEDS:
        ref = _diffusers_images(pipe, 3, labels, seed, **schedule)
        got = _to_unit(sampler.sample(3, class_labels=labels.numpy(), seed=seed))
        assert got.shape == ref.shape == (3, 3, 16, 16)
        assert _max_abs(got, ref) <= ATOL, (seed, _max_abs(got, ref))
    # explicit noise: the same draws, given as arrays
    g = torch.Generator().manual_seed(SEEDS[0])
    noise = [torch.randn(3, 3, 16, 16, generator=g) for _ in range(steps)]
    got = _to_unit(sampler.sample(class_labels=labels.numpy(), noise=noise))
    assert _max_abs(got, _diffusers_images(pipe, 3, labels, SEEDS[0], **schedule)) <= ATOL


def test_unconditional_lsun_style_default_spacing_and_no_clip(tmp_path):
    pipe, folder = _cm_pipeline(tmp_path, conditional=False, clip=False)
    bundle = cmrt.export(folder, out=tmp_path / "b", steps=2)  # the scheduler's own spacing
    assert bundle.manifest.clip is False  # follows the scheduler's clip_denoised
    assert bundle.manifest.sigmas == pytest.approx(S.sigmas_from_indices([0, 20], 40))
    ref = _diffusers_images(pipe, 2, None, 3, num_inference_steps=2)
    got = _to_unit(cmrt.Sampler(bundle.path).sample(2, seed=3))
    assert _max_abs(got, ref) <= ATOL


def test_network_output_matters(cond_cm, tmp_path):
    """Guard against a vacuous comparison: another random model gives clearly different images."""
    pipe, _ = cond_cm
    other, _ = _cm_pipeline(tmp_path, conditional=True, seed=1)
    a = _diffusers_images(pipe, 2, torch.tensor([1, 2]), 0, num_inference_steps=1)
    b = _diffusers_images(other, 2, torch.tensor([1, 2]), 0, num_inference_steps=1)
    assert _max_abs(a, b) > 1000 * ATOL


# --- the consistency decoder -----------------------------------------------------------------
def _tiny_vae(seed: int = 0):
    from diffusers import ConsistencyDecoderVAE

    # the ×8 upsampling comes from the ENCODER's 4 levels; the decoder is reduced in width
    vae = ConsistencyDecoderVAE(encoder_block_out_channels=(32, 32, 32, 32), encoder_layers_per_block=1,
                                decoder_block_out_channels=(32, 64, 64, 64), decoder_layers_per_block=1)
    return randomize(vae, std=WEIGHT_STD, seed=seed).eval()


def _latents(b, h, w, seed=11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(b, 4, h, w, generator=g)
    return (torch.tensor(S.LATENT_MEANS).view(1, 4, 1, 1) + torch.tensor(S.LATENT_STDS).view(1, 4, 1, 1) * eps) \
        / S.LATENT_SCALE


@pytest.fixture(scope="module")
def vae_bundle(tmp_path_factory):
    vae = _tiny_vae()
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder)
    return vae, cmrt.export(folder, out=tmp_path_factory.mktemp("vb") / "b")


def test_decoder_matches_diffusers_odd_sizes_batch(vae_bundle):
    vae, bundle = vae_bundle
    assert bundle.manifest.kind == "decoder" and bundle.manifest.clip is False  # diffusers does not clamp
    assert bundle.manifest.timesteps == [1008, 512]
    decoder = cmrt.Decoder(bundle.path)
    z = _latents(2, 9, 13)
    for seed in SEEDS:
        with torch.no_grad():
            ref = vae.decode(z, generator=torch.Generator().manual_seed(seed)).sample.numpy()
        got = decoder.decode(z.numpy(), seed=seed)
        assert got.shape == ref.shape == (2, 3, 72, 104)
        assert _max_abs(got, ref) <= ATOL, (seed, _max_abs(got, ref))
    g = torch.Generator().manual_seed(SEEDS[1])
    noise = [torch.randn(2, 3, 72, 104, generator=g) for _ in range(2)]
    got = decoder.decode(z, noise=noise)  # torch in → torch out
    with torch.no_grad():
        ref = vae.decode(z, generator=torch.Generator().manual_seed(SEEDS[1])).sample
    assert isinstance(got, torch.Tensor) and _max_abs(got, ref) <= ATOL


# --- official sizes (slow) ---------------------------------------------------------------------
@pytest.mark.slow
def test_official_size_decoder_matches_diffusers(tmp_path):
    """The published 621M-parameter configuration, random weights, a small latent."""
    from diffusers import ConsistencyDecoderVAE

    vae = randomize(ConsistencyDecoderVAE(), std=0.02, seed=0).eval()
    vae.save_pretrained(tmp_path / "vae")
    bundle = cmrt.export(tmp_path / "vae", out=tmp_path / "b")
    assert bundle.manifest.model.spec["unet"]["block_out_channels"] == [320, 640, 1024, 1024]
    z = _latents(1, 4, 6)
    with torch.no_grad():
        ref = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample.numpy()
    got = cmrt.Decoder(bundle.path).decode(z.numpy(), seed=0)
    assert _max_abs(got, ref) <= ATOL


@pytest.mark.slow
def test_official_size_imagenet64_openai_checkpoint_matches_diffusers(tmp_path):
    """The published ImageNet-64 UNet (diffusers' conversion-script configuration), random weights,
    written as an OpenAI checkpoint and loaded with --arch imagenet64."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    from cmrt.models import convert as C

    ref_cfg = C.OPENAI_ARCHS["imagenet64"].unet
    unet = UNet2DModel(sample_size=64, block_out_channels=ref_cfg.block_out_channels, layers_per_block=3,
                       down_block_types=("ResnetDownsampleBlock2D",) + ("AttnDownBlock2D",) * 3,
                       up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",), downsample_type="resnet",
                       upsample_type="resnet", attention_head_dim=64, num_class_embeds=1000,
                       resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32)
    randomize(unet, std=0.02, seed=1).eval()
    torch.save(C.cmrt_to_openai_cm(unet.state_dict(), ref_cfg), tmp_path / "cd_imagenet64_l2.pt")
    bundle = cmrt.export(tmp_path / "cd_imagenet64_l2.pt", out=tmp_path / "b", steps=1, arch="imagenet64")
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler())
    with torch.no_grad():
        ref = pipe(batch_size=1, class_labels=torch.tensor([145]), num_inference_steps=1,
                   generator=torch.Generator().manual_seed(0), output_type="pt").images.numpy()
    got = _to_unit(cmrt.Sampler(bundle.path).sample(1, class_labels=np.array([145]), seed=0))
    assert _max_abs(got, ref) <= ATOL
