"""Parity: compare a backend's outputs with the PyTorch source's, against one table of tolerances."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ParityError

IMAGE_PEAK_TO_PEAK = 2.0  # images live in [-1, 1]


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one precision: max abs error, and a PSNR floor (dB) when set. With
    ``relative``, each error is divided by max(1, |expected|) first (for values not bounded like
    images, e.g. GroupNorm statistics): an absolute bound up to 1, a relative one above. With
    ``range_scaled``, the expected values' range is mapped onto the images' [-1, 1] first (errors
    divided by half the range, PSNR over the range): an image tier for unbounded features."""

    max_abs: float
    min_psnr: float | None = None
    relative: bool = False
    range_scaled: bool = False


#: The one place the tolerances live. fp32: exported graph vs PyTorch; fp16: FP16 graph or
#: engine vs the FP32 PyTorch source, on images in [-1, 1].
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4),
    "fp16": Tolerance(max_abs=2e-2, min_psnr=40.0),
    # BF16 compute of the FP32 graph (OpenVINO's precision hint, ``cmrt.runtime.openvino``): FP16's
    # class in BF16's units — the same PSNR floor on the images, the max-abs bound scaled by the
    # ratio of unit roundoffs (2^-8 / 2^-11 = 8). Measured (benchmarks/RESULTS.md, "Reduced precision on the CPU"): the
    # official-depth decoder's parity inputs at max abs 0.026 and 59.8 dB, past FP16's 2e-2 bound
    # at 20 dB above its PSNR floor.
    "bf16": Tolerance(max_abs=0.16, min_psnr=40.0),
    # INT8 post-training static quantization (NNCF, ``cmrt.exporter.int8``) run on OpenVINO: chosen
    # from image quality, not from FP16's class (benchmarks/RESULTS.md, "INT8 where it holds").
    # Measured at INT8 vs FP32 on the trained models, same seeds: the digits consistency model (300
    # samples) at 47.7 dB from FP32 (max abs 0.18) kept its class accuracy (97.0% → 97.7%) and
    # Fréchet distances (PCA features 35.39 → 35.52, classifier features 2.652 → 2.652); the
    # natural-image decoder on the four held-out photos at 37.4–39.5 dB from FP32 (max abs
    # 0.21–0.45) lost 0.04–0.09 dB of its 20.4–24.2 dB PSNR to the originals. Their parity inputs:
    # 44.9 and 35.5 dB. The floor, 32 dB, sits below all of these: an INT8 error of MSE ≤
    # 4·10^-3.2 = 2.5e-3 costs a decoder of ~23 dB fidelity (MSE 2e-2) at most ~0.5 dB when
    # independent of its own error (that estimate gives 0.15 dB at the "text" photo's 37.4 dB,
    # measured 0.09). Max abs ≤ 1.0 (half the image range) catches gross failures only: single
    # pixels moved by up to 0.45 where the photos' fidelity changed by < 0.1 dB.
    "int8": Tolerance(max_abs=1.0, min_psnr=32.0),
    # FP32 GroupNorm statistics (``cmrt.graphs.norm_stats``): means and variances of activations
    "fp32-stats": Tolerance(max_abs=1e-4, relative=True),
    # FP32 pipeline stages whose outputs are not images (``cmrt.exporter.pipeline``): text
    # embeddings and latents, unbounded like the statistics
    "fp32-features": Tolerance(max_abs=1e-4, relative=True),
    # BF16 compute of those stages (OpenVINO, ``cmrt.runtime.stages``): BF16's image tier once the
    # expected values' range is mapped onto [-1, 1]. Elementwise-relative bounds do not fit BF16
    # features: an LCM sampler's latents reach |x| ≈ 50 and BF16's error on a value near 0 is a
    # share of its neighbours' scale (tiny random LCM, 2 steps: max abs 0.89 = 2.0 % of half the
    # range, 50.2 dB over the range; its CLIP text encoder: 1.0 %, 58.9 dB).
    "bf16-features": Tolerance(max_abs=0.16, min_psnr=40.0, range_scaled=True),
    # FP16 engines of those stages (TensorRT, ``cmrt.tensorrt.stages``): FP16's image tier, range-mapped the same way
    "fp16-features": Tolerance(max_abs=2e-2, min_psnr=40.0, range_scaled=True),
}


def within(outputs, precision: str) -> bool:
    """Whether recorded comparisons (``cmrt.bundle.OutputParity``: finite, max abs, PSNR) are within
    ``precision``'s tier: a record made under one tier held to another's bar (an INT8 model's
    parity to BF16's, where it would replace BF16 as the default). Range-scaled and relative tiers
    are not comparable this way."""
    tol = tolerance_for(precision)
    if tol.relative or tol.range_scaled:
        raise ValueError(f"tier {precision!r} is relative or range-scaled: recorded figures cannot be held to it")
    return bool(outputs) and all(
        o.finite and o.max_abs is not None and o.max_abs <= tol.max_abs
        and (tol.min_psnr is None or o.psnr is None or o.psnr >= tol.min_psnr) for o in outputs)


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance for precision {precision!r}; known: {sorted(TOLERANCES)}") from None


def psnr(actual: np.ndarray, expected: np.ndarray, peak_to_peak: float = IMAGE_PEAK_TO_PEAK) -> float:
    """PSNR in dB of ``actual`` against ``expected`` (inf when identical)."""
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak_to_peak**2 / mse)


def psnr_per_image(actual, expected, peak_to_peak: float = IMAGE_PEAK_TO_PEAK) -> np.ndarray:
    """PSNR in dB of every image of a batch (axis 0); numpy arrays or torch tensors."""
    a = np.asarray(actual.detach().cpu() if hasattr(actual, "detach") else actual, dtype=np.float64)
    e = np.asarray(expected.detach().cpu() if hasattr(expected, "detach") else expected, dtype=np.float64)
    mse = ((a - e) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    return 10.0 * np.log10(peak_to_peak**2 / np.maximum(mse, 1e-12))


@dataclass(frozen=True)
class OutputResult:
    """How one output compares: errors, PSNR, whether all values are finite, and the verdict."""

    name: str
    max_abs: float
    mean_abs: float
    psnr: float
    finite: bool
    passed: bool

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        extra = "" if self.finite else " (non-finite values)"
        return (f"{self.name}: max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, "
                f"PSNR {self.psnr:.1f} dB  {verdict}{extra}")


@dataclass(frozen=True)
class ParityReport:
    """Per-output results of one backend/precision; truthy when every output passed."""

    backend: str
    precision: str
    tolerance: Tolerance
    outputs: tuple[OutputResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def lines(self) -> list[str]:
        head = (f"{self.backend} [{self.precision}] vs PyTorch (max abs ≤ {self.tolerance.max_abs:g}"
                + (f", PSNR ≥ {self.tolerance.min_psnr:g} dB" if self.tolerance.min_psnr else "") + ")")
        return [head] + ["  " + o.line() for o in self.outputs]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for o in d["outputs"]:
            o["psnr"] = None if math.isinf(o["psnr"]) else o["psnr"]
        return d

    def raise_if_failed(self) -> "ParityReport":
        if not self.passed:
            failed = "; ".join(o.line() for o in self.outputs if not o.passed) or "no outputs compared"
            raise ParityError(f"parity check failed for {self.backend} [{self.precision}]: {failed}", self)
        return self


def compare_output(name: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> OutputResult:
    if actual.shape != expected.shape:
        raise ParityError(f"output {name!r} has shape {actual.shape}, expected {expected.shape}")
    finite = bool(np.isfinite(actual).all())
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    peak_to_peak = IMAGE_PEAK_TO_PEAK
    if tol.relative:
        diff = diff / np.maximum(1.0, np.abs(expected.astype(np.float64)))
    if tol.range_scaled:
        peak_to_peak = max(float(np.ptp(expected)), np.finfo(np.float32).tiny)
        diff = diff / (peak_to_peak / IMAGE_PEAK_TO_PEAK)
    max_abs = float(diff.max()) if finite else math.inf
    mean_abs = float(diff.mean()) if finite else math.inf
    p = psnr(actual, expected, peak_to_peak) if finite else -math.inf
    passed = finite and max_abs <= tol.max_abs and (tol.min_psnr is None or p >= tol.min_psnr)
    return OutputResult(name, max_abs, mean_abs, p, finite, passed)


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], *, backend: str,
            precision: str) -> ParityReport:
    """Compare every expected output with the backend's; missing outputs fail loudly."""
    tol = tolerance_for(precision)
    missing = set(expected) - set(actual)
    if missing:
        raise ParityError(f"{backend} did not produce outputs {sorted(missing)}")
    results = tuple(compare_output(k, np.asarray(actual[k]), np.asarray(v), tol) for k, v in expected.items())
    return ParityReport(backend, precision, tol, results)
