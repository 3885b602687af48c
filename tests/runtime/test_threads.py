"""Intra-op threads: ``$CMRT_THREADS`` sets every session's default, and each pytest-xdist worker
runs PyTorch and ONNX Runtime on its share of the cores (tests/conftest.py)."""

import os

import pytest
import torch

from cmrt.errors import ConfigError
from cmrt.runtime.backends import THREADS_ENV, default_threads, session_options
from tests.conftest import THREADS


def test_default_threads_from_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == 0 and session_options().intra_op_num_threads == 0  # one per physical core
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3 and session_options().intra_op_num_threads == 3
    assert session_options(2).intra_op_num_threads == 2  # an explicit count wins


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_thread_count_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(ConfigError, match=THREADS_ENV):
        session_options()


def test_each_xdist_worker_gets_its_share_of_the_cores():
    if THREADS is None:
        pytest.skip("not under pytest-xdist: the libraries' own defaults")
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert THREADS * workers <= max(len(os.sched_getaffinity(0)), workers)
    assert torch.get_num_threads() == THREADS
    assert session_options().intra_op_num_threads == THREADS == int(os.environ[THREADS_ENV])
