"""Measure ONNX Runtime's thread spinning when work is interleaved (``session.force_spinning_stop``).

The demo's pipeline in one process: the bundled digits ``cmrt.Sampler`` (2 steps, batch 16) then
the bundled ``cmrt.Decoder`` (1 step, 64 digits' latents), and a PyTorch workload (the digits UNet in
eager mode, as a Stable Diffusion UNet runs before ``decode``) then the decoder. Each pair is timed
alternately, with ONNX Runtime's default (idle workers keep spinning after a run) and with cmrt's
default (spinning stops when a run ends); each call alone is timed too.

    python benchmarks/interleaved.py [--rounds 30] [--cache ~/.cache/cmrt/bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import measure
from benchmarks.cases import DEFAULT_CACHE


def _bundles(cache: Path):
    from cmrt.exporter.api import export
    from cmrt.models.load import DEFAULT_DECODER, DEFAULT_MODEL

    out = {}
    for name, src, steps in (("sampler", DEFAULT_MODEL, 2), ("decoder", DEFAULT_DECODER, 1)):
        path = cache / f"interleaved-{name}"
        out[name] = path if (path / "cmrt.json").is_file() else export(src, out=path, steps=steps, overwrite=True).path
    return out


def _runners(bundles: dict, stop: bool):
    """A Sampler and a Decoder whose sessions stop spinning after a run, or not (ORT's default)."""
    import cmrt.runtime.backends as B
    from cmrt.runtime.decoder import Decoder
    from cmrt.runtime.sampler import Sampler

    original = B.session_options

    def options(threads=None):
        so = original(threads)
        so.add_session_config_entry("session.force_spinning_stop", "1" if stop else "0")
        return so

    B.session_options = options
    try:
        return Sampler(bundles["sampler"], backend="onnxruntime-cpu"), Decoder(bundles["decoder"], backend="onnxruntime-cpu")
    finally:
        B.session_options = original


def _torch_unet() -> Callable[[], Any]:
    import torch

    from cmrt.models.load import DEFAULT_MODEL
    from cmrt.models.sources import load_model

    unet = load_model(DEFAULT_MODEL).unet.eval()
    x, t = torch.randn(16, 1, 16, 16), torch.full((16,), 0.5)
    labels = torch.arange(16) % 10

    def call():
        with torch.inference_mode():
            return unet(x, t, labels)
    return call


def _median_pair(first: Callable, second: Callable, rounds: int) -> tuple[float, float]:
    a, b = [], []
    for _ in range(3):
        first(), second()
    for _ in range(rounds):
        a.append(measure.host_time(first))
        b.append(measure.host_time(second))
    return float(np.median(a)), float(np.median(b))


def run(rounds: int, cache: Path) -> list[dict]:
    bundles = _bundles(cache)
    latents = np.random.default_rng(0).standard_normal((64, 4, 2, 2)).astype(np.float32)
    torch_step = _torch_unet()
    rows = []
    for stop in (False, True):
        sampler, decoder = _runners(bundles, stop)
        sample = lambda: sampler.sample(16, seed=0)  # noqa: E731
        decode = lambda: decoder.decode(latents, seed=0)  # noqa: E731
        alone = [measure.time_callable(f, warmup=3, repeats=rounds).median_ms for f in (sample, decode, torch_step)]
        s_d = _median_pair(sample, decode, rounds)
        t_d = _median_pair(torch_step, decode, rounds)
        rows.append({"force_spinning_stop": stop, "sample_alone_ms": alone[0], "decode_alone_ms": alone[1],
                     "torch_alone_ms": alone[2], "sample_then_decode_ms": s_d, "torch_then_decode_ms": t_d})
        del sampler, decoder
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = p.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    print(f"# {measure.environment()['machine']}; medians of {a.rounds} calls (ms)")
    print("| spinning after a run | sampler alone | decoder alone | torch UNet alone | sampler, decoder alternating | torch UNet, decoder alternating |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in run(a.rounds, a.cache):
        label = "stops (cmrt)" if r["force_spinning_stop"] else "continues (ORT default)"
        s, d = r["sample_then_decode_ms"]
        t, d2 = r["torch_then_decode_ms"]
        print(f"| {label} | {r['sample_alone_ms']:.2f} | {r['decode_alone_ms']:.2f} | {r['torch_alone_ms']:.2f} "
              f"| {s:.2f} + {d:.2f} | {t:.2f} + {d2:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
