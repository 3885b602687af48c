"""cmrt's runtime as a model of Triton's Python backend (``<model>/1/model.py`` imports
``TritonPythonModel`` from here). A pipeline bundle is served by ``PipelineRequestServer``
(prompt strings in; ``cmrt.serve.pipeline``); the rest of this docstring is about the other bundles.

One ``execute`` receives the requests Triton's dynamic batcher merged. Each request is prepared
on its own by ``Decoder.feeds`` / ``Sampler.feeds`` / ``Editor.feeds``: cmrt's input checks, and its noise drawn from
its own seed exactly as the in-process call with that seed draws it. Requests whose prepared
inputs have the same shapes (same latent size) are then concatenated and run as one batch; the
output rows go back to their requests. A request that fails its checks gets an error response with
cmrt's message; the others run.

This module imports no Triton code at import time: ``triton_python_backend_utils`` exists only
inside the backend's stub process and is passed in.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle
from ..errors import CmrtError, InputError
from .config import (BACKEND_PARAMETER, BUNDLE_PARAMETER, IMAGE_INPUT, LABELS_INPUT, MASK_INPUT, SEED_INPUT,
                     python_inputs)
from .pipeline import (generate_merged, generate_one, groups, is_pipeline_bundle, mergeable, parse, pipeline_device,
                       row_value)


@dataclass
class Prepared:
    """One request's checked graph inputs and the index of its response."""

    index: int
    feeds: dict[str, np.ndarray]

    @property
    def batch(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0])

    @property
    def key(self) -> tuple:
        """Requests with equal keys can run as one batch: same inputs, per-item shapes and dtypes."""
        return tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(self.feeds.items()))


def open_runner(bundle: str | Path, backend: str | None = None):
    """``cmrt.Decoder``, ``cmrt.Sampler``, ``cmrt.Editor`` or ``cmrt.Pipeline``, whichever the bundle holds."""
    if is_pipeline_bundle(bundle):
        from ..runtime.pipeline import Pipeline

        return Pipeline(bundle, device=pipeline_device(backend, bundle), backend=backend)
    from ..runtime.decoder import Decoder
    from ..runtime.editor import Editor
    from ..runtime.sampler import Sampler

    b = Bundle.open(bundle)
    runner = {"decoder": Decoder, "editor": Editor}.get(b.manifest.kind, Sampler)
    return runner(b, backend=backend)


def request_seed(seed: np.ndarray | None) -> int | None:
    """The request's seed from its ``seed`` input (B, 1): one value repeated on every row."""
    value = row_value(seed, "seed", "cmrt.Decoder/Sampler")
    return None if value is None else int(value)


def prepare(runner: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's graph inputs from its Triton inputs (by name), through ``runner.feeds``."""
    seed = request_seed(inputs.get(SEED_INPUT))
    kind = runner.bundle.manifest.kind
    if kind == "decoder":
        return runner.feeds(inputs.get("latents"), seed=seed)
    labels = inputs.get(LABELS_INPUT)
    labels = None if labels is None else labels.reshape(-1)
    if kind == "editor":
        return runner.feeds(inputs.get(IMAGE_INPUT), mask=inputs.get(MASK_INPUT), class_labels=labels, seed=seed)
    if not inputs:
        raise InputError(f"a request needs {LABELS_INPUT} or {SEED_INPUT} (B, 1): their first axis is its batch size")
    batch = next(iter(inputs.values())).shape[0]  # Triton checked that every input has this batch size
    return runner.feeds(batch, class_labels=labels, seed=seed)


def group(prepared: Sequence[Prepared]) -> list[list[Prepared]]:
    """Requests grouped by input shapes (latent size), in arrival order."""
    groups: dict[tuple, list[Prepared]] = {}
    for p in prepared:
        groups.setdefault(p.key, []).append(p)
    return list(groups.values())


def run_group(runner: Any, members: Sequence[Prepared]) -> list[np.ndarray]:
    """One backend run over the concatenated inputs of ``members``; each member's output rows."""
    feeds = {k: np.concatenate([m.feeds[k] for m in members]) for k in members[0].feeds}
    images = runner.backend.run(feeds)
    bounds = np.cumsum([m.batch for m in members])[:-1]
    return np.split(images, bounds)


class RequestServer:
    """Serves lists of Triton requests with a runner; ``pb`` is ``triton_python_backend_utils``."""

    def __init__(self, runner: Any, pb: Any) -> None:
        self.runner, self.pb = runner, pb
        self.input_names = _input_names(runner)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        prepared = []
        for i, request in enumerate(requests):
            try:
                prepared.append(Prepared(i, prepare(self.runner, self._inputs(request))))
            except CmrtError as exc:
                responses[i] = self._error(exc)
        for members in group(prepared):
            for m, out in zip(members, self._run(members)):
                responses[m.index] = out
        return responses

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        tensors = ((name, self.pb.get_input_tensor_by_name(request, name)) for name in self.input_names)
        return {name: t.as_numpy() for name, t in tensors if t is not None}

    def _run(self, members: Sequence[Prepared]) -> list[Any]:
        try:
            outputs = run_group(self.runner, members)
        except CmrtError as exc:  # e.g. outside a TensorRT engine's profile: the message names it
            return [self._error(exc) for _ in members]
        except Exception as exc:  # a backend failure must not take the model down: answer and log it
            self.pb.Logger.log_error(f"cmrt: backend run failed:\n{traceback.format_exc()}")
            return [self._error(exc, internal=True) for _ in members]
        return [self._images(o) for o in outputs]

    def _images(self, images: np.ndarray) -> Any:
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(OUTPUT_NAME, np.ascontiguousarray(images))])

    def _error(self, exc: Exception, internal: bool = False) -> Any:
        message = str(exc).replace("\n", " ") or type(exc).__name__
        err = self.pb.TritonError
        if internal:
            return self.pb.InferenceResponse(output_tensors=[], error=err(f"cmrt: internal error: {type(exc).__name__}: "
                                                                          f"{message}", err.INTERNAL))
        return self.pb.InferenceResponse(output_tensors=[], error=err(f"cmrt: {message}", err.INVALID_ARG))


def _input_names(runner: Any) -> list[str]:
    manifest = getattr(runner, "manifest", None) or runner.bundle.manifest  # a Pipeline has its own
    return [t["name"] for t in python_inputs(manifest)]


class PipelineRequestServer(RequestServer):
    """Serves prompt requests with a ``cmrt.Pipeline`` (``cmrt.serve.pipeline``): each request is
    ``generate`` with its own arguments and seed; requests of equal size, guidance scale and
    negative-prompt use run as one call, each with its own seeded noise, where the bundle allows
    (``mergeable``: not with a consistency decoder stage)."""

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed = []
        for i, request in enumerate(requests):
            try:
                parsed.append(parse(i, self._inputs(request)))
            except CmrtError as exc:
                responses[i] = self._error(exc)
        for members in groups(parsed):
            merged = self._merged(members) if mergeable(self.runner, members) else None
            for r, out in zip(members, merged or [self._one(r) for r in members]):
                responses[r.index] = out
        return responses

    def _merged(self, members: Sequence[Any]) -> list[Any] | None:
        """The responses of one ``generate`` call over ``members``; None when one of them fails a
        check (the caller then runs them one by one, so that only that request gets the message)."""
        try:
            return [self._images(images) for images in generate_merged(self.runner, members)]
        except CmrtError:
            return None
        except Exception as exc:  # a backend failure must not take the model down: answer and log it
            return [self._failed(exc)] * len(members)

    def _one(self, r: Any) -> Any:
        try:
            return self._images(generate_one(self.runner, r))
        except CmrtError as exc:
            return self._error(exc)
        except Exception as exc:  # as above
            return self._failed(exc)

    def _failed(self, exc: Exception) -> Any:
        self.pb.Logger.log_error(f"cmrt: pipeline run failed:\n{traceback.format_exc()}")
        return self._error(exc, internal=True)


class TritonPythonModel:
    """The model class Triton's Python backend instantiates (once per model instance)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the bundle named by the model's ``bundle`` parameter (relative to its version folder)."""
        import triton_python_backend_utils as pb  # only inside the backend's stub process

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"] / params.get(BUNDLE_PARAMETER, "bundle")
        runner = open_runner(folder, params.get(BACKEND_PARAMETER) or None)
        if is_pipeline_bundle(folder):
            self.server: RequestServer = PipelineRequestServer(runner, pb)
            pb.Logger.log_info(f"cmrt: {args['model_name']} serves {folder} (pipeline, {runner.steps} step(s))")
        else:
            self.server = RequestServer(runner, pb)
            pb.Logger.log_info(f"cmrt: {args['model_name']} serves {folder} ({runner.bundle.manifest.kind}, "
                               f"backend {runner.backend.name})")

    def execute(self, requests: list) -> list:
        """One response per request, in order; bad requests get cmrt's message as their error."""
        return self.server.execute(requests)

    def finalize(self) -> None:
        """Release the runner (``close()`` where the runtime has it)."""
        self.server.close()
