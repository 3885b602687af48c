"""The shipped models: the default digits model and the decoder + encoder (image → latents → decode)."""

import pytest
import torch

from cmrt import schedules as S
from cmrt.models.load import DEFAULT_DECODER, DEFAULT_MODEL
from cmrt.models.sources import load_model
from cmrt.train.autoencoder import DEFAULT_ENCODER, encode_file
from cmrt.train.data import load_digits_color
from cmrt.parity import psnr_per_image as psnr

MIN_PSNR_DB = 25.0  # measured 29.9 dB at 1 step on the held-out images (docs/training.md)


def test_default_model_is_the_trained_digits_model():
    m = load_model()
    assert m.spec.trained and m.spec.name == "digits16-cd" and m.spec.num_classes == 10
    assert DEFAULT_MODEL.stat().st_size < 10 * 2**20


def held_out_png(tmp_path, i=0):
    from PIL import Image

    from cmrt.images import to_uint8

    img = load_digits_color("test", copies=1).x[i:i + 1]
    Image.fromarray(to_uint8(img)[0]).save(tmp_path / "digit.png")
    return tmp_path / "digit.png", img


def test_image_to_latents_to_decode_in_torch(tmp_path):
    from cmrt.samplers import decoder_sample
    from cmrt.models.denoisers import DecoderDenoiser

    assert DEFAULT_DECODER.stat().st_size < 10 * 2**20 and DEFAULT_ENCODER.stat().st_size < 10 * 2**20
    path, img = held_out_png(tmp_path)
    latents = encode_file(path)
    assert latents.shape == (1, S.LATENT_CHANNELS, 4, 4)
    m = load_model(DEFAULT_DECODER)
    den = DecoderDenoiser(m.unet, sigma_data=m.spec.sigma_data)
    with torch.no_grad():
        out = decoder_sample(den, torch.from_numpy(latents), S.decoder_timesteps(1),
                             [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
    assert float(psnr(out.clamp(-1, 1), img).mean()) > MIN_PSNR_DB


@pytest.mark.slow  # a dynamo export of the decoder (~1 min on 2 busy cores)
def test_image_to_latents_to_decode_through_a_bundle(tmp_path):
    import cmrt

    cmrt.export(str(DEFAULT_DECODER), out=tmp_path / "dec", steps=1)
    path, img = held_out_png(tmp_path, 1)
    images = cmrt.Decoder(tmp_path / "dec").decode(encode_file(path), seed=0)
    assert images.shape == (1, 3, 32, 32) and float(psnr(torch.from_numpy(images).clamp(-1, 1), img).mean()) > MIN_PSNR_DB
