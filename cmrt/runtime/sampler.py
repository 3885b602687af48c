"""``Sampler``: a consistency-model bundle run as (class labels,) noise → images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError, InputTypeError
from .inputs import check_max_batch, checked_labels, is_torch, labels_array, return_like
from .runner import Runner


class Sampler(Runner):
    """A consistency-model bundle: (class labels,) noise → images in [-1, 1].

    Args:
        engine: a bundle folder made by ``cmrt export``, or a graph/engine file inside one.
        backend: as for ``Decoder``.
        max_batch: as for ``Decoder``.
    """

    kind = "sampler"

    @property
    def num_classes(self) -> int | None:
        return self.bundle.manifest.num_classes

    def sample(self, batch_size: int | None = None, *, class_labels: Any = None, seed: int | None = None,
               noise: Sequence[Any] | None = None, max_batch: int | None = None):
        """Sample images (B, C, H, W) in [-1, 1].

        Args:
            batch_size: number of images (default: from labels or noise, else 1).
            class_labels: (B,) ints in [0, num_classes), or one int for the whole batch; drawn from
                the seed (after the noise) when the model is class-conditional and none are given.
            seed: seeds the noise (and labels) with ``torch.Generator().manual_seed(seed)``.
            noise: explicit noise, one (B, C, H, W) standard-normal tensor per step.
            max_batch: the largest batch one backend run gets (None: the runner's); the noise and
                labels are drawn for the whole batch first, so chunks do not change the result.
        """
        max_batch = check_max_batch(max_batch)
        like = next((x for x in (class_labels, *(noise or ())) if is_torch(x)), None)
        feeds = self.feeds(batch_size, class_labels=class_labels, seed=seed, noise=noise)
        return return_like(self._run_chunked(feeds, max_batch), like)

    def feeds(self, batch_size: int | None = None, *, class_labels: Any = None, seed: int | None = None,
              noise: Sequence[Any] | None = None) -> dict[str, Any]:
        """The checked graph inputs of ``sample`` with the same arguments, noise (and labels)
        drawn, not run: what a server merges across requests before one backend run.

        Returns:
            graph input name → array: ``class_labels`` (int64, class-conditional models), ``noise_i``.
        """
        img = self.bundle.manifest.image
        batch = self._batch_size(batch_size, class_labels, noise)
        shape = (batch, img.channels, img.height, img.width)
        feeds: dict[str, np.ndarray] = {}
        g = self._generator(seed, noise)
        noise_arrays = self._noise(noise, g, shape)  # noise first, in step order, then labels
        if self.num_classes is not None:
            feeds["class_labels"] = checked_labels(class_labels, batch, self.num_classes, g)
        elif class_labels is not None:
            raise InputError("this model is unconditional: do not pass class_labels")
        return feeds | dict(zip(self.bundle.manifest.noise_names, noise_arrays))

    def _batch_size(self, batch_size, class_labels, noise) -> int:
        candidates = {}
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
                raise InputTypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
            candidates["batch_size"] = int(batch_size)
        labels = None if class_labels is None else labels_array(class_labels)
        if labels is not None and labels.ndim == 1:
            candidates["class_labels"] = len(labels)
        if noise is not None and isinstance(noise, Sequence) and len(noise) and hasattr(noise[0], "shape"):
            candidates["noise[0]"] = int(noise[0].shape[0]) if len(noise[0].shape) else 0
        if len(set(candidates.values())) > 1:
            raise InputError(f"batch sizes disagree: {candidates}")
        batch = next(iter(candidates.values()), 1)
        if batch < 1:
            raise InputError(f"batch size must be ≥ 1, got {batch}")
        return batch
