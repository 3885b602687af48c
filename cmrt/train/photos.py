"""Natural images for decoder runs: scikit-image's bundled photographs and its LFW face crops.

``--data photos`` trains on random crops of every photograph in ``TRAIN_PHOTOS`` (grey ones
replicated to RGB, each also mirrored) and a mosaic of the 200 ``lfw_subset`` faces; the photos in
``HELD_OUT`` are never seen in training and are what ``cmrt eval`` and docs/training.md's comparisons
decode, whole. Every file here ships inside scikit-image's wheel: nothing is downloaded.

Crops are aligned to the latent grid (multiples of 8 pixels), so a decoder can be trained on the
crops of latents computed once from the whole photograph, as it will meet them when it decodes a
whole image or a tile of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import schedules as S
from ..errors import ConfigError, InputError, require

#: Held out of every photo run, one per region kind docs/training.md measures (name → why).
HELD_OUT = {
    "text": "text: a photograph of printed and hand-drawn text",
    "astronaut": "a face: Eileen Collins' portrait",
    "brick": "a regular texture of straight mortar lines",
    "rocket": "straight lines: the launch tower's girders",
}
#: The training photographs (scikit-image names); ``cat`` repeats ``chelsea``, the motorcycle pair
#: is one scene from two viewpoints, the rest are synthetic, binary or too small to crop.
TRAIN_PHOTOS = ("camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                "immunohistochemistry", "moon", "page", "retina", "stereo_motorcycle", "cell")
LFW_SCALE = 2  # the 25×25 faces are upscaled ×2 (bicubic) so a face spans ~50 pixels
LFW_SIDE = 24  # each face is cropped to 24×24 before upscaling (a multiple of 8 after ×2 too)
LFW_COLS = 20
ALIGN = S.DECODER_UPSCALE


def _data_module():
    return require("skimage.data", "train", "the photos data set (scikit-image's bundled images)")


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as (3, H, W) float32 in [-1, 1], cropped to multiples of 8."""
    data = _data_module()
    fetch = getattr(data, name, None)
    if fetch is None or not callable(fetch):
        raise ConfigError(f"unknown scikit-image photo {name!r}")
    arr = fetch()
    if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
        arr = arr[0]
    return _to_rgb(np.asarray(arr))


def _to_rgb(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3|4) → (3, H', W') in [-1, 1], H' and W' cut down to multiples of 8."""
    if arr.dtype != np.uint8:
        raise InputError(f"expected a uint8 photograph, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    h, w = (arr.shape[0] // ALIGN) * ALIGN, (arr.shape[1] // ALIGN) * ALIGN
    x = torch.from_numpy(np.ascontiguousarray(arr[:h, :w])).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def lfw_mosaic() -> torch.Tensor:
    """The 200 LFW faces, each cropped to 24×24 and upscaled ×2, tiled 20 across: (3, 480, 960)."""
    faces = torch.from_numpy(np.asarray(_data_module().lfw_subset(), dtype=np.float32))[:, :LFW_SIDE, :LFW_SIDE]
    faces = F.interpolate(faces[:, None], scale_factor=LFW_SCALE, mode="bicubic", align_corners=False)
    faces = faces.clamp(0, 1) * 2.0 - 1.0
    n, side = faces.shape[0], faces.shape[-1]
    rows = n // LFW_COLS
    grid = faces[: rows * LFW_COLS, 0].reshape(rows, LFW_COLS, side, side).permute(0, 2, 1, 3)
    return grid.reshape(rows * side, LFW_COLS * side)[None].repeat(3, 1, 1).contiguous()


def training_images(mirror: bool = True) -> list[torch.Tensor]:
    """Every training photograph and the LFW mosaic, each (3, H, W); with ``mirror`` also mirrored."""
    images = [photo(n) for n in TRAIN_PHOTOS] + [lfw_mosaic()]
    return images + [x.flip(-1) for x in images] if mirror else images


def held_out_images() -> dict[str, torch.Tensor]:
    """The held-out photographs by name, whole, (3, H, W) in [-1, 1]."""
    return {name: photo(name) for name in HELD_OUT}


@dataclass(frozen=True)
class CropSet:
    """Whole images held in memory and drawn from as random crops aligned to the latent grid.

    Attributes:
        name: the data set's name.
        images: (C, H, W) tensors with H and W multiples of ``ALIGN``.
        crop: the crop side in pixels (a multiple of ``ALIGN``).
    """

    name: str
    images: tuple[torch.Tensor, ...]
    crop: int
    kind: str = "image"
    labels: None = None
    num_classes: None = None

    def __post_init__(self) -> None:
        if self.crop < ALIGN or self.crop % ALIGN:
            raise ConfigError(f"--image-size {self.crop}: photo crops must be a positive multiple of {ALIGN}")
        small = [tuple(x.shape[1:]) for x in self.images if min(x.shape[1:]) < self.crop]
        if small:
            raise ConfigError(f"--image-size {self.crop} is larger than images of shape {small[0]}")

    @property
    def channels(self) -> int:
        return int(self.images[0].shape[0])

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` crop positions (image index, top, left), tops and lefts in latent pixels: (n, 3) int64.

        Images are drawn with probability proportional to their area, so every pixel is equally likely.
        """
        areas = torch.tensor([x.shape[1] * x.shape[2] for x in self.images], dtype=torch.float64)
        idx = torch.multinomial(areas / areas.sum(), n, replacement=True, generator=generator)
        c = self.crop // ALIGN
        rows = []
        for i in idx.tolist():
            h, w = self.images[i].shape[1] // ALIGN, self.images[i].shape[2] // ALIGN
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
            rows.append((i, top, left))
        return torch.tensor(rows, dtype=torch.int64)

    def take(self, where: torch.Tensor, tensors: "tuple[torch.Tensor, ...] | None" = None,
             scale: int = ALIGN) -> torch.Tensor:
        """The crops at ``where`` (from ``draw``) of the images, or of per-image ``tensors`` whose
        pixels are ``ALIGN // scale`` image pixels (``scale=1``: latents of the images): (n, C, s, s)."""
        source = self.images if tensors is None else tensors
        side = (self.crop // ALIGN) * scale
        return torch.stack([source[i][:, t * scale: t * scale + side, l * scale: l * scale + side]
                            for i, t, l in where.tolist()])


def load_photos(crop: int) -> CropSet:
    """``--data photos``: random ``crop``×``crop`` crops of the training photographs (held-out ones excluded)."""
    return CropSet("photos", tuple(training_images()), crop)
