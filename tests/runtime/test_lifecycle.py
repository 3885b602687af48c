"""The runner lifecycle: close(), context managers, closed runners, and concurrent calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cmrt


def test_close_frees_the_backend_and_refuses_later_calls(cm_bundle):
    s = cmrt.Sampler(cm_bundle.path)
    s.sample(2, seed=0)
    s.close()
    assert s.closed
    with pytest.raises(cmrt.RunnerClosedError, match="closed: open a new one") as info:
        s.sample(2, seed=0)
    assert isinstance(info.value, ValueError)
    s.close()  # idempotent


def test_context_manager_closes(decoder_bundle):
    z = np.zeros((1, 4, 2, 2), np.float32)
    with cmrt.Decoder(decoder_bundle.path) as d:
        out = d.decode(z, seed=0)
        assert out.shape == (1, 3, 16, 16)
    assert d.closed
    with pytest.raises(cmrt.RunnerClosedError):
        d.decode(z, seed=0)
    with pytest.raises(cmrt.RunnerClosedError):
        with d:
            pass


@pytest.mark.parametrize("threads", [8])
def test_concurrent_calls_equal_serial_calls(cm_bundle, decoder_bundle, threads):
    """Several threads on one runner (each its own seed) give exactly the serial results."""
    s, d = cmrt.Sampler(cm_bundle.path), cmrt.Decoder(decoder_bundle.path)
    z = np.random.default_rng(0).normal(size=(2, 4, 3, 5)).astype(np.float32)
    jobs = [(lambda k=k: s.sample(3, seed=k)) if k % 2 else (lambda k=k: d.decode(z, seed=k)) for k in range(threads * 2)]
    serial = [job() for job in jobs]
    results: list = [None] * len(jobs)
    errors: list = []
    start = threading.Barrier(threads)

    def worker(idx: list[int]) -> None:
        start.wait()
        try:
            for i in idx:
                results[i] = jobs[i]()
        except Exception as exc:  # noqa: BLE001  (reported below, with the failing thread's error)
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(list(range(t, len(jobs), threads)),)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    assert not errors, errors
    assert all(np.array_equal(a, b) for a, b in zip(results, serial))
