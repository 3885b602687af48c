"""Training data held in memory: scikit-learn's digits, 2-D toy sets, image folders and ``.npz`` arrays.

Every source becomes a ``Dataset`` of float32 tensors: images (N, C, H, W) in [-1, 1], or points
(N, 2) scaled to unit standard deviation, with optional integer class labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError, require

DIGITS_LEVELS = 16.0  # scikit-learn's digits hold integers 0..16
DIGITS_SIDE = 8
DIGITS_CLASSES = 10
COLOR_SIZE = 32  # digits-color: RGB digits for decoder runs
COLOR_COPIES = 4  # colorings per digit
COLOR_MIN_CONTRAST = 0.35
HELD_OUT_FRACTION = 0.1  # the last 10% of the digits are held out of decoder training
NAMED_SETS = ("digits", "digits-color", "digits-text", "photos")  # the named image sets of ``--data``
TOY_SETS = ("moons", "circles", "blobs", "swissroll")
TOY_SIZE = 8192  # points drawn for a 2-D toy set
TOY_NOISE = 0.05
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Dataset:
    """Tensors in memory. ``kind`` is "image" (x: N, C, H, W in [-1, 1]) or "points" (x: N, 2)."""

    name: str
    kind: str
    x: torch.Tensor
    labels: torch.Tensor | None = None
    num_classes: int | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])


def digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: (N, 8, 8) float in [0, 1] and (N,) labels."""
    datasets = require("sklearn.datasets", "train", "the digits data set")
    d = datasets.load_digits()
    return d.images.astype(np.float32) / DIGITS_LEVELS, d.target.astype(np.int64)


def upscale_digits(images01: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] → (N, 1, size, size) in [-1, 1], nearest-neighbour (pooling inverts it exactly)."""
    if size % DIGITS_SIDE:
        raise ConfigError(f"digits image size must be a multiple of {DIGITS_SIDE}, got {size}")
    x = torch.as_tensor(images01, dtype=torch.float32)[:, None]
    x = F.interpolate(x, scale_factor=size // DIGITS_SIDE, mode="nearest")
    return x * 2.0 - 1.0


def pool_to_8x8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → (N, 64) in [0, 1] (channel mean, average-pooled to 8×8), for evaluation."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).mean(dim=1, keepdim=True)
    x = F.adaptive_avg_pool2d(x, DIGITS_SIDE)
    return ((x.clamp(-1, 1) + 1.0) / 2.0).reshape(x.shape[0], -1).numpy()


def load_digits(size: int = 16) -> Dataset:
    """The digits set at ``size``×``size``, class-conditional."""
    images, labels = digits_8x8()
    return Dataset(f"digits{size}", "image", upscale_digits(images, size), torch.from_numpy(labels), DIGITS_CLASSES)


def paint(images01: np.ndarray | torch.Tensor, fg: np.ndarray, bg: np.ndarray, size: int = COLOR_SIZE) -> torch.Tensor:
    """(N, 8, 8) digits in [0, 1], bilinearly upscaled to ``size`` and painted bg·(1 − m) + fg·m with
    (N, 3) colours in [0, 1]; (N, 3, size, size) in [-1, 1]."""
    m = F.interpolate(torch.as_tensor(images01, dtype=torch.float32)[:, None], size=(size, size), mode="bilinear",
                      align_corners=False).clamp(0, 1)
    fg_t = torch.tensor(np.asarray(fg), dtype=torch.float32)[:, :, None, None]
    bg_t = torch.tensor(np.asarray(bg), dtype=torch.float32)[:, :, None, None]
    return (bg_t * (1 - m) + fg_t * m) * 2.0 - 1.0


def colorize(images01: np.ndarray, copies: int, seed: int, size: int = COLOR_SIZE) -> torch.Tensor:
    """RGB digits: each 8×8 digit bilinearly upscaled and painted ``copies`` times with random
    foreground/background colours (at least ``COLOR_MIN_CONTRAST`` apart); (N·copies, 3, size, size) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images01 = np.tile(np.asarray(images01), (copies, 1, 1))
    n = images01.shape[0]
    fg, bg = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    flip = np.abs(fg - bg).max(1) < COLOR_MIN_CONTRAST
    fg[flip] = 1.0 - bg[flip]
    return paint(images01, fg, bg, size)


def load_digits_color(split: str = "train", copies: int = COLOR_COPIES, seed: int = 0,
                      size: int = COLOR_SIZE) -> Dataset:
    """``digits-color``: RGB digits (32×32 by default), class-conditional; "train" = the first 90%
    of the digits, "test" = the rest."""
    images, labels = digits_8x8()
    cut = int(len(images) * (1 - HELD_OUT_FRACTION))
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    x = colorize(images[sl], copies, seed + (split != "train"), size)
    return Dataset(f"digits-color-{split}", "image", x, torch.from_numpy(labels[sl]).repeat(copies), DIGITS_CLASSES)


def load_toy(name: str, n: int = TOY_SIZE, seed: int = 0) -> Dataset:
    """A 2-D toy set scaled to zero mean and unit standard deviation."""
    datasets = require("sklearn.datasets", "train", "2-D toy data sets")
    if name == "moons":
        pts, _ = datasets.make_moons(n, noise=TOY_NOISE, random_state=seed)
    elif name == "circles":
        pts, _ = datasets.make_circles(n, noise=TOY_NOISE, factor=0.5, random_state=seed)
    elif name == "blobs":
        pts, _ = datasets.make_blobs(n, centers=8, cluster_std=0.3, random_state=seed)
    elif name == "swissroll":
        pts3, _ = datasets.make_swiss_roll(n, noise=TOY_NOISE * 10, random_state=seed)
        pts = pts3[:, [0, 2]]
    else:
        raise ConfigError(f"unknown toy set {name!r}: choose one of {TOY_SETS}")
    pts = (pts - pts.mean(0)) / pts.std(0)
    return Dataset(name, "points", torch.tensor(pts, dtype=torch.float32))


def _to_nchw(arr: np.ndarray, where: str) -> torch.Tensor:
    """uint8 or float images, (N, H, W), (N, H, W, C) or (N, C, H, W) → float (N, C, H, W) in [-1, 1]."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise InputError(f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    x = torch.as_tensor(arr.astype(np.float32))
    if arr.dtype == np.uint8:
        return x / 127.5 - 1.0
    if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
        raise InputError(f"{where}: float images must lie in [-1, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                         "save uint8 images or rescale them")
    return x


def load_npz(path: Path) -> Dataset:
    """An ``.npz`` with ``images`` (uint8, or float in [-1, 1]) and optional ``labels``."""
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise InputError(f"{path}: an .npz data set needs an 'images' array (has {sorted(z.files)})")
        x = _to_nchw(z["images"], str(path))
        labels = torch.as_tensor(z["labels"].astype(np.int64)) if "labels" in z else None
    num_classes = int(labels.max()) + 1 if labels is not None else None
    return Dataset(path.stem, "image", x, labels, num_classes)


def load_folder(path: Path, size: int, channels: int) -> Dataset:
    """Every image in a folder, resized to ``size``×``size`` (bicubic) with ``channels`` channels."""
    Image = require("PIL.Image", "train", "image-folder data sets")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    mode = "L" if channels == 1 else "RGB"
    arrs = [np.asarray(Image.open(f).convert(mode).resize((size, size), Image.BICUBIC)) for f in files]
    return Dataset(path.name, "image", _to_nchw(np.stack(arrs), str(path)))


def load_data(src: str, *, size: int = 16, channels: int = 1, kind: str = "sampler"):
    """Resolve a ``--data`` source: ``digits``, ``digits-color``, ``photos`` (random ``size``×``size``
    crops of scikit-image's photographs: a ``photos.CropSet``), a toy name, a folder of images or an
    ``.npz`` file.

    ``digits-color`` is ``size`` pixels for a consistency model (``kind`` "sampler") and always
    ``COLOR_SIZE`` (32, 8× the 4×4 latents) for a decoder.
    """
    if src == "digits":
        return load_digits(size)
    if src == "digits-color":
        return load_digits_color("train", size=size if kind == "sampler" else COLOR_SIZE)
    if src == "photos":
        from .photos import load_photos

        return load_photos(size)
    if src in TOY_SETS:
        return load_toy(src)
    path = Path(src)
    if path.is_dir():
        return load_folder(path, size, channels)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    raise InputError(f"--data {src!r}: not 'digits', 'digits-color', 'photos', a toy set ({', '.join(TOY_SETS)}), "
                     "an image folder or an existing .npz file")
