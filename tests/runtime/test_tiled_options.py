"""The tiled decode's options object: every argument checked once, with the rules between them,
before any bundle is read (no model needed: these run in milliseconds)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from cmrt import InputError, InputTypeError
from cmrt.runtime.tiled import CANVAS_OVERLAP, NORM_MODES, TiledOptions


def test_valid_options_come_back_as_ints_and_paths(tmp_path):
    o = TiledOptions.check(tile=8, overlap=2, norm="canvas", spill=tmp_path, max_pixels=64 * 64)
    assert (o.tile, o.overlap, o.norm, o.stats_factor, o.spill, o.max_pixels) == (8, 2, "canvas", None, tmp_path,
                                                                                    64 * 64)
    assert TiledOptions.check(spill=True).spill == Path(tempfile.gettempdir())
    assert TiledOptions.check(spill=False).spill is None
    assert TiledOptions.check() == TiledOptions()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tile": 3}, InputError, "tile must be at least 4"),
    ({"overlap": 2.0}, InputTypeError, r"overlap must be an int \(latent pixels\)"),
    ({"tile": 8, "overlap": 4}, InputError, r"overlap \(4\) must be less than half of tile \(8\)"),
    ({"norm": "group"}, InputError, "norm must be one of 'tile', 'shared', 'shared-means', 'canvas'"),
    ({"stats_factor": 0}, InputError, "stats_factor must be ≥ 1"),
    ({"stats_factor": 2, "norm": "tile"}, InputError, "stats_factor applies to norm='shared'"),
    ({"stats_factor": 2, "norm": "canvas"}, InputError, "stats_factor applies to norm='shared'"),
    ({"norm": "canvas", "overlap": CANVAS_OVERLAP - 1}, InputError, f"overlap ≥ {CANVAS_OVERLAP}"),
    ({"norm": "shared", "spill": True}, InputError, r"spill applies to norm='canvas' only \(this decode runs "
                                                    "norm='shared'\\)"),
    ({"spill": 3}, InputTypeError, "spill must be True or a folder path"),
    ({"spill": "/no/such/folder"}, InputError, "is not an existing folder"),
    ({"max_pixels": 4096.0}, InputTypeError, "max_pixels must be an int"),
    ({"tile": 8, "max_pixels": "4096"}, InputTypeError, "max_pixels must be an int"),
    ({"max_pixels": -1}, InputError, "max_pixels must be ≥ 0")])
def test_bad_options_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        TiledOptions.check(**kwargs)


@pytest.mark.parametrize("mode", NORM_MODES)
def test_resolve_sets_the_mode_and_spill_needs_canvas(mode, tmp_path):
    o = TiledOptions.check(spill=tmp_path)
    if mode == "canvas":
        assert o.resolve(mode).norm == "canvas"
    else:
        with pytest.raises(InputError, match=f"this decode runs norm={mode!r}"):
            o.resolve(mode)
    assert TiledOptions.check(tile=8).resolve(mode).norm == mode
