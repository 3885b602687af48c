"""The Python-backend model without a server: requests prepared one by one (their own seeded noise),
grouped by shape, run as one batch per group; bad requests answered with cmrt's message."""

from __future__ import annotations

import numpy as np
import pytest

import cmrt
from cmrt.serve.model import RequestServer, TritonPythonModel, group, open_runner
from tests.serve.helpers import FakePb, latents, seed_rows


def _server(bundle):
    """A request server on the bundle whose backend records the batch of every run."""
    runner = open_runner(bundle.path)
    backend, batches = runner.backend, []
    run = backend.run

    def counting_run(feeds):
        batches.append(next(iter(feeds.values())).shape[0])
        return run(feeds)

    backend.run = counting_run
    return RequestServer(runner, FakePb), batches


def test_merged_decoder_requests_equal_in_process_per_request(decoder_bundle):
    server, batches = _server(decoder_bundle)
    requests = [{"latents": latents(1, 4, 6, seed=0), "seed": seed_rows(11, 1)},
                {"latents": latents(2, 4, 4, seed=1), "seed": seed_rows(12, 2)},  # another latent size
                {"latents": latents(2, 4, 6, seed=2), "seed": seed_rows(13, 2)},
                {"latents": latents(1, 4, 4, seed=3), "seed": seed_rows(14, 1)}]
    responses = server.execute(requests)
    assert sorted(batches) == [3, 3]  # two shapes → two runs of 1+2 images each
    decoder = cmrt.Decoder(decoder_bundle.path)
    for req, resp in zip(requests, responses):
        assert resp.error is None
        ref = decoder.decode(req["latents"], seed=int(req["seed"][0, 0]))
        np.testing.assert_allclose(resp.outputs["images"], ref, rtol=0, atol=1e-5)


def test_merged_sampler_requests_equal_in_process(cm_bundle):
    server, batches = _server(cm_bundle)
    requests = [{"class_labels": np.array([[1], [2]]), "seed": seed_rows(5, 2)},
                {"seed": seed_rows(6, 3)},  # labels drawn from the seed, after the noise
                {"class_labels": np.array([[7]]), "seed": seed_rows(7, 1)}]
    responses = server.execute(requests)
    assert batches == [6]
    sampler = cmrt.Sampler(cm_bundle.path)
    refs = [sampler.sample(2, class_labels=[1, 2], seed=5), sampler.sample(3, seed=6),
            sampler.sample(1, class_labels=[7], seed=7)]
    for resp, ref in zip(responses, refs):
        assert resp.error is None
        np.testing.assert_allclose(resp.outputs["images"], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ({"latents": np.full((1, 4, 4, 4), np.nan, np.float32)}, "NaN"),
    ({"latents": latents(2, 4, 4), "seed": np.array([[1], [2]])}, "one value on every row"),
    ({"latents": latents(1, 4, 4), "seed": seed_rows(-3, 1)}, "seed must be in [0, 2**63)"),
    ({"latents": np.zeros((1, 4, 0, 4), np.float32)}, "empty"),
])
def test_bad_request_gets_cmrt_message_others_run(decoder_bundle, bad, message):
    server, _ = _server(decoder_bundle)
    good = {"latents": latents(1, 4, 4), "seed": seed_rows(1, 1)}
    ok, err = server.execute([good, bad])
    assert ok.error is None and ok.outputs["images"].shape == (1, 3, 32, 32)
    assert err.error.code == FakePb.TritonError.INVALID_ARG
    assert err.error.message.startswith("cmrt: ") and message in err.error.message


def test_sampler_labels_out_of_range(cm_bundle):
    server, _ = _server(cm_bundle)
    (resp,) = server.execute([{"class_labels": np.array([[10]])}])
    assert "class_labels must lie in [0, 10)" in resp.error.message


def test_backend_failure_answers_its_group_only(decoder_bundle):
    runner = open_runner(decoder_bundle.path)
    backend, server = runner.backend, RequestServer(runner, FakePb)
    run = backend.run

    def failing_run(feeds):
        if feeds["latents"].shape[3] == 6:
            raise RuntimeError("device lost")
        return run(feeds)

    backend.run = failing_run
    a, b = server.execute([{"latents": latents(1, 4, 6)}, {"latents": latents(1, 4, 4)}])
    assert a.error.code == FakePb.TritonError.INTERNAL and "device lost" in a.error.message
    assert b.error is None


def test_grouping_keeps_arrival_order():
    from cmrt.serve.model import Prepared

    reqs = [Prepared(i, {"latents": np.zeros((1, 4, h, h), np.float32)}) for i, h in enumerate([4, 8, 4, 8, 2])]
    assert [[p.index for p in g] for g in group(reqs)] == [[0, 2], [1, 3], [4]]


def test_finalize_closes_the_runner_when_it_can(decoder_bundle):
    closed = []
    model = TritonPythonModel()
    runner = open_runner(decoder_bundle.path)
    runner.close = lambda: closed.append(True)
    model.server = RequestServer(runner, FakePb)
    model.finalize()
    assert closed == [True]


def test_merged_editor_requests_equal_in_process_per_request(edit_inpaint):
    """Inpainting requests (image, mask, labels, seed) merged into one run give Editor.edit's images."""
    server, batches = _server(edit_inpaint)
    rng = np.random.default_rng(0)
    image = lambda b: rng.uniform(-1, 1, (b, 3, 16, 16)).astype(np.float32)  # noqa: E731
    mask = lambda b: (rng.uniform(0, 1, (b, 1, 16, 16)) > 0.5).astype(np.float32)  # noqa: E731
    requests = [{"image": image(2), "mask": mask(2), "class_labels": np.array([[3], [4]]), "seed": seed_rows(7, 2)},
                {"image": image(1), "mask": mask(1), "seed": seed_rows(8, 1)},  # labels drawn from the seed
                {"image": image(1), "mask": np.full((1, 1, 16, 16), 2, np.float32)}]  # a mask outside [0, 1]
    responses = server.execute(requests)
    assert batches == [3] and "mask values must lie in [0, 1]" in responses[2].error.message
    editor = cmrt.Editor(edit_inpaint.path)
    refs = [editor.edit(requests[0]["image"], mask=requests[0]["mask"], class_labels=[3, 4], seed=7),
            editor.edit(requests[1]["image"], mask=requests[1]["mask"], seed=8)]
    for resp, ref in zip(responses, refs):
        assert resp.error is None
        np.testing.assert_allclose(resp.outputs["images"], ref, rtol=0, atol=1e-5)
