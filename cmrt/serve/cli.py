"""``cmrt triton`` (bundles → a Triton model repository) and ``cmrt serve`` (a local Triton server on
bundles). Each command is an ``add_args``/``run`` pair."""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path

from .repository import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, RepositoryOptions

TRITON_EXAMPLES = """examples:
  cmrt triton digits decoder --out models                     one model per bundle, named after its folder
  cmrt triton decoder --out models --max-batch 16 --instances 2 --max-queue-delay-us 5000
  tritonserver --model-repository models                      in NVIDIA's container (or: cmrt serve ...)
"""

SERVE_EXAMPLES = """examples:
  cmrt serve digits decoder                                   HTTP, gRPC and metrics on free ports, this machine only
  cmrt serve digits --http-port 8000 --grpc-port 8001 --metrics-port 8002 --host 0.0.0.0
"""


def _batching_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="bundle folders (cmrt bundles or pipeline bundles); each model is named after its folder")
    p.add_argument("--max-batch", type=int, default=None,
                   help=f"Triton's max_batch_size: most images per execution, requests merged "
                        f"(default: {DEFAULT_MAX_BATCH}, within a TensorRT engine's profile)")
    p.add_argument("--instances", type=int, default=1, help="model instances (backend processes) per model (default: 1)")
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help=f"how long the dynamic batcher may hold a request to merge it, in µs "
                        f"(default: {DEFAULT_QUEUE_DELAY_US})")
    p.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                   help="one request per execution (no dynamic_batching block)")
    p.add_argument("--backend", default=None,
                   help="cmrt backend inside the models: onnxruntime, onnxruntime-cpu, onnxruntime-cuda, tensorrt "
                        "(default: cmrt's choice where the server runs)")


def _options(a: argparse.Namespace, plain: bool) -> RepositoryOptions:
    return RepositoryOptions(max_batch=a.max_batch, instances=a.instances, max_queue_delay_us=a.max_queue_delay_us,
                             dynamic_batching=a.dynamic_batching, plain=plain, backend=a.backend)


def triton_args(p: argparse.ArgumentParser) -> None:
    """Options of ``cmrt triton``."""
    p.description = (p.description or "") + "\n\n" + TRITON_EXAMPLES
    _batching_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="REPO", help="model repository folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-plain", dest="plain", action="store_false",
                   help="skip the onnxruntime_onnx / tensorrt_plan models (bring-your-own-noise)")


def triton_run(a: argparse.Namespace) -> int:
    """Write the repository; print its models."""
    from .repository import write_repository

    entries = write_repository(a.bundles, a.out, options=_options(a, a.plain), overwrite=a.overwrite)
    print(f"wrote {a.out}: " + ", ".join(f"{e.name} ({e.platform}, max batch {e.max_batch})" for e in entries))
    return 0


def serve_args(p: argparse.ArgumentParser) -> None:
    """Options of ``cmrt serve``."""
    p.description = (p.description or "") + "\n\n" + SERVE_EXAMPLES
    _batching_args(p)
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default: a free port)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: a free port)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default: a free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--python", type=Path, default=None,
                   help="interpreter of the environment that runs the models: cmrt, PyTriton and numpy<2, e.g. "
                        ".venv-serve/bin/python, which `make serve-env` builds (default: $CMRT_SERVE_PYTHON, else "
                        "this one)")
    p.add_argument("--log-file", type=Path, default=None, help="server log (default: a temporary file)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: The signals that stop ``cmrt serve``: Ctrl-C, and what ``docker stop``, Kubernetes and ``kill`` send.
#: SIGINT is set explicitly: a shell starts a background job with SIGINT ignored, and Python then
#: leaves it ignored (``cmrt serve ... &`` would not stop on ``kill -INT``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_run(a: argparse.Namespace) -> int:
    """Write the repository to a temporary folder, start Triton, wait for Ctrl-C (SIGINT) or
    SIGTERM, stop it."""
    previous = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS}
    try:
        return _serve(a)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve(a: argparse.Namespace) -> int:
    from ..errors import ServerError
    from .repository import write_repository
    from .server import TritonServer

    with tempfile.TemporaryDirectory(prefix="cmrt-serve-") as tmp:
        repo = Path(tmp) / "models"
        entries = write_repository(a.bundles, repo, options=_options(a, plain=False))
        server = TritonServer(repo, python=a.python, http_port=a.http_port, grpc_port=a.grpc_port,
                              metrics_port=a.metrics_port, host=a.host, log_file=a.log_file)
        try:
            print(f"starting Triton on {', '.join(e.name for e in entries)} ...", flush=True)
            server.start()
            print(f"serving {', '.join(e.name for e in entries)}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
                  f"metrics {server.metrics_url}; Ctrl-C (or SIGTERM) stops", flush=True)
            code = server.wait()
            raise ServerError(f"tritonserver exited with code {code}: {server.log_tail()}")
        except KeyboardInterrupt:
            server.stop()
            print(f"stopped in {server.stop_seconds:.1f} s", flush=True)
            return 0
        finally:
            server.stop()
