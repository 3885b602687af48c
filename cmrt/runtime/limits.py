"""What one backend run accepts (``ShapeLimits``: an engine's profile; ONNX Runtime's graphs are
unbounded) and how a batch is cut to fit it (``chunk_size``, ``chunks``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeLimits:
    """What one backend run accepts: batch and latent (rows, cols) ranges; None = unbounded.

    Attributes:
        batch: (min, max) batch size, or None.
        latent_min: the smallest (rows, cols), or None.
        latent_max: the largest (rows, cols), or None.
    """

    batch: tuple[int, int] | None = None
    latent_min: tuple[int, int] | None = None
    latent_max: tuple[int, int] | None = None


def chunk_size(*caps: int | None, limits: ShapeLimits | None = None) -> int | None:
    """The largest batch one backend run gets: the smallest of the given caps and the backend's max batch."""
    found = [c for c in caps if c is not None]
    if limits is not None and limits.batch is not None:
        found.append(limits.batch[1])
    return min(found) if found else None


def chunks(batch: int, size: int | None) -> list[slice]:
    """Slices of [0, batch) of at most ``size`` items each (None: one slice)."""
    if size is None or batch <= size:
        return [slice(0, batch)]
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]
