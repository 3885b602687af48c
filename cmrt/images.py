"""Image helpers: [-1, 1] float arrays ↔ uint8, and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


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


def save_grid(images: Any, path: str | Path, cols: int | None = None, scale: int = 1, pad: int = 2) -> None:
    """Write a PNG grid (written to a temporary name, then renamed)."""
    from PIL import Image

    g = grid(images, cols, pad)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    img.save(tmp)
    tmp.replace(path)
