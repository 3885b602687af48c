"""Editing bundles of the tiny RGB class-conditional CM with attention: the ``edit_*`` rows of
``tests/conftest.py``'s ``SHARED_BUNDLES`` (one graph per task, exported once per test run), named
here for the editing tests."""

from __future__ import annotations

from tests.conftest import EDIT_FACTOR, SHARED_BUNDLES, export_shared, tiny_cm

FACTOR = EDIT_FACTOR
#: fixture name → its export options; one graph per task.
EDITOR_BUNDLES = {name: b.options for name, b in SHARED_BUNDLES.items() if "task" in b.options}


def rgb_model():
    """The tiny RGB class-conditional CM (built the same way every time: same weights)."""
    return tiny_cm()


def editor_bundle(factory, name: str):
    return export_shared(factory, name)
