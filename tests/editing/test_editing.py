"""The projections' algebra (``cmrt.editing``): idempotent, the known part kept exactly, y₀ = P(0),
and equal to OpenAI's basis-change formulation (orthogonal bases built here with QR); slerp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmrt
from cmrt import editing as E

B, C, H = 3, 3, 16
KEEP_EXACT = 1e-6  # issue 11 targets: the kept part of an inpainted image
MEANS_EXACT = 1e-5  # super-resolved block means, colorized luma


def _rand(*shape, seed=0, scale=1.5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture
def x():
    return _rand(B, C, H, H, seed=1).clamp(-1, 1)


def _box_mask():
    m = torch.zeros(B, 1, H, H)
    m[0, :, 2:9, 3:12] = 1
    m[1, :, :, 8:] = 1
    m[2, :, 5:6, 5:6] = 1
    return m


def test_inpaint_keeps_the_known_part_and_is_idempotent(x):
    y, m = _rand(B, C, H, H, seed=2).clamp(-1, 1), _box_mask()
    p = E.inpaint_project(x, y, m)
    assert float(((p - y) * (1 - m)).abs().max()) <= KEEP_EXACT
    assert torch.equal(p * m, x * m)  # the generated part is x's
    assert torch.equal(E.inpaint_project(p, y, m), p)
    assert torch.equal(E.inpaint_start(y, m), E.inpaint_project(torch.zeros_like(x), y, m))


def _openai_color_basis() -> torch.Tensor:
    """An orthonormal basis of RGB whose first column is the luma direction (as OpenAI builds it)."""
    v = np.asarray(E.LUMA_WEIGHTS)
    a = np.eye(3)
    a[:, 0] = v / np.linalg.norm(v)
    q = np.linalg.qr(a)[0]
    return torch.tensor(q if q[:, 0].sum() >= 0 else -q, dtype=torch.float64)


def test_colorize_keeps_luma_and_equals_the_basis_projection(x):
    gray = E.luma(_rand(B, C, H, H, seed=3).clamp(-1, 1))
    p = E.colorize_project(x, gray)
    assert float((E.luma(p) - gray).abs().max()) <= MEANS_EXACT
    assert float((E.colorize_project(p, gray) - p).abs().max()) <= MEANS_EXACT
    assert float((E.colorize_start(gray) - E.colorize_project(torch.zeros_like(x), gray)).abs().max()) <= 1e-6
    # OpenAI: rotate into the basis, take coordinate 0 from the known image, the rest from x, rotate back
    q = _openai_color_basis()
    known = E.colorize_start(gray).double()
    kb, xb = (torch.einsum("bchw,cd->bdhw", t, q) for t in (known, x.double()))
    xb[:, 0] = kb[:, 0]
    ref = torch.einsum("bdhw,cd->bchw", xb, q)
    assert float((p.double() - ref).abs().max()) <= 1e-6
    # the change is along the luma direction only: the chroma of x is kept
    chroma = q[:, 1:].T.float()
    assert torch.allclose(torch.einsum("dc,bchw->bdhw", chroma, p), torch.einsum("dc,bchw->bdhw", chroma, x), atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_superres_keeps_block_means_and_equals_the_patch_basis(x, factor):
    low = E.block_mean(_rand(B, C, H, H, seed=4).clamp(-1, 1), factor)
    p = E.superres_project(x, low, factor)
    assert p.shape == x.shape
    assert float((E.block_mean(p, factor) - low).abs().max()) <= MEANS_EXACT
    assert float((E.superres_project(p, low, factor) - p).abs().max()) <= MEANS_EXACT
    assert torch.equal(E.superres_start(low, factor), E.superres_project(torch.zeros_like(x), low, factor))
    # OpenAI: per p×p patch, an orthonormal basis whose first vector is the constant one
    n = factor * factor
    a = np.eye(n)
    a[:, 0] = 1 / np.sqrt(n)
    q = torch.tensor(np.linalg.qr(a)[0], dtype=torch.float64)
    q = q if float(q[:, 0].sum()) >= 0 else -q

    def patches(t):
        b, c, h, w = t.shape
        return t.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 1, 2, 4, 3, 5).reshape(
            b, c, (h // factor) * (w // factor), n)

    known = torch.einsum("bcnd,de->bcne", patches(E.superres_start(low, factor).double()), q)
    mixed = torch.einsum("bcnd,de->bcne", patches(x.double()), q)
    mixed[..., 0] = known[..., 0]
    back = torch.einsum("bcne,de->bcnd", mixed, q)
    ref = back.reshape(B, C, H // factor, H // factor, factor, factor).permute(0, 1, 2, 4, 3, 5).reshape(x.shape)
    assert float((p.double() - ref).abs().max()) <= 1e-6


def test_upsample_and_block_mean():
    low = _rand(2, 3, 4, 4)
    up = E.upsample_nearest(low, 4)
    assert torch.equal(up, torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest"))
    assert torch.allclose(E.block_mean(up, 4), low, atol=1e-6)
    assert torch.allclose(E.block_mean(up, 2), torch.nn.functional.avg_pool2d(up, 2), atol=1e-6)


def test_luma_of_numpy_and_torch():
    rgb = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)
    want = 0.2989 * rgb[:, :1] + 0.5870 * rgb[:, 1:2] + 0.1140 * rgb[:, 2:]
    assert np.allclose(E.luma(rgb), want) and np.allclose(E.luma(torch.from_numpy(rgb)).numpy(), want)


def test_slerp_ends_norm_and_types():
    a, b = _rand(4, 3, 8, 8, seed=5, scale=1.0), _rand(4, 3, 8, 8, seed=6, scale=1.0)
    assert torch.allclose(cmrt.slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(cmrt.slerp(a, b, 1.0), b, atol=1e-6)
    mid = cmrt.slerp(a, b, 0.5)
    norms = mid.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert ((norms - 1).abs() < 0.05).all()  # a straight line would shrink it to about 0.71
    assert (mid.flatten(1).norm(dim=1) > ((a + b) / 2).flatten(1).norm(dim=1) * 1.3).all()
    assert mid.dtype == a.dtype
    out = cmrt.slerp(a.numpy(), b.numpy(), 0.25)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert torch.allclose(cmrt.slerp(a, a, 0.3), a, atol=1e-5)  # parallel: no division by zero
    with pytest.raises(cmrt.InputError, match="same shape"):
        cmrt.slerp(a, b[:2], 0.5)
