"""Engine validity (TensorRT-RTX ``Runtime.get_engine_validity``), decoded once for both sides:
after a build (``engine_validity``: the header check recorded in the manifest) and before a load
(``check_validity``: refuse an engine that cannot run here, naming each diagnostic's fix).

The diagnostics bit mask is decoded as TensorRT-RTX's ``samples/apiUsage/python/api_usage.py``
does; names as in ``tensorrt_rtx`` 1.7.1's ``EngineInvalidityDiagnostics``. Libraries without the
call (TensorRT 11's ``pyCore.cpp`` binds none) are "not checked".
"""

from __future__ import annotations

import warnings

from ..errors import BundleError

#: Diagnostics that say the header itself is bad (not this machine).
HEADER_DEFECTS = {"MALFORMED_ENGINE", "VERSION_MISMATCH"}

#: What to do about each ``EngineInvalidityDiagnostics`` flag.
DIAGNOSTIC_FIXES = {
    "VERSION_MISMATCH": "it was built by another TensorRT-RTX version: rebuild it with `cmrt build BUNDLE "
                        "--target tensorrt-rtx`",
    "UNSUPPORTED_CC": "this GPU's compute capability is not one it was built for: rebuild with "
                      "`--compute-capability` naming this GPU's",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old for this TensorRT-RTX: update the driver",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old: update the CUDA runtime this TensorRT-RTX wheel uses",
    "INSUFFICIENT_GPU_MEMORY": "the GPU has too little free memory: free GPU memory or rebuild with a smaller "
                               "profile (--max-batch/--max-latent)",
    "MALFORMED_ENGINE": "the file is damaged or not an engine: rebuild it",
    "CUDA_ERROR": "CUDA is not installed correctly: reinstall the NVIDIA driver",
}


def diagnostic_names(trt, diagnostics: int) -> list[str]:
    """The names of the ``EngineInvalidityDiagnostics`` flags set in ``diagnostics`` (a bit mask)."""
    return [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items()
            if int(diagnostics) & int(member)]


def query_validity(trt, runtime, plan) -> tuple[str, list[str]] | None:
    """``runtime.get_engine_validity(plan)`` as (validity name, diagnostic names), or None when the
    library has no such call."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return None
    validity, diagnostics = check(plan)
    return validity.name, diagnostic_names(trt, diagnostics)


# --- after a build -----------------------------------------------------------------------
def engine_validity(trt, plan, *, gpu: dict | None = None) -> dict:
    """The plan's validity from its header, as the manifest records it.

    ``header_ok`` is True when the header is well-formed and from this library version (no
    ``MALFORMED_ENGINE`` / ``VERSION_MISMATCH``). Without a GPU the device part of the check
    cannot run (TensorRT-RTX then answers INVALID with no header diagnostic), so
    ``device_checked`` is False. Libraries without the call give ``{"checked": False}``.
    """
    runtime = trt.Runtime(quiet_logger(trt))
    answer = query_validity(trt, runtime, plan)
    if answer is None:
        return {"checked": False}
    validity, flags = answer
    header_ok = not set(flags) & HEADER_DEFECTS
    verdict = ("header malformed or from another version" if not header_ok else
               f"header valid; on this GPU: {validity}" if gpu is not None else
               "header valid for this library version; the device check needs a GPU (none here)")
    return {"checked": True, "validity": validity, "diagnostics": flags, "header_ok": header_ok,
            "device_checked": gpu is not None, "verdict": verdict, "header_bytes": int(runtime.engine_header_size)}


def validity_problem(validity: dict) -> str | None:
    """Why a freshly built plan must be refused, or None (pure: the ``engine_validity`` record)."""
    if not validity.get("checked"):
        return None
    if not validity["header_ok"]:
        return f"its header check reports {validity['diagnostics']}"
    if validity["device_checked"] and validity["validity"] == "INVALID":
        return f"it is invalid on this GPU: {validity['diagnostics'] or 'no diagnostics'}"
    return None


def quiet_logger(trt):
    """A TensorRT logger that keeps messages instead of printing them (the header check logs a
    fatal-level line when it finds no GPU, which is expected on a build machine)."""

    class Quiet(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:
            self.messages.append(f"{severity}: {msg}")

    return Quiet()


# --- before a load -----------------------------------------------------------------------
def validity_problem_at_load(validity: str, flags: list[str], *, file: str) -> str | None:
    """Why an engine must not be loaded on this machine, or None (pure).

    Args:
        validity: the ``EngineValidity`` name, "VALID", "SUBOPTIMAL" or "INVALID".
        flags: the ``EngineInvalidityDiagnostics`` names that are set.
        file: the engine file, for the message.
    """
    if validity != "INVALID":
        return None
    if not flags:
        return (f"TensorRT-RTX reports {file} invalid on this machine without a reason (no usable CUDA GPU "
                "or driver?): check `nvidia-smi`, then rebuild with `cmrt build BUNDLE --target tensorrt-rtx`")
    reasons = "; ".join(f"{f}: {DIAGNOSTIC_FIXES.get(f, 'see the TensorRT-RTX log')}" for f in flags)
    return f"{file} cannot run here ({reasons})"


def check_validity(trt, runtime, plan, *, file: str) -> str | None:
    """Ask the runtime for the plan's validity before deserializing; raise ``BundleError`` naming
    each diagnostic when the engine is invalid here, warn when it is SUBOPTIMAL.

    Returns the validity name, or None when the library has no such call.
    """
    answer = query_validity(trt, runtime, plan)
    if answer is None:
        return None
    validity, flags = answer
    problem = validity_problem_at_load(validity, flags, file=file)
    if problem:
        raise BundleError(problem)
    if validity == "SUBOPTIMAL":
        warnings.warn(f"TensorRT-RTX reports {file} valid but likely slow here ({', '.join(flags) or 'no reason'})",
                      stacklevel=3)
    return validity
