"""The photos data set: held-out photos never trained on, latent-aligned crops, the generalized
autoencoder (with its MSE decoder saved beside the encoder), and a decoder run on photo crops."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("skimage", reason="the photos data set needs scikit-image (extra train)")

from cmrt.train import photos as P  # noqa: E402
from cmrt.train.autoencoder import (AutoencoderConfig, Encoder, EncoderConfig, PixelDecoder,  # noqa: E402
                                    load_encoder, load_pixel_decoder, save_encoder, train_autoencoder)
from cmrt.errors import ConfigError, SourceError  # noqa: E402


def test_held_out_photos_are_not_trained_on():
    assert not set(P.HELD_OUT) & set(P.TRAIN_PHOTOS)
    held = P.held_out_images()
    assert set(held) == {"text", "astronaut", "brick", "rocket"}
    for x in held.values():
        assert x.shape[0] == 3 and x.shape[1] % 8 == 0 and x.shape[2] % 8 == 0
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_lfw_mosaic():
    m = P.lfw_mosaic()
    assert m.shape == (3, 480, 960) and torch.equal(m[0], m[2])


def test_crops_of_images_and_of_their_latents_line_up():
    images = (torch.arange(3 * 32 * 48, dtype=torch.float32).reshape(3, 32, 48),)
    latents = (images[0][:, ::8, ::8].clone(),)  # one value per 8×8 block: its top-left pixel
    crops = P.CropSet("t", images, 16)
    where = crops.draw(20, torch.Generator().manual_seed(0))
    x, z = crops.take(where), crops.take(where, latents, scale=1)
    assert x.shape == (20, 3, 16, 16) and z.shape == (20, 3, 2, 2)
    assert torch.equal(x[:, :, ::8, ::8], z)
    assert int(where[:, 1].max()) <= (32 - 16) // 8 and int(where[:, 2].max()) <= (48 - 16) // 8


@pytest.mark.parametrize("crop", [12, 0, 1024])
def test_bad_crop_sizes(crop):
    with pytest.raises(ConfigError, match="image-size"):
        P.CropSet("t", (torch.zeros(3, 64, 64),), crop)


def test_autoencoder_keeps_its_mse_decoder_and_the_digits_layout(tmp_path):
    cfg = EncoderConfig(widths=(8, 8, 8), blocks=1)
    enc, dec = Encoder(cfg).eval(), PixelDecoder(cfg).eval()
    save_encoder(tmp_path / "ae.safetensors", enc, pixel_decoder=dec)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(load_encoder(tmp_path / "ae.safetensors")(x), enc(x))
    assert torch.equal(load_pixel_decoder(tmp_path / "ae.safetensors")(enc(x)), dec(enc(x)))
    save_encoder(tmp_path / "enc.safetensors", Encoder(EncoderConfig()))  # blocks=0: the digits layout
    with pytest.raises(SourceError, match="no pixel decoder"):
        load_pixel_decoder(tmp_path / "enc.safetensors")


def test_train_autoencoder_on_photo_crops(tmp_path):
    cfg = AutoencoderConfig(data="photos", max_steps=2, batch_size=2, image_size=32, widths=(8, 8, 8), blocks=1,
                            lr_min=1e-4, threads=1)
    report = train_autoencoder(cfg, tmp_path / "ae.safetensors")
    assert set(P.HELD_OUT) == {k.removeprefix("held_out_psnr_") for k in report if k.startswith("held_out")}
    written = json.loads((tmp_path / "ae.json").read_text())
    assert written["config"]["data"] == "photos" and written["config"]["lr_min"] == 1e-4
    assert cfg.lr_at(0) == cfg.lr and abs(cfg.lr_at(cfg.max_steps - 1) - cfg.lr_min) < 1e-12


def test_bad_autoencoder_config():
    with pytest.raises(ConfigError, match="lr-min"):
        AutoencoderConfig(lr=1e-3, lr_min=1e-2)


def test_decoder_trains_on_photo_crops(tmp_path):
    from cmrt.train.loop import train
    from cmrt.train.models import TrainConfig

    save_encoder(tmp_path / "enc.safetensors", Encoder(EncoderConfig(widths=(8, 8, 8))).eval())
    cfg = TrainConfig(method="decoder", data="photos", channels=3, image_size=16, encoder=str(tmp_path / "enc.safetensors"),
                      out=str(tmp_path / "run"), max_steps=2, batch_size=2, widths=(16, 16), norm_groups=8,
                      ckpt_every=2, log_every=1, threads=1)
    out = train(cfg, progress=False)
    assert (out / "model.safetensors").is_file()


PHOTO_MIN_PSNR_DB = 18.0  # on the astronaut's face crop; measured values in docs/training.md


def test_photo_decoder_and_autoencoder_are_shipped_and_decode_a_held_out_photo():
    """The natural-image pair: under 10 MB each; on a crop of a held-out photo's latents, the MSE
    decoder and the consistency decoder (1 step, PyTorch) both reconstruct it."""
    from cmrt import schedules as S
    from cmrt.models.denoisers import build_denoiser
    from cmrt.models.load import PHOTOS_DECODER
    from cmrt.models.sources import load_model
    from cmrt.parity import psnr_per_image
    from cmrt.train.autoencoder import PHOTOS_AUTOENCODER, decode_pixels, encode
    from cmrt.train.photo_eval import decode_photo

    assert PHOTOS_DECODER.stat().st_size < 10 * 2**20 and PHOTOS_AUTOENCODER.stat().st_size < 10 * 2**20
    x = P.photo("astronaut")[None, :, 32:160, 160:288]  # the face, 128² (never trained on)
    z = encode(load_encoder(PHOTOS_AUTOENCODER), x)
    assert z.shape == (1, S.LATENT_CHANNELS, 16, 16)
    m = load_model(PHOTOS_DECODER)
    assert m.spec.kind == "decoder" and m.spec.trained
    mse = float(psnr_per_image(decode_pixels(load_pixel_decoder(PHOTOS_AUTOENCODER), z), x)[0])
    cd = float(psnr_per_image(decode_photo(build_denoiser(m.spec, m.unet).eval(), z, 1, 0), x)[0])
    assert mse > PHOTO_MIN_PSNR_DB and cd > PHOTO_MIN_PSNR_DB
