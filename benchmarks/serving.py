"""Serving behind Triton: images/s and p50/p99 latency of the reduced decoder at 256² and
the bundled digits sampler behind a real Triton server (PyTriton's tritonserver, cmrt's Python-backend
models, gRPC clients), at 1, 4 and 16 concurrent clients, with and without dynamic batching, against
calling ``cmrt.Decoder``/``cmrt.Sampler`` in this process.

Every client sends batch-1 requests back to back (its own gRPC connection and thread); a cell ends when
every client has sent its requests, and its images/s are all images over the cell's wall time. The
in-process rows call the runner at batch 1, 4 and 16 (the decoder: at most 8, its ``max_batch_size`` here:
a merged batch of 16 decodes at 256² holds several GB of activations per process, and the server and
this process both hold one); each opens a fresh runner, so no ONNX Runtime arena outlives its cell.
The two targets are measured in paired rounds,
so that a slow minute on the shared machine slows both sides of a ratio:

* overhead: one Triton decode and one in-process decode per turn, alternating, same latents and
  seed; the ratio is the median of the per-round ratios of Triton to in-process latency.
* batching: a round of 16 clients on the dynamically batched sampler (its mean merged batch read from
  Triton's statistics) then in-process ``Sampler.sample`` calls at that merged batch size.

    python -m benchmarks.serving [--rounds 7] [--json out.json] [--markdown out.md]

Needs the serving environment (``make serve-env``: ``$CMRT_SERVE_PYTHON`` or ``.venv-serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import measure
from benchmarks.cases import DEFAULT_CACHE, MODELS, cached_bundle, weights_digest

DECODER_SIDE = 256
LATENT_SIDE = DECODER_SIDE // 8
CLIENTS = (1, 4, 16)
MAX_BATCH = {"decoder": 8, "digits": 16}
QUEUE_DELAY_US = 2000
CLIENT_TIMEOUT_S = 600.0
# requests per client in a cell, by model and client count (one 256² decode takes 1-6 s here, by load)
REQUESTS = {"decoder": {1: 5, 4: 2, 16: 1}, "digits": {1: 200, 4: 100, 16: 40}}
# in-process calls per cell, by model and batch
IN_PROCESS_CALLS = {"decoder": {1: 5, 4: 2, 16: 1}, "digits": {1: 200, 4: 50, 16: 15}}
WARM_CLIENTS = {"decoder": 4, "digits": 16}  # concurrent warm-up requests on the batched models
WARMUP = 1
BATCHING_REQUESTS = 25  # per client, in each batching round


@dataclass
class Model:
    """One served model: its name, its bundle, and how a seeded batch-1 request looks."""

    key: str  # "decoder" or "digits"
    bundle: Path
    inputs: Callable[[int], dict[str, np.ndarray]]  # seed → Triton inputs (batch 1)

    def open(self) -> Any:
        """A fresh in-process runner (ONNX Runtime CPU, as the server's models)."""
        import cmrt

        runner = cmrt.Decoder if self.key == "decoder" else cmrt.Sampler
        return runner(self.bundle, backend="onnxruntime-cpu")

    def call(self, runner: Any, batch: int, seed: int) -> np.ndarray:
        if self.key == "decoder":
            return runner.decode(_latents(batch, seed), seed=seed)
        return runner.sample(batch, class_labels=np.arange(batch) % 10, seed=seed)


def _latents(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, LATENT_SIDE, LATENT_SIDE)).astype(np.float32)


def _triton_inputs(key: str) -> Callable[[int], dict[str, np.ndarray]]:
    def make(seed: int) -> dict[str, np.ndarray]:
        s = np.full((1, 1), seed, dtype=np.int64)
        if key == "decoder":
            return {"latents": _latents(1, seed), "seed": s}
        return {"class_labels": np.array([[seed % 10]], dtype=np.int64), "seed": s}
    return make


# --- bundles and the server ------------------------------------------------------------
def export_bundles(cache: Path) -> dict[str, Path]:
    """The reduced decoder (2 steps) and the bundled digits model (2 steps), exported once into ``cache``."""
    from cmrt.exporter.api import resolve_schedule

    out = {}
    for key, model_key in (("decoder", "decoder-reduced"), ("digits", "digits")):
        model = MODELS[model_key].load()
        resolved = resolve_schedule(model.spec, 2)
        out[key] = cached_bundle(model, weights_digest(model), cache, resolved.sigmas or resolved.timesteps).path
    return out


def write_repo(bundles: dict[str, Path], work: Path) -> Path:
    """One repository: ``decoder``/``digits`` with dynamic batching, ``*_nobatch`` without."""
    from cmrt.serve.repository import RepositoryOptions, write_repository

    repo = work / "models"
    repo.mkdir()
    for key, path in bundles.items():
        for name, dynamic in ((key, True), (f"{key}_nobatch", False)):
            shutil.copytree(path, work / "bundles" / name, copy_function=os.link)
            options = RepositoryOptions(max_batch=MAX_BATCH[key], max_queue_delay_us=QUEUE_DELAY_US, plain=False,
                                        dynamic_batching=dynamic, backend="onnxruntime-cpu")
            write_repository([work / "bundles" / name], work / f"repo-{name}", options=options)
            os.replace(work / f"repo-{name}" / name, repo / name)
    return repo


def _client(server):
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(server.grpc_url)


def infer(client, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One gRPC request with ``inputs`` (strings as BYTES); its ``images``."""
    import tritonclient.grpc as grpc

    dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(object): "BYTES"}
    req = []
    for name, a in inputs.items():
        i = grpc.InferInput(name, list(a.shape), dtypes[a.dtype])
        i.set_data_from_numpy(a)
        req.append(i)
    return client.infer(model, req, client_timeout=CLIENT_TIMEOUT_S).as_numpy("images")


def batch_stats(server, model: str) -> dict[int, int]:
    """Triton's count of executions per batch size for ``model``."""
    c = _client(server)
    try:
        stats = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        c.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def _mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    runs = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
    return sum(b * n for b, n in runs.items()) / max(1, sum(runs.values()))


# --- cells -----------------------------------------------------------------------------
def triton_cell(server, model: Model, name: str, clients: int, requests: int) -> dict:
    """``clients`` threads, each with its own connection, sending ``requests`` batch-1 requests."""
    latencies: list[float] = []
    lock, errors = threading.Lock(), []
    conns = [_client(server) for _ in range(clients)]
    for c in conns:  # connect outside the timed window
        c.is_server_live()
    start = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            for k in range(requests):
                t0 = time.perf_counter()
                infer(conns[i], name, model.inputs(1000 * i + k))
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1e3)
        except Exception as exc:  # reported with the cell, the run goes on
            errors.append(repr(exc))

    before = batch_stats(server, name)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return _row(latencies, wall, images=len(latencies)) | {
        "mean_merged_batch": round(_mean_batch(before, batch_stats(server, name)), 2), "errors": errors}


def in_process_cell(model: Model, batch: int, calls: int, runner: Any = None) -> dict:
    """``calls`` in-process calls at ``batch`` after warm-up (a fresh runner unless given, released
    after); latency is per call."""
    own = runner is None
    runner = model.open() if own else runner
    for w in range(WARMUP):
        model.call(runner, batch, seed=w)
    latencies = []
    t0 = time.perf_counter()
    for k in range(calls):
        latencies.append(measure.host_time(lambda: model.call(runner, batch, seed=k)))
    row = _row(latencies, time.perf_counter() - t0, images=batch * calls)
    if own:
        del runner
        measure.release_memory()
    return row


def _row(latencies_ms: list[float], wall_s: float, images: int) -> dict:
    lat = np.asarray(latencies_ms) if latencies_ms else np.asarray([np.nan])
    return {"images": images, "wall_s": round(wall_s, 3), "images_per_s": round(images / wall_s, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "load_1m": measure.load_average()}


# --- paired targets --------------------------------------------------------------------
def paired_overhead(server, model: Model, rounds: int) -> dict:
    """Triton vs in-process decode latency at one client, alternating turns on the same inputs."""
    conn, runner = _client(server), model.open()
    ratios, tri, inp = [], [], []
    try:
        for r in range(rounds):
            seed = 500 + r
            inputs = model.inputs(seed)
            t_tri = lambda: infer(conn, "decoder", inputs)  # noqa: E731
            t_inp = lambda: runner.decode(inputs["latents"], seed=seed)  # noqa: E731
            first, second = (t_tri, t_inp) if r % 2 == 0 else (t_inp, t_tri)  # alternate who goes first
            a, b = measure.host_time(first), measure.host_time(second)
            ms_tri, ms_inp = (a, b) if r % 2 == 0 else (b, a)
            tri.append(ms_tri)
            inp.append(ms_inp)
            ratios.append(ms_tri / ms_inp)
    finally:
        conn.close()
    return {"triton_ms": tri, "in_process_ms": inp, "ratio_median": float(np.median(ratios)),
            "ratio_range": [float(min(ratios)), float(max(ratios))], "overhead_pct": 100 * (float(np.median(ratios)) - 1)}


def paired_batching(server, model: Model, rounds: int) -> dict:
    """16 clients on the dynamically batched sampler vs in-process calls at its merged batch size."""
    out, runner = [], model.open()
    for _ in range(rounds):
        cell = triton_cell(server, model, "digits", max(CLIENTS), BATCHING_REQUESTS)
        merged = max(1, round(cell["mean_merged_batch"]))
        calls = max(3, cell["images"] // merged)
        ref = in_process_cell(model, merged, calls, runner)
        out.append({"triton_images_per_s": cell["images_per_s"], "mean_merged_batch": cell["mean_merged_batch"],
                    "in_process_batch": merged, "in_process_images_per_s": ref["images_per_s"],
                    "ratio": cell["images_per_s"] / ref["images_per_s"]})
    ratios = [o["ratio"] for o in out]
    return {"rounds": out, "ratio_median": float(np.median(ratios)), "ratio_range": [min(ratios), max(ratios)]}


# --- the run ---------------------------------------------------------------------------
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


def run(cache: Path, rounds: int, python: str | None, log=print) -> dict:
    from cmrt.serve.server import TritonServer, summarize_log

    env = measure.environment()
    env["uptime_start"] = uptime()
    log(f"machine: {env['machine']}; {env['uptime_start']}")
    bundles = export_bundles(cache)
    models = {key: Model(key, bundles[key], _triton_inputs(key)) for key in ("decoder", "digits")}
    cells: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cmrt-bench-serving-") as tmp:
        repo = write_repo(bundles, Path(tmp))
        with TritonServer(repo, python=python, log_file=Path(tmp) / "tritonserver.log") as server:
            for m in models.values():  # warm every served model, the batched ones with merged batches
                triton_cell(server, m, f"{m.key}_nobatch", 1, 1)
                triton_cell(server, m, m.key, WARM_CLIENTS[m.key], 1)
            for key, m in models.items():
                for clients in CLIENTS:
                    batch = min(clients, MAX_BATCH[key])
                    cells.append({"model": key, "how": "in-process", "clients": clients, "batch": batch}
                                 | in_process_cell(m, batch, IN_PROCESS_CALLS[key][clients]))
                    log(_line(cells[-1]))
                    for name, how in ((f"{key}_nobatch", "triton"), (key, "triton + dynamic batching")):
                        cells.append({"model": key, "how": how, "clients": clients, "batch": 1}
                                     | triton_cell(server, m, name, clients, REQUESTS[key][clients]))
                        log(_line(cells[-1]))
            overhead = paired_overhead(server, models["decoder"], rounds)
            log(f"overhead at 1 client, reduced decoder {DECODER_SIDE}²: Triton/in-process latency "
                f"{overhead['ratio_median']:.3f} (rounds {overhead['ratio_range'][0]:.3f}–{overhead['ratio_range'][1]:.3f})")
            batching = paired_batching(server, models["digits"], max(3, rounds // 2))
            log(f"dynamic batching at 16 clients, digits: Triton / in-process at the merged batch "
                f"{batching['ratio_median']:.3f} (rounds {batching['ratio_range'][0]:.3f}–{batching['ratio_range'][1]:.3f})")
            env["stop_exit_code"] = server.stop()
        env["stop_seconds"] = server.stop_seconds
        env["server_log_summary"] = summarize_log((Path(tmp) / "tritonserver.log").read_text(errors="replace"))
        log(f"server stopped in {server.stop_seconds:.1f} s, exit code {env['stop_exit_code']}: "
            + " | ".join(env["server_log_summary"]))
    env["uptime_end"] = uptime()
    log(env["uptime_end"])
    return {"environment": env, "decoder_side": DECODER_SIDE, "max_batch": MAX_BATCH,
            "max_queue_delay_us": QUEUE_DELAY_US, "cells": cells, "overhead": overhead, "batching": batching}


def _line(c: dict) -> str:
    return (f"{c['model']:8s} {c['how']:26s} clients {c['clients']:2d}: {c['images_per_s']:8.2f} img/s, "
            f"p50 {c['p50_ms']:8.1f} ms, p99 {c['p99_ms']:8.1f} ms" +
            (f", merged batch {c['mean_merged_batch']}" if "mean_merged_batch" in c else "") +
            (f", ERRORS {len(c['errors'])}" if c.get("errors") else "") + f" (load {c['load_1m']})")


def markdown(result: dict) -> str:
    rows = ["| model | how | clients | images/s | p50 ms | p99 ms | mean merged batch | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in result["cells"]:
        how = c["how"] + (f" (batch {c['batch']} per call)" if c["how"] == "in-process" else "")
        rows.append(f"| {c['model']} | {how} | {c['clients']} | {c['images_per_s']:.2f} | {c['p50_ms']:.1f} | "
                    f"{c['p99_ms']:.1f} | {c.get('mean_merged_batch', '')} | {c['load_1m']} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7, help="paired rounds of the overhead target (half for batching)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--python", default=None, help="serving Python (default: $CMRT_SERVE_PYTHON, else .venv-serve)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    a = p.parse_args()
    python = a.python or os.environ.get("CMRT_SERVE_PYTHON") or os.path.abspath(".venv-serve/bin/python")
    a.cache.mkdir(parents=True, exist_ok=True)
    result = run(a.cache, a.rounds, python)
    print(markdown(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    if a.markdown:
        a.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
