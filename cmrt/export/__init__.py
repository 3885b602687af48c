"""Export: model → unrolled sampler → ONNX bundle (``api``), FP16 graph (``precision``), engine (``tensorrt``).

``cmrt.export`` is both this subpackage and the export function: calling the package calls
``cmrt.export.api.export`` (so ``cmrt.export(src, out=...)`` works however the package was imported).
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
