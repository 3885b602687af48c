"""Loaders of the published formats (``cmrt.models.formats``): OpenAI files written from
diffusers-built models under OpenAI's names, diffusers folders, and every bad-input path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import cmrt
from cmrt import schedules as S
from cmrt.cli import main
from cmrt.errors import ConfigError, SourceError
from cmrt.models import convert as C
from cmrt.models.sources import load_model
from cmrt.parity import TOLERANCES
from tests.conftest import randomize

diffusers = pytest.importorskip("diffusers")
ATOL = TOLERANCES["fp32"].max_abs


def _cm_unet(sample_size=16):
    """A small ImageNet-64-style UNet: class-conditional, scale-shift, 64-channel attention heads."""
    unet = diffusers.UNet2DModel(sample_size=sample_size, block_out_channels=(32, 64), layers_per_block=1,
                                 down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), downsample_type="resnet",
                                 upsample_type="resnet", attention_head_dim=64, num_class_embeds=10,
                                 resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32)
    return randomize(unet, std=0.2, seed=2).eval()


def _same_weights(model, state) -> bool:
    own = model.unet.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k].float()) for k in own)


@pytest.fixture(scope="module")
def openai_cm(tmp_path_factory):
    unet = _cm_unet()
    cfg = C.unet_config_from_diffusers(dict(unet.config), "test")
    path = tmp_path_factory.mktemp("oa") / "cd_tiny_l2.pt"
    torch.save(C.cmrt_to_openai_cm(unet.state_dict(), cfg), path)
    return unet, path


def test_openai_cm_checkpoint_matches_diffusers(openai_cm, tmp_path):
    unet, path = openai_cm
    sigmas = S.sigmas_from_indices([0, 22], 40)
    bundle = cmrt.export(path, out=tmp_path / "b", sigmas=sigmas, image_size=16)
    m = bundle.manifest
    assert m.clip is True and m.source.format == "openai consistency model" and m.sigmas == pytest.approx(sigmas)
    pipe = diffusers.ConsistencyModelPipeline(unet=unet, scheduler=diffusers.CMStochasticIterativeScheduler())
    labels = torch.tensor([4, 1])
    with torch.no_grad():
        ref = pipe(batch_size=2, class_labels=labels, timesteps=[22, 0], generator=torch.Generator().manual_seed(5),
                   output_type="pt").images.numpy()
    got = np.clip(cmrt.Sampler(bundle.path).sample(2, class_labels=labels.numpy(), seed=5) / 2 + 0.5, 0, 1)
    assert np.abs(got - ref).max() <= ATOL


def test_openai_cm_options_and_errors(openai_cm, tmp_path, capsys):
    unet, path = openai_cm
    with pytest.raises(ConfigError, match="--image-size"):
        load_model(path)
    with pytest.raises(SourceError, match="does not match --arch imagenet64: block_out_channels"):
        load_model(path, arch="imagenet64")
    assert main(["export", "--model", str(path), "--arch", "lsun256", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse: not a positive integer
        main(["export", "--model", str(path), "--image-size", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    model = load_model(path, image_size=16)
    assert model.spec.num_classes == 10 and model.spec.clip and model.spec.grid_size == 40
    assert _same_weights(model, unet.state_dict())
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "out.0.bias"}, tmp_path / "missing.pt")
    with pytest.raises(SourceError, match="missing keys"):
        load_model(tmp_path / "missing.pt", image_size=16)
    torch.save(state | {"input_blocks.1.0.in_layers.0.weight": torch.zeros(7)}, tmp_path / "shape.pt")
    with pytest.raises(SourceError, match="shape mismatch"):
        load_model(tmp_path / "shape.pt", image_size=16)
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "does not match --arch lsun256" in errors[0] and "--image-size" in errors[1]
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module, not a state dict
    with pytest.raises(SourceError, match="weights_only"):
        load_model(tmp_path / "pickled.pt")


@pytest.mark.parametrize("name,grid,rule", [
    ("ct_imagenet64.pt", 201, "published 201-point grid of ct_imagenet64"),
    ("ct_bedroom256.pt", 151, "published 151-point grid of ct_bedroom256"),
    ("ct_cat256.pt", 151, "published 151-point grid of ct_cat256"),
    ("cd_bedroom256_lpips.pt", 40, "published 40-point grid of OpenAI's CD"),
    ("my_finetune.pt", 40, "assumed"),
])
def test_openai_checkpoints_get_their_published_grid(openai_cm, tmp_path, name, grid, rule):
    """OpenAI's CT checkpoints were sampled on 201 (ImageNet-64) and 151 (LSUN-256) points
    (scripts/launch.sh; diffusers' conversion script): --steps N alone spaces on that grid."""
    from cmrt.exporter.api import resolve_schedule

    path = tmp_path / name
    shutil.copy(openai_cm[1], path)
    model = load_model(path, image_size=16)
    assert model.spec.grid_size == grid and rule in model.source["grid_rule"]
    schedule = resolve_schedule(model.spec, 2)
    assert schedule.grid == grid and schedule.sigmas == tuple(S.sigmas_from_indices([0, grid // 2], grid))
    assert resolve_schedule(model.spec, 2, grid=40).sigmas == tuple(S.sigmas_from_indices([0, 20], 40))


# --- the consistency decoder ------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    vae = diffusers.ConsistencyDecoderVAE(encoder_block_out_channels=(32, 32, 32, 32), encoder_layers_per_block=1,
                                          decoder_block_out_channels=(32, 64, 64, 64), decoder_layers_per_block=1)
    randomize(vae, std=0.2, seed=6).eval()
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder)
    return vae, folder


def _torchscript(state: dict, path):
    """A TorchScript archive holding ``state`` under its (dotted) names, as decoder.pt does."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, name = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def decoder_pt(vae_folder, tmp_path_factory):
    from safetensors.torch import save_file

    vae, _ = vae_folder
    sd = vae.decoder_unet.state_dict()
    folder = tmp_path_factory.mktemp("dpt")
    _torchscript(C.cmrt_to_openai_decoder(sd), folder / "decoder.pt")
    save_file({"weight": sd["time_proj.weight"].contiguous()}, folder / "embedding.safetensors")
    return vae, folder / "decoder.pt", folder / "embedding.safetensors"


def test_decoder_pt_gate_embedding_and_parity(decoder_pt, tmp_path, capsys):
    vae, path, emb = decoder_pt
    with pytest.raises(SourceError, match=r"SHA-256 .* not the published decoder.pt .*--trust"):
        load_model(path)
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "--trust" in err
    with pytest.raises(ConfigError, match="--embedding"):
        load_model(path, trust=True)
    model = load_model(path, trust=True, embedding=emb)
    assert model.spec.kind == "decoder" and model.spec.clip is True  # OpenAI's decoder clamps
    assert _same_weights(model, vae.decoder_unet.state_dict())
    # the weights are diffusers'; without the clamp the images are diffusers' too
    bundle = cmrt.export(path, out=tmp_path / "b", clip=False, trust=True, embedding=emb)
    assert bundle.manifest.clip is False and bundle.manifest.source.details["trusted"] is True
    z = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        ref = vae.decode(z, generator=torch.Generator().manual_seed(2)).sample.numpy()
    assert np.abs(cmrt.Decoder(bundle.path).decode(z.numpy(), seed=2) - ref).max() <= ATOL


def test_diffusers_vae_loads_decoder_weights_only(vae_folder):
    vae, folder = vae_folder
    model = load_model(folder)
    assert model.spec.kind == "decoder" and model.spec.clip is False  # diffusers does not clamp
    assert model.spec.unet.layers_per_block == 1 and model.spec.unet.block_out_channels == (32, 64, 64, 64)
    assert _same_weights(model, vae.decoder_unet.state_dict())


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    f = folder / "diffusion_pytorch_model.safetensors"
    save_file(change(load_file(str(f))), str(f))


def test_diffusers_vae_bad_inputs(vae_folder, tmp_path):
    _, folder = vae_folder

    def copy(name):
        shutil.copytree(folder, tmp_path / name)
        return tmp_path / name

    missing = copy("missing")
    _rewrite_weights(missing, lambda t: {k: v for k, v in t.items() if k != "decoder_unet.conv_out.bias"})
    with pytest.raises(SourceError, match=r"missing keys .*conv_out.bias"):
        load_model(missing)
    extra = copy("extra")
    _rewrite_weights(extra, lambda t: t | {"decoder_unet.extra.weight": torch.zeros(3)})
    with pytest.raises(SourceError, match=r"unexpected keys .*extra.weight"):
        load_model(extra)
    shape = copy("shape")
    cfg = json.loads((shape / "config.json").read_text())
    (shape / "config.json").write_text(json.dumps(cfg | {"decoder_block_out_channels": [32, 64, 64, 128]}))
    with pytest.raises(SourceError, match="shape mismatches"):
        load_model(shape)
    sdxl = copy("sdxl")
    (sdxl / "config.json").write_text(json.dumps(cfg | {"scaling_factor": 0.13025}))
    with pytest.raises(SourceError, match="SDXL"):
        load_model(sdxl)


def test_diffusers_folders_pipeline_and_bare_unet(tmp_path):
    unet = _cm_unet()
    scheduler = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=151, sigma_max=70.0, clip_denoised=False)
    diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    model = load_model(tmp_path / "pipe")
    s = model.spec
    assert (s.kind, s.grid_size, s.sigma_max, s.clip, s.image_size, s.num_classes) == ("sampler", 151, 70.0, False, 16, 10)
    assert _same_weights(model, unet.state_dict())
    bare = load_model(tmp_path / "pipe" / "unet")  # a bare UNet2DModel folder: OpenAI's defaults
    assert bare.spec.clip is True and bare.spec.sigma_max == S.SIGMA_MAX and _same_weights(bare, unet.state_dict())
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(SourceError, match="DDIMScheduler is not CMStochasticIterativeScheduler"):
        load_model(tmp_path / "pipe")
    _cm_unet(sample_size=None).save_pretrained(tmp_path / "nosize")
    with pytest.raises(ConfigError, match="sample_size"):
        load_model(tmp_path / "nosize")


def test_unknown_layouts(tmp_path, capsys):
    other = tmp_path / "kl"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(SourceError, match="AutoencoderKL is not a format cmrt exports"):
        load_model(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a model cmrt can read"):
        load_model(tmp_path / "empty")
    assert main(["export", "--model", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "AutoencoderKL" in err and str(other) in err
