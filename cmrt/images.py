"""Image helpers: [-1, 1] float arrays ↔ uint8, and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import write_atomic


def to_uint8(images: Any) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] → (B, H, W, C) uint8."""
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    a = np.clip((a + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def grid(images: Any, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile a batch into one (H', W', C) uint8 image."""
    a = to_uint8(images)
    b, h, w, c = a.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(b):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = a[i]
    return out


def save_grid(images: Any, path: str | Path, cols: int | None = None, scale: int = 1, pad: int = 2,
              labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> None:
    """Write a PNG grid (written to a temporary name, then renamed).

    Args:
        labels: a caption above each image (PIL's default font), in grid order.
        row_labels: a caption left of each grid row.
    """
    from PIL import Image

    g = grid(images, cols, pad)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if labels is not None or row_labels is not None:
        b, _, h, w = np.shape(images)
        cols = cols or math.ceil(math.sqrt(b))
        img = caption(img, (h * scale, w * scale), cols, pad * scale, labels, row_labels)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown file extension: {path.suffix}")  # PIL's own check, made before the write
    write_atomic(path, lambda tmp: img.save(tmp, format=fmt))


def caption_font_size(cell_width: int) -> int:
    """The captions' font size in pixels for cells ``cell_width`` wide: 11 (PIL's bitmap font
    size) up to 24 on wide panels."""
    return max(11, min(24, cell_width // 24))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType's scalable default (Pillow ≥ 10.1)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def caption(img: Any, cell: tuple[int, int], cols: int, pad: int, labels: Sequence[str] | None = None,
            row_labels: Sequence[str] | None = None) -> Any:
    """A grid image (cells of ``cell`` = (h, w) pixels, ``pad`` apart) with a caption strip above
    every grid row holding each cell's label, and a margin on the left holding each row's label."""
    from PIL import Image, ImageDraw

    h, w = cell
    size = caption_font_size(w)
    font = _font(size)
    rows = (img.height - pad) // (h + pad)
    strip = size + 4 if labels is not None else 0
    draw = ImageDraw.Draw(img)
    margin = 0 if row_labels is None else 6 + max(int(draw.textlength(t, font=font)) for t in row_labels)
    out = Image.new(img.mode, (img.width + margin, img.height + rows * strip), "white" if img.mode == "RGB" else 255)
    draw, ink = ImageDraw.Draw(out), (0, 0, 0) if img.mode == "RGB" else 0
    for r in range(rows):
        top = pad + r * (h + pad)
        out.paste(img.crop((0, top, img.width, top + h + pad)), (margin, top + (r + 1) * strip))
        if row_labels is not None and r < len(row_labels):
            draw.text((3, top + (r + 1) * strip + h // 2), row_labels[r], fill=ink, font=font, anchor="lm")
        for k in range(cols if labels is not None else 0):
            i = r * cols + k
            if i < len(labels):
                draw.text((margin + pad + k * (w + pad) + 2, top + r * strip + 1), labels[i], fill=ink, font=font)
    out.paste(img.crop((0, 0, img.width, pad)), (margin, 0))
    return out


def crop_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Center-crop (B, C, H, W) so that H and W are multiples of ``multiple`` (at most
    ``multiple - 1`` rows and columns go, split between the two sides, the extra one at the end)."""
    h, w = images.shape[-2:]
    dh, dw = h % multiple, w % multiple
    return images[..., dh // 2: h - (dh - dh // 2), dw // 2: w - (dw - dw // 2)]


def read_image(path: str | Path, *, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG/JPEG file → (1, C, H, W) float32 in [-1, 1] (x / 127.5 - 1).

    Args:
        path: the image file.
        channels: 1 (converted to gray, PIL's ITU-R 601 luma) or 3 (RGB).
        size: (height, width) to resize to (bicubic); None keeps the file's size.
    """
    from PIL import Image

    from .errors import BundleNotFoundError, InputError

    path = Path(path)
    if not path.is_file():
        raise BundleNotFoundError(f"image {path} does not exist")
    try:
        img = Image.open(path)
        img = img.convert("L" if channels == 1 else "RGB")
    except OSError as exc:
        raise InputError(f"{path} is not an image PIL can read ({exc})") from None
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((int(size[1]), int(size[0])), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a[None])


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A gray or RGB mask image → (1, 1, H, W) float32 in [0, 1] (white 1 = generate, black 0 =
    keep), resized to ``size`` = (height, width) with nearest-neighbour sampling."""
    from PIL import Image

    from .errors import BundleNotFoundError, InputError

    path = Path(path)
    if not path.is_file():
        raise BundleNotFoundError(f"mask {path} does not exist")
    try:
        img = Image.open(path).convert("L")
    except OSError as exc:
        raise InputError(f"{path} is not an image PIL can read ({exc})") from None
    if (img.height, img.width) != tuple(size):
        img = img.resize((int(size[1]), int(size[0])), Image.NEAREST)
    return (np.asarray(img, dtype=np.float32) / 255.0)[None, None]


def save_images(images: Any, path: str | Path) -> None:
    """Results to a file by its suffix: ``.npy`` keeps the raw float values (B, C, H, W); any
    other suffix is an image grid (``save_grid``, values clipped to [-1, 1] → 0…255)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        write_atomic(path, lambda tmp: _save_npy(tmp, a))
        return
    save_grid(images, path)


def _save_npy(path: Path, a: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.save would add ".npy" to a bare temporary name
        np.save(f, a)
