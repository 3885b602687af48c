"""The tiling and memory benchmarks' own logic: seam masks, scores, GroupNorm replay, the case list
and the plot (the measurements themselves are long runs recorded in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import memory as M
from benchmarks import tiling as B
from cmrt.runtime import tiled as T


def test_border_mask_marks_interior_tile_edges_only():
    lay = T.layout(8, 8, 5, 1)  # two tiles per axis: interior edges at latent 3 and 5
    mask = B.border_mask(lay, band=2)
    assert mask.shape == (64, 64)
    assert not mask[:10, :10].any() and not mask[-10:, -10:].any()  # canvas corners: no interior edge
    assert mask[0, 23] and mask[0, 41] and mask[23, 0]  # within 2 px of the edges at 24 and 40


def test_compare_scores_identical_and_seamed_outputs():
    lay = T.layout(8, 8, 5, 1)
    ref = torch.zeros(1, 3, 64, 64)
    assert B.compare(ref, ref, lay)["psnr_db"] == float("inf")
    seam = ref.clone()
    seam[..., :, 22:26] = 0.1
    r = B.compare(seam, ref, lay)
    assert r["border_ratio"] == float("inf") and r["rms_elsewhere"] == 0.0


def test_groupnorm_replay_reproduces_the_recorded_statistics():
    gn = torch.nn.GroupNorm(2, 4).eval()
    torch.nn.init.normal_(gn.weight)
    x = torch.randn(1, 4, 6, 6)
    original = torch.nn.GroupNorm.forward
    stats = B.GroupNormStats()
    with stats.patched("record"):
        full = gn(x)
    with stats.patched("replay"):
        replayed = gn(x[..., :3, :3])  # a crop normalized with the whole input's statistics
    torch.testing.assert_close(replayed, full[..., :3, :3])
    assert torch.nn.GroupNorm.forward is original and stats.mode == "off"


def test_memory_cases_and_plot(tmp_path):
    rows = M.cases([256, 512], 32, None, ["arena"], 256, tmp_path / "b", tmp_path / "d")
    assert [(r["backend"], r["mode"], r["resolution"]) for r in rows] == [
        ("cmrt", "untiled", 256), ("cmrt", "tiled", 256), ("diffusers", "untiled", 256),
        ("cmrt", "untiled", 512), ("cmrt", "tiled", 512)]
    measured = [r | {"fits": True, "peak_rss_mib": 500.0 + r["resolution"]} for r in rows]
    measured[-2] = measured[-2] | {"fits": False, "note": "stopped above 12.0 GiB"}
    (tmp_path / "m.json").write_text(json.dumps({"rows": measured}))
    assert M.main(["--plot-only", "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png"),
                   "--plot-arena", "arena"]) == 0
    assert (tmp_path / "m.png").stat().st_size > 1000


@pytest.mark.parametrize("side", [64])
def test_the_memory_child_reports_its_high_water_mark(decoder_bundle, side):
    out = M.child({"backend": "cmrt", "mode": "tiled", "resolution": side, "arena": "arena", "tile": 4,
                   "overlap": 1, "bundle": str(decoder_bundle.path)})
    assert out["peak_rss_mib"] >= out["rss_before_decode_mib"] > 0 and np.isfinite(out["decode_s"])


def test_memory_cases_with_norms_and_a_given_bundle(tmp_path):
    rows = M.cases([256, 2048], 32, None, ["arena"], 0, tmp_path / "b", None, ["tile", "shared-means/4"], 256, 1)
    assert [(r["mode"], r["resolution"], r.get("norm"), r.get("stats_factor")) for r in rows] == [
        ("untiled", 256, None, None), ("tiled", 256, "tile", None), ("tiled", 256, "shared-means", 4),
        ("tiled", 2048, "tile", None), ("tiled", 2048, "shared-means", 4)]
    assert all(r["threads"] == 1 and r["backend"] == "cmrt" for r in rows)
