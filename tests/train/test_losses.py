"""The training losses' math on tiny cases, against closed forms and hand-replicated draws."""

import math

import numpy as np
import torch
from torch import nn

from cmrt import schedules as S
from cmrt.models.denoisers import DecoderDenoiser
from cmrt.models.unet import UNet
from cmrt.samplers import heun_step
from cmrt.train import losses as L

from tests.conftest import randomize, tiny_decoder_spec


class PointMass(nn.Module):
    """The exact EDM denoiser of data concentrated at ``c``: D(x, σ) = c for every σ."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x, sigma, labels=None):
        return self.c.expand_as(x)


class Gaussian(nn.Module):
    """The exact denoiser of N(0, s²) data: D(x, σ) = x·s²/(s² + σ²)."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x, sigma, labels=None):
        sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x * self.s**2 / (self.s**2 + sig**2)


class Scaled(nn.Module):
    """A deterministic stand-in 'consistency function' f(x, σ) = x·(1 + σ)⁻¹ + 0.1·σ (no parameters needed)."""

    def forward(self, x, sigma, labels=None):
        sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x / (1 + sig) + 0.1 * sig


def test_heun_step_is_exact_for_a_point_mass():
    # dx/dσ = (x − c)/σ has the solution x(σ) = c + (x₁ − c)·σ/σ₁, linear in σ: Heun is exact.
    c = torch.tensor([[0.3, -0.7]])
    x = torch.tensor([[2.0, 5.0], [-1.0, 0.5]])
    sigma, sigma_next = torch.tensor([3.0, 0.9]), torch.tensor([1.5, 0.2])
    got = heun_step(PointMass(c), x, sigma, sigma_next)
    want = c + (x - c) * (sigma_next / sigma)[:, None]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_heun_step_is_second_order_on_the_gaussian_ode():
    # N(0, s²) data: x(σ) = x₁·√(s² + σ²)/√(s² + σ₁²). Heun's local error is O(h³), Euler's O(h²):
    # halving the step near σ ≈ s (the most curved part) divides them by ~8 and ~4.
    s, x = 0.5, torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    exact = lambda hi, lo: x * math.sqrt(s**2 + lo**2) / math.sqrt(s**2 + hi**2)
    hi = torch.tensor([0.8], dtype=torch.float64)

    def errors(h):
        lo = hi - h
        heun = heun_step(Gaussian(s), x, hi, lo)
        euler = x + (lo - hi) * (x - Gaussian(s)(x, hi)) / hi
        want = exact(float(hi), float(lo))
        return float((heun - want).abs().max()), float((euler - want).abs().max())

    (heun1, euler1), (heun2, euler2) = errors(0.1), errors(0.05)
    assert heun1 < euler1 / 3
    assert heun1 / heun2 > 6 and 3 < euler1 / euler2 < 5.5


def test_ict_curriculum_doubles_n():
    total = 8000  # K' = ⌊8000 / (log2(128) + 1)⌋ = 1000
    assert [L.ct_discretization(k, total) for k in (0, 999, 1000, 2000, 6999, 7000, 7999)] == \
           [11, 11, 21, 41, 641, 1281, 1281]
    assert L.ct_discretization(10**6, total) == L.ICT_S1 + 1


def test_lognormal_index_probs_follow_the_erf_formula():
    grid = L.ascending_grid(11)
    p = L.lognormal_index_probs(grid)
    assert abs(float(p.sum()) - 1) < 1e-9 and (p > 0).all()
    erf = lambda s: math.erf((math.log(s) - L.ICT_P_MEAN) / (math.sqrt(2) * L.ICT_P_STD))
    raw = [erf(float(grid[i + 1])) - erf(float(grid[i])) for i in range(10)]
    np.testing.assert_allclose(p.numpy(), np.array(raw) / sum(raw), rtol=1e-9)


def test_ct_pairs_are_adjacent_points_of_the_current_grid():
    n = 21
    pair = L.ct_pairs(256, n, torch.Generator().manual_seed(0))
    grid = L.ascending_grid(n).float()
    i = torch.searchsorted(grid, pair.sigma)
    torch.testing.assert_close(grid[i], pair.sigma)
    torch.testing.assert_close(grid[i + 1], pair.sigma_next)
    torch.testing.assert_close(pair.weight, 1 / (pair.sigma_next - pair.sigma))


def test_pseudo_huber():
    d = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(L.pseudo_huber(d, c=1.0), torch.tensor([math.sqrt(26) - 1, 0.0]))
    x = torch.randn(2, 1, 4, 4)
    c = L.HUBER_C_PER_SQRT_DIM * 4.0  # √16
    torch.testing.assert_close(L.pseudo_huber(x), torch.sqrt(x.reshape(2, -1).pow(2).sum(1) + c * c) - c)


def test_ct_loss_target_is_the_same_noise_at_the_lower_sigma():
    f = Scaled()
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    n = L.ct_discretization(3000, 8000)  # a later stage of the curriculum: N = 81
    got = L.ct_loss(f, f, x0, None, torch.Generator().manual_seed(7), n=n, distance="l2")
    g = torch.Generator().manual_seed(7)  # replicate the draws by hand
    pair = L.ct_pairs(64, n, g)
    z = torch.randn(x0.shape, generator=g)
    col = lambda v: v[:, None, None, None]
    student, target = f(x0 + col(pair.sigma_next) * z, pair.sigma_next), f(x0 + col(pair.sigma) * z, pair.sigma)
    want = (pair.weight * (student - target).pow(2).reshape(64, -1).mean(1)).mean()
    torch.testing.assert_close(got, want)
    assert n == 81 and L.ct_pairs(64, n, torch.Generator().manual_seed(7)).sigma_next.max() <= S.SIGMA_MAX


def test_cd_target_follows_the_exact_ode_for_a_point_mass_teacher():
    c = torch.full((1, 1, 4, 4), 0.25)
    x0 = c.expand(32, -1, -1, -1).clone()  # data = the point mass
    f = Scaled()
    got = L.cd_loss(f, f, PointMass(c), x0, None, torch.Generator().manual_seed(3), n=18, distance="l2")
    g = torch.Generator().manual_seed(3)
    grid = L.ascending_grid(18)
    i = torch.randint(0, 17, (32,), generator=g)
    lo, hi = grid[i].float(), grid[i + 1].float()
    z = torch.randn(x0.shape, generator=g)
    col = lambda v: v[:, None, None, None]
    # the exact PF-ODE maps c + σ_hi·z to c + σ_lo·z
    want = (f(x0 + col(hi) * z, hi) - f(x0 + col(lo) * z, lo)).pow(2).reshape(32, -1).mean(1).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_edm_loss_vanishes_for_the_exact_denoiser():
    c = torch.full((1, 1, 4, 4), -0.4)
    x0 = c.expand(16, -1, -1, -1).clone()
    g = torch.Generator().manual_seed(0)
    assert float(L.edm_loss(PointMass(c), x0, None, g)) == 0.0
    assert float(L.edm_loss(PointMass(c + 0.1), x0, None, torch.Generator().manual_seed(0))) > 0.0


def test_vp_noise_uses_the_decoder_schedule():
    x0, z = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([512, 1008])
    got = L.vp_noise(x0, t, z)
    for b, tb in enumerate((512, 1008)):
        s = S.decoder_scalings(tb)
        torch.testing.assert_close(got[b], s["sqrt_alpha_bar"] * x0[b] + s["sqrt_one_minus_alpha_bar"] * z[b])


def test_decoder_denoiser_per_sample_t_equals_the_export_path():
    spec = tiny_decoder_spec()
    den = DecoderDenoiser(randomize(UNet(spec.unet))).eval()
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        batched = den(x, torch.tensor([512, 1008]), cond)
        for b, t in enumerate((512, 1008)):
            torch.testing.assert_close(batched[b:b + 1], den(x[b:b + 1], t, cond[b:b + 1]), rtol=1e-5, atol=1e-6)


def test_decoder_grid_holds_the_exported_timesteps():
    for n in (11, 21, 41, 64, 1000):
        g = L.decoder_grid(n)
        assert g[0] == 0 and len(torch.unique(g)) == len(g) == min(n, 64) and (g % 16 == 0).all()
        assert set(S.decoder_timesteps(1) + S.decoder_timesteps(2)) <= set(g.tolist())  # 1008, 512
    assert set(S.decoder_timesteps(4)) <= set(L.decoder_grid(64).tolist())


def test_a_method_takes_only_networks_a_batch_the_step_and_a_generator():
    """No trainer: a method built from a config computes its loss from explicit inputs; ct's N follows
    the step (iCT's curriculum over the run's steps)."""
    from cmrt.train.methods import Batch, Networks, configure
    from cmrt.train.models import ToyMLP, TrainConfig

    cfg = TrainConfig(method="ct", max_steps=400, ct_s0=10, ct_s1=80)
    ct = configure(cfg)
    torch.manual_seed(0)
    den = ct.denoiser(ToyMLP(16), None)
    x = torch.randn(8, 2)
    den.requires_grad_(False)
    for step in (0, 399):
        n = L.ct_discretization(step, 400, 10, 80)
        want = L.ct_loss(den, den, x, None, torch.Generator().manual_seed(1), n=n)
        got = ct.loss(Networks(den, den), Batch(x), step, torch.Generator().manual_seed(1))
        assert got.item() == want.item()
    assert L.ct_discretization(0, 400, 10, 80) != L.ct_discretization(399, 400, 10, 80)  # the step matters
