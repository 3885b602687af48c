"""DDP: the same `cmrt train` command under torchrun with 2 gloo processes ends with identical replicas."""

import os
import subprocess
import sys

import pytest

from cmrt.train import runs as R

pytestmark = pytest.mark.integration  # torchrun with two processes


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    # --standalone: a rendezvous on localhost port 0, which the OS makes a free one (no fixed port to collide)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cmrt.cli", "train", "ct", "--data", "digits", "--out", str(out), "--max-steps", "3",
           "--image-size", "8", "--widths", "32,32", "--attention", "false,true", "--batch-size", "8",
           "--ckpt-every", "2", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    digests = {r: (out / f"rank_{r}.sha256").read_text().strip() for r in (0, 1)}
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    assert R.load_run(out).step == 3
    # each rank drew its own batches: the replicas agree because gradients were all-reduced
    cfg = R.load_run(out).config
    assert cfg.batch_size == 8 and (out / "config.json").is_file()
    import json

    assert json.loads((out / "config.json").read_text())["world"] == 2
