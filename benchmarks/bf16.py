"""Reduced precision on the CPU (the timed callables ``diffusers-bf16``, ``openvino-bf16`` and
``openvino-f32`` live in ``benchmarks.backends``): the machine's BF16 GEMM rate beside its FP32 one
(the roofline in BF16's own terms), and each reduced-precision result's PSNR against its own FP32
computation on the same inputs and noise.

    python -m benchmarks.bf16 [--n 2048] [--quality decoder-reduced:256:2:1 ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from benchmarks.backends import Call, Prepared


def gemm_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The best FP32 and BF16 ``torch.mm`` rates of this CPU in GFLOP/s (2·n³ per product)."""
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g) for _ in range(2))
    out = {}
    for name, (x, y) in {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}.items():
        torch.mm(x, y)
        best = min(_seconds(lambda: torch.mm(x, y), time) for _ in range(repeats))
        out[name] = round(2.0 * n ** 3 / best / 1e9, 1)
    return out


def _seconds(fn, time) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quality(p: Prepared, pairs: dict[str, tuple[Call, Call]]) -> dict[str, float]:
    """name → PSNR (dB, images in [-1, 1]) of a reduced-precision call against its FP32 twin on the
    same inputs and seeded noise."""
    from cmrt.parity import psnr

    out = {}
    for name, (reduced, fp32) in pairs.items():
        out[name] = round(psnr(_numpy(reduced()), _numpy(fp32())), 1)
    return out


def _numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)


def case_quality(model_key: str, resolution: int, steps: int, batch: int, cache) -> dict[str, float]:
    """The PSNRs of one case: OpenVINO BF16 against cmrt's ONNX Runtime FP32 (same seeded noise),
    diffusers under BF16 autocast against diffusers in FP32 (same generator)."""
    from benchmarks.backends import diffusers_bf16, diffusers_own, onnxruntime_cpu, openvino_bf16
    from benchmarks.cases import MODELS, Case, prepare, weights_digest

    model = MODELS[model_key].load()
    prepared = prepare(model, weights_digest(model), Case(model_key, resolution, steps, batch), cache,
                       ["onnxruntime-cpu"], gpu=False)
    return quality(prepared, {"openvino-bf16 vs onnxruntime-cpu": (openvino_bf16(prepared), onnxruntime_cpu(prepared)),
                              "diffusers-bf16 vs diffusers": (diffusers_bf16(prepared), diffusers_own(prepared))})


def main() -> int:
    from pathlib import Path

    from benchmarks.cases import DEFAULT_CACHE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="GEMM size")
    p.add_argument("--quality", metavar="MODEL:RES:STEPS:BATCH", action="append", default=[],
                   help="also the PSNRs of a case, e.g. decoder-reduced:256:2:1")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = p.parse_args()
    out: dict[str, Any] = {"gemm_n": a.n, "gemm_gflop_per_s": gemm_rates(a.n)}
    for spec in a.quality:
        key, res, steps, batch = spec.split(":")
        out[spec] = case_quality(key, int(res), int(steps), int(batch), a.cache)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
