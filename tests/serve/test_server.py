"""A real Triton server (PyTriton's tritonserver, Python backend) on the tiny decoder ``dec2``,
sampler ``cm2`` and inpainting editor ``edit_inpaint``: seeded requests over HTTP and gRPC equal the in-process calls, merged requests
stay correct, bad requests get errors and the server stays healthy."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cmrt
from tests.serve.helpers import MAX_BATCH, grpc_client, http_client, infer, latents, seed_rows

pytestmark = pytest.mark.integration  # a real Triton server

ATOL = 1e-5
CLIENTS = 8
REQUESTS_PER_CLIENT = 10


@pytest.fixture(scope="module")
def clients(server):
    """An HTTP and a gRPC client, closed before the server stops (an open HTTP connection holds up
    Triton's shutdown)."""
    pair = {"http": http_client(server), "grpc": grpc_client(server)}
    yield pair
    for c in pair.values():
        c.close()


@pytest.fixture(scope="module")
def decoder(decoder_bundle):
    return cmrt.Decoder(decoder_bundle.path)


@pytest.fixture(scope="module")
def sampler(cm_bundle):
    return cmrt.Sampler(cm_bundle.path)


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_seeded_decode_equals_in_process(clients, decoder, proto):
    z = latents(2, 4, 6, seed=1)
    images = infer(clients[proto], "dec2", latents=z, seed=seed_rows(123, 2))
    assert images.shape == (2, 3, 32, 48)
    assert np.abs(images - decoder.decode(z, seed=123)).max() <= ATOL


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_seeded_sample_equals_in_process(clients, sampler, proto):
    labels = np.array([[3], [1], [4]], dtype=np.int64)
    images = infer(clients[proto], "cm2", class_labels=labels, seed=seed_rows(9, 3))
    assert np.abs(images - sampler.sample(3, class_labels=[3, 1, 4], seed=9)).max() <= ATOL
    drawn = infer(clients[proto], "cm2", seed=seed_rows(10, 2))  # labels drawn from the seed, as in-process
    assert np.abs(drawn - sampler.sample(2, seed=10)).max() <= ATOL


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_seeded_inpaint_equals_in_process(clients, edit_inpaint, proto):
    rng = np.random.default_rng(3)
    image = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    mask = np.zeros((2, 1, 16, 16), np.float32)
    mask[..., 4:12, 4:12] = 1.0
    labels = np.array([[2], [5]], dtype=np.int64)
    images = infer(clients[proto], "edit_inpaint", image=image, mask=mask, class_labels=labels, seed=seed_rows(4, 2))
    with cmrt.Editor(edit_inpaint.path) as editor:
        ref = editor.edit(image, mask=mask, class_labels=[2, 5], seed=4)
    assert np.abs(images - ref).max() <= ATOL
    assert np.array_equal(images * (1 - mask), image * (1 - mask))  # the kept part is the input, exactly


def test_unseeded_requests_differ(clients):
    z = latents(1, 4, 4)
    a, b = (infer(clients["http"], "dec2", latents=z) for _ in range(2))
    assert a.shape == (1, 3, 32, 32) and np.abs(a - b).max() > 1e-3


def _concurrently(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads; their results (an exception fails the test)."""
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = work(i)
        except Exception as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return results


def test_concurrent_requests_of_different_latent_sizes(server, decoder):
    sizes = [(4, 4), (4, 6), (6, 4), (4, 4), (4, 6), (6, 4)]

    def work(i):
        c = http_client(server) if i % 2 else grpc_client(server)
        try:
            z = latents(1, *sizes[i], seed=i)
            return z, infer(c, "dec2", latents=z, seed=seed_rows(100 + i, 1))
        finally:
            c.close()

    for i, (z, images) in enumerate(_concurrently(len(sizes), work)):
        assert np.abs(images - decoder.decode(z, seed=100 + i)).max() <= ATOL


def _batch_sizes(server, model: str) -> dict[int, int]:
    """Executions per merged batch size, from Triton's statistics endpoint."""
    c = http_client(server)
    try:
        stats = c.get_inference_statistics(model)["model_stats"][0]
    finally:
        c.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_load_all_answered_correctly_and_merged(server, decoder, sampler):
    """8 clients × 10 requests each (decoder and sampler alternating, HTTP and gRPC), all at once."""
    before = {m: _batch_sizes(server, m) for m in ("dec2", "cm2")}

    def work(i):
        c = http_client(server) if i % 2 else grpc_client(server)
        out = []
        try:
            for k in range(REQUESTS_PER_CLIENT):
                seed = 1000 * i + k
                if k % 2:
                    out.append(("cm2", seed, None, infer(c, "cm2", class_labels=np.array([[k]]), seed=seed_rows(seed, 1))))
                else:
                    z = latents(1, 4, 4, seed=seed)
                    out.append(("dec2", seed, z, infer(c, "dec2", latents=z, seed=seed_rows(seed, 1))))
        finally:
            c.close()
        return out

    answers = [a for per_client in _concurrently(CLIENTS, work) for a in per_client]
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    wrong = []
    for model, seed, z, images in answers:
        if model == "dec2":
            ref = decoder.decode(z, seed=seed)
        else:
            ref = sampler.sample(1, class_labels=[(seed % 1000)], seed=seed)
        if images.shape != ref.shape or np.abs(images - ref).max() > ATOL:
            wrong.append((model, seed))
    assert not wrong
    for model in ("dec2", "cm2"):
        after = _batch_sizes(server, model)
        merged = {b: n - before[model].get(b, 0) for b, n in after.items() if b > 1 and n > before[model].get(b, 0)}
        assert merged, f"{model}: no execution ran more than one request (batch sizes {after})"
        assert max(merged) <= MAX_BATCH


def _error(fn) -> str:
    """The message of the error response ``fn`` must get."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        fn()
    return str(info.value)


def test_bad_requests_get_errors_and_the_server_stays_healthy(server, clients):
    http, grpc = clients["http"], clients["grpc"]
    z = latents(1, 4, 4)
    nan = z.copy()
    nan[0, 1, 2, 3] = np.nan
    cases = {
        # answered by cmrt (its one-line message)
        "NaN latents": (lambda: infer(http, "dec2", latents=nan), "cmrt: latents contains NaN"),
        "NaN latents, gRPC": (lambda: infer(grpc, "dec2", latents=nan), "cmrt: latents contains NaN"),
        "empty latents": (lambda: infer(http, "dec2", latents=np.zeros((1, 4, 0, 4), np.float32)), "cmrt: latents is empty"),
        "negative seed": (lambda: infer(http, "dec2", latents=z, seed=seed_rows(-1, 1)), "cmrt: seed must be in [0, 2**63)"),
        "two seeds in one request": (lambda: infer(http, "dec2", latents=latents(2, 4, 4), seed=np.array([[1], [2]])),
                                     "cmrt: seed must repeat one value on every row"),
        "label out of range": (lambda: infer(grpc, "cm2", class_labels=np.array([[10]])), "cmrt: class_labels must lie in [0, 10)"),
        # answered by Triton from the model configuration, before cmrt runs
        "wrong channel count": (lambda: infer(http, "dec2", latents=np.zeros((1, 3, 4, 4), np.float32)), "unexpected shape"),
        "wrong rank": (lambda: infer(grpc, "dec2", latents=np.zeros((4, 4, 4), np.float32)), "unexpected shape"),
        "unknown model": (lambda: infer(http, "nope", latents=z), "unknown model"),
        "missing input": (lambda: infer(http, "dec2", seed=seed_rows(1, 1)), "latents"),
        "seed of the wrong type": (lambda: infer(http, "dec2", latents=z, seed=np.ones((1, 1), np.float32)), "INT64"),
        "seed of the wrong type, gRPC": (lambda: infer(grpc, "dec2", latents=z, seed=np.ones((1, 1), np.int32)), "INT64"),
        "batch above max_batch_size": (lambda: infer(http, "dec2", latents=latents(MAX_BATCH + 1, 4, 4)), "batch-size must be <="),
    }
    pid = server.process.pid
    for label, (fn, expected) in cases.items():
        message = _error(fn)
        assert expected in message, f"{label}: {message}"
    assert server.running() and server.process.pid == pid  # no restart
    for c in (http, grpc):
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("dec2") and c.is_model_ready("cm2")
    assert infer(http, "dec2", latents=z, seed=seed_rows(1, 1)).shape == (1, 3, 32, 32)  # still serving


def test_readme_client_snippet(server, decoder):
    """docs/serving.md's client example, run as written against this server (its URL and model name)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    block = re.search(r"<!-- serve-client-test:start -->\s*```python\n(.*?)```\s*<!-- serve-client-test:end -->",
                      readme, re.S)
    assert block, "docs/serving.md lost its tested serving client block"
    code = block.group(1).replace('"localhost:8000", "decoder"', f'"{server.http_url}", "dec2"')
    assert server.http_url in code, "the snippet's URL/model line changed: update this test"
    scope: dict = {}
    exec(compile(code, "docs/serving.md", "exec"), scope)  # noqa: S102 - the repository's own docs
    assert np.abs(scope["images"] - decoder.decode(scope["latents"], seed=7)).max() <= ATOL
