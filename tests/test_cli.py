"""The CLI through a subprocess: exit codes, one-line errors, no tracebacks."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # the CLI in fresh processes

CMRT = [sys.executable, "-m", "cmrt.cli"]


def run(*args, cwd=None):
    return subprocess.run([*CMRT, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


def assert_one_line_error(p, code=2):
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("cmrt")]
    assert len(lines) == 1, p.stderr


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("export", "check", "sample"):
        assert cmd in p.stdout


def test_check_and_sample_through_the_entry_point(cm_bundle, tmp_path):
    """(Exporting the bundled model through the CLI is tests/test_readme.py's quick start.)"""
    p = run("check", cm_bundle.path)
    assert p.returncode == 0 and "PASS" in p.stdout and "max abs" in p.stdout and "PSNR" in p.stdout
    assert "integrity:" in p.stdout
    p = run("sample", cm_bundle.path, "--n", "4", "--out", tmp_path / "g.png")
    assert p.returncode == 0 and (tmp_path / "g.png").stat().st_size > 0


def test_check_fails_with_exit_1(cm_bundle, tmp_path):
    import shutil

    b = tmp_path / "t"
    shutil.copytree(cm_bundle.path, b)
    with np.load(b / "parity.npz") as d:
        arrays = dict(d)
    arrays["output/images"] = -arrays["output/images"]
    np.savez(b / "parity.npz", **arrays)
    p = run("check", b)
    assert p.returncode == 1 and "FAIL" in p.stdout and "parity.npz" in p.stdout


@pytest.mark.parametrize("args", [
    ["export", "--steps", "0", "--out", "{tmp}/x"],
    ["export", "--model", "{tmp}/missing.safetensors", "--out", "{tmp}/x"],
    ["export", "--sigmas", "1,80", "--out", "{tmp}/x"],
    ["check", "{tmp}/nothing"],
    ["sample", "{tmp}", "--out", "{tmp}/g.png"],
])
def test_bad_input_one_line(tmp_path, args):
    p = run(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(p)
    assert not (tmp_path / "x").exists()


def test_bad_model_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    p = run("export", "--model", bad, "--out", tmp_path / "x")
    assert_one_line_error(p)
    assert str(bad) in p.stderr
