"""cmrt's error types.

Every error a user can cause is a ``CmrtError`` and also a ``ValueError``, ``TypeError``,
``FileNotFoundError`` or ``ImportError``, so ordinary ``except ValueError`` code keeps working.
Messages say what was wrong and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations


class CmrtError(Exception):
    """Base class of every error cmrt raises on purpose."""


class InputError(CmrtError, ValueError):
    """A runtime input has the wrong shape, size or values (NaN, out-of-range labels, ...)."""


class InputTypeError(CmrtError, TypeError):
    """A runtime input has a type or dtype that cannot be used."""


class ConfigError(CmrtError, ValueError):
    """An option or configuration value is invalid (``--steps 0``, a bad σ list, ...)."""


class SourceError(CmrtError, ValueError):
    """A model source (checkpoint, folder) cannot be read as the model it claims to be."""


class BundleError(CmrtError, ValueError):
    """A bundle is broken, incomplete, or its manifest does not match its graph."""


class IntegrityError(BundleError):
    """A bundle file differs from what its manifest recorded (size or SHA-256)."""


class BundleNotFoundError(CmrtError, FileNotFoundError):
    """A bundle, graph or model file does not exist."""


class OutputExistsError(CmrtError, FileExistsError):
    """An output path already exists and would be overwritten (pass ``overwrite``/``--overwrite``)."""


class RunnerClosedError(CmrtError, ValueError):
    """A ``Decoder``/``Sampler``/``Editor`` was used after ``close()``."""


class ExportError(CmrtError, RuntimeError):
    """The export could not produce a trustworthy graph (a tracing or FP16-pass failure)."""


class MissingDependencyError(CmrtError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class EngineBuildError(CmrtError, RuntimeError):
    """TensorRT could not parse the graph, configure the build, or build the engine."""


class ServerError(CmrtError, RuntimeError):
    """A Triton Inference Server (``cmrt serve``) could not start, or stopped; the message holds
    the end of its log."""


class ParityError(CmrtError, RuntimeError):
    """An exported graph or engine does not reproduce its PyTorch source within tolerance."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise ``MissingDependencyError`` naming the extra.

    Args:
        module: the module to import, e.g. ``"tensorrt_rtx"``.
        extra: the pip extra that provides it, e.g. ``"trt-rtx"``.
        purpose: what it is needed for, used in the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python module '{module}', which is not installed: "
            f"run `pip install 'cmrt[{extra}]'` ({exc})"
        ) from None
