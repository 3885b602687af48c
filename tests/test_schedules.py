"""The consistency math against closed-form values (FACTS §1–2)."""

import math

import numpy as np
import pytest
import torch

from cmrt import schedules as S


def test_karras_grid_endpoints_and_formula():
    sig = S.karras_sigmas(40)
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002)
    assert np.all(np.diff(sig) < 0)
    r = 7 / 39
    expected = (80 ** (1 / 7) + r * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert sig[7] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("indices,n,sigma2", [([0, 22], 40, 1.3824), ([0, 106], 201, 1.9128),
                                              ([0, 17], 40, 4.3656), ([0, 18], 40, 3.5197),
                                              ([0, 67], 151, 3.9912), ([0, 62], 151, 5.2485)])
def test_published_two_step_sigmas(indices, n, sigma2):
    s = S.sigmas_from_indices(indices, n)
    assert s[0] == pytest.approx(80.0) and s[1] == pytest.approx(sigma2, abs=1e-4)


def test_default_spacing_is_diffusers_rule():
    assert S.default_cm_sigmas(1) == pytest.approx([80.0])
    assert S.default_cm_sigmas(2) == pytest.approx(S.sigmas_from_indices([0, 20], 40))
    with pytest.raises(ValueError):
        S.default_cm_sigmas(0)


def test_cm_scalings_boundary_and_closed_form():
    c_skip, c_out, c_in = S.cm_scalings(S.SIGMA_MIN)
    assert c_skip == pytest.approx(1.0) and c_out == pytest.approx(0.0)
    s = 3.0
    c_skip, c_out, c_in = S.cm_scalings(s)
    assert c_skip == pytest.approx(0.25 / ((s - 0.002) ** 2 + 0.25))
    assert c_out == pytest.approx((s - 0.002) * 0.5 / math.sqrt(s * s + 0.25))
    assert c_in == pytest.approx(1 / math.sqrt(s * s + 0.25))
    t = torch.tensor([3.0, 0.5])
    assert torch.allclose(S.cm_scalings(t)[0], torch.tensor([S.cm_scalings(3.0)[0], S.cm_scalings(0.5)[0]]))


def test_edm_scalings_have_no_boundary_term():
    c_skip, c_out, _ = S.edm_scalings(0.002)
    assert c_skip == pytest.approx(0.25 / (0.002**2 + 0.25)) and c_out > 0


def test_time_input():
    assert S.cm_time_input(80.0) == pytest.approx(1095.51, abs=0.01)
    assert S.cm_time_input(0.002) == pytest.approx(-1553.65, abs=0.01)
    assert torch.allclose(S.cm_time_input(torch.tensor([80.0])), torch.tensor([1095.51]), atol=0.01)


def test_decoder_alphas_cumprod_closed_form():
    abar = S.decoder_alphas_cumprod()
    assert abar.shape == (1024,)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    prod = 1.0
    for i in range(513):
        prod *= 1 - min(1 - f((i + 1) / 1024) / f(i / 1024), 0.999)
    assert abar[512] == pytest.approx(prod, rel=1e-12)


@pytest.mark.parametrize("t,values", [
    (1008, {"sqrt_one_minus_alpha_bar": 0.999739, "c_in": 1.0002, "c_skip": 0.005709, "c_out": 0.499967}),
    (512, {"sqrt_alpha_bar": 0.701656, "sqrt_one_minus_alpha_bar": 0.712515, "c_in": 1.25912,
           "c_skip": 0.27810, "c_out": 0.448573}),
])
def test_decoder_scalings(t, values):
    s = S.decoder_scalings(t)
    for k, v in values.items():
        assert s[k] == pytest.approx(v, abs=2e-5), k
    assert S.decoder_sigma(1008) == pytest.approx(43.797, abs=1e-3)


def test_decoder_timesteps():
    assert S.decoder_timesteps(2) == [1008, 512]
    assert S.decoder_timesteps(1) == [1008]
    ts = S.decoder_timesteps(3)
    assert ts == [1008, 688, 352] and all(t % 16 == 0 for t in ts)
    with pytest.raises(ValueError):
        S.decoder_timesteps(0)


def test_normalize_latents():
    z = torch.randn(2, 4, 3, 5)
    out = S.normalize_latents(z)
    for c in range(4):
        expected = (z[:, c] * 0.18215 - S.LATENT_MEANS[c]) / S.LATENT_STDS[c]
        assert torch.allclose(out[:, c], expected)
