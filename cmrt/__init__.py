"""cmrt: consistency models and the consistency decoder, exported to one-graph samplers with parity.

    bundle = cmrt.export("run/", out="bundle", steps=2)      # PyTorch → ONNX bundle, parity-checked
    images = cmrt.Sampler(bundle.path).sample(8, seed=0)     # numpy in/out, or torch in/out
    images = cmrt.Decoder("decoder-bundle").decode(latents, seed=0)
    edited = cmrt.Editor("inpaint-bundle").edit(image, mask=mask, seed=0)   # cmrt export --task inpaint
    images = cmrt.Pipeline("lcm-bundle").generate("a cat", seed=0)         # cmrt export --model LCM_FOLDER
    report = cmrt.check("bundle", backend="onnxruntime-cpu")

``import cmrt`` is cheap: torch, onnx and onnxruntime load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (BundleError, BundleNotFoundError, CmrtError, ConfigError, EngineBuildError, InputError,
                     InputTypeError, IntegrityError, MissingDependencyError, OutputExistsError, ParityError,
                     RunnerClosedError, ServerError, SourceError)

if TYPE_CHECKING:
    from .exporter.api import export
    from .parity import ParityReport
    from .editing import slerp
    from .runtime.decoder import Decoder
    from .runtime.editor import Editor
    from .runtime.sampler import Sampler
    from .runtime.check import CheckReport, check
    from .runtime.pipeline import Pipeline
    from .exporter.pipeline import export_pipeline

_LAZY = {
    "Decoder": ("cmrt.runtime.decoder", "Decoder"),
    "Sampler": ("cmrt.runtime.sampler", "Sampler"),
    "Editor": ("cmrt.runtime.editor", "Editor"),
    "Pipeline": ("cmrt.runtime.pipeline", "Pipeline"),
    "export_pipeline": ("cmrt.exporter.pipeline", "export_pipeline"),
    "slerp": ("cmrt.editing", "slerp"),
    "export": ("cmrt.exporter.api", "export"),
    "check": ("cmrt.runtime.check", "check"),
    "ParityReport": ("cmrt.parity", "ParityReport"),
    "CheckReport": ("cmrt.runtime.check", "CheckReport"),
}

__all__ = ["Decoder", "Sampler", "Editor", "Pipeline", "export_pipeline", "slerp", "export", "check", "ParityReport", "CheckReport", "CmrtError", "InputError",
           "InputTypeError", "ConfigError", "SourceError", "BundleError", "IntegrityError", "BundleNotFoundError",
           "OutputExistsError", "RunnerClosedError", "EngineBuildError", "MissingDependencyError", "ParityError",
           "ServerError",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        value = value if attr is None else getattr(value, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cmrt' has no attribute {name!r}")
