"""Which loader reads a model source: one literal table of formats, each with its detector and
the load options it accepts.

``load_model(source, arch=..., image_size=..., trust=..., embedding=...)`` tries the formats in
order; an option that the detected format does not take is refused (``ConfigError``) instead of
being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BundleNotFoundError, ConfigError, SourceError
from . import formats as F
from .load import (DEFAULT_MODEL, LoadedModel, is_cmrt_file, is_run_folder, is_toy_run, load_checkpoint, load_run,
                   reject_toy_run)

#: Load options → the command-line flag that sets them (used in messages).
OPTION_FLAGS = {"arch": "--arch", "image_size": "--image-size", "trust": "--trust", "embedding": "--embedding"}


@dataclass(frozen=True)
class SourceFormat:
    """A model format: its name, how to recognize it, how to load it, which options it takes."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., LoadedModel]
    options: frozenset[str] = frozenset()


FORMATS: tuple[SourceFormat, ...] = (
    SourceFormat("cmrt checkpoint", is_cmrt_file, load_checkpoint),
    SourceFormat("cmrt training run", is_run_folder, load_run),
    SourceFormat("cmrt 2-D toy run (not exportable)", is_toy_run, reject_toy_run),
    SourceFormat("diffusers ConsistencyDecoderVAE", F.is_diffusers_vae, F.load_diffusers_vae),
    SourceFormat("diffusers ConsistencyModelPipeline", F.is_diffusers_pipeline, F.load_diffusers_pipeline,
                 frozenset({"image_size"})),
    SourceFormat("diffusers UNet2DModel", F.is_diffusers_unet, F.load_diffusers_unet, frozenset({"image_size"})),
    SourceFormat("OpenAI consistency model (.pt)", F.is_openai_cm, F.load_openai_cm,
                 frozenset({"arch", "image_size"})),
    SourceFormat("OpenAI decoder.pt (TorchScript)", F.is_openai_decoder, F.load_openai_decoder,
                 frozenset({"trust", "embedding"})),
    SourceFormat("other diffusers folder", F.is_other_diffusers, F.reject_other_diffusers),
)


def detect_format(path: Path) -> SourceFormat:
    """The format of a model source on disk."""
    if not path.exists():
        raise BundleNotFoundError(f"model source {path} does not exist")
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt
    names = ", ".join(f.name for f in FORMATS[:-1])
    raise SourceError(f"{path}: not a model cmrt can read (known formats: {names})")


def load_model(source: str | Path | None = None, *, arch: str | None = None, image_size: int | None = None,
               trust: bool = False, embedding: str | Path | None = None) -> LoadedModel:
    """Load a model from ``source`` (None: the bundled default model).

    Args:
        source: a cmrt checkpoint or training run folder, a diffusers folder, an OpenAI checkpoint.
        arch: OpenAI consistency-model checkpoints: check against a published configuration.
        image_size: the image side, for sources that do not record it.
        trust: OpenAI ``decoder.pt`` whose SHA-256 is not the published one (TorchScript carries code).
        embedding: the decoder time-embedding table ``decoder.pt`` lacks.

    Raises:
        ConfigError: an option that the source's format does not take.
    """
    path = DEFAULT_MODEL if source is None else Path(source)
    fmt = detect_format(path)
    given = {k: v for k, v in {"arch": arch, "image_size": image_size, "trust": trust or None,
                               "embedding": embedding}.items() if v is not None}
    refuse_options(given, fmt.options, f"{path} is a {fmt.name}")
    return fmt.load(path, **given)


def refuse_options(given: dict[str, Any], accepted: frozenset[str], what: str) -> None:
    """``ConfigError`` naming every given option outside ``accepted``."""
    extra = sorted(set(given) - accepted)
    if extra:
        flags = ", ".join(f"{OPTION_FLAGS.get(k, k)} ({k}=)" for k in extra)
        takes = ", ".join(OPTION_FLAGS[k] for k in sorted(accepted)) or "none of them"
        raise ConfigError(f"{flags} does not apply: {what}, which takes {takes}")
