"""Serving bundles on NVIDIA Triton Inference Server.

* ``repository.write_repository`` (``cmrt triton``): a model repository, one model per bundle running
  cmrt's runtime in Triton's Python backend with dynamic batching, plus plain ``onnxruntime_onnx`` /
  ``tensorrt_plan`` models for callers who bring their own noise.
* ``model.TritonPythonModel``: the Python-backend model (noise drawn per request, requests of one
  shape run as one batch, cmrt's errors as Triton errors); for a pipeline bundle it runs
  ``cmrt.Pipeline`` on prompt strings (``pipeline``).
* ``server.TritonServer`` (``cmrt serve``): PyTriton's ``tritonserver`` binary on a repository.

Nothing here imports Triton, PyTriton or tritonclient at import time.
"""

from __future__ import annotations

from .repository import ModelEntry, RepositoryOptions, write_repository

__all__ = ["ModelEntry", "RepositoryOptions", "write_repository"]
