"""The editing CLI through a real subprocess: export a checkpoint as a superres editor, check it,
and a refused task, one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cmrt.models.load import save_checkpoint
from tests.conftest import loaded, tiny_cm_spec

pytestmark = pytest.mark.integration  # the CLI in fresh processes

CMRT = [sys.executable, "-m", "cmrt.cli"]


def run(*args):
    return subprocess.run([*CMRT, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_export_task_and_check_through_the_cli(tmp_path):
    rgb, gray = loaded(tiny_cm_spec()), loaded(tiny_cm_spec(channels=1))
    save_checkpoint(tmp_path / "rgb.safetensors", rgb.spec, rgb.unet.state_dict())
    save_checkpoint(tmp_path / "gray.safetensors", gray.spec, gray.unet.state_dict())
    p = run("export", "--model", tmp_path / "rgb.safetensors", "--task", "superres", "--factor", "4", "--steps", "2",
            "--out", tmp_path / "sr")
    assert p.returncode == 0, p.stderr
    assert "editor: superres ×4, 2 step(s)" in p.stdout and "parity onnxruntime-cpu [fp32]" in p.stdout
    p = run("check", tmp_path / "sr")
    assert p.returncode == 0 and "PASS" in p.stdout
    p = run("export", "--model", tmp_path / "gray.safetensors", "--task", "colorize", "--out", tmp_path / "c")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "--task colorize needs an RGB" in p.stderr
    assert not (tmp_path / "c").exists()


def test_edit_inpaints_a_png_with_a_mask_as_the_library_does(edit_inpaint, tmp_path):
    import numpy as np
    from PIL import Image

    import cmrt
    from cmrt.images import read_image, read_mask

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")  # resized to 16
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    p = run("edit", edit_inpaint.path, "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--n", "2",
            "--seed", "5", "--class-labels", "3", "--out", tmp_path / "e.npy")
    assert p.returncode == 0, p.stderr
    assert "2 edit(s), inpaint, 16x16" in p.stdout
    image, mask = read_image(tmp_path / "in.png", size=(16, 16)), read_mask(tmp_path / "mask.png", size=(16, 16))
    expected = cmrt.Editor(edit_inpaint.path).edit(np.repeat(image, 2, 0), mask=np.repeat(mask, 2, 0),
                                                   class_labels=3, seed=5)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), expected)
    p = run("edit", edit_inpaint.path, "--image", tmp_path / "in.png", "--out", tmp_path / "e.png")
    assert p.returncode == 2 and "--mask" in p.stderr and p.stderr.count("\n") == 1
    assert not (tmp_path / "e.png").exists()
