"""LCM-LoRA: a plain SD UNet with a LoRA fused at export, against diffusers' StableDiffusionPipeline
with LCMScheduler and the same LoRA loaded and fused; CFG with negative prompts in the graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.errors import CmrtError, ConfigError
from cmrt.runtime.pipeline import Pipeline


def _reference(folder, lora=None, scale=0.8):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora(lora_scale=scale)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def lora_pipe(sd_folder, lcm_lora):
    return _reference(sd_folder, lcm_lora)


def _images(pipe, prompt, **kw) -> np.ndarray:
    g = torch.Generator().manual_seed(kw.pop("seed"))
    return (pipe(prompt, num_inference_steps=2, generator=g, output_type="pt", **kw).images * 2 - 1).numpy()


@pytest.mark.parametrize("guidance, negative", [(1.0, None), (2.0, None), (1.5, ["blurry", "dark"])])
def test_lora_pipeline_equals_diffusers(lora_bundle, lora_pipe, guidance, negative):
    prompts = ["a cat", "a dog on grass"]
    with Pipeline(lora_bundle) as pipe:
        images = pipe.generate(prompts, negative_prompt=negative, guidance_scale=guidance, height=40, width=24,
                               seed=2)
    expected = _images(lora_pipe, prompts, negative_prompt=negative, guidance_scale=guidance, height=40, width=24,
                       seed=2)
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp32"].max_abs


def test_lora_changes_the_images_and_default_guidance(lora_bundle, sd_folder):
    """The fused LoRA matters (the base model's images differ), and guidance None is
    StableDiffusionPipeline's default 7.5, recorded in the bundle."""
    from cmrt.bundle import PipelineManifest

    m = PipelineManifest.open(lora_bundle)
    assert m.guidance == "cfg" and m.default_guidance_scale == 7.5 and m.lora["scale"] == 0.8
    with Pipeline(lora_bundle) as pipe:
        images = pipe.generate("a cat", height=32, width=32, seed=1, guidance_scale=1.0)
    base = _images(_reference(sd_folder), "a cat", guidance_scale=1.0, height=32, width=32, seed=1)
    assert np.abs(images - base).max() > 1e-2


def test_mismatched_lora_is_refused(sd_folder, lcm_folder, tmp_path):
    """A LoRA whose keys name modules the UNet lacks: the first key and the UNet's class."""
    from safetensors.torch import save_file

    from cmrt.exporter.pipeline import export_pipeline

    bad = tmp_path / "bad.safetensors"
    save_file({"unet.down_blocks.7.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8),
               "unet.down_blocks.7.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 4)}, str(bad))
    with pytest.raises(ConfigError, match=r"key 'unet\.down_blocks\.7.*UNet2DConditionModel"):
        export_pipeline(sd_folder, out=tmp_path / "b", lora=bad)
    assert not (tmp_path / "b").exists()


def test_truncated_lora_is_refused(sd_folder, lcm_lora, tmp_path):
    from cmrt.exporter.pipeline import export_pipeline

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lcm_lora.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="--lora .*not a readable safetensors") as info:
        export_pipeline(sd_folder, out=tmp_path / "b", lora=cut)
    assert isinstance(info.value, CmrtError) and isinstance(info.value, ValueError)


def test_lora_key_layouts_diffusers_reads(sd_folder):
    """The key layouts of published LoRAs map onto the UNet's modules; others do not."""
    from diffusers import UNet2DConditionModel

    from cmrt.pipelines.load import _unet_module

    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    modules = {n for n, _ in unet.named_modules() if n}
    kohya = {n.replace(".", "_") for n in modules}
    attn = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    good = [f"unet.{attn}.to_q.lora_A.weight", f"{attn}.to_k.lora_B.weight", f"unet.{attn}.to_out.0.lora.down.weight",
            f"unet.{attn}.processor.to_out_lora.up.weight", f"unet.{attn}.processor.to_v_lora.down.weight",
            f"lora_unet_{attn.replace('.', '_')}_to_q.lora_down.weight", f"lora_unet_{attn.replace('.', '_')}_to_q.alpha",
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight"]
    bad = [f"unet.{attn}.to_z.lora_A.weight", "unet.down_blocks.7.resnets.0.conv1.lora_A.weight",
           "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight", "something_else.weight"]
    assert all(_unet_module(k, modules, kohya) for k in good)
    assert not any(_unet_module(k, modules, kohya) for k in bad)


def test_lora_modules_diffusers_leaves_out_are_refused(sd_folder, tmp_path):
    """A file diffusers' load_lora_weights only partly applies (the ``convert_state_dict_to_diffusers``
    layout: 0.42 leaves out its attention projections without a word) is refused, not half-fused."""
    from tiny import save_lcm_lora

    from cmrt.exporter.pipeline import export_pipeline

    lora = save_lcm_lora(sd_folder, tmp_path / "converted", converted=True)
    with pytest.raises(ConfigError, match=r"applied \d+ of the \d+ UNet modules .*first: '.*attn"):
        export_pipeline(sd_folder, out=tmp_path / "b", lora=lora)
    assert not (tmp_path / "b").exists()
