"""Shared GroupNorm statistics for tiled decoding: the statistics graph reproduces PyTorch's
recorded statistics, the shared-statistics graph reproduces the untiled decode when fed the
canvas's own statistics, the runtime's shared-statistics tiled decode is the PyTorch computation
it claims to be, and bad options are refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import cmrt
from cmrt import ConfigError, InputError, InputTypeError
from cmrt.exporter.api import build_unrolled
from cmrt.graphs.norm_stats import STATS_NAME, find_norms, shared_statistics_graph, statistics_graph
from cmrt.models import norm_stats as NS
from cmrt.parity import compare
from cmrt.runtime import tiled as T
from cmrt.runtime.inputs import draw_noise, generator

UP = 8


@pytest.fixture(scope="module")
def sampler(decoder_model, stats_bundle):
    return build_unrolled(decoder_model, stats_bundle.manifest.schedule)


def _latents(b: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, (b, 4, h, w)).astype(np.float32)


def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(z: np.ndarray, seed: int, steps: int = 2) -> dict[str, np.ndarray]:
    noise = draw_noise((z.shape[0], 3, UP * z.shape[2], UP * z.shape[3]), steps, generator(seed))
    return {"latents": z} | {f"noise_{i}": n for i, n in enumerate(noise)}


def _torch(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(v) for v in feeds.values()]


# --- the export ---------------------------------------------------------------------------
def test_export_records_the_graphs_and_their_parity(stats_bundle):
    record = stats_bundle.manifest.norm_stats
    assert record is not None and record.tensor == STATS_NAME and record.factor == T.DEFAULT_STATS_FACTOR
    assert len(record.groups) > 0 and all(p.passed for p in record.parity.values())
    assert set(record.parity) == {"statistics", "shared", "shared-means"}
    files = {f.file for f in stats_bundle.manifest.files()}
    assert {record.stats_graph.file, record.shared_graph.file, record.means_graph.file} <= files
    assert stats_bundle.verify().passed


def test_statistics_graph_outputs_pytorchs_recorded_statistics(stats_bundle, sampler):
    feeds = _feeds(_latents(2, 6, 5), seed=3)  # a shape the export's parity inputs did not have
    stats = _session(stats_bundle.path / stats_bundle.manifest.norm_stats.stats_graph.file).run([STATS_NAME], feeds)[0]
    with torch.no_grad(), NS.recording(sampler) as recorded:
        sampler(*_torch(feeds))
    expected = NS.pack(recorded).numpy()
    assert stats.shape == expected.shape == (2, 2, sum(stats_bundle.manifest.norm_stats.groups))
    assert compare({STATS_NAME: stats}, {STATS_NAME: expected}, backend="ort", precision="fp32-stats").passed


@pytest.mark.parametrize("graph, used", [("shared_graph", (0, 1)), ("means_graph", (0,))])
def test_shared_graphs_fed_their_own_statistics_equal_the_untiled_decode(stats_bundle, graph, used):
    record = stats_bundle.manifest.norm_stats
    feeds = _feeds(_latents(1, 7, 6), seed=4)
    stats = _session(stats_bundle.path / record.stats_graph.file).run([STATS_NAME], feeds)[0]
    session = _session(stats_bundle.path / getattr(record, graph).file)
    with cmrt.Decoder(stats_bundle.path, backend="onnxruntime-cpu") as dec:
        plain = dec.decode(feeds["latents"], noise=[feeds["noise_0"], feeds["noise_1"]])
    np.testing.assert_allclose(session.run(["images"], feeds | {STATS_NAME: stats})[0], plain, atol=1e-5)
    for i in (0, 1):  # other means (and, for the shared graph, variances) give another image
        other = stats.copy()
        other[:, i] = other[:, i] * 4 + 0.5
        changed = session.run(["images"], feeds | {STATS_NAME: other})[0]
        assert (np.abs(changed - plain).max() > 1e-2) == (i in used)


def test_grouped_norm_with_several_channels_per_group():
    """The (N, G, L) form of a GroupNorm (Reshape → InstanceNormalization → Reshape → affine),
    which the tiny decoder (one channel per group) does not have."""
    n, c, g, h, w = 2, 6, 3, 5, 4
    inits = [numpy_helper.from_array(a, name) for a, name in (
        (np.array([0, g, -1], np.int64), "groups"), (np.ones(g, np.float32), "ones"),
        (np.zeros(g, np.float32), "zeros"), (np.array([0, c, h, w], np.int64), "back"),
        (np.linspace(0.5, 2, c, dtype=np.float32).reshape(c, 1, 1), "gamma"),
        (np.linspace(-1, 1, c, dtype=np.float32).reshape(c, 1, 1), "beta"))]
    nodes = [helper.make_node("Reshape", ["x", "groups"], ["xg"]),
             helper.make_node("InstanceNormalization", ["xg", "ones", "zeros"], ["ng"], epsilon=1e-5),
             helper.make_node("Reshape", ["ng", "back"], ["n4"]), helper.make_node("Mul", ["n4", "gamma"], ["m"]),
             helper.make_node("Add", ["m", "beta"], ["images"])]
    io = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, ["batch", c, h, w]) for k in ("x", "images")]
    model = helper.make_model(helper.make_graph(nodes, "gn", [io[0]], [io[1]], inits),
                              opset_imports=[helper.make_opsetid("", 20)])
    norms = find_norms(model, base=__import__("pathlib").Path("."))
    assert [(k.groups, k.rank) for k in norms] == [(g, 3)]
    x = np.random.default_rng(0).normal(2.0, 3.0, (n, c, h, w)).astype(np.float32)
    gn = torch.nn.GroupNorm(g, c)
    with torch.no_grad():
        gn.weight.copy_(torch.linspace(0.5, 2, c))
        gn.bias.copy_(torch.linspace(-1, 1, c))
        with NS.recording(gn) as recorded:
            expected = gn(torch.from_numpy(x)).numpy()
    images, stats = _session_of(statistics_graph(model, norms)).run(["images", STATS_NAME], {"x": x})
    np.testing.assert_allclose(stats, NS.pack(recorded).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    for variances in ("shared", "own"):
        shared = _session_of(shared_statistics_graph(model, norms, variances))
        np.testing.assert_allclose(shared.run(["images"], {"x": x, STATS_NAME: stats})[0], expected, atol=1e-5)


def _session_of(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# --- the runtime --------------------------------------------------------------------------
def test_single_tile_shared_decode_at_factor_1_equals_untiled(stats_bundle):
    z = _latents(2, 6, 5)
    with cmrt.Decoder(stats_bundle.path) as dec:
        ref = dec.decode(z, seed=7)
        np.testing.assert_array_equal(dec.decode(z, seed=7, tile=6), ref)  # default: one tile runs the plain graph
        for norm in ("shared", "shared-means"):
            np.testing.assert_allclose(dec.decode(z, seed=7, norm=norm, stats_factor=1), ref, atol=1e-5)
            assert np.abs(dec.decode(z, seed=7, norm=norm, stats_factor=2) - ref).max() > 1e-4


@pytest.mark.parametrize("norm, variances", [("shared", "shared"), ("shared-means", "own")])
def test_shared_tiled_decode_is_the_pytorch_computation(stats_bundle, sampler, norm, variances):
    """Odd sizes: statistics of the untiled sampler on the canvas downscaled by 2 (its noise the
    pooled canvas noise), every tile normalized by them, blended: as computed in PyTorch."""
    h, w, tile, overlap = 13, 11, 6, 1
    z = _latents(1, h, w)
    feeds = _feeds(z, seed=5)
    noise = [feeds["noise_0"], feeds["noise_1"]]
    with cmrt.Decoder(stats_bundle.path) as dec:
        out = dec.decode(z, seed=5, tile=tile, overlap=overlap, norm=norm)
        np.testing.assert_array_equal(dec.decode(z, seed=5, tile=tile, overlap=overlap, norm=norm), out)  # deterministic
        assert not np.array_equal(dec.decode(z, seed=6, tile=tile, overlap=overlap, norm=norm), out)
        if norm == "shared":  # the default of a bundle with the graphs when the overlap is too small for "canvas"
            np.testing.assert_array_equal(dec.decode(z, seed=5, tile=tile, overlap=overlap), out)
        own = dec.decode(z, seed=5, tile=tile, overlap=overlap, norm="tile")
    low, pooled = T.stats_canvas(z, noise, 2, UP)
    with torch.no_grad():
        with NS.recording(sampler) as recorded:
            sampler(torch.from_numpy(low), *map(torch.from_numpy, pooled))
        stats = NS.pack(recorded)
        expected = np.zeros_like(out)
        for t, wt in T.blend_weights(T.layout(h, w, tile, overlap), UP).items():
            with NS.shared(sampler, stats, variances=variances):
                part = sampler(torch.from_numpy(T.crop(z, t)), *(torch.from_numpy(T.crop(n, t, UP)) for n in noise))
            r, c = t.image_index(UP)
            expected[:, :, r, c] += part.numpy() * wt
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert np.abs(own - out).max() > 1e-3  # per-tile statistics are another computation


def test_tile_norm_is_the_plain_tiled_decode(stats_bundle, decoder_bundle):
    z = _latents(2, 10, 9)
    with cmrt.Decoder(stats_bundle.path) as dec, cmrt.Decoder(decoder_bundle.path) as plain:
        np.testing.assert_array_equal(dec.decode(z, seed=2, tile=6, overlap=1, norm="tile", max_batch=1),
                                      plain.decode(z, seed=2, tile=6, overlap=1))
        chunked = dec.decode(z, seed=2, tile=6, overlap=1, max_batch=1)  # shared, in batch chunks
        np.testing.assert_allclose(chunked, dec.decode(z, seed=2, tile=6, overlap=1), atol=1e-6)
        canvas = dec.decode(z, seed=2, tile=6)  # the default with room for the overlap: canvas
        np.testing.assert_array_equal(canvas, dec.decode(z, seed=2, tile=6, norm="canvas"))
        np.testing.assert_allclose(canvas, dec.decode(z, seed=2), atol=2e-6)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"norm": "global"}, InputError, "norm"), ({"norm": 1}, InputError, "norm"),
    ({"stats_factor": 0}, InputError, "stats_factor"), ({"stats_factor": 1.5}, InputTypeError, "stats_factor"),
    ({"stats_factor": True}, InputTypeError, "stats_factor"),
    ({"norm": "tile", "stats_factor": 2}, InputError, "stats_factor")])
def test_bad_norm_options_name_the_argument(stats_bundle, kwargs, error, name):
    with cmrt.Decoder(stats_bundle.path) as dec, pytest.raises(error, match=name):
        dec.decode(_latents(1, 6, 6), seed=0, tile=4, overlap=1, **kwargs)


@pytest.mark.parametrize("norm", ["shared", "shared-means"])
def test_shared_norm_needs_the_graphs(decoder_bundle, norm):
    with cmrt.Decoder(decoder_bundle.path) as dec, pytest.raises(InputError, match="--tile-stats"):
        dec.decode(_latents(1, 6, 6), seed=0, tile=4, overlap=1, norm=norm)


@pytest.mark.parametrize("options, match", [({"tile_stats": True}, "decoders"), ({"tile_stats": "yes"}, "tile_stats")])
def test_tile_stats_export_refused_where_it_does_not_apply(cm_model, tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        cmrt.export(out=tmp_path / "b", model=cm_model, steps=1, **options)


# --- the downscaled canvas ------------------------------------------------------------------
def test_stats_canvas_is_an_area_downscale_with_unit_variance_noise():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1, 4, 7, 9)).astype(np.float32)
    noise = [rng.normal(size=(1, 3, 56, 72)).astype(np.float32) for _ in range(2)]
    same, same_noise = T.stats_canvas(z, noise, 1, UP)
    np.testing.assert_allclose(same, z, atol=1e-6)
    np.testing.assert_allclose(same_noise[1], noise[1], atol=1e-6)
    low, pooled = T.stats_canvas(z, noise, 2, UP)
    assert low.shape == (1, 4, 4, 5) and pooled[0].shape == (1, 3, 32, 40)
    np.testing.assert_allclose(low[0, :, 0, 0], z[0, :, :2, :2].mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(low[0, :, 3, 4], z[0, :, 6, 8], atol=1e-6)  # the odd corner: a 1×1 block
    np.testing.assert_allclose(pooled[0][0, :, 0, 0], noise[0][0, :, :2, :2].sum(axis=(1, 2)) / 2, atol=1e-5)
    big = [rng.normal(size=(2, 3, 8 * 33, 8 * 31)).astype(np.float32)]
    assert abs(T.stats_canvas(np.zeros((2, 4, 33, 31), np.float32), big, 4, UP)[1][0].std() - 1) < 0.02


def test_close_frees_the_shared_statistics_sessions(stats_bundle):
    dec = cmrt.Decoder(stats_bundle.path)
    dec.decode(_latents(1, 8, 8), seed=0, tile=4, overlap=1, norm="shared")
    opened = dict(dec._norm_backends)
    assert set(opened) == {"statistics", "shared"}  # opened on first use, only what the call ran
    dec.close()
    assert all(b.session is None for b in opened.values())
    with pytest.raises(cmrt.RunnerClosedError):
        dec.decode(_latents(1, 8, 8), seed=0, tile=4, overlap=1)


def test_shared_norm_refused_off_fp32_onnx_runtime(stats_bundle):
    """There are no FP16 or TensorRT shared-statistics graphs: asking is refused, the default
    falls back to per-tile statistics (a backend labelled fp16 stands in for an FP16 graph)."""
    from cmrt.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(stats_bundle.graph_path(), device="cpu", precision="fp16")
    z = _latents(1, 8, 8)
    with cmrt.Decoder(stats_bundle.path, backend=backend) as dec:
        with pytest.raises(InputError, match="norm='shared-means' runs the FP32 graphs"):
            dec.decode(z, seed=0, tile=4, overlap=1, norm="shared-means")
        default = dec.decode(z, seed=0, tile=4, overlap=1)
        assert dec._norm_backends == {}
    with cmrt.Decoder(stats_bundle.path) as fp32:
        np.testing.assert_array_equal(default, fp32.decode(z, seed=0, tile=4, overlap=1, norm="tile"))
