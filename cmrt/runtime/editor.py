"""``Editor``: an editing bundle (inpaint, colorize, superres, stroke, denoise) run as image (+ mask)
→ edited images; its inputs checked against the bundle's task."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .inputs import (as_float32, check_max_batch, check_shape, checked_labels, fmt_shape, is_torch, noise_items,
                     return_like)
from .runner import Runner

#: How far outside [-1, 1] an editing image may lie before it is refused: rounding of resampled or
#: 8-bit images (half an 8-bit level is 0.004), not a different value range such as [0, 1] or [0, 255].
IMAGE_MARGIN = 1e-2


class Editor(Runner):
    """An editing bundle (``cmrt export --task inpaint|colorize|superres|stroke|denoise``):
    image (+ mask) → edited images in [-1, 1].

    Args:
        engine: a bundle folder made by ``cmrt export --task ...``, or a graph/engine file inside one.
        backend: as for ``Decoder``.
        max_batch: as for ``Decoder``.
    """

    kind = "editor"

    @property
    def task(self) -> str:
        """The bundle's task: "inpaint", "colorize", "superres", "stroke" or "denoise"."""
        return self.bundle.manifest.task.name

    @property
    def num_classes(self) -> int | None:
        return self.bundle.manifest.num_classes

    def edit(self, image: Any, *, mask: Any = None, class_labels: Any = None, seed: int | None = None,
             noise: Sequence[Any] | None = None, max_batch: int | None = None):
        """Edit images; returns (B, C, H, W) in [-1, 1] (the model's size).

        Args:
            image: numpy array or torch tensor in [-1, 1]: inpaint and stroke (B, C, H, W); colorize
                the gray luma (B, 1, H, W) or an RGB image (B, 3, H, W), reduced to its luma;
                superres the low-resolution (B, C, H/p, W/p); denoise the noisy (B, C, H, W) image
                (any range).
            mask: inpaint only: (B, 1, H, W) in [0, 1], 1 = generate, 0 = keep.
            class_labels: (B,) ints in [0, num_classes), or one int; drawn from the seed (after the
                noise) when the model is class-conditional and none are given.
            seed: seeds the noise (and labels) with ``torch.Generator().manual_seed(seed)``.
            noise: explicit noise, one (B, C, H, W) standard-normal tensor per step (denoise: none).
            max_batch: the largest batch one backend run gets (None: the runner's); the noise and
                labels are drawn for the whole batch first, so chunks do not change the result.
        """
        max_batch = check_max_batch(max_batch)
        like = next((x for x in (image, mask, class_labels, *noise_items(noise)) if is_torch(x)), None)
        feeds = self.feeds(image, mask=mask, class_labels=class_labels, seed=seed, noise=noise)
        return return_like(self._run_chunked(feeds, max_batch), like)

    def feeds(self, image: Any, *, mask: Any = None, class_labels: Any = None, seed: int | None = None,
              noise: Sequence[Any] | None = None) -> dict[str, Any]:
        """The checked graph inputs of ``edit`` with the same arguments, noise (and labels) drawn,
        not run: what a server (``cmrt.serve``) merges across requests before one backend run.

        Returns:
            graph input name → array, in the graph's input order.
        """
        from ..editing import EDIT_TASKS

        edit = EDIT_TASKS[self.task]
        m = self.bundle.manifest
        feeds: dict[str, Any] = {"image": self._image(image)}
        batch = int(feeds["image"].shape[0])
        if edit.mask:
            feeds["mask"] = self._mask(mask, batch)
        elif mask is not None:
            raise InputError(f"this bundle's task is {self.task}, which takes no mask: drop mask= (or export "
                             "an inpainting bundle with `cmrt export --task inpaint`)")
        g = self._generator(seed, noise)
        shape = (batch, m.image.channels, m.image.height, m.image.width)
        if edit.noise:
            feeds |= dict(zip(m.noise_names, self._noise(noise, g, shape)))  # noise first, then labels
        elif noise is not None:
            raise InputError("denoise is one evaluation of the model and takes no noise: drop noise=")
        if self.num_classes is not None:
            feeds["class_labels"] = checked_labels(class_labels, batch, self.num_classes, g)
        elif class_labels is not None:
            raise InputError("this model is unconditional: do not pass class_labels")
        return {name: feeds[name] for name in m.input_names}

    def _input_shape(self, name: str) -> tuple:
        spec = next(i for i in self.bundle.manifest.inputs if i.name == name)
        return (None, *(int(d) for d in spec.shape[1:]))

    def _image(self, image: Any):
        """The ``image`` input checked: shape, values in [-1, 1] (denoise: any), RGB → luma for colorize."""
        from ..editing import RGB, luma

        a = as_float32(image, "image")
        if self.task != "denoise":  # a noisy image leaves [-1, 1] by design
            lo, hi = float(a.min()), float(a.max())
            if lo < -1 - IMAGE_MARGIN or hi > 1 + IMAGE_MARGIN:
                raise InputError(f"image values must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}]: map 8-bit images "
                                 "with x / 127.5 - 1 (and [0, 1] images with 2x - 1)")
        if self.task == "colorize" and a.ndim == 4 and a.shape[1] == RGB:
            a = luma(a)
            a = a if is_torch(a) else np.ascontiguousarray(a, dtype=np.float32)
        expected = self._input_shape("image")
        if a.ndim != 4 or tuple(a.shape[1:]) != expected[1:]:
            raise InputError(f"image must have shape {fmt_shape(expected)} for this {self._what()} bundle, "
                             f"got shape {tuple(a.shape)}")
        return a

    def _what(self) -> str:
        t = self.bundle.manifest.task
        return f"superres ×{t.factor}" if t.name == "superres" else t.name

    def _mask(self, mask: Any, batch: int):
        if mask is None:
            raise InputError("inpainting needs mask= (B, 1, H, W) in [0, 1]: 1 = generate, 0 = keep")
        a = as_float32(mask, "mask")
        check_shape(a, "mask", (batch, *self._input_shape("mask")[1:]))
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"mask values must lie in [0, 1] (1 = generate, 0 = keep), got [{lo:.4g}, {hi:.4g}]")
        return a
