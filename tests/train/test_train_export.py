"""A trained run goes through `cmrt export --model RUN_DIR` and passes `cmrt check`; so does a decoder run."""

import json
import os
import subprocess
import sys

import pytest

from cmrt.train.loop import train

from tests.train.helpers import fixed_color, fixed_digits, random_encoder, tiny_cfg

pytestmark = pytest.mark.integration  # the CLI in fresh processes

CMRT = [sys.executable, "-m", "cmrt.cli"]


def cli(*args):
    return subprocess.run([*CMRT, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


def test_cm_run_exports_and_checks(tmp_path):
    run = train(tiny_cfg("ct", tmp_path / "run", max_steps=2), data=fixed_digits(), progress=False)
    p = cli("export", "--model", run, "--steps", "2", "--out", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    manifest = json.loads((tmp_path / "b" / "cmrt.json").read_text())
    assert manifest["model"]["trained"] is True and manifest["num_classes"] == 10
    assert manifest["schedule"]["steps"] == 2 and manifest["source"]["details"]["weights"] == "ema"
    p = cli("check", tmp_path / "b")
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr
    p = cli("eval", tmp_path / "b", "--n-per-class", "5")
    assert p.returncode == 0 and "fd_pca" in p.stdout, p.stderr


@pytest.mark.slow  # a second dynamo export (~1 min on 2 busy cores)
def test_decoder_run_exports_and_checks(tmp_path):
    enc = random_encoder(tmp_path / "enc.safetensors")
    cfg = tiny_cfg("decoder", tmp_path / "dec", max_steps=1, encoder=str(enc), channels=3, attention=(False, False))
    run = train(cfg, data=fixed_color(4), progress=False)
    p = cli("export", "--model", run, "--out", tmp_path / "db")
    assert p.returncode == 0, p.stderr
    manifest = json.loads((tmp_path / "db" / "cmrt.json").read_text())
    assert manifest["kind"] == "decoder" and manifest["timesteps"] == [1008, 512]
    p = cli("check", tmp_path / "db")
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr


def test_edm_teacher_is_not_exported_as_a_consistency_model(tmp_path):
    run = train(tiny_cfg("edm", tmp_path / "t", max_steps=1), data=fixed_digits(), progress=False)
    p = cli("export", "--model", run, "--out", tmp_path / "tb")
    assert p.returncode == 2 and "EDM" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "cd", "--data", "digits", "--out", "{tmp}/x"], "--teacher"),
    (["train", "ct", "--data", "{tmp}/missing", "--out", "{tmp}/x"], "not 'digits'"),
    (["train", "ct", "--data", "digits", "--image-size", "12", "--out", "{tmp}/x"], "multiple of 8"),
    (["train", "ct", "--data", "digits", "--config", "{tmp}/none.json", "--out", "{tmp}/x"], "--config"),
    (["eval", "{tmp}/missing"], "does not exist"),
])
def test_train_and_eval_errors_are_one_line(args, message, tmp_path):
    p = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert message in p.stderr
