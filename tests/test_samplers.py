"""Stateless samplers: noise semantics and the unrolled modules."""

import torch

from cmrt import schedules as S
from cmrt.models.denoisers import DecoderDenoiser, KarrasDenoiser
from cmrt.samplers import (UnrolledConsistencySampler, UnrolledDecoderSampler, consistency_sample,
                           decoder_sample)
from conftest import loaded, tiny_cm_spec, tiny_decoder_spec


class Recorder(torch.nn.Module):
    """A denoiser that records its inputs and returns them (x0 = x)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, sigma, cond=None):
        self.calls.append((x.clone(), sigma))
        return x


def test_consistency_noise_semantics():
    rec, sig = Recorder(), [80.0, 1.5]
    noise = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    consistency_sample(rec, sig, noise, clip=False)
    x1, s1 = rec.calls[0]
    assert s1 == 80.0 and torch.allclose(x1, 80.0 * noise[0])  # noise_0 makes the starting point
    x2, s2 = rec.calls[1]
    expected = x1 + (1.5**2 - S.SIGMA_MIN**2) ** 0.5 * noise[1]  # noise_1 injected before eval 1
    assert s2 == 1.5 and torch.allclose(x2, expected)


def test_decoder_noise_semantics():
    rec = Recorder()
    noise = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)]
    decoder_sample(rec, torch.randn(1, 4, 2, 2), [1008, 512], noise)
    a, b = S.decoder_scalings(1008), S.decoder_scalings(512)
    assert torch.allclose(rec.calls[0][0], a["sqrt_one_minus_alpha_bar"] * noise[0])
    expected = b["sqrt_alpha_bar"] * rec.calls[0][0] + b["sqrt_one_minus_alpha_bar"] * noise[1]
    assert torch.allclose(rec.calls[1][0], expected, atol=1e-6)


def test_unrolled_modules_match_functions():
    cm = loaded(tiny_cm_spec())
    den = KarrasDenoiser(cm.unet)
    noise = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    y = torch.tensor([1, 2])
    sig = S.default_cm_sigmas(3)
    mod = UnrolledConsistencySampler(den, sig, conditional=True)
    assert mod.input_names == ["class_labels", "noise_0", "noise_1", "noise_2"]
    with torch.no_grad():
        assert torch.equal(mod(y, *noise), consistency_sample(den, sig, noise, y))
        out = mod(y, *noise)
    assert out.min() >= -1 and out.max() <= 1  # clip
    dec = loaded(tiny_decoder_spec())
    dmod = UnrolledDecoderSampler(DecoderDenoiser(dec.unet), [1008, 512])
    assert dmod.input_names == ["latents", "noise_0", "noise_1"]
    z, n = torch.randn(1, 4, 3, 5), [torch.randn(1, 3, 24, 40) for _ in range(2)]
    with torch.no_grad():
        assert dmod(z, *n).shape == (1, 3, 24, 40)
