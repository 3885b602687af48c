"""``cmrt eval --task``: the editing quality modes run on a model source and on an editing bundle,
with their baselines; bad combinations are one-line typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import cmrt
from cmrt.models.load import save_checkpoint
from cmrt.train import eval_edit as EE
from tests.conftest import loaded, tiny_cm_spec


@pytest.fixture(scope="module")
def gray_ckpt(tmp_path_factory):
    model = loaded(tiny_cm_spec(channels=1))
    path = tmp_path_factory.mktemp("eval-edit") / "gray.safetensors"
    save_checkpoint(path, model.spec, model.unet.state_dict())
    return path


def test_masks_cover_a_quarter_inside_the_digit_area():
    m = EE.box_masks(50, 16, seed=0)
    assert (m.flatten(1).sum(1) == 64).all()  # 8×8 of 16×16
    assert m[..., :2, :].sum() == 0 and m[..., 14:, :].sum() == 0 and m[..., :2].sum() == 0


def test_inpaint_and_superres_modes_report_baselines(gray_ckpt):
    r = EE.evaluate_edit(str(gray_ckpt), "inpaint", steps=[1])
    ref = r.reference
    assert ref["digits"] == 360 and ref["original_accuracy"] > 0.95
    assert ref["class_mean_fill_accuracy"] > 0.9 and 5 < ref["class_mean_fill_psnr_db"] < 30
    assert [row["steps"] for row in r.rows] == [1] and 0 <= r.rows[0]["accuracy"] <= 1
    s = EE.evaluate_edit(str(gray_ckpt), "superres", steps=[1, 2])
    assert [row["steps"] for row in s.rows] == [1, 2] and "bicubic_psnr_db" in s.reference
    assert all(np.isfinite(row["psnr_db"]) for row in s.rows)


def test_colorize_mode_on_an_editing_bundle(edit_colorize):
    r = EE.evaluate_edit(str(edit_colorize.path), "colorize", steps=[1, 2])
    assert len(r.rows) == 1 and r.rows[0]["steps"] == edit_colorize.manifest.steps  # the bundle's one schedule
    assert r.rows[0]["luma_max_error"] <= 1e-5 and r.reference["strokes_accuracy_of_originals"] > 0.9


def test_bad_combinations(gray_ckpt, edit_colorize):
    with pytest.raises(cmrt.InputError, match="is a colorize bundle: evaluate it with --task colorize"):
        EE.evaluate_edit(str(edit_colorize.path), "inpaint", steps=[1])
    with pytest.raises(cmrt.InputError, match="--task colorize needs an RGB"):
        EE.evaluate_edit(str(gray_ckpt), "colorize", steps=[1])
    with pytest.raises(cmrt.ConfigError, match="--task must be one of"):
        EE.evaluate_edit(str(gray_ckpt), "stroke", steps=[1])


def test_strokes_recover_painted_digits():
    from cmrt.train.data import load_digits_color, upscale_digits
    from cmrt.train.eval import digit_strokes

    d = load_digits_color("test", copies=1, size=16)
    strokes = digit_strokes(d.x[:20])
    assert strokes.shape == (20, 1, 16, 16) and strokes.min() >= -1 and strokes.max() <= 1
    gray = upscale_digits(np.zeros((1, 8, 8), np.float32), 16)
    assert np.isfinite(digit_strokes(gray.expand(-1, 3, -1, -1))).all()  # a blank image does not divide by 0
