"""SDXL-class LCM (two text encoders, pooled embeddings, add_time_ids) against diffusers'
``StableDiffusionXLPipeline`` with ``LCMScheduler`` on the same folder and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="session")
def sdxl_pipe(sdxl_folder):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance, size", [(5.0, (40, 56)), (1.5, (64, 32))])
def test_sdxl_pipeline_equals_diffusers(sdxl_bundle, sdxl_pipe, guidance, size):
    prompts = ["a cat in the snow", "a lighthouse"]
    h, w = size
    with Pipeline(sdxl_bundle) as pipe:
        images = pipe.generate(prompts, guidance_scale=guidance, height=h, width=w, seed=9)
    g = torch.Generator().manual_seed(9)
    expected = sdxl_pipe(prompts, num_inference_steps=2, guidance_scale=guidance, height=h, width=w, generator=g,
                         output_type="pt").images.numpy() * 2 - 1
    assert images.shape == (2, 3, h, w)
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp32"].max_abs


def test_sdxl_manifest(sdxl_bundle):
    from cmrt.bundle import PipelineManifest

    m = PipelineManifest.open(sdxl_bundle)
    assert m.family == "sdxl" and set(m.stages) == {"text_encoder", "text_encoder_2", "sampler", "decoder"}
    assert [t.folder for t in m.tokenizers] == ["tokenizer", "tokenizer_2"]
    assert [i.name for i in m.stages["sampler"].inputs][:4] == ["prompt_embeds", "text_embeds", "time_ids",
                                                                 "guidance_scale"]
    assert m.default_guidance_scale == 5.0
