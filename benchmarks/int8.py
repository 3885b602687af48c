"""INT8's image quality on the trained models (the figures behind ``cmrt.parity``'s int8 tier).

Exports the bundled digits consistency model and the natural-image decoder with ``--int8``
(``cmrt.exporter.int8``), then scores each at INT8 (``backend="openvino-int8"``) against FP32
(ONNX Runtime) on the same seeds: the digits model's class accuracy (bundled classifier) and
Fréchet distances (PCA and classifier features, ``cmrt.train.eval``), the decoder's PSNR to the
held-out original photos; and INT8's PSNR / max abs against FP32 on the same inputs.

    python -m benchmarks.int8 [--out DIR] [--n-per-class 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: What the INT8 model is compared against (same graph, same seeds): ONNX Runtime FP32.
FP32 = "onnxruntime"
INT8 = "openvino-int8"


def export_both(out: Path) -> dict[str, Path]:
    """The digits CM and the photos decoder exported with ``--int8`` (the CLI's path: the decoder is
    calibrated on its encoder's training images), shipped on parity alone (``--int8-min-speedup 0``:
    this scores the INT8 model's quality, whatever its speed)."""
    from cmrt.cli import main
    from cmrt.models.load import DEFAULT_MODEL, PHOTOS_DECODER

    paths = {"digits": out / "digits-int8", "photos": out / "photos-int8"}
    for key, source in (("digits", DEFAULT_MODEL), ("photos", PHOTOS_DECODER)):
        if not (paths[key] / "cmrt.json").is_file():
            rc = main(["export", "--model", str(source), "--out", str(paths[key]), "--overwrite", "--int8",
                       "--int8-min-speedup", "0"])
            if rc:
                raise SystemExit(rc)
    return paths


def _psnr_maxabs(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from cmrt.parity import psnr

    return {"psnr_db_vs_fp32": round(psnr(a, b), 2), "max_abs_vs_fp32": round(float(np.abs(a - b).max()), 4)}


def digits_quality(bundle: Path, n_per_class: int, seed: int) -> dict:
    """Accuracy and Fréchet distances of the digits CM at FP32 and INT8 (same labels and seed)."""
    import cmrt
    from cmrt.train.eval import balanced_real_sets, load_classifier, pool_to_8x8, score_digits

    classifier = load_classifier()
    real_a, _, labels = balanced_real_sets(n_per_class, seed)
    out: dict = {"n": len(labels)}
    images = {}
    for name in (FP32, INT8):
        with cmrt.Sampler(bundle, backend=name) as s:
            images[name] = np.asarray(s.sample(len(labels), class_labels=labels, seed=seed))
        sc = score_digits(pool_to_8x8(images[name]), labels, real_a, labels, classifier)
        out[name] = {"accuracy": round(sc.accuracy, 4), "fd_pca": round(sc.fd_pca, 3),
                     "fd_classifier": round(sc.fd_classifier, 4)}
    out[INT8] |= _psnr_maxabs(images[INT8], images[FP32])
    return out


def photos_quality(bundle: Path, seed: int) -> dict:
    """PSNR to the held-out original photos at FP32 and INT8 (same latents and seed)."""
    import cmrt
    from cmrt.parity import psnr
    from cmrt.train.autoencoder import PHOTOS_AUTOENCODER, encode, load_encoder
    from cmrt.train.photos import held_out_images

    encoder = load_encoder(PHOTOS_AUTOENCODER)
    rows = {}
    with cmrt.Decoder(bundle, backend=FP32) as d32, cmrt.Decoder(bundle, backend=INT8) as d8:
        for name, x in held_out_images().items():
            z = encode(encoder, x[None]).numpy()
            original = x[None].numpy()
            f32, i8 = (np.clip(np.asarray(d.decode(z, seed=seed)), -1, 1) for d in (d32, d8))
            rows[name] = {"psnr_to_original_fp32": round(psnr(f32, original), 2),
                          "psnr_to_original_int8": round(psnr(i8, original), 2)} | _psnr_maxabs(i8, f32)
    return rows


def main() -> int:
    from cmrt.bundle import Bundle
    from benchmarks import measure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("int8-quality"))
    p.add_argument("--n-per-class", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    load = measure.load_average()
    paths = export_both(a.out)
    result: dict = {"load_1m_start": load}
    for key, path in paths.items():
        m = Bundle.open(path).manifest
        result[key] = {"shipped": m.int8.shipped, "parity": m.int8.parity.outputs[0].__dict__,
                       "quantize_s": m.int8.seconds, "quantized_ops": m.int8.quantized_ops}
    if result["digits"]["shipped"]:
        result["digits"]["quality"] = digits_quality(paths["digits"], a.n_per_class, a.seed)
    if result["photos"]["shipped"]:
        result["photos"]["quality"] = photos_quality(paths["photos"], a.seed)
    result["load_1m_end"], result["seconds"] = measure.load_average(), round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
