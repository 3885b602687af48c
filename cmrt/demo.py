"""``make demo``: export the bundled default model at 2 steps, sample a grid, print parity and latency;
decode held-out images with the bundled decoder; the bundled text-to-image LCM from prompts (1/2/4
steps, VAE and consistency decoder, parity against diffusers); edit held-out digits zero-shot
(inpainting, 4×4 → 16×16 super-resolution, stroke-guided generation, and colorization with the RGB model).

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
DECODER_DEMO_STEPS = 1  # the small bundled decoder is better at 1 step (docs/training.md)
PHOTO_DEMO = "astronaut"  # a held-out photograph (never seen in training), decoded at full resolution
PHOTO_DEMO_STEPS = 1
PHOTO_TILE = 32  # latent pixels: 256² output tiles
#: Editing: the evaluations per task (docs/editing.md: inpainting beats the class-mean fill from 16 on).
EDIT_DEMO_STEPS = {"inpaint": 16, "superres": 4, "stroke": 4, "colorize": 4}
EDIT_DEMO_N = 8
SUPERRES_FACTOR = 4  # 4×4 → 16×16
#: Crude paintings (8×8, '#' = ink), each with the class it is meant to be; drawn at the model's size.
PAINTINGS = {
    0: ("..####..", ".##..##.", ".##..##.", ".##..##.", ".##..##.", ".##..##.", ".##..##.", "..####.."),
    1: ("...##...", "..###...", "...##...", "...##...", "...##...", "...##...", "...##...", "..####.."),
    4: (".##..##.", ".##..##.", ".##..##.", ".######.", ".....##.", ".....##.", ".....##.", ".....##."),
    7: (".######.", ".....##.", "....##..", "...##...", "...##...", "..##....", "..##....", "..##...."),
}


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
    from .runtime.sampler import Sampler

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
    from .runtime.sampler import Sampler

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
        with Sampler(bundle.path) as chosen:  # the default: OpenVINO BF16 where its parity passed and it was faster
            print(f"backend: {chosen.backend.name} [{chosen.backend.precision}] (the default on this CPU)")
            images = chosen.sample(DEMO_BATCH, class_labels=labels, seed=DEMO_SEED)
        save_grid(images, a.out / "samples.png", cols=4, scale=4)
        print(f"wrote {a.out / 'samples.png'} ({DEMO_BATCH} images, labels {labels}, seed {DEMO_SEED})")
        print(f"\nlatency, batch {DEMO_BATCH}, median of {REPEATS} (this machine):")
        rows = latency_table(bundle, DEMO_BATCH)
        base = rows[0][1]
        for name, ms in rows:
            print(f"  {name:<32} {ms:8.2f} ms   {base / ms:5.2f}x")
        decoder_demo(a.out)
        text_to_image_demo(a.out)
        editing_demo(a.out)
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
    from .runtime.decoder import Decoder
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
    save_grid(np.concatenate([held_out, decoded]), out / "decoded.png", cols=n, scale=4,
              row_labels=["inputs", "decoded"])
    quality = psnr(decoded, held_out)
    print(f"\ndecoder: {n} held-out images → latents {latents.shape} → {bundle.path} ({bundle.manifest.steps} step)"
          f" → {out / 'decoded.png'} (top: inputs, bottom: decoded), PSNR {quality:.1f} dB")


#: The text-to-image grid: prompts × seeds, at each number of LCM steps (docs/training.md).
T2I_PROMPTS = ("a red 7 on a blue background", "three in yellow on black", "the number 0 , white on green",
               "a blue background with a green 4")
T2I_SEEDS = (0, 1)
T2I_STEPS = (1, 2, 4)
T2I_GUIDANCE = 8.0


def text_to_image_demo(out: Path) -> None:
    """The bundled text-to-image LCM (trained here on captioned digits) exported at 1, 2 and 4 steps
    and at 2 steps with the consistency decoder trained on its VAE's latents; a grid of prompts ×
    seeds per export, the images' difference from diffusers' own pipeline, each stage's latency."""
    import numpy as np

    from .exporter.pipeline import export_pipeline
    from .images import save_grid
    from .models.load import T2I_DECODER, T2I_MODEL
    from .parity import psnr

    if not T2I_MODEL.is_dir():
        print(f"\ntext to image: skipped ({T2I_MODEL.name} is not installed)")
        return
    print(f"\ntext to image: {T2I_MODEL.name} (LCM distilled here from a captioned-digits teacher), guidance "
          f"{T2I_GUIDANCE}, prompts {list(T2I_PROMPTS)}")
    rows, names = [], []
    runs = [(k, None) for k in T2I_STEPS] + [(2, T2I_DECODER)]
    for k, decoder in runs:
        t0 = time.perf_counter()
        tag = f"{k}step" + ("-cd" if decoder else "")
        bundle = export_pipeline(T2I_MODEL, out=out / f"lcm-{tag}", steps=k, decoder=decoder, overwrite=True)
        images, ref, stage_ms, backends = _t2i_run(bundle, k, decoder is not None)
        how = "consistency decoder" if decoder else "VAE"
        parity = ("the decoder stage checked at export" if ref is None
                  else f"vs diffusers' LatentConsistencyModelPipeline (FP32) max abs {np.abs(images - ref).max():.2g}, "
                       f"{psnr(images, ref):.1f} dB")
        print(f"  {k} step(s), {how}: {backends}")
        print(f"  {k} step(s), {how}: exported in {time.perf_counter() - t0:.0f} s; {parity}; stage latency "
              f"(batch {len(T2I_PROMPTS)}): "
              + ", ".join(f"{n} {ms:.1f} ms" for n, ms in stage_ms.items()))
        rows += list(np.split(images, len(T2I_SEEDS)))
        names += [f"{k} step{'s' * (k > 1)}, {'CD' if decoder else 'VAE'}, seed {s}" for s in T2I_SEEDS]
    save_grid(np.concatenate(rows), out / "text_to_image.png", cols=len(T2I_PROMPTS), scale=2, row_labels=names)
    print(f"  wrote {out / 'text_to_image.png'} (columns: the prompts; rows: steps, decoder, seed)")


def _t2i_run(bundle: Path, steps: int, consistency_decoder: bool):
    """cmrt.Pipeline's images for every seed, diffusers' for the same seeds, and each stage's median ms."""
    import numpy as np
    import torch
    from diffusers import LatentConsistencyModelPipeline

    from .models.load import T2I_MODEL
    from .runtime.pipeline import Pipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(T2I_MODEL), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    ours, ref = [], []
    with Pipeline(bundle) as runner:
        backends = runner.describe()
        for seed in T2I_SEEDS:
            ours.append(runner.generate(list(T2I_PROMPTS), guidance_scale=T2I_GUIDANCE, seed=seed))
            if consistency_decoder:  # a cmrt decoder: no diffusers twin (its bundle was checked at export)
                continue
            with torch.no_grad():
                img = pipe(list(T2I_PROMPTS), num_inference_steps=steps, guidance_scale=T2I_GUIDANCE, output_type="pt",
                           generator=torch.Generator().manual_seed(seed)).images
            ref.append(img.numpy() * 2 - 1)
        stage_ms = {}
        for name, stage in runner._stages.items():
            with np.load(bundle / "parity" / f"{name}.npz", allow_pickle=False) as data:
                feeds = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
            stage_ms[name] = median_ms(lambda: stage.run(feeds), repeats=5, warmup=1)
    return np.concatenate(ours), np.concatenate(ref) if ref else None, stage_ms, backends


def photo_demo(out: Path) -> None:
    """A held-out photograph → the photo encoder's latents → the natural-image consistency decoder,
    decoded whole, in 256² tiles with the whole canvas's GroupNorm statistics (``norm="canvas"``, the
    default of a ``tile_stats`` bundle) and in 256² tiles each with its own (``norm="tile"``), same
    seed → a PNG of original | untiled | tiled (canvas) | tiled (per tile)."""
    import numpy as np

    from .exporter.api import export
    from .images import save_grid
    from .models.load import PHOTOS_DECODER
    from .parity import psnr
    from .runtime.decoder import Decoder
    from .train.autoencoder import PHOTOS_AUTOENCODER, encode, load_encoder
    from .train.photos import photo

    bundle = export(PHOTOS_DECODER, out=out / "photos-bundle", steps=PHOTO_DEMO_STEPS, overwrite=True,
                    tile_stats=True)
    x = photo(PHOTO_DEMO)[None]
    latents = encode(load_encoder(PHOTOS_AUTOENCODER), x).numpy()
    with Decoder(bundle.path) as decoder:
        t0 = time.perf_counter()
        whole = decoder.decode(latents, seed=DEMO_SEED)
        t1 = time.perf_counter()
        canvas = decoder.decode(latents, seed=DEMO_SEED, tile=PHOTO_TILE)
        t2 = time.perf_counter()
        own = decoder.decode(latents, seed=DEMO_SEED, tile=PHOTO_TILE, norm="tile")
        t3 = time.perf_counter()
    original = x.numpy()
    save_grid(np.concatenate([original, whole, canvas, own]), out / "photo.png", cols=4,
              labels=["original", "untiled", f"{8 * PHOTO_TILE}px tiles, canvas statistics",
                      f"{8 * PHOTO_TILE}px tiles, per-tile statistics"])
    print(f"\nphoto decoder: held-out '{PHOTO_DEMO}' {original.shape[2]}×{original.shape[3]} → latents "
          f"{latents.shape} → {bundle.path} ({bundle.manifest.steps} step) → {out / 'photo.png'} "
          f"(original | untiled | {8 * PHOTO_TILE}² tiles, canvas statistics | per-tile statistics)")
    print(f"  PSNR vs original: untiled {psnr(whole, original):.1f} dB; tiled vs untiled: canvas statistics "
          f"{psnr(canvas, whole):.1f} dB, per-tile statistics {psnr(own, whole):.1f} dB; "
          f"{1e3 * (t1 - t0):.0f} ms untiled, {1e3 * (t2 - t1):.0f} / {1e3 * (t3 - t2):.0f} ms tiled")


def editing_demo(out: Path) -> None:
    """Zero-shot editing graphs of the bundled digits model on held-out digits, and colorization
    with the RGB digits model when it is installed."""
    from .train.eval_edit import box_masks, held_out_digits

    x, y = held_out_digits(16)
    pick = [int(i) for i in _one_per_class(y.numpy(), EDIT_DEMO_N)]
    x, y = x[pick], y[pick]
    print("\nediting (zero-shot, the bundled digits model; held-out digits, true labels):")
    mask = box_masks(len(x), 16, DEMO_SEED)
    result = _edit(out, "inpaint", x * (1 - mask), y, mask=mask)
    _save_rows(out / "inpaint.png", [x, x * (1 - mask), *result], "originals, masked inputs (box = 25%), inpainted",
               ["originals", "masked", "inpainted"])
    low = _block_mean(x)
    result = _edit(out, "superres", low, y, factor=SUPERRES_FACTOR)
    _save_rows(out / "superres.png", [_nearest(low), *result, x], "4×4 inputs, super-resolved 16×16, originals",
               ["4x4 inputs", "super-resolved", "originals"])
    paint, labels = _paintings(16)
    results = _edit(out, "stroke", paint, labels, seeds=(DEMO_SEED, DEMO_SEED + 1))
    _save_rows(out / "stroke.png", [paint, *results], f"crude paintings of {list(PAINTINGS)}, results (2 seeds)",
               ["paintings", f"seed {DEMO_SEED}", f"seed {DEMO_SEED + 1}"])
    colorize_demo(out)


def colorize_demo(out: Path) -> None:
    """Colorize held-out gray digits with the RGB digits model (when its asset is installed)."""
    from .editing import luma
    from .models.load import COLOR_MODEL as asset
    from .train.data import load_digits_color

    if not asset.is_file():
        print(f"  colorize: skipped ({asset.name} is not installed)")
        return
    test = load_digits_color("test", copies=1, size=16)
    pick = [int(i) for i in _one_per_class(test.labels.numpy(), EDIT_DEMO_N)]
    x, y = test.x[pick], test.labels[pick]
    gray = luma(x)
    results = _edit(out, "colorize", gray, y, source=asset, seeds=(DEMO_SEED, DEMO_SEED + 1))
    _save_rows(out / "colorize.png", [gray.expand_as(x), *results, x],
               "gray inputs, colorized (2 seeds), true colours",
               ["gray", f"seed {DEMO_SEED}", f"seed {DEMO_SEED + 1}", "true colours"])


def _edit(out: Path, task: str, image, labels, *, mask=None, factor=None, source=None,
          seeds: tuple[int, ...] = (DEMO_SEED,)) -> list:
    """Export the task's editor bundle into ``out`` and run it once per seed; the edited images."""
    from .exporter.api import export
    from .runtime.editor import Editor

    bundle = export(source, out=out / f"{task}-bundle", task=task, factor=factor, steps=EDIT_DEMO_STEPS[task],
                    overwrite=True)
    s = bundle.manifest.schedule
    print(f"  exported {bundle.path} ({task}, {s.steps} evaluations, σ {s.sigmas[0]:.3g} → {s.sigmas[-1]:.3g}), "
          f"parity max abs {bundle.manifest.parity['onnxruntime-cpu/fp32'].outputs[0].max_abs:.2g}")
    with Editor(bundle.path) as editor:
        return [editor.edit(image, mask=mask, class_labels=labels, seed=seed) for seed in seeds]


def _save_rows(path: Path, rows: list, what: str, names: list[str]) -> None:
    """One grid row per entry of ``rows``, each labelled with its entry of ``names``."""
    import numpy as np

    from .images import save_grid

    rows = [np.asarray(r) for r in rows]
    save_grid(np.concatenate(rows), path, cols=len(rows[0]), scale=4, row_labels=names)
    print(f"  wrote {path} (rows: {what})")


def _one_per_class(labels, n: int) -> list[int]:
    """Indices of the first digit of each class, classes 0, 1, ..., n − 1."""
    return [next(i for i, v in enumerate(labels) if v == k) for k in range(n)]


def _block_mean(x):
    from .editing import block_mean

    return block_mean(x, SUPERRES_FACTOR)


def _nearest(low):
    from .editing import upsample_nearest

    return upsample_nearest(low, SUPERRES_FACTOR)


def _paintings(size: int):
    """The crude paintings as (N, 1, size, size) images in [-1, 1] and their labels."""
    import numpy as np
    import torch

    art = np.array([[[1.0 if ch == "#" else 0.0 for ch in row] for row in rows] for rows in PAINTINGS.values()])
    from .train.data import upscale_digits

    return upscale_digits(art.astype(np.float32), size), torch.tensor(list(PAINTINGS))


def _report_lines(rep) -> list[str]:
    return [f"parity {rep.backend} [{rep.precision}] vs PyTorch: " + ", ".join(
        f"{o.name} max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, "
        f"PSNR {'inf' if o.psnr is None else round(o.psnr, 1)} dB" for o in rep.outputs)
        + ("  PASS" if rep.passed else "  FAIL")]


if __name__ == "__main__":
    sys.exit(main())
