"""``cmrt serve``: starts Triton on a bundle, prints where it listens, answers, and stops cleanly on
Ctrl-C (SIGINT) within a few seconds."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cmrt
from cmrt.serve.server import free_port
from tests.serve.helpers import START_TIMEOUT_S, http_client, infer, seed_rows

pytestmark = pytest.mark.integration  # `cmrt serve` and Triton servers

STOP_WITHIN_S = 8.0  # unloading cmrt's models takes ≈ 3-4 s here


def _lines(stream) -> queue.Queue:
    """The stream's lines, read by a thread (so waiting on them can time out)."""
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in stream], daemon=True).start()
    return q


def _wait_for(q: queue.Queue, text: str, timeout_s: float) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout_s} s; output: {''.join(seen)}")


def test_serve_prints_answers_and_stops_on_ctrl_c(cm_bundle, serve_python):
    http_port = free_port()
    cmd = [sys.executable, "-m", "cmrt.cli", "serve", str(cm_bundle.path), "--python", str(serve_python),
           "--http-port", str(http_port)]
    # as in a terminal: SIGINT raises KeyboardInterrupt (a test run started in the background of a
    # non-interactive shell inherits SIGINT ignored)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out = _lines(p.stdout)
        seen = _wait_for(out, "Ctrl-C", START_TIMEOUT_S)
        assert f"HTTP 127.0.0.1:{http_port}" in seen[-1] and "gRPC 127.0.0.1:" in seen[-1] and "metrics" in seen[-1]

        class Where:  # what the helpers need of a server
            http_url = f"127.0.0.1:{http_port}"

        c = http_client(Where)
        images = infer(c, "cm2", class_labels=np.array([[2]]), seed=seed_rows(4, 1))
        c.close()
        assert np.abs(images - cmrt.Sampler(cm_bundle.path).sample(1, class_labels=[2], seed=4)).max() <= 1e-5

        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=30)
        elapsed = time.monotonic() - t0
        rest = "".join(_drain(out))
        assert code == 0, rest
        assert "stopped in" in rest and elapsed < STOP_WITHIN_S, (elapsed, rest)
        assert "Traceback" not in rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _drain(q: queue.Queue) -> list[str]:
    lines = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            lines.append(q.get(timeout=0.2))
        except queue.Empty:
            break
    return lines


def test_a_model_that_cannot_load_stops_the_start_with_cmrt_message(cm_bundle, serve_python, tmp_path):
    import pytest

    from cmrt.errors import ServerError
    from cmrt.serve.repository import RepositoryOptions, write_repository
    from cmrt.serve.server import TritonServer

    write_repository([cm_bundle.path], tmp_path / "r", options=RepositoryOptions(plain=False))
    (tmp_path / "r" / "cm2" / "1" / "bundle" / "model.onnx").unlink()
    server = TritonServer(tmp_path / "r", python=serve_python)
    with pytest.raises(ServerError, match=r"failed to load 'cm2'.*model.onnx is listed in cmrt.json but missing"):
        server.start(timeout_s=START_TIMEOUT_S)
    assert not server.running()


def test_serve_in_cmrts_own_environment_says_how_to_get_a_serving_one(cm_bundle, capsys, monkeypatch):
    """No server: cmrt's environment (numpy 2, no PyTriton) cannot serve; the one line says to
    build .venv-serve with `make serve-env` (or a separate numpy<2 environment), never to install
    the serving extra into cmrt's own environment."""
    from cmrt.cli import main
    from cmrt.serve.server import SERVE_PYTHON_ENV

    monkeypatch.delenv(SERVE_PYTHON_ENV, raising=False)
    code = main(["serve", str(cm_bundle.path), "--python", sys.executable])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "PyTriton" in err and ".venv-serve" in err and ("make serve-env" in err or "--python" in err)
    assert "numpy<2" in err or "make serve-env" in err
    assert "install `pip install 'cmrt[serve]'` there" not in err


def test_serve_stops_on_sigint_when_started_in_the_background(cm_bundle, serve_python):
    """A shell's background job starts with SIGINT ignored: `cmrt serve ... &` must still stop on
    `kill -INT` (it sets its own handler), quickly."""
    cmd = [sys.executable, "-m", "cmrt.cli", "serve", str(cm_bundle.path), "--python", str(serve_python)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        out = _lines(p.stdout)
        _wait_for(out, "Ctrl-C", START_TIMEOUT_S)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=30)
        elapsed = time.monotonic() - t0
        rest = "".join(_drain(out))
        assert code == 0 and "stopped in" in rest and elapsed < STOP_WITHIN_S, (code, elapsed, rest)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
