"""Every bad editing input gets a typed error naming the argument: at export (``ConfigError``) and
in ``cmrt.Editor.edit`` (``InputError``/``InputTypeError``, also ValueError/TypeError)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmrt
from cmrt.bundle import Task
from cmrt.exporter.api import resolve_schedule, resolve_task
from tests.conftest import loaded, tiny_cm_spec, tiny_decoder_spec

IMG = np.zeros((2, 3, 16, 16), np.float32)
MASK = np.zeros((2, 1, 16, 16), np.float32)


@pytest.fixture(scope="module")
def inpaint(edit_inpaint):
    with cmrt.Editor(edit_inpaint.path) as e:
        yield e


@pytest.fixture(scope="module")
def colorize(edit_colorize):
    with cmrt.Editor(edit_colorize.path) as e:
        yield e


@pytest.fixture(scope="module")
def superres(edit_superres):
    with cmrt.Editor(edit_superres.path) as e:
        yield e


@pytest.fixture(scope="module")
def denoise(edit_denoise):
    with cmrt.Editor(edit_denoise.path) as e:
        yield e


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, cmrt.CmrtError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("image,mask,exc,match", [
    (np.zeros((2, 3, 8, 8), np.float32), MASK, cmrt.InputError, r"image must have shape \(\*, 3, 16, 16\)"),
    (np.zeros((3, 16, 16), np.float32), MASK, cmrt.InputError, "image must have shape"),
    (np.zeros((2, 1, 16, 16), np.float32), MASK, cmrt.InputError, "image must have shape"),
    (IMG + 1.5, MASK, cmrt.InputError, r"image values must lie in \[-1, 1\]"),
    (np.full_like(IMG, 255.0), MASK, cmrt.InputError, "127.5"),
    (np.full_like(IMG, np.nan), MASK, cmrt.InputError, "image contains NaN or Inf"),
    (np.full_like(IMG, np.inf), MASK, cmrt.InputError, "image contains NaN or Inf"),
    (IMG.astype(bool), MASK, cmrt.InputTypeError, "image has dtype bool"),
    (IMG.tolist(), MASK, cmrt.InputTypeError, "image must be a numpy array or torch tensor"),
    (IMG, np.zeros((2, 3, 16, 16), np.float32), cmrt.InputError, r"mask must have shape \(2, 1, 16, 16\)"),
    (IMG, np.zeros((1, 1, 16, 16), np.float32), cmrt.InputError, "mask must have shape"),
    (IMG, np.zeros((2, 16, 16), np.float32), cmrt.InputError, "mask must have rank 4"),
    (IMG, MASK + 1.5, cmrt.InputError, r"mask values must lie in \[0, 1\]"),
    (IMG, MASK - 0.1, cmrt.InputError, r"mask values must lie in \[0, 1\]"),
    (IMG, np.full_like(MASK, np.nan), cmrt.InputError, "mask contains NaN"),
    (IMG, None, cmrt.InputError, "inpainting needs mask="),
])
def test_inpaint_bad_image_and_mask(inpaint, image, mask, exc, match):
    _raises(exc, match, inpaint.edit, image, mask=mask, seed=0)


def test_inpaint_tolerates_rounding_and_soft_masks(inpaint):
    out = inpaint.edit(IMG + 1.005, mask=np.full_like(MASK, 0.5), seed=0)  # within the margin; soft mask
    assert out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(class_labels=10), cmrt.InputError, r"class_labels must lie in \[0, 10\)"),
    (dict(class_labels=[1, 2, 3]), cmrt.InputError, "class_labels has 3 labels for a batch of 2"),
    (dict(class_labels=np.array([0.5, 1.0])), cmrt.InputTypeError, "class_labels must be integers"),
    (dict(noise=[np.zeros((2, 3, 16, 16), np.float32)]), cmrt.InputError, "needs 2 noise tensors, got 1"),
    (dict(noise=[np.zeros((1, 3, 16, 16), np.float32)] * 2), cmrt.InputError, r"noise\[0\]"),
    (dict(noise=np.zeros((2, 2, 3, 16, 16), np.float32)), cmrt.InputTypeError, "list of 2 arrays"),
    (dict(noise=[np.zeros((2, 3, 16, 16), np.float32)] * 2, seed=1), cmrt.InputError, "either seed or noise"),
    (dict(seed=-1), cmrt.InputError, "seed must be in"),
    (dict(seed="0"), cmrt.InputTypeError, "seed must be an int"),
])
def test_inpaint_bad_labels_noise_seed(inpaint, kwargs, exc, match):
    kwargs.setdefault("seed", None)
    _raises(exc, match, inpaint.edit, IMG, mask=MASK, **kwargs)


def test_mask_given_to_a_task_without_one(colorize, superres, denoise):
    for editor, image in ((colorize, IMG[:, :1]), (superres, IMG[..., :4, :4]), (denoise, IMG)):
        _raises(cmrt.InputError, f"task is {editor.task}, which takes no mask", editor.edit, image, mask=MASK, seed=0)


def test_colorize_takes_gray_or_rgb_of_the_model_size(colorize):
    rgb = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    gray = cmrt.editing.luma(rgb)
    assert np.array_equal(colorize.edit(rgb, seed=3), colorize.edit(gray, seed=3))  # RGB reduced to its luma
    _raises(cmrt.InputError, r"image must have shape \(\*, 1, 16, 16\) for this colorize bundle",
            colorize.edit, np.zeros((2, 2, 16, 16), np.float32), seed=0)
    _raises(cmrt.InputError, "image must have shape", colorize.edit, gray[..., :8, :8], seed=0)


def test_superres_takes_the_low_resolution_image(superres):
    _raises(cmrt.InputError, r"image must have shape \(\*, 3, 4, 4\) for this superres ×4 bundle",
            superres.edit, IMG, seed=0)
    assert superres.edit(torch.zeros(1, 3, 4, 4), seed=0).shape == (1, 3, 16, 16)


def test_denoise_takes_any_range_and_no_noise(denoise):
    assert denoise.edit(IMG + 3.0, class_labels=[0, 1]).shape == (2, 3, 16, 16)  # a noisy image leaves [-1, 1]
    _raises(cmrt.InputError, "takes no noise", denoise.edit, IMG, noise=[IMG])


def test_runner_kinds_do_not_mix(edit_inpaint, cm_bundle):
    _raises(cmrt.BundleError, "holds an editor bundle: open it with cmrt.Editor", cmrt.Sampler, edit_inpaint.path)
    _raises(cmrt.BundleError, "open it with cmrt.Sampler", cmrt.Editor, cm_bundle.path)


def test_closed_editor_refuses(edit_denoise):
    e = cmrt.Editor(edit_denoise.path)
    e.close()
    _raises(cmrt.RunnerClosedError, "closed", e.edit, IMG)


# --- export-time refusals (no tracing happens) ----------------------------------------------------
GRAY = tiny_cm_spec(channels=1)
RGB = tiny_cm_spec()


@pytest.mark.parametrize("spec,task,factor,match", [
    (GRAY, "colorize", None, "--task colorize needs an RGB"),
    (RGB, "sample", 4, "--factor applies to --task superres only"),
    (RGB, "inpaint", 2, "--factor applies to --task superres only"),
    (RGB, "superres", None, "--task superres needs --factor"),
    (RGB, "superres", 3, "--factor must be an integer ≥ 2 that divides the image side 16"),
    (RGB, "superres", 1, "--factor must be an integer ≥ 2"),
    (RGB, "superres", 32, "--factor"),
    (RGB, "paint", None, "--task must be one of"),
    (tiny_decoder_spec(), "inpaint", None, "--task inpaint needs a consistency model"),
])
def test_resolve_task_refusals(spec, task, factor, match):
    _raises(cmrt.ConfigError, match, resolve_task, spec, task, factor)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=2), "--task denoise needs exactly one σ"),
    (dict(sigmas=[1.0, 0.5]), "--task denoise needs exactly one σ"),
    (dict(sigmas=[0.5], steps=2), "--steps 2 does not apply"),
    (dict(sigmas=[0.5], grid=10), "--grid do not apply"),
    (dict(sigmas=[100.0]), "--sigmas must lie in"),
])
def test_denoise_schedule_refusals(kwargs, match):
    _raises(cmrt.ConfigError, match, resolve_schedule, RGB, task="denoise", **kwargs)


def test_export_refuses_before_tracing(tmp_path):
    _raises(cmrt.ConfigError, "--task colorize", cmrt.export, out=tmp_path / "b", model=loaded(GRAY), task="colorize")
    _raises(cmrt.ConfigError, "--factor", cmrt.export, out=tmp_path / "b", model=loaded(RGB), factor=2)
    assert not (tmp_path / "b").exists()


def test_default_task_resolves_per_kind():
    assert resolve_task(RGB) == Task("sample") and resolve_task(tiny_decoder_spec()) == Task("decode")
    assert resolve_task(RGB, "superres", 4) == Task("superres", 4)


def test_colorize_checks_the_rgb_range_before_reducing_it(colorize):
    rgb = np.full((1, 3, 16, 16), -1.0, np.float32)
    rgb[:, 0] = 1.5  # its luma would lie inside [-1, 1]
    _raises(cmrt.InputError, r"image values must lie in \[-1, 1\]", colorize.edit, rgb, seed=0)
