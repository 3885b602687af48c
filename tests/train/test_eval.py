"""Evaluation metrics on known cases, the shipped classifier, and `cmrt eval` on runs."""

import numpy as np
import torch

from cmrt.train import eval as E
from cmrt.train.data import digits_8x8, pool_to_8x8, upscale_digits
from cmrt.train.loop import train

from tests.train.helpers import fixed_digits, tiny_cfg


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert E.frechet_distance(a, a) < 1e-6
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert abs(E.frechet_distance(a, shifted) - 5.0) < 1e-6  # same covariance: ‖Δμ‖²
    scaled = a * 2.0  # μ → 2μ, Σ → 4Σ: ‖μ‖² + tr(Σ + 4Σ − 2·2Σ) = ‖μ‖² + tr(Σ)
    want = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert abs(E.frechet_distance(a, scaled) - want) < 1e-6


def test_sliced_wasserstein_of_a_shift():
    a = np.random.default_rng(0).normal(size=(2000, 2))
    assert E.sliced_wasserstein(a, a) == 0.0
    d = E.sliced_wasserstein(a, a + np.array([3.0, 0.0]))
    assert 1.5 < d < 2.2  # E|3·cos θ| over directions = 6/π ≈ 1.91


def test_psnr_and_sharpness():
    from cmrt.parity import psnr, psnr_per_image

    x = torch.zeros(2, 3, 8, 8)
    x[1] += 0.1
    per_image = psnr_per_image(x + 0.2, x)
    assert per_image.shape == (2,) and np.allclose(per_image, 10 * np.log10(4 / 0.04))
    assert abs(psnr((x + 0.2).numpy(), x.numpy()) - per_image[0]) < 1e-5  # one PSNR formula, two reductions
    sharp = torch.tensor([[[[-1.0, 1.0] * 4] * 8]])
    assert float(E.sharpness(sharp)) > float(E.sharpness(sharp * 0.1)) > 0


def test_pooling_inverts_the_digits_upscaling():
    images, _ = digits_8x8()
    np.testing.assert_allclose(pool_to_8x8(upscale_digits(images[:5], 16)), images[:5].reshape(5, -1), atol=1e-6)


def test_shipped_classifier_reads_real_digits_and_real_sets_are_close():
    clf = E.load_classifier()
    a, b, labels = E.balanced_real_sets(30)
    s = E.score_digits(b, labels, a, labels, clf)
    assert s.accuracy > 0.95 and 0.8 < s.variety_ratio < 1.25
    assert 10 < s.fd_pca < 40  # two real class-balanced sets of 300 in the 20-PCA space (0..16 units)
    noise = np.random.default_rng(0).uniform(0, 1, a.shape).astype(np.float32)
    bad = E.score_digits(noise, labels, a, labels, clf)
    assert bad.fd_pca > 10 * s.fd_pca and bad.accuracy < 0.5


def test_eval_scores_a_digits_run_and_a_toy_run(tmp_path):
    run = train(tiny_cfg("ct", tmp_path / "d", max_steps=1), data=fixed_digits(), progress=False)
    report = E.evaluate(str(run), steps=[1, 2], n_per_class=5)
    assert [r["steps"] for r in report.rows] == [1, 2]
    assert report.reference["real_accuracy"] > 0.9
    assert all(r["fd_pca_ratio"] > 1 for r in report.rows)  # an (almost) untrained model is far from the data
    toy = train(tiny_cfg("ct", tmp_path / "m", data="moons", max_steps=3, mlp_width=32), progress=False)
    rep = E.evaluate(str(toy), steps=[1, 2])
    assert rep.kind == "2-D moons" and len(rep.rows) == 2 and rep.rows[0]["swd"] > rep.reference["data_vs_data_swd"]


def test_frechet_distance_of_singular_covariances_is_exact_and_silent():
    """Fewer samples than features (the classifier's 64 features on 50 samples): the covariances are
    singular, scipy's sqrtm of their product warned; the figure is still the exact one."""
    import warnings

    x = np.random.default_rng(0).normal(size=(20, 64))
    shift = np.full(64, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(E.frechet_distance(x, x)) < 1e-9
        assert abs(E.frechet_distance(x, x + shift) - (shift**2).sum()) < 1e-9  # same covariance: ‖Δμ‖²
        scaled = 2 * x  # Σ → 4Σ, still of rank 19: tr(Σ + 4Σ − 2·2Σ) = tr(Σ)
        want = (x.mean(0) ** 2).sum() + np.trace(np.cov(x, rowvar=False))
        assert abs(E.frechet_distance(x, scaled) - want) < 1e-9
