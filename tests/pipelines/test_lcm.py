"""Full LCM (a UNet with ``time_cond_proj_dim``) exported as a pipeline bundle, against diffusers'
``LatentConsistencyModelPipeline`` on the same folder and seed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cmrt import parity
from cmrt.errors import CmrtError, InputError, InputTypeError, ParityError, RunnerClosedError
from cmrt.pipelines import lcm as L
from cmrt.runtime.pipeline import Pipeline

PROMPTS = ["a red cat on a mat", "blue"]
LONG = "a very long prompt " * 8  # longer than the 77-token context (one token per character)


@pytest.fixture(scope="session")
def lcm_pipe(lcm_folder):
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(lcm_folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_images(pipe, prompt, *, steps, guidance, height, width, seed, **kw) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, generator=g,
               output_type="pt", **kw).images
    return (out * 2 - 1).numpy()


# --- the scheduler's formulas against LCMScheduler -------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_timesteps_and_scalings_match_lcm_scheduler(steps):
    from diffusers import LCMScheduler

    sched = LCMScheduler(beta_schedule="scaled_linear", set_alpha_to_one=False)
    sched.set_timesteps(steps)
    config = L.LCMConfig.from_scheduler_config(dict(sched.config))
    consts = L.lcm_steps(config, steps)
    assert [c.t for c in consts] == sched.timesteps.tolist()
    for c in consts:
        assert (c.c_skip, c.c_out) == sched.get_scalings_for_boundary_condition_discrete(c.t)
        assert c.sqrt_alpha == float(sched.alphas_cumprod[c.t].sqrt())
    assert consts[-1].sqrt_alpha_prev is None


def test_published_timesteps():
    """LCM_Dreamshaper_v7's scheduler: 4 steps are 999, 759, 499, 259; 2 steps 999, 499."""
    assert L.lcm_timesteps(4, 1000, 50) == [999, 759, 499, 259]
    assert L.lcm_timesteps(2, 1000, 50) == [999, 499]


def test_guidance_embedding_matches_the_pipeline(lcm_pipe):
    w = torch.tensor([7.5, 1.0, 0.0])
    for dim in (32, 33, 256):
        expected = lcm_pipe.get_guidance_scale_embedding(w, embedding_dim=dim)
        assert torch.equal(L.guidance_embedding(w, dim), expected)


# --- parity with diffusers ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, pytest.param(2, marks=pytest.mark.slow), 4])
@pytest.mark.parametrize("guidance", [8.5, 2.0])
def test_pipeline_equals_diffusers(lcm_bundles, lcm_pipe, steps, guidance):
    """Batch 2 at an odd latent size (40×56 images: 5×7 latents), the seed drawn as diffusers draws it."""
    with Pipeline(lcm_bundles(steps)) as pipe:
        images = pipe.generate(PROMPTS, guidance_scale=guidance, height=40, width=56, seed=11)
    expected = diffusers_images(lcm_pipe, PROMPTS, steps=steps, guidance=guidance, height=40, width=56, seed=11)
    assert images.shape == (2, 3, 40, 56) and images.dtype == np.float32
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp32"].max_abs
    assert images.min() >= -1 and images.max() <= 1


def test_defaults_square_size_and_long_prompt(lcm_bundle, lcm_pipe, caplog):
    """guidance None is the pipeline's 8.5; the default size is the UNet's sample size × 8; a
    prompt past the context is truncated as diffusers truncates it, with a warning."""
    with Pipeline(lcm_bundle) as pipe, pytest.warns(UserWarning, match="truncated"):
        images = pipe.generate([LONG, "x"], seed=5)
    expected = diffusers_images(lcm_pipe, [LONG, "x"], steps=4, guidance=8.5, height=None, width=None, seed=5)
    assert images.shape == (2, 3, 64, 64)
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp32"].max_abs


def test_seeded_call_reproducible_and_noise_input(lcm_bundle):
    with Pipeline(lcm_bundle) as pipe:
        a = pipe.generate("a cat", seed=3, height=48, width=32)
        b = pipe.generate("a cat", seed=3, height=48, width=32)
        c = pipe.generate("a cat", seed=4, height=48, width=32)
        g = torch.Generator().manual_seed(3)
        noise = [torch.randn(1, 4, 6, 4, generator=g) for _ in range(4)]
        d = pipe.generate("a cat", noise=noise, height=48, width=32)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert isinstance(d, torch.Tensor) and np.array_equal(d.numpy(), a)


def test_manifest_records_every_stage(lcm_bundle):
    from cmrt.bundle import PipelineManifest

    m = PipelineManifest.open(lcm_bundle)
    assert set(m.stages) == {"text_encoder", "sampler", "decoder"}
    assert m.timesteps == (999, 759, 499, 259) and m.guidance == "embedding" and m.default_guidance_scale == 8.5
    for stage in m.stages.values():
        (record,) = stage.parity.values()
        assert record.passed and record.outputs[0].max_abs <= 1e-4
    names = [i.name for i in m.stages["sampler"].inputs]
    assert names == ["prompt_embeds", "guidance_scale"] + [f"noise_{i}" for i in range(4)]
    assert {f.file.split("/")[0] for t in m.tokenizers for f in t.files} == {"tokenizer"}


def test_sampler_graph_is_four_unet_steps_sharing_one_set_of_weights(lcm_bundle, lcm_pipe):
    import onnx

    graph = onnx.load(str(lcm_bundle / "sampler.onnx")).graph
    weights = sum(int(np.prod(i.dims)) for i in graph.initializer if len(i.dims) > 1)
    unet = sum(p.numel() for p in lcm_pipe.unet.parameters() if p.dim() > 1)
    assert unet <= weights < 1.1 * unet  # stored once (and a few folded constants)
    convs = [n.name for n in graph.node if n.op_type == "Conv" and n.name.startswith("/unet/")]
    per_step = {k: sum(name.endswith(f"/step{k}") for name in convs) for k in range(4)}
    assert len(set(per_step.values())) == 1 and sum(per_step.values()) == len(convs) > 0


def test_bundle_files_have_the_usual_mode(lcm_bundle):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in lcm_bundle.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_manifest_schema(lcm_bundle):
    from pathlib import Path

    from cmrt.bundle import PIPELINE_MANIFEST, pipeline_schema

    shipped = Path(__file__).resolve().parents[2] / "docs" / "pipeline.schema.json"
    assert json.loads(shipped.read_text()) == pipeline_schema()
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads((lcm_bundle / PIPELINE_MANIFEST).read_text())
    jsonschema.validate(data, pipeline_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data | {"steps": "four"}, pipeline_schema())


def test_edited_or_truncated_bundle_refused(lcm_bundle, tmp_path):
    import shutil

    from cmrt.errors import IntegrityError

    copy = tmp_path / "b"
    shutil.copytree(lcm_bundle, copy)
    data = copy / "sampler.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(IntegrityError, match="sampler.onnx.data"):
        Pipeline(copy)


def test_failed_check_leaves_nothing(lcm_folder, tmp_path, monkeypatch):
    from cmrt.exporter.pipeline import export_pipeline

    monkeypatch.setitem(parity.TOLERANCES, "fp32-features", parity.Tolerance(max_abs=0.0, relative=True))
    with pytest.raises(ParityError, match="text_encoder|prompt_embeds"):
        export_pipeline(lcm_folder, out=tmp_path / "b", steps=1)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"prompt": []}, InputError, "prompt is an empty list"),
    ({"prompt": 3}, InputTypeError, "prompt must be"),
    ({"prompt": ["a", "b"], "negative_prompt": ["c"]}, InputError, "negative_prompt has 1"),
    ({"prompt": "a", "height": 60}, InputError, "height must be a positive multiple of 8"),
    ({"prompt": "a", "width": 0}, InputError, "width must be"),
    ({"prompt": "a", "guidance_scale": math.nan}, InputError, "guidance_scale must be a finite"),
    ({"prompt": "a", "guidance_scale": -1.0}, InputError, "guidance_scale must be a finite"),
    ({"prompt": "a", "seed": 1, "noise": []}, InputError, "either seed or noise"),
    ({"prompt": "a", "noise": [np.zeros((1, 4, 8, 8), np.float32)]}, InputError, "needs 4 noise"),
    ({"prompt": "a", "tile": 8}, CmrtError, "tile= applies to a consistency decoder"),
])
def test_bad_input(lcm_bundle, kwargs, error, match):
    with Pipeline(lcm_bundle) as pipe, pytest.raises(error, match=match) as info:
        pipe.generate(**kwargs)
    assert isinstance(info.value, CmrtError) and isinstance(info.value, (ValueError, TypeError))


def test_closed_pipeline_refuses(lcm_bundle):
    pipe = Pipeline(lcm_bundle)
    pipe.close()
    pipe.close()
    with pytest.raises(RunnerClosedError):
        pipe.generate("a")


def test_threads_share_one_pipeline(lcm_bundle):
    from concurrent.futures import ThreadPoolExecutor

    with Pipeline(lcm_bundle) as pipe:
        alone = [pipe.generate("a cat", seed=s, height=32, width=32) for s in range(3)]
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda s: pipe.generate("a cat", seed=s, height=32, width=32), range(3)))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_fp16_stages(lcm16_bundle, lcm_pipe):
    """--precision fp16: FP16 sampler and decoder graphs, each ≥ 40 dB against the FP32 pipeline at
    export (recorded), and the FP16 pipeline at run time within the fp16 tolerances of diffusers."""
    from cmrt.bundle import PipelineManifest

    out = lcm16_bundle  # export_pipeline(lcm_folder, steps=2, precision="fp16"), shared with the engine tests
    m = PipelineManifest.open(out)
    for name in ("sampler", "decoder"):
        record = m.stages[name].parity["onnxruntime-cpu/fp16"]
        assert record.passed and record.outputs[0].psnr >= 40
        assert "fp16" in m.stages[name].graphs
    assert m.stages["text_encoder"].graphs == {}
    with Pipeline(out, precision="fp16") as pipe:
        images = pipe.generate(PROMPTS, guidance_scale=8.5, height=40, width=56, seed=1)
    expected = diffusers_images(lcm_pipe, PROMPTS, steps=2, guidance=8.5, height=40, width=56, seed=1)
    assert np.abs(images - expected).max() <= parity.TOLERANCES["fp16"].max_abs
    assert parity.psnr(images, expected) >= parity.TOLERANCES["fp16"].min_psnr
    with Pipeline(out) as pipe32:
        assert np.abs(pipe32.generate(PROMPTS, guidance_scale=8.5, height=40, width=56, seed=1) - expected).max() <= 1e-4


def test_fp16_needs_fp16_graphs(lcm_bundle):
    from cmrt.errors import ConfigError

    with pytest.raises(ConfigError, match="no FP16 graphs"):
        Pipeline(lcm_bundle, precision="fp16")


def test_check_pipeline_rechecks_every_stage(lcm_bundle, tmp_path):
    import shutil

    from cmrt.errors import IntegrityError
    from cmrt.runtime.pipeline import check_pipeline

    reports = check_pipeline(lcm_bundle)
    assert set(reports) == {"text_encoder/onnxruntime-cpu/fp32-features", "sampler/onnxruntime-cpu/fp32-features",
                            "decoder/onnxruntime-cpu/fp32"}
    assert all(r.passed for r in reports.values())
    copy = tmp_path / "b"
    shutil.copytree(lcm_bundle, copy)
    vocab = next(p for p in (copy / "tokenizer").iterdir() if p.suffix == ".json")
    data = bytearray(vocab.read_bytes())
    data[-2] = ord(" ") if data[-2] != ord(" ") else ord("\n")  # same size, other contents
    vocab.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="tokenizer/"):
        check_pipeline(copy)
