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
