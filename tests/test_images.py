"""Image files in and out (``cmrt.images``) and ``encode_file`` on images of any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cmrt.errors import InputError
from cmrt.images import crop_to_multiple, read_image, read_mask, save_images, to_uint8
from cmrt.train.autoencoder import PHOTOS_AUTOENCODER, encode, encode_file, load_encoder


@pytest.fixture
def photo(tmp_path):
    """A 50×70 RGB image: neither side a multiple of 8."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_read_image_values_channels_and_resize(photo):
    rgb = read_image(photo)
    pixels = np.asarray(Image.open(photo), dtype=np.float32)
    assert rgb.shape == (1, 3, 50, 70) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0].transpose(1, 2, 0), pixels / 127.5 - 1, atol=1e-6)
    assert read_image(photo, channels=1).shape == (1, 1, 50, 70)
    assert read_image(photo, size=(16, 24)).shape == (1, 3, 16, 24)


def test_crop_to_multiple_keeps_the_center():
    a = np.arange(50 * 70, dtype=np.float32).reshape(1, 1, 50, 70)
    c = crop_to_multiple(a, 8)
    assert c.shape == (1, 1, 48, 64)
    np.testing.assert_array_equal(c, a[..., 1:49, 3:67])
    assert crop_to_multiple(c, 8).shape == c.shape


def test_read_mask_white_generates(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", size=(16, 16))
    assert mask.shape == (1, 1, 16, 16) and set(np.unique(mask)) == {0.0, 1.0}
    assert mask[0, 0, :8].min() == 1.0 and mask[0, 0, 8:].max() == 0.0


def test_save_images_png_grid_and_raw_npy(tmp_path):
    x = np.linspace(-1.3, 1.3, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    save_images(x, tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)  # raw: values beyond [-1, 1] kept
    save_images(x, tmp_path / "x.png")
    png = np.asarray(Image.open(tmp_path / "x.png"))
    np.testing.assert_array_equal(png[2:6, 2:6], to_uint8(x)[0])  # the first tile of the grid
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_encode_file_takes_any_size(photo):
    enc = load_encoder(PHOTOS_AUTOENCODER)
    own = encode_file(photo, encoder=PHOTOS_AUTOENCODER, size=None)  # 50×70 → cropped 48×64
    assert own.shape == (1, 4, 6, 8)
    cropped = torch.from_numpy(read_image(photo)[..., 1:49, 3:67].copy())
    np.testing.assert_array_equal(own, encode(enc, cropped).numpy())
    assert encode_file(photo, encoder=PHOTOS_AUTOENCODER, size=(40, 56)).shape == (1, 4, 5, 7)
    assert encode_file(photo, encoder=PHOTOS_AUTOENCODER, size=32).shape == (1, 4, 4, 4)
    assert encode_file(photo).shape == (1, 4, 4, 4)  # the default: the digits encoder at 32×32, as before


@pytest.mark.parametrize("size", [30, (48, 60), (48,), 0])
def test_encode_file_refuses_sizes_off_the_latent_grid(photo, size):
    with pytest.raises(InputError, match="multiples of 8"):
        encode_file(photo, encoder=PHOTOS_AUTOENCODER, size=size)


def test_save_grid_labels_each_panel_and_row(tmp_path):
    from cmrt.images import caption_font_size, grid

    x = np.linspace(-1, 1, 4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
    save_images(x, tmp_path / "plain.png")
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    np.testing.assert_array_equal(plain, grid(x))  # no labels: the grid as before
    save_grid_args = dict(cols=2, scale=4)
    from cmrt.images import save_grid

    save_grid(x, tmp_path / "l.png", labels=["a", "b", "c", "d"], **save_grid_args)
    save_grid(x, tmp_path / "u.png", **save_grid_args)
    labelled, bare = np.asarray(Image.open(tmp_path / "l.png")), np.asarray(Image.open(tmp_path / "u.png"))
    cell, pad = 8 * 4, 2 * 4
    CAPTION_HEIGHT = caption_font_size(cell) + 4
    assert labelled.shape == (bare.shape[0] + 2 * CAPTION_HEIGHT, bare.shape[1], 3)
    for r in range(2):  # every panel intact below its caption strip, and ink in every caption
        top = pad + r * (cell + pad)
        shifted = top + (r + 1) * CAPTION_HEIGHT
        np.testing.assert_array_equal(labelled[shifted:shifted + cell], bare[top:top + cell])
        for k in range(2):
            left = pad + k * (cell + pad)
            strip = labelled[shifted - CAPTION_HEIGHT:shifted, left:left + cell]
            assert strip.min() < 128, (r, k)
    save_grid(x, tmp_path / "r.png", row_labels=["first row", "second row"], **save_grid_args)
    rows = np.asarray(Image.open(tmp_path / "r.png"))
    margin = rows.shape[1] - bare.shape[1]
    assert margin > 0 and rows.shape[0] == bare.shape[0]
    np.testing.assert_array_equal(rows[:, margin:], bare)
    assert rows[:, :margin].min() < 128  # the row names


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    def interrupted(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half")  # a partial file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(PILImage.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_images(np.zeros((1, 3, 4, 4), np.float32), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
