"""Chunked batches and tiled decode: equal to one call where they must be, deterministic per seed,
every tile fed its crop of the whole canvas's noise, and bad options refused by name."""

from __future__ import annotations

import numpy as np
import pytest

import cmrt
from cmrt import InputError, InputTypeError
from cmrt.runtime import tiled as T
from cmrt.runtime.inputs import draw_noise, generator

UP = 8


def _latents(b: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, (b, 4, h, w)).astype(np.float32)


# --- pure layout ---------------------------------------------------------------------------
@pytest.mark.parametrize("length, tile, overlap", [(64, 32, 4), (13, 6, 1), (11, 6, 2), (7, 4, 1), (100, 33, 0),
                                                   (9, 9, 4), (5, 16, 2)])
def test_spans_cover_the_axis_with_equal_tiles_and_at_least_the_overlap(length, tile, overlap):
    spans = T.axis_spans(length, tile, overlap)
    assert spans[0].start == 0 and spans[-1].stop == length
    assert len({s.size for s in spans}) == 1 and spans[0].size <= max(tile, 1)
    for a, b in zip(spans, spans[1:]):
        assert a.start < b.start and b.start <= a.stop and a.stop - b.start >= overlap


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("h, w, tile, overlap", [(13, 11, 6, 1), (8, 8, 4, 1), (16, 9, 8, 3), (5, 5, 8, 2),
                                                 (16, 16, 8, 0)])  # overlap 0: tiles that only touch
def test_blend_weights_are_a_partition_of_unity(h, w, tile, overlap):
    lay = T.layout(h, w, tile, overlap)
    total = np.zeros((UP * h, UP * w))
    for t, wt in T.blend_weights(lay, UP).items():
        r, c = t.image_index(UP)
        assert wt.shape == (r.stop - r.start, c.stop - c.start) and (wt >= 0).all()
        total[r, c] += wt
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_weights_fall_to_the_tile_edge_only_inside_the_canvas():
    w = T.axis_weights(T.axis_spans(20, 8, 2), UP)
    assert w[0][0] == 1.0 and w[-1][-1] == 1.0  # canvas edges keep full weight
    assert w[0][-1] < 0.1 and w[1][0] < 0.1  # interior tile edges fade out


def test_work_ratio_stays_small_with_equal_tiles():
    lay = T.layout(64, 64, 32, 4)  # a 512² image in tiles of at most 256²
    assert lay.tile_shape == (24, 24) and lay.work_ratio < 1.3


def test_max_pixels_picks_the_largest_square_tile():
    assert T.tile_for_pixels(256 * 256, UP) == 32
    assert T.tile_for_pixels(256 * 256 - 1, UP) == 31
    lay = T.choose_tile(64, 64, tile=None, overlap=2, max_pixels=128 * 128, limits=T.ShapeLimits(), upscale=UP)
    assert max(lay.tile_shape) <= 16 and not lay.single


def test_chunks_and_chunk_size():
    assert T.chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert T.chunks(5, None) == [slice(0, 5)] and T.chunks(2, 4) == [slice(0, 2)]
    assert T.chunk_size(None, 3, limits=T.ShapeLimits(batch=(1, 2))) == 2
    assert T.chunk_size(None, None, limits=T.ShapeLimits()) is None


# --- bad values are refused by name --------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    ({"tile": 0}, InputError, "tile"), ({"tile": 3}, InputError, "tile"), ({"tile": 2.5}, InputTypeError, "tile"),
    ({"tile": True}, InputTypeError, "tile"), ({"tile": "16"}, InputTypeError, "tile"),
    ({"tile": 8, "overlap": -1}, InputError, "overlap"), ({"tile": 8, "overlap": 4}, InputError, "overlap"),
    ({"tile": 8, "overlap": 1.0}, InputTypeError, "overlap"), ({"max_pixels": 100}, InputError, "max_pixels"),
    ({"max_pixels": 32 * 32, "overlap": 2}, InputError, "max_pixels"),
    ({"max_pixels": 64.0 * 64}, InputTypeError, "max_pixels"), ({"max_batch": 0}, InputError, "max_batch"),
    ({"max_batch": "2"}, InputTypeError, "max_batch")])
def test_bad_tiling_options_name_the_argument(decoder_bundle, kwargs, error, name):
    with cmrt.Decoder(decoder_bundle.path) as dec, pytest.raises(error, match=name):
        dec.decode(_latents(1, 6, 6), seed=0, **kwargs)


def test_bad_runner_max_batch(decoder_bundle):
    with pytest.raises(InputError, match="max_batch"):
        cmrt.Decoder(decoder_bundle.path, max_batch=-1)


# --- chunked batches ----------------------------------------------------------------------
def test_chunked_decode_equals_one_call(decoder_bundle):
    z = _latents(5, 4, 6)
    with cmrt.Decoder(decoder_bundle.path) as whole, cmrt.Decoder(decoder_bundle.path, max_batch=2) as chunked:
        ref = whole.decode(z, seed=3)
        np.testing.assert_array_equal(chunked.decode(z, seed=3), ref)
        np.testing.assert_array_equal(whole.decode(z, seed=3, max_batch=1), ref)


def test_chunked_sample_equals_one_call(cm_bundle):
    with cmrt.Sampler(cm_bundle.path) as s:
        ref = s.sample(5, seed=4)  # labels drawn from the seed after the noise, for the whole batch
        np.testing.assert_array_equal(s.sample(5, seed=4, max_batch=2), ref)


def test_chunked_torch_in_torch_out(decoder_bundle):
    torch = pytest.importorskip("torch")
    z = torch.from_numpy(_latents(3, 4, 4))
    with cmrt.Decoder(decoder_bundle.path, max_batch=1) as dec:
        out = dec.decode(z, seed=0)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 3, 32, 32)


# --- tiled decode --------------------------------------------------------------------------
def test_single_tile_equals_untiled(decoder_bundle):
    z = _latents(2, 6, 5)
    with cmrt.Decoder(decoder_bundle.path) as dec:
        ref = dec.decode(z, seed=7)
        np.testing.assert_array_equal(dec.decode(z, seed=7, tile=6, overlap=2), ref)
        np.testing.assert_array_equal(dec.decode(z, seed=7, max_pixels=48 * 48), ref)


def test_tiled_decode_is_deterministic_per_seed(decoder_bundle):
    z = _latents(1, 12, 10)
    with cmrt.Decoder(decoder_bundle.path) as dec:
        a = dec.decode(z, seed=11, tile=6, overlap=1)
        np.testing.assert_array_equal(dec.decode(z, seed=11, tile=6, overlap=1), a)
        assert not np.array_equal(dec.decode(z, seed=12, tile=6, overlap=1), a)


@pytest.mark.parametrize("h, w, tile, overlap", [(13, 11, 6, 1), (9, 7, 5, 2)])
def test_each_tile_decodes_its_crop_of_the_full_canvas_noise(decoder_bundle, h, w, tile, overlap):
    """Odd sizes, tiles that do not divide the canvas: the tiled result is, exactly, the blend of
    untiled decodes of each tile's latent crop with its crop of the whole canvas's seeded noise."""
    z = _latents(2, h, w)
    with cmrt.Decoder(decoder_bundle.path) as dec:
        tiled = dec.decode(z, seed=5, tile=tile, overlap=overlap)
        noise = draw_noise((2, 3, UP * h, UP * w), dec.steps, generator(5))  # what seed=5 draws, in order
        np.testing.assert_array_equal(dec.decode(z, noise=noise, tile=tile, overlap=overlap), tiled)
        lay = T.layout(h, w, tile, overlap)
        expected = np.zeros_like(tiled)
        for t, wt in T.blend_weights(lay, UP).items():
            out = dec.decode(T.crop(z, t), noise=[T.crop(n, t, UP) for n in noise])
            r, c = t.image_index(UP)
            expected[:, :, r, c] += out * wt
    assert tiled.shape == (2, 3, UP * h, UP * w) and np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, expected, atol=1e-6)


def test_tiled_and_chunked_together(decoder_bundle):
    z = _latents(3, 10, 10)
    with cmrt.Decoder(decoder_bundle.path) as dec:
        ref = dec.decode(z, seed=2, tile=6, overlap=1)
        np.testing.assert_array_equal(dec.decode(z, seed=2, tile=6, overlap=1, max_batch=2), ref)


# --- an engine's profile decides chunks and tiles (TensorRT-RTX builds on the CPU) ----------
@pytest.mark.trt
def test_engine_profile_drives_chunks_and_tiles(dec16, bundle_copy):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")
    from cmrt.runtime.backends import engine_limits
    from cmrt.tensorrt import ProfileSpec, build, select_engine

    copy = bundle_copy(dec16, "rtx")
    build(copy.path, target="tensorrt-rtx", profile=ProfileSpec(batch=(1, 1, 2), latent=((4, 4), (6, 6), (8, 8))))
    limits = engine_limits(select_engine(cmrt.bundle.Bundle.open(copy.path), "tensorrt-rtx"))
    assert limits == T.ShapeLimits(batch=(1, 2), latent_min=(4, 4), latent_max=(8, 8))
    assert T.chunk_size(None, None, limits=limits) == 2 and T.chunk_size(1, None, limits=limits) == 1
    # a canvas beyond the profile is tiled automatically, each tile within the profile
    auto = T.choose_tile(13, 11, tile=None, overlap=1, max_pixels=None, limits=limits, upscale=UP)
    assert not auto.single and all(4 <= s <= 8 for s in auto.tile_shape)
    assert T.choose_tile(8, 6, tile=None, overlap=1, max_pixels=None, limits=limits, upscale=UP).single
    default = T.choose_tile(20, 20, tile=None, overlap=None, max_pixels=None, limits=limits, upscale=UP)
    assert default.overlap == T.default_overlap(8) < T.DEFAULT_OVERLAP and max(default.tile_shape) <= 8
    with pytest.raises(InputError, match="tile"):
        T.choose_tile(20, 20, tile=12, overlap=1, max_pixels=None, limits=limits, upscale=UP)
    with pytest.raises(InputError, match="latents of 3×3"):
        T.choose_tile(3, 3, tile=None, overlap=1, max_pixels=None, limits=limits, upscale=UP)
