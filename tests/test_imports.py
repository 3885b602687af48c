"""Cheap import: every module imports without the optional extras, and `import cmrt` stays light."""

import importlib
import pkgutil
import subprocess
import sys

import cmrt


def test_every_module_imports():
    for info in pkgutil.walk_packages(cmrt.__path__, "cmrt."):
        importlib.import_module(info.name)


def test_import_cmrt_is_cheap():
    code = ("import sys, cmrt; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_surface():
    for name in cmrt.__all__:
        assert getattr(cmrt, name) is not None
    assert issubclass(cmrt.InputError, ValueError) and issubclass(cmrt.InputTypeError, TypeError)
    assert issubclass(cmrt.BundleNotFoundError, FileNotFoundError)
