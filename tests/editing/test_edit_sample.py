"""The PyTorch editors (``cmrt.samplers.edit_sample``, ``UnrolledEditor``) against an independent
re-implementation from issue 11's formulas, on a diffusers-built RGB class-conditional UNet2DModel
with attention: diffusers runs the network, the consistency scalings are written out here, and the
projections use OpenAI's basis-change form (orthogonal bases from QR) instead of cmrt's closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmrt import editing as E
from cmrt.bundle import Task
from cmrt.exporter.api import build_unrolled, resolve_schedule
from cmrt.exporter.inputs import parity_inputs
from cmrt.models.denoisers import build_denoiser
from cmrt.models.sources import load_model
from cmrt.samplers import UnrolledEditor, edit_sample
from tests.conftest import randomize

diffusers = pytest.importorskip("diffusers")

PARITY = 1e-4  # issue 11: PyTorch editors vs the re-implementation, same noise
SIGMA_MIN, SIGMA_DATA = 0.002, 0.5
SIZE, BATCH, FACTOR = 16, 2, 4
SCHEDULES = {  # K = 1, 2, 3 evaluations per task (denoise: exactly one)
    "inpaint": [[80.0], [80.0, 2.0], [80.0, 5.0, 0.5]],
    "colorize": [[80.0], [80.0, 2.0], [80.0, 5.0, 0.5]],
    "superres": [[80.0], [80.0, 2.0], [80.0, 5.0, 0.5]],
    "stroke": [[5.0], [5.0, 1.0], [5.0, 2.0, 0.5]],
    "denoise": [[0.5]],
}
CASES = [(task, sigmas) for task, schedules in SCHEDULES.items() for sigmas in schedules]


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    """An ImageNet-64-like diffusers UNet2DModel at 16×16: RGB, 10 classes, scale-shift, attention."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), downsample_type="resnet",
                       upsample_type="resnet", attention_head_dim=32, num_class_embeds=10,
                       resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32)
    randomize(unet, std=0.2, seed=3)
    folder = tmp_path_factory.mktemp("edit-unet") / "unet"
    unet.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference_unet(unet_folder):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(unet_folder).eval()


@pytest.fixture(scope="module")
def model(unet_folder):
    return load_model(unet_folder)  # through cmrt's diffusers format reader


# --- the re-implementation --------------------------------------------------------------------------
def consistency_fn(unet, x, sigma, labels):
    """f(x, σ) from the formulas: boundary scalings, time input 250·ln σ, clamp to [-1, 1]."""
    c_skip = SIGMA_DATA**2 / ((sigma - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
    c_out = (sigma - SIGMA_MIN) * SIGMA_DATA / math.sqrt(sigma**2 + SIGMA_DATA**2)
    c_in = 1 / math.sqrt(sigma**2 + SIGMA_DATA**2)
    t = torch.full((x.shape[0],), 250.0 * math.log(sigma + 1e-44))
    return (c_skip * x + c_out * unet(c_in * x, t, class_labels=labels).sample).clamp(-1, 1)


def _basis(first: np.ndarray) -> torch.Tensor:
    a = np.eye(len(first))
    a[:, 0] = first / np.linalg.norm(first)
    q = np.linalg.qr(a)[0]
    return torch.tensor(q if q[:, 0].sum() >= 0 else -q, dtype=torch.float32)


def _patches(t, p):
    b, c, h, w = t.shape
    return t.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, p * p)


def _unpatch(t, shape, p):
    b, c, h, w = shape
    return t.reshape(b, c, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(shape)


def reference_operators(task, image, mask):
    """(y₀, P) written from the issue's definitions, projections in an orthogonal basis."""
    if task == "inpaint":
        return (1 - mask) * image, lambda x: x * mask + image * (1 - mask)
    if task == "colorize":
        q = _basis(np.array([0.2989, 0.5870, 0.1140]))
        norm = float(np.linalg.norm([0.2989, 0.5870, 0.1140]))
        known = q[:, 0].view(1, 3, 1, 1) * image / norm  # luma coordinate g/‖v‖, chroma 0

        def colorize(x):
            xb = torch.einsum("bchw,cd->bdhw", x, q)
            xb[:, 0] = torch.einsum("bchw,c->bhw", known, q[:, 0])
            return torch.einsum("bdhw,cd->bchw", xb, q)
        return known, colorize
    if task == "superres":
        q = _basis(np.ones(FACTOR * FACTOR))
        up = image.repeat_interleave(FACTOR, 2).repeat_interleave(FACTOR, 3)

        def superres(x):
            xb = torch.einsum("bcnd,de->bcne", _patches(x, FACTOR), q)
            xb[..., 0] = torch.einsum("bcnd,d->bcn", _patches(up, FACTOR), q[:, 0])
            return _unpatch(torch.einsum("bcne,de->bcnd", xb, q), x.shape, FACTOR)
        return up, superres
    return image, lambda x: x  # stroke and denoise


def reference_edit(unet, task, image, mask, labels, sigmas, noise):
    start, project = reference_operators(task, image, mask)
    if task == "denoise":
        return consistency_fn(unet, image, sigmas[0], labels)
    x = start + sigmas[0] * noise[0]
    for i, sigma in enumerate(sigmas):
        if i:
            x = x + math.sqrt(sigma**2 - SIGMA_MIN**2) * noise[i]
        x = project(consistency_fn(unet, x, sigma, labels))
    return x


def _inputs(model, task, sigmas, seed=0):
    feeds = parity_inputs(model.spec, len(sigmas), task=Task(task, FACTOR if task == "superres" else None),
                          sigmas=sigmas, batch=BATCH, seed=seed)
    noise = [feeds[k] for k in feeds if k.startswith("noise_")]
    return feeds, noise


# --- the tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,sigmas", CASES, ids=[f"{t}-K{len(s)}" for t, s in CASES])
def test_edit_sample_matches_the_reimplementation(model, reference_unet, task, sigmas):
    feeds, noise = _inputs(model, task, sigmas)
    image, mask, labels = feeds["image"], feeds.get("mask"), feeds["class_labels"]
    den = build_denoiser(model.spec, model.unet)
    with torch.no_grad():
        got = edit_sample(den, task, image, sigmas, noise, mask=mask, class_labels=labels,
                          sigma_min=model.spec.sigma_min, clip=True, factor=FACTOR if task == "superres" else None)
        want = reference_edit(reference_unet, task, image, mask, labels, sigmas, noise)
        other = reference_edit(reference_unet, task, image, mask, (labels + 1) % 10, sigmas, noise)
    assert got.shape == (BATCH, 3, SIZE, SIZE)
    assert float((got - want).abs().max()) <= PARITY
    assert float((other - want).abs().max()) > 1e-2  # the network (and its labels) shape the result


@pytest.mark.parametrize("task", ["inpaint", "colorize", "superres", "stroke", "denoise"])
def test_unrolled_editor_inputs_in_order(model, task):
    factor = FACTOR if task == "superres" else None
    sigmas = SCHEDULES[task][-1]
    schedule = resolve_schedule(model.spec, sigmas=sigmas, task=task)
    editor = build_unrolled(model, schedule, Task(task, factor))
    assert isinstance(editor, UnrolledEditor)
    feeds, noise = _inputs(model, task, sigmas, seed=1)
    assert editor.input_names == list(feeds)  # image, [mask], class_labels, noise_0..
    assert editor.input_names[:2] == (["image", "mask"] if task == "inpaint" else ["image", "class_labels"])
    with torch.no_grad():
        got = editor(*feeds.values())
        want = edit_sample(editor.denoiser, task, feeds["image"], sigmas, noise, mask=feeds.get("mask"),
                           class_labels=feeds["class_labels"], sigma_min=model.spec.sigma_min, factor=factor)
    assert torch.equal(got, want)


def test_known_parts_hold_after_editing(model):
    """With the trained-free model, the projection still fixes the known part of every output."""
    den = build_denoiser(model.spec, model.unet)
    with torch.no_grad():
        feeds, noise = _inputs(model, "inpaint", [80.0, 2.0])
        y, m = feeds["image"], feeds["mask"]
        out = edit_sample(den, "inpaint", y, [80.0, 2.0], noise, mask=m, class_labels=feeds["class_labels"])
        assert float(((out - y) * (1 - m)).abs().max()) <= 1e-6
        feeds, noise = _inputs(model, "colorize", [80.0, 2.0])
        out = edit_sample(den, "colorize", feeds["image"], [80.0, 2.0], noise, class_labels=feeds["class_labels"])
        assert float((E.luma(out) - feeds["image"]).abs().max()) <= 1e-5
        feeds, noise = _inputs(model, "superres", [80.0, 2.0])
        out = edit_sample(den, "superres", feeds["image"], [80.0, 2.0], noise, class_labels=feeds["class_labels"],
                          factor=FACTOR)
        assert float((E.block_mean(out, FACTOR) - feeds["image"]).abs().max()) <= 1e-5
