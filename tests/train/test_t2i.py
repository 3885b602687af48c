"""Text to image on captioned digits: the data and tokenizer, a few steps of `cmrt train vae/ldm/lcm`
(and LCM-LoRA) on a tiny configuration, exact resume, and the finished runs loading in diffusers."""

import json

import numpy as np
import pytest
import torch

from cmrt.errors import ConfigError
from cmrt.train import captions as C
from cmrt.train.models import TrainConfig
from cmrt.train.t2i import DIFFUSERS, LORA, LORA_FILE, train_t2i as train

TINY = dict(data="digits-text", widths=(8, 8), attention=(False, True), head_dim=8, norm_groups=4, text_width=16,
            text_layers=1, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2, threads=1,
            ema_decay=0.9, time_cond_dim=8)


def cfg(method: str, out, **kw) -> TrainConfig:
    return TrainConfig(**({"method": method, "out": str(out)} | TINY | kw))


@pytest.fixture(scope="module")
def data():
    full = C.load_captioned("train", copies=1)
    n = 16
    return C.CaptionSet(full.name, full.x[:n], full.captions[:n], full.digits[:n], full.fg[:n], full.bg[:n])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("t2i")
    vae = train(cfg("vae", root / "vae", widths=(8, 8, 8, 8), max_steps=2), data=data, progress=False)
    return train(cfg("ldm", root / "ldm", vae=str(vae), max_steps=2), data=data, progress=False)


def test_captions_name_what_is_drawn_and_tokenize_word_by_word(tmp_path):
    test = C.load_captioned("test", copies=1)
    assert len(test) == 180 and test.x.shape[1:] == (3, C.TEXT_SIZE, C.TEXT_SIZE)
    for cap, d, f, b in zip(test.captions[:20], test.digits, test.fg, test.bg):
        assert C.COLORS[f] in cap and C.COLORS[b] in cap
        assert str(d) in cap.split() or C.NUMBER_WORDS[d] in cap.split()
    fg, bg = C.read_colors(test.x)  # the colour reader is exact on real renders
    assert (fg == test.fg).all() and (bg == test.bg).all()
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(C.write_tokenizer(tmp_path / "tok")))
    assert all(len(tok.tokenize(w)) == 1 for w in C.vocabulary())
    assert max(len(tok(c).input_ids) for c in test.captions) <= C.CONTEXT


def test_the_teacher_run_is_a_stable_diffusion_folder(teacher):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(teacher / DIFFUSERS), safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.unet.config.time_cond_proj_dim is None
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the training latents
    out = pipe("a red 7 on a blue background", num_inference_steps=2, output_type="pt", height=32, width=32).images
    assert out.shape == (1, 3, 32, 32)


def test_lcm_resumes_exactly_and_loads_in_the_lcm_pipeline(teacher, data, tmp_path):
    from diffusers import LatentConsistencyModelPipeline
    from safetensors.torch import load_file

    straight = train(cfg("lcm", tmp_path / "a", teacher=str(teacher), max_steps=4), data=data, progress=False)
    train(cfg("lcm", tmp_path / "b", teacher=str(teacher), max_steps=2), data=data, progress=False)
    resumed = train(cfg("lcm", tmp_path / "b", teacher=str(teacher), max_steps=4), data=data, resume=True,
                    progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # weights, EMA (and through them the restored target θ⁻, optimizer and generators)
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    pipe = LatentConsistencyModelPipeline.from_pretrained(str(straight / DIFFUSERS), safety_checker=None)
    assert pipe.unet.config.time_cond_proj_dim == TINY["time_cond_dim"]
    out = pipe("seven in red on blue", num_inference_steps=2, guidance_scale=8.0, output_type="pt").images
    assert out.shape == (1, 3, C.TEXT_SIZE, C.TEXT_SIZE) and torch.isfinite(out).all()


def test_lcm_lora_keys_load_into_every_targeted_module(teacher, data, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    run = train(cfg("lcm", tmp_path / "lora", teacher=str(teacher), lora_rank=2, max_steps=2), data=data,
                progress=False)
    file = run / LORA / LORA_FILE
    saved = load_file(str(file))
    pipe = StableDiffusionPipeline.from_pretrained(str(teacher / DIFFUSERS), safety_checker=None)
    pipe.load_lora_weights(str(file))
    modules = dict(pipe.unet.named_modules())
    downs = [k for k in saved if k.endswith("lora_A.weight")]
    assert any(".attn2.to_k." in k for k in downs)  # the attention projections too
    for key in downs:  # every saved LoRA reached its module, with the saved weights
        module = modules[key.removeprefix("unet.").removesuffix(".lora_A.weight")]
        (weight,) = [m.weight for m in module.lora_A.values()]
        torch.testing.assert_close(weight, saved[key], rtol=0, atol=0)


def test_lcm_options_are_checked():
    with pytest.raises(ConfigError, match="--teacher"):
        TrainConfig(method="lcm", data="digits-text")
    with pytest.raises(ConfigError, match="--lcm-skip"):
        TrainConfig(method="lcm", data="digits-text", teacher="t", lcm_skip=30)
    with pytest.raises(ConfigError, match="--guidance-min"):
        TrainConfig(method="lcm", data="digits-text", teacher="t", guidance_min=0.5)
    with pytest.raises(ConfigError, match="--vae"):
        TrainConfig(method="ldm", data="digits-text")
    with pytest.raises(ConfigError, match="--weight-cap"):
        TrainConfig(method="ldm", data="digits-text", vae="v", weight_cap=0.5)


def test_the_teachers_timestep_weight_is_edms_for_unit_latents_capped():
    from cmrt.train.t2i import alphas_cumprod, timestep_weight

    ac = alphas_cumprod()
    sigma2 = (1 - ac) / ac  # the VE noise level of each timestep; EDM's λ(σ)·σ² with σ_data = 1 is 1 + σ²
    torch.testing.assert_close(timestep_weight(ac, 1e9), 1 + sigma2)
    w = timestep_weight(ac, 10.0)
    assert w.max() == 10.0 and w[0] < 1.01 and (w.diff() >= 0).all()  # noisier timesteps weigh more
    assert (timestep_weight(ac, 1.0) == 1.0).all()  # cap 1: the plain ε-MSE


def test_guided_ddim_step_is_ddim_with_guided_x0_and_eps():
    from cmrt.train.t2i import alphas_cumprod, guided_ddim_step

    class Eps(torch.nn.Module):  # ε = x·(1 + mean of the embedding): cond and uncond differ
        def forward(self, x, t, encoder_hidden_states):
            return type("O", (), {"sample": x * (1 + encoder_hidden_states.mean((1, 2)).reshape(-1, 1, 1, 1))})()

    ac = alphas_cumprod()
    x, emb, unc = torch.randn(2, 4, 2, 2), torch.ones(2, 3, 5), torch.zeros(1, 3, 5)
    t, tp, w = torch.tensor([999, 519]), torch.tensor([979, 499]), torch.tensor([0.0, 3.0])
    got = guided_ddim_step(Eps(), x, t, tp, emb, unc, w, ac)
    a, ap = ac[t].reshape(-1, 1, 1, 1), ac[tp].reshape(-1, 1, 1, 1)
    eps_c, eps_u = 2 * x, x
    eps = eps_c + w.reshape(-1, 1, 1, 1) * (eps_c - eps_u)
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # x̂0 is linear in ε, so guiding x̂0 = x̂0 of the guided ε
    torch.testing.assert_close(got, ap.sqrt() * x0 + (1 - ap).sqrt() * eps)
    assert np.isfinite(got.numpy()).all()


def test_a_decoder_on_the_renders_trains_on_latent_aligned_crops(teacher, data, tmp_path):
    from cmrt.train.loop import Trainer, _load
    from cmrt.train.photos import CropSet

    cfg = TrainConfig(method="decoder", data="digits-text", out=str(tmp_path / "d"), encoder=str(teacher.parent / "vae"),
                      channels=3, image_size=32, widths=(8, 8), norm_groups=4, batch_size=2, max_steps=1, threads=1)
    full = _load(cfg, "decoder")  # what `cmrt train decoder --data digits-text` trains on
    assert isinstance(full, CropSet) and full.crop == 32 and full.images[0].shape == (3, C.TEXT_SIZE, C.TEXT_SIZE)
    trainer = Trainer(cfg, data=CropSet(full.name, tuple(data.x), 32))  # 16 renders: encoding all is slow
    batch = trainer.batch()
    assert batch.images.shape == (2, 3, 32, 32) and batch.cond.shape[0] == 2
    assert torch.isfinite(torch.tensor(trainer.train_step()))
