"""Data sources: digits, 2-D toys, .npz arrays and image folders; bad sources fail with one clear error."""

import numpy as np
import pytest

from cmrt.errors import ConfigError, InputError
from cmrt.train.data import load_data, load_digits_color


def test_digits_are_class_conditional_in_range():
    d = load_data("digits", size=16)
    assert d.x.shape == (1797, 1, 16, 16) and d.num_classes == 10
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0


def test_color_digits_hold_out_the_last_tenth():
    train, test = load_digits_color("train", copies=1), load_digits_color("test", copies=1)
    assert train.x.shape[1:] == (3, 32, 32) and len(train) + len(test) == 1797 and len(test) == 180


def test_toys_are_standardized():
    d = load_data("moons")
    assert d.kind == "points" and d.x.shape[1] == 2
    np.testing.assert_allclose(d.x.std(0).numpy(), 1.0, atol=1e-3)


def test_npz_and_folder_sources(tmp_path):
    from PIL import Image

    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(5) % 2)
    d = load_data(str(tmp_path / "d.npz"))
    assert d.x.shape == (5, 3, 8, 8) and d.num_classes == 2 and -1 <= float(d.x.min()) <= float(d.x.max()) <= 1
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(folder / f"{i}.png")
    f = load_data(str(folder), size=16, channels=3)
    assert f.x.shape == (5, 3, 16, 16)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not 'digits'"):
        load_data(str(tmp_path / "missing"))
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(InputError, match="'images'"):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        load_data(str(tmp_path / "range.npz"))
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_data("digits", size=12)
