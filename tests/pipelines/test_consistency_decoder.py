"""A pipeline bundle whose last stage is the consistency decoder (``--decoder``): the generator
continues from the LCM's draws into the decoder's, as diffusers passes it to ``vae.decode``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.errors import ConfigError
from cmrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="session")
def references(lcm_folder, cd_folder):
    from diffusers import ConsistencyDecoderVAE, LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(lcm_folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe, ConsistencyDecoderVAE.from_pretrained(str(cd_folder)).eval()


def test_lcm_with_consistency_decoder_equals_diffusers(lcm_cd_bundle, references):
    """diffusers 0.42's LatentConsistencyModelPipeline does not pass its generator to vae.decode,
    so the reference is the documented two-call form with one generator."""
    pipe, vae = references
    prompts = ["a cat", "a red house"]
    g = torch.Generator().manual_seed(4)
    latents = pipe(prompts, num_inference_steps=2, guidance_scale=6.0, height=32, width=40, generator=g,
                   output_type="latent").images
    with torch.no_grad():
        expected = vae.decode(latents / pipe.vae.config.scaling_factor, generator=g).sample.clamp(-1, 1).numpy()
    with Pipeline(lcm_cd_bundle) as runner:
        images = runner.generate(prompts, guidance_scale=6.0, height=32, width=40, seed=4)
        whole = runner.generate(prompts, guidance_scale=6.0, height=32, width=40, seed=4, tile=5)
        tiled = runner.generate(prompts, guidance_scale=6.0, height=32, width=40, seed=4, tile=4)
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp32"].max_abs
    # tile= reaches the decoder with the same seeded noise: one tile covering the 4×5 latents is the
    # plain decode; smaller tiles (blended, each normalized by its own statistics) a different one
    assert np.array_equal(whole, images)
    assert tiled.shape == images.shape and np.isfinite(tiled).all() and not np.array_equal(tiled, images)


def test_manifest_keeps_the_decoder_bundle(lcm_cd_bundle):
    from cmrt.bundle import Bundle, PipelineManifest

    m = PipelineManifest.open(lcm_cd_bundle)
    stage = m.stages["decoder"]
    assert stage.bundle == "decoder" and stage.graph is None
    assert Bundle.open(lcm_cd_bundle / "decoder").manifest.kind == "decoder"
    assert all(r.passed for r in stage.parity.values())


def test_decoder_with_other_latent_channels_is_refused(cd_folder):
    from types import SimpleNamespace

    from cmrt.exporter.pipeline import _check_decoder_channels

    parts = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(out_channels=16)), family="sd",
                            pipeline="StableDiffusionPipeline")
    with pytest.raises(ConfigError, match="--decoder .*16 latent channels"):
        _check_decoder_channels(cd_folder, parts)
