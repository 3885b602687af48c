"""FP16 bundles of the tiny test models, exported once per test session and shared by
``test_precision.py`` and ``test_tensorrt_build.py`` (an FP16 export takes tens of seconds here)."""

from __future__ import annotations

from pathlib import Path

from conftest import loaded, tiny_cm_spec, tiny_decoder_spec

_CACHE: dict[str, Path] = {}
SPECS = {"decoder": tiny_decoder_spec, "cm": tiny_cm_spec}


def fp16_bundle(kind: str, tmp_path_factory) -> Path:
    """The folder of a 2-step FP16 bundle of the tiny decoder ("decoder") or the tiny
    class-conditional CM with attention ("cm"); exported on first use."""
    if kind not in _CACHE:
        from cmrt.export.api import export

        out = tmp_path_factory.mktemp("fp16") / kind
        export(out=out, steps=2, model=loaded(SPECS[kind]()), precision="fp16")
        _CACHE[kind] = out
    return _CACHE[kind]
