"""Layer-synchronous tiled decoding (``norm="canvas"``): the shared-statistics graph cut at its
norms runs tile by tile, norm by norm, and the tiled decode equals the untiled one to rounding;
its pieces (owned windows, the statistics join, the segments) are checked on their own."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import cmrt
from cmrt import InputError, InputTypeError
from cmrt import graphs as NS
from cmrt.runtime.tiled import layer_sync as L
from cmrt.runtime import tiled as T


def _latents(b: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, (b, 4, h, w)).astype(np.float32)


# --- the runtime --------------------------------------------------------------------------
@pytest.mark.parametrize("h, w, tile, overlap", [(13, 11, 5, 2), (12, 17, 8, 3)])
def test_canvas_tiled_decode_equals_the_untiled_decode(stats_bundle, h, w, tile, overlap):
    """Odd canvases, tiles that do not divide them, a batch of two: the tiled decode is the
    untiled one to rounding (per-tile statistics are far from it), and deterministic."""
    z = _latents(2, h, w)
    with cmrt.Decoder(stats_bundle.path) as dec:
        ref = dec.decode(z, seed=5)
        out = dec.decode(z, seed=5, tile=tile, overlap=overlap, norm="canvas")
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=2e-6)
        np.testing.assert_array_equal(dec.decode(z, seed=5, tile=tile, overlap=overlap, norm="canvas"), out)
        own = dec.decode(z, seed=5, tile=tile, overlap=overlap if overlap else 2, norm="tile")
        assert np.abs(own - ref).max() > 1e-3


def test_canvas_decode_chunks_and_torch(stats_bundle):
    torch = pytest.importorskip("torch")
    z = _latents(3, 10, 9)
    with cmrt.Decoder(stats_bundle.path) as dec:
        ref = dec.decode(z, seed=2)
        chunked = dec.decode(z, seed=2, tile=5, norm="canvas", max_batch=2)
        np.testing.assert_allclose(chunked, ref, atol=2e-6)
        out = dec.decode(torch.from_numpy(z), seed=2, tile=5, norm="canvas")
        assert isinstance(out, torch.Tensor)
        np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)


def test_default_norm_is_canvas_unless_the_call_asks_for_a_statistics_pass(stats_bundle):
    z = _latents(1, 12, 12)
    with cmrt.Decoder(stats_bundle.path) as dec:
        np.testing.assert_array_equal(dec.decode(z, seed=1, tile=6), dec.decode(z, seed=1, tile=6, norm="canvas"))
        np.testing.assert_array_equal(dec.decode(z, seed=1, tile=6, stats_factor=4),
                                      dec.decode(z, seed=1, tile=6, norm="shared", stats_factor=4))
        np.testing.assert_array_equal(dec.decode(z, seed=1, tile=6, overlap=1),
                                      dec.decode(z, seed=1, tile=6, overlap=1, norm="shared"))


def test_canvas_single_tile_is_the_plain_call(stats_bundle):
    z = _latents(1, 6, 5)
    with cmrt.Decoder(stats_bundle.path) as dec:
        np.testing.assert_array_equal(dec.decode(z, seed=7, tile=6, norm="canvas"), dec.decode(z, seed=7))
        assert dec._layer_sync is None  # nothing was cut or opened


@pytest.mark.parametrize("kwargs, match", [
    ({"overlap": 1}, "overlap ≥ 2"), ({"overlap": 0}, "overlap ≥ 2"), ({"stats_factor": 2}, "stats_factor")])
def test_canvas_bad_options_are_refused_by_name(stats_bundle, kwargs, match):
    with cmrt.Decoder(stats_bundle.path) as dec, pytest.raises(InputError, match=match):
        dec.decode(_latents(1, 12, 12), seed=0, tile=6, norm="canvas", **kwargs)


def test_spilled_canvas_decode_is_the_same_and_leaves_no_files(stats_bundle, tmp_path):
    z = _latents(2, 13, 11)
    with cmrt.Decoder(stats_bundle.path) as dec:
        in_memory = dec.decode(z, seed=4, tile=6, norm="canvas")
        np.testing.assert_array_equal(dec.decode(z, seed=4, tile=6, norm="canvas", spill=tmp_path), in_memory)
        np.testing.assert_array_equal(dec.decode(z, seed=4, tile=6, norm="canvas", spill=True, max_batch=1), in_memory)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, error, match", [
    ({"norm": "tile", "spill": True}, InputError, "spill applies to norm='canvas'"),
    ({"norm": "canvas", "spill": "/no/such/folder"}, InputError, "spill='/no/such/folder' is not an existing folder"),
    ({"norm": "canvas", "spill": 3}, InputTypeError, "spill must be")])
def test_bad_spill_is_refused_by_name(stats_bundle, kwargs, error, match):
    with cmrt.Decoder(stats_bundle.path) as dec, pytest.raises(error, match=match):
        dec.decode(_latents(1, 12, 12), seed=0, tile=6, **kwargs)


def test_canvas_needs_the_graphs(decoder_bundle):
    with cmrt.Decoder(decoder_bundle.path) as dec, pytest.raises(InputError, match="--tile-stats"):
        dec.decode(_latents(1, 12, 12), seed=0, tile=6, norm="canvas")


def test_close_frees_the_segment_sessions(stats_bundle):
    dec = cmrt.Decoder(stats_bundle.path)
    dec.decode(_latents(1, 12, 12), seed=0, tile=6, norm="canvas")
    graphs = dec._layer_sync
    assert len(graphs.sessions) == len(graphs.segments) == len(graphs.groups) + 1
    dec.close()
    assert graphs.sessions == []
    with pytest.raises(cmrt.RunnerClosedError):
        graphs.run({"latents": _latents(1, 12, 12)}, T.layout(12, 12, 6, 2), "images")


# --- the pieces ---------------------------------------------------------------------------
@pytest.mark.parametrize("length, tile, overlap, scale", [(13, 6, 2, 1), (13, 6, 2, 8), (17, 8, 3, 1), (17, 8, 3, 4),
                                                          (9, 9, 0, 2)])
def test_owned_windows_tile_the_axis_inside_their_spans(length, tile, overlap, scale):
    spans = T.axis_spans(length, tile, overlap)
    windows = L.owned(spans, Fraction(scale))
    assert windows[0][0] == 0 and windows[-1][1] == scale * length
    for (lo, hi), nxt, s in zip(windows, windows[1:] + [None], spans):
        assert scale * s.start <= lo < hi <= scale * s.stop
        if nxt is not None:
            assert hi == nxt[0]


def test_owned_windows_refuse_a_layer_coarser_than_the_tiles():
    with pytest.raises(cmrt.BundleError, match="does not align"):
        L.owned(T.axis_spans(13, 6, 2), Fraction(1, 2))


def test_combine_is_the_statistics_of_the_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (2, 6, 10, 7)).astype(np.float32)
    g = 3
    parts = []
    for rows in (slice(0, 3), slice(3, 10)):
        p = x[:, :, rows].reshape(2, g, -1).astype(np.float64)
        mean = p.mean(-1)
        parts.append((mean, ((p - mean[..., None]) ** 2).sum(-1), p.shape[-1]))
    whole = x.reshape(2, g, -1).astype(np.float64)
    np.testing.assert_allclose(L.combine(parts), np.stack([whole.mean(-1), whole.var(-1)], 1), rtol=1e-6)


def _grouped_model() -> onnx.ModelProto:
    """conv → GroupNorm (3 groups of 2 channels: Reshape → InstanceNormalization → Reshape → affine) →
    conv, the (N, G, L) form the natural-image decoder has and the tiny decoder does not."""
    c, g = 6, 3
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(a, name) for a, name in (
        (rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32), "w1"), (rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32), "w2"),
        (np.array([0, g, -1], np.int64), "groups"), (np.ones(g, np.float32), "ones"), (np.zeros(g, np.float32), "zeros"),
        (np.linspace(0.5, 2, c, dtype=np.float32).reshape(c, 1, 1), "gamma"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["h", "groups"], ["hg"]),
             helper.make_node("InstanceNormalization", ["hg", "ones", "zeros"], ["ng"], epsilon=1e-5),
             helper.make_node("Shape", ["h"], ["hs"]), helper.make_node("Reshape", ["ng", "hs"], ["n4"]),
             helper.make_node("Mul", ["n4", "gamma"], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["images"], pads=[1, 1, 1, 1])]
    io = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, ["n", c, "h", "w"]) for k in ("x", "images")]
    return helper.make_model(helper.make_graph(nodes, "gn", [io[0]], [io[1]], inits),
                             opset_imports=[helper.make_opsetid("", 20)])


def test_segments_of_a_grouped_norm_measure_the_canvas_statistics():
    """Cut at its norm: segment 0 makes the norm's (N, C, H, W) input and measures an owned window
    of it; joined over two halves, segment 1 fed those statistics gives the whole graph's output."""
    model = _grouped_model()
    norms = NS.find_norms(model, Path("."))
    parts = NS.segments(NS.shared_statistics_graph(model, norms), norms, Path("."))
    assert len(parts) == 2 and parts[0].norm == 0 and parts[1].norm is None
    assert parts[0].spatial == "h" and "hg" not in parts[0].outputs  # the grouping Reshape went with the norm
    sessions = [ort.InferenceSession(p.model.SerializeToString(), providers=["CPUExecutionProvider"]) for p in parts]
    x = np.random.default_rng(2).normal(1.0, 2.0, (2, 6, 8, 5)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    found, held = [], {}
    for r0, r1 in ((0, 3), (3, 8)):
        outs = sessions[0].run(list(parts[0].outputs) + [NS.OWNED_MEAN, NS.OWNED_M2], {
            "x": x, NS.OWNED_STARTS: np.array([r0, 0], np.int64), NS.OWNED_ENDS: np.array([r1, 5], np.int64)})
        held = dict(zip(parts[0].outputs, outs))
        found.append((outs[-2], outs[-1], (r1 - r0) * 5 * 2))
    stats = L.combine(found)
    feeds = {k: (stats if k == NS.STATS_NAME else held[k]) for k in parts[1].inputs}
    np.testing.assert_allclose(sessions[1].run(None, feeds)[0], expected, atol=1e-5)


@pytest.mark.slow
def test_canvas_decode_of_the_natural_image_decoder_equals_untiled(tmp_path):
    """The shipped natural-image decoder (grouped norms, official depth), exported with
    ``--tile-stats``: a 3×3-tile canvas decode equals the untiled decode to rounding."""
    from cmrt.models.load import ASSETS

    cmrt.export(ASSETS / "photos_decoder.safetensors", out=tmp_path / "b", steps=1, tile_stats=True)
    z = _latents(1, 40, 36, seed=3) / 3
    with cmrt.Decoder(tmp_path / "b") as dec:
        ref = dec.decode(z, seed=0)
        out = dec.decode(z, seed=0, tile=16, norm="canvas")
    np.testing.assert_allclose(out, ref, atol=1e-5)
