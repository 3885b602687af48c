"""How fast one backend runs against another on the same inputs (``SpeedRecord``): the figure a
CPU backend's record carries, which the default choice reads (``openvino.fastest_passed``: a
reduced-precision backend is the default only where it was measured faster than ONNX Runtime FP32),
and which the INT8 model must reach to ship (``cmrt.exporter.int8``).

Two ways, each after one untimed call of each backend (first-call allocations, lazy kernels):

- ``paired``: both open, ``ROUNDS`` rounds of one call of each in turn; the speed-up is the median
  of the per-round ratios, so a slow spell of the machine hits both sides of a round (measured on
  the 2-core VM: one-after-the-other timings of the same INT8 decoder gave 0.73× and 1.23× in two
  runs, paired rounds 1.11–1.20× per round). Bundles and INT8 models.
- ``against``: one after the other, never both open, ``CALLS`` calls each, medians: a pipeline
  stage's UNet open twice would raise the export's peak memory by a whole copy of its weights.

It is a measurement on the machine that wrote it, at the inputs it names (a bundle's stored
parity inputs, a decoder's latents tiled to 256² pixels: ``decoder_inputs``; for INT8 what
``cmrt.exporter.int8.timing_inputs`` draws), not a benchmark: ``cmrt bench`` measures paired rounds
at the sizes users run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from ..bundle import SpeedRecord

#: Timed calls of each backend one after the other (``against``), after one untimed call.
CALLS = 3
#: Paired rounds (``paired``), after one untimed call of each.
ROUNDS = 5
ORDER = "one after the other, each after one untimed call"
#: Decoders are timed on one image at this latent size (256² pixels): their stored parity inputs
#: (4×6 latents) are too small to say which backend is faster at the sizes decoded (the reduced
#: decoder: OpenVINO BF16 1.09–1.14× ONNX Runtime FP32 there, 1.78× at 256²).
DECODER_LATENTS = 32
PAIRED = "paired rounds, after one untimed call of each"


def _seconds(backend: Any, feeds: dict[str, np.ndarray]) -> float:
    """Wall time of one ``backend.run_all(feeds)``."""
    t0 = time.perf_counter()
    backend.run_all(feeds)
    return time.perf_counter() - t0


def describe_inputs(feeds: dict[str, np.ndarray], what: str) -> str:
    """``what`` with each input's name and shape, e.g. "stored parity inputs: noise_0 (2, 3, 8, 8)"."""
    shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in feeds.items())
    return f"{what}: {shapes}"


def decoder_inputs(manifest: Any, latents: np.ndarray, size: int = DECODER_LATENTS, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """A decoder's feeds for one image at ``size``² latents (``DECODER_LATENTS``: 256² pixels), the
    first of ``latents`` tiled to that size, its noise drawn at it, in the graph's input order."""
    first = np.asarray(latents, dtype=np.float32)[:1]
    reps = (1, 1, -(-size // first.shape[2]), -(-size // first.shape[3]))
    feeds = {"latents": np.ascontiguousarray(np.tile(first, reps)[:, :, :size, :size])}
    g = np.random.default_rng(seed)
    side = manifest.latent.upscale * size
    for name in manifest.noise_names:
        feeds[name] = g.standard_normal((1, manifest.image.channels, side, side), dtype=np.float32)
    return {k: feeds[k] for k in manifest.input_names}


def timing_feeds(manifest: Any, feeds: dict[str, np.ndarray], what: str, latents_what: str, seed: int = 0
                 ) -> tuple[dict[str, np.ndarray], str]:
    """What a speed record times and its description: ``feeds`` (``what``), except for a decoder,
    whose feeds are too small to rank backends at: one image of its first latents (``latents_what``)
    tiled to 256² pixels (``decoder_inputs``)."""
    if manifest.kind != "decoder":
        return feeds, what
    return decoder_inputs(manifest, feeds["latents"], seed=seed), f"{latents_what} tiled to 256² pixels"


def timed(backend: Any, feeds: dict[str, np.ndarray], calls: int = CALLS) -> float:
    """Median seconds per ``backend.run_all(feeds)`` over ``calls`` calls after one untimed call
    (the backend stays open)."""
    backend.run_all(feeds)
    return statistics.median(_seconds(backend, feeds) for _ in range(calls))


def against(seconds: float, other: str, open_other: Callable[[], Any], feeds: dict[str, np.ndarray], inputs: str,
            calls: int = CALLS) -> SpeedRecord:
    """The record of a backend that took ``seconds`` per call on ``feeds`` against ``other``, opened
    now by ``open_other()``, timed on the same feeds and closed."""
    backend = open_other()
    try:
        other_seconds = timed(backend, feeds, calls)
    finally:
        backend.close()
    return SpeedRecord(other, round(seconds, 6), round(other_seconds, 6), round(other_seconds / seconds, 4), calls,
                       inputs, ORDER)


def paired(backend: Any, other: str, open_other: Callable[[], Any], feeds: dict[str, np.ndarray], inputs: str,
           rounds: int = ROUNDS) -> SpeedRecord:
    """The record of the open ``backend`` against ``other``, opened now by ``open_other()``: both run
    ``feeds`` once untimed, then ``rounds`` rounds of one call of each in turn; ``other`` is closed
    after (``backend`` stays open)."""
    second = open_other()
    try:
        backend.run_all(feeds)
        second.run_all(feeds)
        mine, theirs = zip(*[(_seconds(backend, feeds), _seconds(second, feeds)) for _ in range(rounds)])
    finally:
        second.close()
    ratio = statistics.median(t / m for m, t in zip(mine, theirs))
    return SpeedRecord(other, round(statistics.median(mine), 6), round(statistics.median(theirs), 6), round(ratio, 4),
                       rounds, inputs, PAIRED)


def figures(speed: SpeedRecord, digits: int = 2, more: str = "") -> str:
    """"1.82× onnxruntime-cpu (41.2 vs 75.0 ms per call)": the speed-up to ``digits`` decimals,
    ``more`` added inside the parenthesis."""
    return (f"{speed.speedup:.{digits}f}× {speed.against} ({speed.seconds * 1e3:.1f} vs "
            f"{speed.against_seconds * 1e3:.1f} ms per call{more})")


def speed_line(speed: SpeedRecord | None) -> str:
    """", 1.82× onnxruntime-cpu (41.2 vs 75.0 ms per call)" for a record line; "" without a measurement."""
    return "" if speed is None else ", " + figures(speed)


__all__ = ["CALLS", "ROUNDS", "DECODER_LATENTS", "decoder_inputs", "timing_feeds", "timed", "against", "paired", "describe_inputs",
           "figures", "speed_line"]
