"""Editing bundles of the tiny RGB class-conditional CM with attention, exported once per test run.

One export per task, the step counts spread over the tasks (K = 1, 2, 3 for the graphs; every
task at every K is tested at the PyTorch level, ``test_edit_sample.py``); the inpainting bundle
also carries the FP16 graph that the FP16 and engine tests use.
"""

from __future__ import annotations

import pytest

from tests.conftest import loaded, shared_bundle, tiny_cm_spec

FACTOR = 4
#: fixture name → (export options, task); one graph per task.
EDITOR_BUNDLES = {
    "edit_inpaint": dict(task="inpaint", steps=2, precision="fp16"),
    "edit_colorize": dict(task="colorize", steps=3),
    "edit_superres": dict(task="superres", factor=FACTOR, steps=1),
    "edit_stroke": dict(task="stroke", steps=2),
    "edit_denoise": dict(task="denoise", sigmas=[0.5]),
}


def rgb_model():
    """The tiny RGB class-conditional CM (built the same way every time: same weights)."""
    return loaded(tiny_cm_spec())


def editor_bundle(factory, name: str):
    from cmrt import export

    return shared_bundle(factory, name, lambda out: export(out=out, model=rgb_model(), **EDITOR_BUNDLES[name]))


@pytest.fixture(scope="session")
def edit_inpaint(tmp_path_factory):
    return editor_bundle(tmp_path_factory, "edit_inpaint")


@pytest.fixture(scope="session")
def edit_colorize(tmp_path_factory):
    return editor_bundle(tmp_path_factory, "edit_colorize")


@pytest.fixture(scope="session")
def edit_superres(tmp_path_factory):
    return editor_bundle(tmp_path_factory, "edit_superres")


@pytest.fixture(scope="session")
def edit_stroke(tmp_path_factory):
    return editor_bundle(tmp_path_factory, "edit_stroke")


@pytest.fixture(scope="session")
def edit_denoise(tmp_path_factory):
    return editor_bundle(tmp_path_factory, "edit_denoise")
