"""Pipeline bundles (``cmrt export --model DIFFUSERS_FOLDER``) in Triton's Python backend:
prompt strings in, images out, one ``cmrt.Pipeline`` per model instance.

A request of ``B`` prompts carries ``prompt`` BYTES (B, 1) and, optionally, ``negative_prompt``
BYTES (B, 1) (one per prompt), and ``seed``, ``guidance_scale``, ``height``, ``width`` (B, 1), each
repeating one value on every row (one per request, as Triton needs every input of a batching
model to carry the batch axis). Each request is exactly ``Pipeline.generate(prompts,
negative_prompt=..., guidance_scale=..., height=..., width=..., seed=...)``.

Merging: the requests of one execution that share size, guidance scale and whether they carry
negative prompts run as one ``generate`` call on their concatenated prompts, each request's
noise drawn from its own seed as ``generate(seed=s)`` draws it (the initial latents, then each
step's noise, ``cmrt.runtime.inputs.draw_noise``) and passed as ``noise=``. Requests of other
sizes or guidance scales run in calls of their own. A bundle whose decoder is a consistency decoder
draws that decoder's noise from the same generator after the LCM's, which ``noise=`` cannot carry:
there every request runs on its own. A merged call that fails a check is rerun request by request,
so each request gets its own answer.

Nothing here imports Triton, torch or transformers at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import PIPELINE_MANIFEST
from ..errors import ConfigError, InputError
from .config import GUIDANCE_INPUT, HEIGHT_INPUT, NEGATIVE_INPUT, PROMPT_INPUT, SEED_INPUT, WIDTH_INPUT

#: The per-request values: one value repeated on every row of a (B, 1) input.
SCALAR_INPUTS = (SEED_INPUT, GUIDANCE_INPUT, HEIGHT_INPUT, WIDTH_INPUT)
#: ``cmrt triton --backend`` → ``cmrt.Pipeline(device=...)``: pipelines run on ONNX Runtime.
DEVICES = {None: "auto", "onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}


def is_pipeline_bundle(folder: str | Path) -> bool:
    """Whether ``folder`` holds a pipeline bundle (``pipeline.json``) rather than a cmrt bundle."""
    return (Path(folder) / PIPELINE_MANIFEST).is_file()


def pipeline_device(backend: str | None, bundle: str | Path = "the pipeline bundle") -> str:
    """The ``cmrt.Pipeline`` device for ``cmrt triton --backend``; other backends are refused."""
    if backend not in DEVICES:
        choices = ", ".join(k for k in DEVICES if k)
        raise ConfigError(f"--backend {backend} does not apply to {bundle}: a pipeline runs on ONNX Runtime "
                          f"(pass one of {choices}, or no --backend)")
    return DEVICES[backend]


@dataclass(frozen=True)
class PromptRequest:
    """One request's ``generate`` arguments, and the index of its response."""

    index: int
    prompts: list[str]
    negatives: list[str] | None
    seed: int | None
    guidance_scale: float | None
    height: int | None
    width: int | None

    @property
    def key(self) -> tuple:
        """Requests with equal keys can run as one ``generate`` call."""
        return (self.height, self.width, self.guidance_scale, self.negatives is not None)

    def kwargs(self) -> dict[str, Any]:
        return dict(negative_prompt=self.negatives, guidance_scale=self.guidance_scale, height=self.height,
                    width=self.width)


def texts(array: np.ndarray, name: str) -> list[str]:
    """The rows of a BYTES (B, 1) input as strings (UTF-8)."""
    out = []
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{name} row {i} is not UTF-8 text: send the prompt encoded as UTF-8") from None
        out.append(str(value))
    return out


def row_value(array: np.ndarray | None, name: str, api: str = "cmrt.Pipeline.generate") -> Any:
    """The one value a per-request (B, 1) input repeats on every row (None: input absent); ``api``:
    the call that takes it, named in the error."""
    if array is None:
        return None
    values = np.unique(array)
    if values.size != 1:
        raise InputError(f"{name} must repeat one value on every row (one per request, as "
                         f"{api}(..., {name}=v) takes it), got {values.size} different values")
    return values[0].item()


def parse(index: int, inputs: dict[str, np.ndarray]) -> PromptRequest:
    """One request's arguments from its Triton inputs (by name); ``generate`` checks their values."""
    prompts = texts(inputs[PROMPT_INPUT], PROMPT_INPUT) if PROMPT_INPUT in inputs else []
    negatives = texts(inputs[NEGATIVE_INPUT], NEGATIVE_INPUT) if NEGATIVE_INPUT in inputs else None
    seed, scale, height, width = (row_value(inputs.get(n), n) for n in SCALAR_INPUTS)
    return PromptRequest(index, prompts, negatives, seed, None if scale is None else float(scale), height, width)


def groups(requests: Sequence[PromptRequest]) -> list[list[PromptRequest]]:
    """Requests grouped by size, guidance scale and negative prompts, in arrival order."""
    out: dict[tuple, list[PromptRequest]] = {}
    for r in requests:
        out.setdefault(r.key, []).append(r)
    return list(out.values())


def generate_one(pipe: Any, r: PromptRequest) -> np.ndarray:
    """A request on its own: ``pipe.generate`` with its arguments and seed."""
    return pipe.generate(r.prompts, seed=r.seed, **r.kwargs())


def generate_merged(pipe: Any, members: Sequence[PromptRequest]) -> list[np.ndarray]:
    """One ``generate`` call over the concatenated prompts of ``members`` (equal keys), each with the
    noise its own seed draws; each member's images."""
    from ..runtime.inputs import draw_noise, generator

    m, first = pipe.manifest, members[0]
    h = m.default_height if first.height is None else first.height
    w = m.default_width if first.width is None else first.width
    f = m.vae_scale_factor
    per_request = [draw_noise((len(r.prompts), m.latent_channels, h // f, w // f), m.steps, generator(r.seed))
                   for r in members]
    noise = [np.concatenate(step) for step in zip(*per_request)]
    prompts = [p for r in members for p in r.prompts]
    negatives = None if first.negatives is None else [n for r in members for n in r.negatives]
    images = pipe.generate(prompts, noise=noise, **(first.kwargs() | {"negative_prompt": negatives}))
    return np.split(images, np.cumsum([len(r.prompts) for r in members])[:-1])


def mergeable(pipe: Any, members: Sequence[PromptRequest]) -> bool:
    """Whether ``members`` (equal keys) can share one call: more than one, a VAE decoder (a consistency
    decoder's noise continues the seed's generator), every request with prompts and a positive size
    (else its own call answers with ``generate``'s message)."""
    m = pipe.manifest
    if len(members) < 2 or m.stages["decoder"].bundle is not None:
        return False
    size = (members[0].height, members[0].width)
    return all(v is None or (isinstance(v, int) and v > 0) for v in size) and all(r.prompts for r in members)
