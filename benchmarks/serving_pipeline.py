"""A pipeline bundle behind Triton: the latency of one seeded request through a real Triton server
(PyTriton's tritonserver, cmrt's Python-backend model running ``cmrt.Pipeline``, a gRPC client)
against ``cmrt.Pipeline.generate`` in this process, and what merging concurrent requests buys.

Paired rounds, so that a slow minute on the shared machine slows both sides of a ratio:

* overhead: per round and size, one Triton request and one in-process ``generate`` (same prompt,
  seed, guidance scale, size), who goes first alternating; the ratio is the median of the
  per-round ratios of Triton to in-process latency, and the difference is Triton's cost per request.
* merging: per round, ``CLIENTS`` concurrent one-prompt requests of one size through Triton (merged
  into one ``generate`` call when the dynamic batcher hands them over together), against the same
  prompts as ``CLIENTS`` in-process calls one after the other, and as one in-process call of
  ``CLIENTS`` prompts.

    python -m benchmarks.serving_pipeline --bundle PIPELINE_BUNDLE [--sizes 64,256] [--rounds 9] [--json out.json]

Needs the serving environment (``make serve-env``: ``$CMRT_SERVE_PYTHON`` or ``.venv-serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import measure
from benchmarks.paired import SETTLE_S
from benchmarks.serving import batch_stats, infer, uptime

PROMPT = "a photo of a red cat on a mat"
SEED = 7
GUIDANCE = 4.0
CLIENTS = 4
QUEUE_DELAY_US = 5000


def request(prompts: list[str], size: int, seed: int) -> dict[str, np.ndarray]:
    b = len(prompts)
    return {"prompt": np.array([[p.encode()] for p in prompts], dtype=object),
            "seed": np.full((b, 1), seed, np.int64), "guidance_scale": np.full((b, 1), GUIDANCE, np.float32),
            "height": np.full((b, 1), size, np.int64), "width": np.full((b, 1), size, np.int64)}


def _settled(call) -> float:
    """Milliseconds of ``call`` after a pause (threads the previous call left spinning go idle)."""
    time.sleep(SETTLE_S)
    return measure.host_time(call)


def paired_overhead(client, model: str, pipe: Any, size: int, rounds: int) -> dict:
    """Triton vs in-process latency of one seeded one-prompt request, alternating who goes first."""
    tri, inp = [], []
    for r in range(rounds):
        inputs = request([PROMPT], size, SEED + r)
        t_tri = lambda: infer(client, model, inputs)  # noqa: E731
        t_inp = lambda: pipe.generate(PROMPT, seed=SEED + r, guidance_scale=GUIDANCE, height=size, width=size)  # noqa: E731
        first, second = (t_tri, t_inp) if r % 2 == 0 else (t_inp, t_tri)
        a = _settled(first)
        b = _settled(second)
        tri.append(a if r % 2 == 0 else b)
        inp.append(b if r % 2 == 0 else a)
    ratios = np.asarray(tri) / np.asarray(inp)
    return {"size": size, "triton_ms": tri, "in_process_ms": inp, "triton_median_ms": float(np.median(tri)),
            "in_process_median_ms": float(np.median(inp)), "ratio_median": float(np.median(ratios)),
            "ratio_range": [float(ratios.min()), float(ratios.max())],
            "extra_ms_median": float(np.median(np.asarray(tri) - np.asarray(inp))), "load_1m": measure.load_average()}


def _concurrent(server, model: str, size: int, seed: int) -> None:
    """``CLIENTS`` one-prompt requests at once, each on its own gRPC connection."""
    import tritonclient.grpc as grpc

    clients = [grpc.InferenceServerClient(server.grpc_url) for _ in range(CLIENTS)]
    errors: list[Exception] = []

    def run(i: int) -> None:
        try:
            infer(clients[i], model, request([f"{PROMPT} {i}"], size, seed + i))
        except Exception as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    if errors:
        raise errors[0]


def paired_merging(server, model: str, pipe: Any, size: int, rounds: int) -> dict:
    """``CLIENTS`` concurrent Triton requests vs the same prompts in process, one by one and as one call."""
    prompts = [f"{PROMPT} {i}" for i in range(CLIENTS)]
    before = batch_stats(server, model)
    rows = []
    for r in range(rounds):
        seed = 1000 + 10 * r
        calls = {
            "triton_concurrent": lambda: _concurrent(server, model, size, seed),
            "in_process_one_by_one": lambda: [pipe.generate(p, seed=seed + i, guidance_scale=GUIDANCE, height=size,
                                                            width=size) for i, p in enumerate(prompts)],
            "in_process_one_call": lambda: pipe.generate(prompts, seed=seed, guidance_scale=GUIDANCE, height=size,
                                                         width=size),
        }
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        rows.append({name: _settled(calls[name]) for name in order})
    after = batch_stats(server, model)
    executions = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    return {"size": size, "clients": CLIENTS, "rounds": rows, "median_ms": med, "executions_by_batch": executions,
            "triton_over_one_by_one": float(np.median([row["triton_concurrent"] / row["in_process_one_by_one"]
                                                       for row in rows])),
            "load_1m": measure.load_average()}


def run(bundle: Path, sizes: list[int], rounds: int, python: str | None, log=print) -> dict:
    from cmrt.runtime.pipeline import Pipeline
    from cmrt.serve.repository import RepositoryOptions, write_repository
    from cmrt.serve.server import TritonServer
    import tritonclient.grpc as grpc

    env = measure.environment() | {"uptime_start": uptime()}
    log(f"machine: {env['machine']}; {env['uptime_start']}")
    result: dict[str, Any] = {"bundle": str(bundle), "environment": env, "overhead": [], "merging": []}
    with tempfile.TemporaryDirectory(prefix="cmrt-bench-pipeline-") as tmp:
        repo = Path(tmp) / "models"
        (entry,) = write_repository([bundle], repo, options=RepositoryOptions(max_queue_delay_us=QUEUE_DELAY_US))
        with TritonServer(repo, python=python, log_file=Path(tmp) / "tritonserver.log") as server, \
                Pipeline(bundle, device="cpu") as pipe:
            client = grpc.InferenceServerClient(server.grpc_url)
            try:
                for size in sizes:  # warm both sides at every size
                    infer(client, entry.name, request([PROMPT], size, 0))
                    pipe.generate(PROMPT, seed=0, height=size, width=size)
                for size in sizes:
                    o = paired_overhead(client, entry.name, pipe, size, rounds)
                    result["overhead"].append(o)
                    log(f"{size}²: Triton {o['triton_median_ms']:.1f} ms, in-process {o['in_process_median_ms']:.1f} ms, "
                        f"ratio {o['ratio_median']:.3f} ({o['ratio_range'][0]:.3f}–{o['ratio_range'][1]:.3f}), "
                        f"+{o['extra_ms_median']:.1f} ms (load {o['load_1m']})")
                for size in sizes:
                    m = paired_merging(server, entry.name, pipe, size, max(3, rounds // 2))
                    result["merging"].append(m)
                    log(f"{size}², {CLIENTS} requests: " + ", ".join(f"{k} {v:.1f} ms" for k, v in m["median_ms"].items())
                        + f"; executions by batch {m['executions_by_batch']} (load {m['load_1m']})")
            finally:
                client.close()
    env["uptime_end"] = uptime()
    log(env["uptime_end"])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="a pipeline bundle (cmrt export --model FOLDER)")
    p.add_argument("--sizes", default="64,256", help="image sides, comma-separated (default: 64,256)")
    p.add_argument("--rounds", type=int, default=9, help="paired rounds of the overhead target (half for merging)")
    p.add_argument("--python", default=None, help="serving Python (default: $CMRT_SERVE_PYTHON, else .venv-serve)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    python = a.python or os.environ.get("CMRT_SERVE_PYTHON") or os.path.abspath(".venv-serve/bin/python")
    result = run(a.bundle, [int(s) for s in a.sizes.split(",")], a.rounds, python)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
