"""A decoder's INT8 calibration latents: real training images encoded by the decoder's own encoder.

``cmrt export --int8`` quantizes a decoder on the latents it will decode (``cmrt.exporter.int8``):
those of the images its encoder was trained with, never the held-out ones the quality figures
are measured on (photos: random crops of ``photos.TRAIN_PHOTOS``; digits: the training split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

#: Images encoded (the calibration's calls × batch: ``cmrt.exporter.int8``), their side in pixels
#: (photos: crops; digits: their own 32×32), and the seed of the draw.
IMAGES = 128
CROP = 64
SEED = 1


def encoder_path(source: str | Path, name: str) -> Path:
    """The encoder a decoder checkpoint names (its training config), found as given or beside it."""
    p = Path(name)
    return p if p.is_file() else Path(source).parent / p.name


def decoder_latents(source: str | Path, *, images: int = IMAGES, crop: int = CROP, seed: int = SEED) -> np.ndarray:
    """Unscaled SD-convention latents (N, 4, h, w) of ``images`` training images of the decoder
    checkpoint ``source`` (a cmrt training run or bundled decoder), encoded by its encoder.

    Raises:
        ConfigError: the source records no training config or encoder (e.g. a diffusers or OpenAI
            decoder): pass latents yourself (``cmrt export --int8-latents FILE.npy``).
    """
    from ..errors import SourceError
    from .autoencoder import encode, load_encoder
    from .runs import load_run

    try:
        run = load_run(source)
    except SourceError:
        raise ConfigError(f"--int8 on {source}: it records no encoder to draw calibration latents with; pass "
                          "real encoded images' latents (N, 4, h, w) with --int8-latents FILE.npy") from None
    cfg = run.config
    if run.spec is None or run.spec.kind != "decoder" or not cfg.encoder:
        raise ConfigError(f"--int8 on {source}: not a decoder with an encoder; pass --int8-latents FILE.npy")
    g = torch.Generator().manual_seed(seed)
    if cfg.data == "photos":
        x = photo_crops(images, crop, g)
    elif cfg.data == "digits-color":
        from .data import load_digits_color

        pool = load_digits_color("train", copies=1).x
        x = pool[torch.randperm(len(pool), generator=g)[:images]]
    else:
        raise ConfigError(f"--int8 on {source}: its training data {cfg.data!r} has no calibration images here; "
                          "pass --int8-latents FILE.npy")
    return encode(load_encoder(encoder_path(source, cfg.encoder)), x).numpy()


def photo_crops(images: int, crop: int, g: torch.Generator) -> torch.Tensor:
    """``images`` random ``crop``×``crop`` crops of the training photographs, in [-1, 1]."""
    from .photos import load_photos

    crops = load_photos(crop)
    return crops.take(crops.draw(images, g))


def photo_latents(*, images: int = IMAGES, crop: int = CROP, seed: int = SEED) -> np.ndarray:
    """Training photographs' crops encoded by the natural-image autoencoder: real SD-convention
    latents for calibrating a decoder that has no encoder of its own (benchmarks' random-weight
    decoders)."""
    from .autoencoder import PHOTOS_AUTOENCODER, encode, load_encoder

    x = photo_crops(images, crop, torch.Generator().manual_seed(seed))
    return encode(load_encoder(PHOTOS_AUTOENCODER), x).numpy()


__all__ = ["decoder_latents", "photo_latents"]
