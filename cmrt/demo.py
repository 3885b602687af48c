"""``make demo``: export the bundled default model at 2 steps, sample a grid, print parity and latency.

    python -m cmrt.demo --out demo-out
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

DEMO_STEPS = 2
DEMO_BATCH = 16
DEMO_SEED = 0
REPEATS = 20
DECODER_DEMO_STEPS = 1  # the small bundled decoder is better at 1 step (README, "Training")
PHOTO_DEMO = "astronaut"  # a held-out photograph (never seen in training), decoded at full resolution
PHOTO_DEMO_STEPS = 1
PHOTO_TILE = 32  # latent pixels: 256² output tiles


def median_ms(fn: Callable[[], object], repeats: int = REPEATS, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def latency_table(bundle, batch: int) -> list[tuple[str, float]]:
    """PyTorch eager (the unrolled module) vs the exported graph through cmrt.Sampler, same noise."""
    import torch

    from .exporter.api import build_unrolled
    from .models.sources import load_model
    from .runtime.api import Sampler

    m = bundle.manifest
    model = load_model(m.source.path)
    module = build_unrolled(model, m.schedule)
    sampler = Sampler(bundle.path)
    g = torch.Generator().manual_seed(DEMO_SEED)
    shape = (batch, m.image.channels, m.image.height, m.image.width)
    noise = [torch.randn(shape, generator=g) for _ in range(m.steps)]
    labels = torch.arange(batch) % m.num_classes if m.num_classes else None
    args = ([labels] if labels is not None else []) + noise

    def eager():
        with torch.inference_mode():
            module(*args)

    return [("PyTorch eager", median_ms(eager)),
            ("cmrt ONNX graph (onnxruntime)", median_ms(lambda: sampler.sample(class_labels=labels, noise=noise)))]


def main(argv: list[str] | None = None) -> int:
    from .errors import CmrtError
    from .exporter.api import export
    from .images import save_grid
    from .runtime.api import Sampler

    p = argparse.ArgumentParser(prog="cmrt.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    a = p.parse_args(argv)
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        bundle = export(None, out=a.out / "bundle", steps=DEMO_STEPS, overwrite=True)
        m = bundle.manifest
        print(f"exported {m.model.name} ({m.kind}, {m.steps} steps, σ {[round(s, 4) for s in m.sigmas]}) "
              f"to {bundle.path} in {time.perf_counter() - t0:.1f} s")
        if not m.model.trained:
            print("NOTE: this model is UNTRAINED (random weights): its samples are noise-like by design; "
                  "the export, parity and runtime path is real.")
        for line in (r for rep in m.parity.values() for r in _report_lines(rep)):
            print(line)
        labels = [i % (m.num_classes or 1) for i in range(DEMO_BATCH)] if m.num_classes else None
        images = Sampler(bundle.path).sample(DEMO_BATCH, class_labels=labels, seed=DEMO_SEED)
        save_grid(images, a.out / "samples.png", cols=4, scale=4)
        print(f"wrote {a.out / 'samples.png'} ({DEMO_BATCH} images, labels {labels}, seed {DEMO_SEED})")
        print(f"\nlatency, batch {DEMO_BATCH}, median of {REPEATS} (this machine):")
        rows = latency_table(bundle, DEMO_BATCH)
        base = rows[0][1]
        for name, ms in rows:
            print(f"  {name:<32} {ms:8.2f} ms   {base / ms:5.2f}x")
        decoder_demo(a.out)
        photo_demo(a.out)
        print("\nfull benchmark suites: `make bench-quick` or `cmrt bench --suite quick` (see benchmarks/RESULTS.md)")
    except CmrtError as exc:
        print(f"cmrt demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def decoder_demo(out: Path, n: int = 8) -> None:
    """Real images → the bundled encoder's latents → the bundled consistency decoder's bundle → images."""
    import numpy as np

    from .exporter.api import export
    from .images import save_grid
    from .models.load import DEFAULT_DECODER
    from .parity import psnr
    from .runtime.api import Decoder
    from .train.autoencoder import encode_file
    from .train.data import load_digits_color

    bundle = export(DEFAULT_DECODER, out=out / "decoder-bundle", steps=DECODER_DEMO_STEPS, overwrite=True)
    held_out = load_digits_color("test").x[:n].numpy()  # images the encoder and decoder never saw
    files = []
    for i, img in enumerate(held_out):
        files.append(out / f"input_{i}.png")
        save_grid(img[None], files[-1], pad=0)
    latents = np.concatenate([encode_file(f) for f in files])  # PNG → (1, 4, 4, 4) SD-convention latents
    with Decoder(bundle.path) as decoder:
        decoded = decoder.decode(latents, seed=DEMO_SEED)
    save_grid(np.concatenate([held_out, decoded]), out / "decoded.png", cols=n, scale=4)
    quality = psnr(decoded, held_out)
    print(f"\ndecoder: {n} held-out images → latents {latents.shape} → {bundle.path} ({bundle.manifest.steps} step)"
          f" → {out / 'decoded.png'} (top: inputs, bottom: decoded), PSNR {quality:.1f} dB")


def photo_demo(out: Path) -> None:
    """A held-out photograph → the photo encoder's latents → the natural-image consistency decoder,
    decoded whole and in 256² tiles (same seed) → a PNG of original | untiled | tiled."""
    import numpy as np

    from .exporter.api import export
    from .images import save_grid
    from .models.load import PHOTOS_DECODER
    from .parity import psnr
    from .runtime.api import Decoder
    from .train.autoencoder import PHOTOS_AUTOENCODER, encode, load_encoder
    from .train.photos import photo

    bundle = export(PHOTOS_DECODER, out=out / "photos-bundle", steps=PHOTO_DEMO_STEPS, overwrite=True)
    x = photo(PHOTO_DEMO)[None]
    latents = encode(load_encoder(PHOTOS_AUTOENCODER), x).numpy()
    with Decoder(bundle.path) as decoder:
        t0 = time.perf_counter()
        whole = decoder.decode(latents, seed=DEMO_SEED)
        t1 = time.perf_counter()
        tiled = decoder.decode(latents, seed=DEMO_SEED, tile=PHOTO_TILE)
        t2 = time.perf_counter()
    original = x.numpy()
    save_grid(np.concatenate([original, whole, tiled]), out / "photo.png", cols=3)
    print(f"\nphoto decoder: held-out '{PHOTO_DEMO}' {original.shape[2]}×{original.shape[3]} → latents "
          f"{latents.shape} → {bundle.path} ({bundle.manifest.steps} step) → {out / 'photo.png'} "
          f"(original | untiled | {8 * PHOTO_TILE}² tiles)")
    print(f"  PSNR vs original: untiled {psnr(whole, original):.1f} dB, tiled {psnr(tiled, original):.1f} dB; "
          f"tiled vs untiled {psnr(tiled, whole):.1f} dB; {1e3 * (t1 - t0):.0f} ms untiled, "
          f"{1e3 * (t2 - t1):.0f} ms tiled")


def _report_lines(rep) -> list[str]:
    return [f"parity {rep.backend} [{rep.precision}] vs PyTorch: " + ", ".join(
        f"{o.name} max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, "
        f"PSNR {'inf' if o.psnr is None else round(o.psnr, 1)} dB" for o in rep.outputs)
        + ("  PASS" if rep.passed else "  FAIL")]


if __name__ == "__main__":
    sys.exit(main())
