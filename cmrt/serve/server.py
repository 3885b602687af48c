"""Launch the ``tritonserver`` binary that PyTriton's wheel ships (with its Python backend) on a
model repository, for development and tests.

The models run in the backend's stub processes, whose embedded interpreter finds its Python
environment through ``PATH`` (the first ``python3`` there) and loads ``libpython`` through
``LD_LIBRARY_PATH``: both point at the environment chosen by ``python`` (``$CMRT_SERVE_PYTHON``, else
this interpreter). That environment needs cmrt, its runtime and numpy<2: with numpy 2 the stub
returns empty output tensors.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, MissingDependencyError, ServerError

SERVE_PYTHON_ENV = "CMRT_SERVE_PYTHON"
DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0
# Triton's budget for stopping: draining open HTTP connections, in-flight requests, then unloading the
# models (≈ 3-4 s for cmrt's Python models here). Its default, 30 s, stalls Ctrl-C behind any idle
# client connection; too short a budget cuts the unloading off (exit code 1, models not finalized).
EXIT_TIMEOUT_S = 10
STOP_GRACE_S = 5.0  # after the exit budget, stop() kills the server
POLL_S = 0.1
LOG_TAIL_LINES = 4
# Error lines of a CPU-only machine that say nothing about the failure.
_LOG_NOISE = ("CudaDriverHelper", "DCGM", "NVML", "pinned memory", "CUDA driver")
_LOG_ERROR = re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$")
_PR_SET_PDEATHSIG = 1
_STUB = "triton_python_backend_stub"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")

# Runs in the serving environment: where PyTriton's Triton is, and what the stub needs to know.
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys, sysconfig
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "pytriton": None if spec is None else list(spec.submodule_search_locations)[0],
    "numpy": version("numpy"), "cmrt": importlib.util.find_spec("cmrt") is not None,
    "python": sys.executable, "version": "%d.%d" % sys.version_info[:2],
    "libdir": sysconfig.get_config_var("LIBDIR"),
}))
"""


@dataclass(frozen=True)
class TritonInstall:
    """PyTriton's Triton (binary, Python backend, stubs, libraries) and the environment that runs models."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs
    python: Path  # the serving environment's interpreter
    python_version: str  # "3.11": which backend stub
    libdir: Path  # the folder of its libpython

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.python_version / _STUB

    def environment(self) -> dict[str, str]:
        """Process environment for tritonserver: the serving Python first on PATH, its libpython
        and the wheel's libraries on LD_LIBRARY_PATH."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.python.parent), env.get("PATH", "")])
        libs = [str(self.libdir), str(self.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        return env


def summarize_log(text: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The telling lines of a tritonserver log: its errors (first line of each message, without the
    Python traceback) and its final ``error:`` line; else its last lines (tables left out)."""
    found: list[str] = []
    for line in text.splitlines():
        m = _LOG_ERROR.match(line)
        msg = m.group(1).strip('"') if m else (line if line.startswith("error:") else None)
        if msg and not any(noise in msg for noise in _LOG_NOISE):
            msg = msg.split("\\n")[0].strip()
            if msg not in found:
                found.append(msg)
    if found:
        return found[-lines:]
    plain = [line.strip() for line in text.splitlines() if line.strip() and line.lstrip()[:1] not in "|+"]
    return plain[-lines:]


def serve_python(python: str | os.PathLike | None = None) -> Path:
    """The interpreter of the serving environment: ``python``, else ``$CMRT_SERVE_PYTHON``, else this one."""
    chosen = python or os.environ.get(SERVE_PYTHON_ENV) or sys.executable
    return Path(os.path.abspath(chosen))  # not resolved: a venv's python is a symlink that defines the venv


def find_triton(python: str | os.PathLike | None = None) -> TritonInstall:
    """Locate PyTriton's Triton in the serving environment and check that it can run cmrt's models.

    Raises:
        MissingDependencyError: the environment lacks PyTriton or cmrt, or has numpy ≥ 2.
    """
    py = serve_python(python)
    if not py.exists():
        raise ConfigError(f"serving Python {py} does not exist: pass --python or set ${SERVE_PYTHON_ENV}")
    try:
        out = subprocess.run([str(py), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise ConfigError(f"could not run the serving Python {py} ({exc})") from None
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    _check_environment(py, facts)
    root = Path(facts["pytriton"]) / "tritonserver"
    install = TritonInstall(root=root, libs=root.parent.parent / "nvidia_pytriton.libs", python=py,
                            python_version=facts["version"], libdir=Path(facts["libdir"]))
    for path in (install.server, install.stub, install.libs):
        if not path.exists():
            raise MissingDependencyError(f"{path} is missing from PyTriton's wheel in {py}'s environment "
                                         f"(Python {facts['version']}): reinstall `pip install 'cmrt[serve]'`")
    return install


#: Where ``make serve-env`` builds the serving environment, in a cmrt checkout.
SERVE_VENV = Path(__file__).resolve().parents[2] / ".venv-serve" / "bin" / "python"


def serving_fix() -> str:
    """How to get a serving environment (the tail of the messages of a missing or unfit one)."""
    if SERVE_VENV.exists():
        return f"pass --python {SERVE_VENV} (the environment `make serve-env` built) or set ${SERVE_PYTHON_ENV} to it"
    return (f"run `make serve-env` in the cmrt checkout (it builds .venv-serve: numpy<2, PyTriton and this cmrt) and "
            f"pass --python .venv-serve/bin/python or set ${SERVE_PYTHON_ENV}; without a checkout, make a separate "
            "environment with `pip install 'cmrt[serve]' 'numpy<2'` (not cmrt's own: it needs numpy 2)")


def _check_environment(py: Path, facts: dict) -> None:
    if facts["pytriton"] is None:
        raise MissingDependencyError(f"serving needs PyTriton's tritonserver, which {py}'s environment lacks: "
                                     f"{serving_fix()}")
    if not facts["cmrt"]:
        raise MissingDependencyError(f"Triton's Python backend runs cmrt, which {py}'s environment lacks: "
                                     f"{serving_fix()}")
    numpy = facts["numpy"] or "0"
    if int(numpy.split(".")[0]) >= 2:
        raise MissingDependencyError(f"{py}'s environment has numpy {numpy}, and Triton's Python backend stub "
                                     f"returns empty outputs with numpy 2: {serving_fix()}")


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _parent_death_signal():
    """Linux: a function for the child (between fork and exec) that has the kernel send it SIGTERM
    when the process that started it dies, so a killed test run or CLI leaves no server behind.
    Resolved here, in the parent: the child only makes the call. None elsewhere."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A local ``tritonserver`` on a model repository; a context manager that stops it on exit.

    Args:
        repository: a model repository (``cmrt triton`` writes one).
        python: the serving environment's interpreter (None: ``$CMRT_SERVE_PYTHON``, else this one).
        http_port, grpc_port, metrics_port: ports (None: free ports chosen now).
        host: the address the three endpoints bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
        models: load only these models (Triton's explicit model control); None loads the whole repository.
        log_file: where the server's output goes (None: a file in its temporary work folder).
        exit_timeout_s: Triton's budget for stopping (open connections, in-flight requests, unloading).
    """

    def __init__(self, repository: str | os.PathLike, *, python: str | os.PathLike | None = None,
                 http_port: int | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
                 host: str = DEFAULT_HOST, models: Sequence[str] | None = None, log_file: str | os.PathLike | None = None,
                 exit_timeout_s: int = EXIT_TIMEOUT_S) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ConfigError(f"model repository {self.repository} does not exist: write one with `cmrt triton`")
        self.install = find_triton(python)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = (p or free_port(host) for p in
                                                             (http_port, grpc_port, metrics_port))
        self.models, self.exit_timeout_s = list(models) if models else None, exit_timeout_s
        self._work = Path(tempfile.mkdtemp(prefix="cmrt-triton-"))
        self.log_file = Path(log_file) if log_file else self._work / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self.stop_seconds: float | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        shm_prefix = f"cmrt{os.getpid()}_{secrets.token_hex(4)}_"  # servers side by side keep apart in /dev/shm
        cmd = [str(self.install.server), f"--model-repository={self.repository}",
               f"--backend-directory={self._backends()}", f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", f"--exit-timeout-secs={self.exit_timeout_s}", "--strict-readiness=true"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return cmd

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "TritonServer":
        """Start the server and wait until it and its models are ready.

        Raises:
            ServerError: it exited, or was not ready within ``timeout_s`` (then it is stopped); the
                message holds the end of its log.
        """
        if self.process is not None:
            return self
        log = open(self.log_file, "ab")
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.install.environment(),
                                            start_new_session=True, preexec_fn=_parent_death_signal())
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                tail = self.log_tail()
                self._cleanup()
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting: {tail}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"tritonserver was not ready within {timeout_s:.0f} s: {tail}")
            time.sleep(POLL_S)
        return self

    def ready(self) -> bool:
        """Whether the server answers ``/v2/health/ready`` (all its models loaded)."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        assert self.process is not None, "start() first"
        return self.process.wait()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server as Ctrl-C does (SIGINT: it unloads its models and exits), killing it
        after ``timeout_s`` (None: its exit budget and 5 s); its exit code (0: clean).
        ``stop_seconds`` records how long it took."""
        timeout_s = self.exit_timeout_s + STOP_GRACE_S if timeout_s is None else timeout_s
        if self.process is None:
            self._cleanup()
            return None
        if self.process.poll() is None:
            t0 = time.monotonic()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.stop_seconds = time.monotonic() - t0
        self._cleanup()
        return self.process.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """What went wrong, from the server's log: its error lines (each cut to its first line),
        else its last lines; joined with ' | '."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(summarize_log(text, lines))

    def _backends(self) -> Path:
        """A backend folder holding PyTriton's Python backend with the stub for the serving Python."""
        python = self._work / "backends" / "python"
        if not python.exists():
            python.mkdir(parents=True)
            for name in _BACKEND_FILES:
                (python / name).symlink_to(self.install.root / "backends" / "python" / name)
            (python / _STUB).symlink_to(self.install.stub)
        return python.parent

    def _cleanup(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
