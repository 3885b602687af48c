"""The bundled text-to-image LCM (``cmrt/assets/digits_text_lcm``, trained here on captioned digits):
a diffusers folder that ``LatentConsistencyModelPipeline`` loads unchanged, small, safetensors only,
and exported by cmrt with the same images as diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.models.load import T2I_DECODER, T2I_MODEL
from cmrt.train.captions import TEXT_SIZE

PROMPTS = ["a red 7 on a blue background", "three in yellow on black"]
MAX_BYTES = 15 * 2**20


def _images(pipe, steps: int, seed: int) -> np.ndarray:
    with torch.no_grad():
        out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=8.0, output_type="pt",
                   generator=torch.Generator().manual_seed(seed)).images
    return (out * 2 - 1).numpy()


@pytest.fixture(scope="module")
def lcm():
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(T2I_MODEL), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_bundled_lcm_is_a_small_safetensors_diffusers_folder(lcm):
    files = [p for p in T2I_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES and T2I_DECODER.is_file()
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert lcm.unet.config.time_cond_proj_dim and lcm.unet.config.sample_size == TEXT_SIZE // 8
    images = _images(lcm, 2, 0)
    assert images.shape == (2, 3, TEXT_SIZE, TEXT_SIZE) and np.isfinite(images).all()


@pytest.mark.slow  # one pipeline export (~20 s of CPU, minutes under load)
def test_its_export_matches_diffusers_at_two_steps(lcm, tmp_path):
    from cmrt.exporter.pipeline import export_pipeline
    from cmrt.runtime.pipeline import Pipeline

    bundle = export_pipeline(T2I_MODEL, out=tmp_path / "b", steps=2)
    with Pipeline(bundle) as pipe:
        ours = pipe.generate(PROMPTS, guidance_scale=8.0, seed=3)
    assert np.abs(ours - _images(lcm, 2, 3)).max() <= parity.TOLERANCES["fp32"].max_abs


def test_the_bundled_lcm_draws_the_named_digit_and_colours(lcm):
    """Prompt-following on held-out captions (``cmrt eval``'s scorer; the card's full table: 100%)."""
    from cmrt.train.t2i_eval import Scorer, generate

    scorer, n = Scorer(), 40
    test = scorer.test
    images = generate(lcm, list(test.captions[:n]), 2, 8.0, 0)
    scores = scorer.score(images, (test.digits[:n], test.fg[:n], test.bg[:n]))
    assert min(scores["digit_acc"], scores["fg_acc"], scores["bg_acc"]) >= 0.9, scores
