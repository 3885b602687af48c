"""Finding PyTriton's Triton and checking the serving environment; summarizing a server log."""

from __future__ import annotations

import sys

import pytest

from cmrt.errors import ConfigError, MissingDependencyError
from cmrt.serve.server import _check_environment, find_triton, summarize_log


@pytest.mark.integration  # runs the serving environment's Python
def test_the_serving_environment_is_found_and_usable(serve_python):
    install = find_triton(serve_python)
    assert install.server.is_file() and install.stub.is_file()
    assert install.python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert str(install.python.parent) == install.environment()["PATH"].split(":")[0]


def test_an_environment_without_pytriton_or_with_numpy_2_is_refused(tmp_path):
    good = {"pytriton": "/x", "cmrt": True, "numpy": "1.26.4"}
    _check_environment(tmp_path, good)
    for facts, message in (({**good, "pytriton": None}, "PyTriton's tritonserver"),
                           ({**good, "cmrt": False}, "runs cmrt"),
                           ({**good, "numpy": "2.4.6"}, "numpy<2")):
        with pytest.raises(MissingDependencyError, match=message):
            _check_environment(tmp_path, facts)
    with pytest.raises(ConfigError, match="does not exist"):
        find_triton(tmp_path / "no-python")


def test_log_summary_keeps_errors_without_tracebacks():
    log = "\n".join([
        'E1128 09:16:57.195054 15872 server.cc:241] "CudaDriverHelper has not been initialized."',
        "| model | READY |",
        'E1128 09:16:58.878685 15872 model_lifecycle.cc:642] "failed to load \'x\' version 1: Internal: '
        'BundleError: broken\\n\\nAt:\\n  /a.py(1): f\\n"',
        "error: creating server: Internal - failed to load all models"])
    assert summarize_log(log) == ["failed to load 'x' version 1: Internal: BundleError: broken",
                                  "error: creating server: Internal - failed to load all models"]
    assert summarize_log("I1128 started\n+----+\n| a |\nI1128 stopped") == ["I1128 started", "I1128 stopped"]
