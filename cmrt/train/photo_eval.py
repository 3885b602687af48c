"""OpenAI's claim about its consistency decoder, measured on the natural-image decoder: against the
autoencoder's own MSE decoder, on whole held-out photographs, is it as faithful (PSNR) and
sharper on text, faces and straight lines?

Sharpness is the mean absolute pixel gradient of a region relative to the original's (1 = as
sharp as the original; an MSE decoder, which predicts the conditional mean, lands below 1). Both
decoders read the same latents (the photo encoder's), the consistency decoder with seeded noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import schedules as S
from ..parity import psnr_per_image
from ..samplers import decoder_sample
from .sharpness import sharpness


@dataclass(frozen=True)
class Region:
    """A named box of a held-out photo, in pixels (multiples of 8).

    Attributes:
        kind: what the region holds ("text", "face", "lines", "texture").
        photo: the held-out photo (``photos.HELD_OUT``).
        box: (top, bottom, left, right); None = the whole photo.
    """

    kind: str
    photo: str
    box: tuple[int, int, int, int] | None = None

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return x
        t, b, l, r = self.box
        return x[..., t:b, l:r]


#: The regions the comparison reports (checked by eye against the photos; see docs/photos_*.png).
REGIONS = (Region("text", "text"), Region("face", "astronaut", (32, 200, 144, 312)),
           Region("lines", "rocket", (0, 424, 0, 96)), Region("texture", "brick"))
CROP_SCALE = 2  # the side-by-side PNGs are upscaled ×2 (nearest) so that pixels show


def sharpness_ratio(x: torch.Tensor, reference: torch.Tensor) -> float:
    """``sharpness`` of ``x`` over that of ``reference`` (one image each, (1, C, H, W))."""
    return float(sharpness(x).mean() / sharpness(reference).mean())


def decode_photo(denoiser, latents: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """The consistency decoder on one photo's latents (1, 4, h, w), noise from ``seed``; clamped."""
    shape = (1, 3, S.DECODER_UPSCALE * latents.shape[2], S.DECODER_UPSCALE * latents.shape[3])
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(shape, generator=g) for _ in range(steps)]
    with torch.no_grad():
        return decoder_sample(denoiser, latents, S.decoder_timesteps(steps), noise).clamp(-1, 1)


def reconstructions(denoiser, encoder_path: Path, steps: list[int], seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """photo → {"original", "mse", "cd<k>"} images (1, 3, H, W) for every held-out photo."""
    from .autoencoder import decode_pixels, encode, load_encoder, load_pixel_decoder
    from .photos import held_out_images

    encoder, pixel = load_encoder(encoder_path), load_pixel_decoder(encoder_path)
    out = {}
    for name, x in held_out_images().items():
        z = encode(encoder, x[None])
        row = {"original": x[None], "mse": decode_pixels(pixel, z)}
        for k in steps:
            row[f"cd{k}"] = decode_photo(denoiser, z, k, seed)
        out[name] = row
    return out


def score(images: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    """Per photo (whole) and per region: PSNR against the original and sharpness relative to it."""
    rows = []
    for name, row in images.items():
        for method, x in row.items():
            if method != "original":
                rows.append({"photo": name, "region": "whole", "decoder": method,
                             "psnr_db": float(psnr_per_image(x, row["original"])[0]),
                             "sharpness_ratio": sharpness_ratio(x, row["original"])})
    for region in REGIONS:
        row = images[region.photo]
        ref = region.crop(row["original"])
        for method, x in row.items():
            if method != "original":
                rows.append({"photo": region.photo, "region": region.kind, "decoder": method,
                             "psnr_db": float(psnr_per_image(region.crop(x), ref)[0]),
                             "sharpness_ratio": sharpness_ratio(region.crop(x), ref)})
    return rows


def save_crops(images: dict[str, dict[str, torch.Tensor]], folder: Path, stem: str = "photos") -> list[Path]:
    """One PNG per region: original | MSE decoder | consistency decoder at each step count, side by side."""
    from ..images import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for region in REGIONS:
        row = images[region.photo]
        crops = torch.cat([region.crop(x) for x in row.values()])
        path = folder / f"{stem}_{region.kind}.png"
        save_grid(crops, path, cols=len(row), scale=CROP_SCALE, pad=4)
        paths.append(path)
    return paths


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: region, then PSNR and sharpness of every decoder."""
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    head = "| photo / region | " + " | ".join(f"{d} PSNR | {d} sharpness" for d in decoders) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(decoders))]
    keys = list(dict.fromkeys((r["photo"], r["region"]) for r in rows))
    for photo, region in keys:
        cells = {r["decoder"]: r for r in rows if r["photo"] == photo and r["region"] == region}
        lines.append(f"| {photo} / {region} | " + " | ".join(
            f"{cells[d]['psnr_db']:.2f} | {cells[d]['sharpness_ratio']:.2f}" for d in decoders) + " |")
    return lines


def mean_over_seeds(seed_rows: list[list[dict]]) -> list[dict]:
    """Average PSNR and sharpness of the same rows scored with several noise seeds."""
    out = []
    for group in zip(*seed_rows):
        out.append(group[0] | {k: float(np.mean([g[k] for g in group])) for k in ("psnr_db", "sharpness_ratio")})
    return out
