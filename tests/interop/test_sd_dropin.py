"""The Stable Diffusion drop-in: a tiny SD pipeline (built here, random weights) decodes with a
cmrt decoder bundle and gets the same images as with diffusers' ``ConsistencyDecoderVAE``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmrt
from cmrt.errors import ConfigError
from cmrt.interop.diffusers import CmrtVaeDecode, decode_latents, use_cmrt_decoder
from cmrt.parity import TOLERANCES
from tests.conftest import randomize

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' SD pipeline module imports it

ATOL = TOLERANCES["fp32"].max_abs
CROSS_DIM = 32
SIZE = 32  # pixels: 4×4 latents


def _sd_pipeline(vae):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=SIZE // 8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS_DIM,
                                attention_head_dim=8, norm_num_groups=32)
    randomize(unet, std=0.05, seed=3)
    return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet.eval(),
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _kl_vae(scaling_factor=0.18215):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                        scaling_factor=scaling_factor)
    return randomize(vae, seed=4).eval()


@pytest.fixture(scope="module")
def consistency(tmp_path_factory):
    from diffusers import ConsistencyDecoderVAE

    vae = ConsistencyDecoderVAE(encoder_block_out_channels=(32, 32, 32, 32), encoder_layers_per_block=1,
                                decoder_block_out_channels=(32, 32, 32, 32), decoder_layers_per_block=1)
    randomize(vae, std=0.2, seed=5).eval()
    folder = tmp_path_factory.mktemp("cdvae") / "vae"
    vae.save_pretrained(folder)
    return vae, cmrt.export(folder, out=tmp_path_factory.mktemp("b") / "dec")


def _run(pipe, seed, **kw):
    embeds = torch.randn(2, 7, CROSS_DIM, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        return pipe(prompt_embeds=embeds, num_inference_steps=2, guidance_scale=1.0, height=SIZE, width=SIZE,
                    generator=torch.Generator().manual_seed(seed), **kw).images


def test_pipeline_with_cmrt_decoder_equals_diffusers_consistency_vae(consistency):
    cd_vae, bundle = consistency
    reference = _run(_sd_pipeline(cd_vae), 0, output_type="pt").numpy()  # diffusers' documented use
    pipe = use_cmrt_decoder(_sd_pipeline(_kl_vae()), bundle.path)
    got = _run(pipe, 0, output_type="pt").numpy()
    assert got.shape == reference.shape == (2, 3, SIZE, SIZE)
    assert np.abs(got - reference).max() <= ATOL
    assert np.abs(got - _run(pipe, 1, output_type="pt").numpy()).max() > 1e-2  # the seed matters


def test_decode_latents_for_latent_output(consistency):
    cd_vae, bundle = consistency
    pipe = _sd_pipeline(_kl_vae())
    latents = _run(pipe, 5, output_type="latent")
    with torch.no_grad():
        ref = cd_vae.decode(latents / 0.18215, generator=torch.Generator().manual_seed(8)).sample
    got = decode_latents(bundle.path, latents, seed=8)
    assert isinstance(got, torch.Tensor) and np.abs(got.numpy() - ref.numpy()).max() <= ATOL
    via_generator = decode_latents(cmrt.Decoder(bundle.path), latents, generator=torch.Generator().manual_seed(8))
    assert torch.equal(via_generator, got)
    # a list of generators, one per image, as diffusers' randn_tensor uses them
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    with torch.no_grad():
        ref = cd_vae.decode(latents / 0.18215, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).sample
    out = CmrtVaeDecode(bundle.path)(latents / 0.18215, return_dict=True, generator=gens).sample
    assert np.abs(out.numpy() - ref.numpy()).max() <= ATOL


def test_sdxl_latent_space_is_refused(consistency):
    _, bundle = consistency
    with pytest.raises(ConfigError, match="SDXL"):
        use_cmrt_decoder(_sd_pipeline(_kl_vae(scaling_factor=0.13025)), bundle.path)
    with pytest.raises(ConfigError, match="SDXL"):
        decode_latents(bundle.path, torch.zeros(1, 4, 4, 4), scaling_factor=0.13025)
