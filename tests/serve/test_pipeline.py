"""A pipeline bundle (the tiny full LCM of tests/pipelines, 4 steps) served by ``cmrt triton`` /
``cmrt serve``: prompt strings in, images out. Without a server: requests merged into one
``generate`` call stay equal to their own calls (negative prompts under CFG too, on the LCM-LoRA
bundle), a bad request in a merged group gets its own message, a consistency decoder stage never
merges. On a real Triton server (one for the module): a seeded request of two prompts equals
``cmrt.Pipeline.generate`` with that seed, the guidance scale per request changes the image, bad
requests come back as errors and the model keeps serving."""

from __future__ import annotations

import numpy as np
import pytest

from cmrt.parity import tolerance_for
from cmrt.runtime.pipeline import Pipeline
from cmrt.serve.model import PipelineRequestServer
from cmrt.serve.repository import RepositoryOptions, write_repository
from tests.pipelines.conftest import (cd_folder, lcm_bundle, lcm_bundles, lcm_cd_bundle, lcm_folder,  # noqa: F401
                                      lcm_lora, lora_bundle, sd_folder)  # the cached tiny bundles
from tests.serve.helpers import MAX_BATCH, QUEUE_DELAY_US, START_TIMEOUT_S, FakePb, http_client, infer

ATOL = tolerance_for("fp32").max_abs  # a merged call runs the rows in a larger batch
SIZE = 32  # pixels; the tiny LCM's default is 64


def prompt_rows(*prompts: str) -> np.ndarray:
    """A ``prompt`` / ``negative_prompt`` input: one UTF-8 string per row, (B, 1)."""
    return np.array([[p.encode()] for p in prompts], dtype=object)


def rows(value, batch: int, dtype=np.int64) -> np.ndarray:
    """A per-request input (seed, guidance_scale, height, width): one value on each of ``batch`` rows."""
    return np.full((batch, 1), value, dtype=dtype)


def request(*prompts: str, seed=None, guidance=None, size=(SIZE, SIZE), negative=None) -> dict[str, np.ndarray]:
    b = len(prompts)
    r = {"prompt": prompt_rows(*prompts), "height": rows(size[0], b), "width": rows(size[1], b)}
    if seed is not None:
        r["seed"] = rows(seed, b)
    if guidance is not None:
        r["guidance_scale"] = rows(guidance, b, np.float32)
    if negative is not None:
        r["negative_prompt"] = prompt_rows(*negative)
    return r


def _served(bundle, requests: list[dict]) -> tuple[list, list[int]]:
    """The responses of one execution over ``requests``, and the prompt count of every ``generate`` call."""
    calls = []
    with Pipeline(bundle) as runner:
        generate = runner.generate

        def counting(prompt, **kw):
            calls.append(len(prompt))
            return generate(prompt, **kw)

        runner.generate = counting
        return PipelineRequestServer(runner, FakePb).execute(requests), calls


def _own_call(pipe, req: dict) -> np.ndarray:
    """What ``req`` must return: its own ``generate`` call."""
    decode = lambda name: [p.decode() for p in req[name][:, 0]] if name in req else None  # noqa: E731
    scale = float(req["guidance_scale"][0, 0]) if "guidance_scale" in req else None
    return pipe.generate(decode("prompt"), negative_prompt=decode("negative_prompt"), seed=int(req["seed"][0, 0]),
                         guidance_scale=scale, height=int(req["height"][0, 0]), width=int(req["width"][0, 0]))


@pytest.fixture(scope="module")
def pipe(lcm_bundle):
    with Pipeline(lcm_bundle) as p:
        yield p


# --- the Python model without a server ----------------------------------------------------------
def test_merged_requests_equal_their_own_calls(lcm_bundle, pipe):
    requests = [request("a cat", "a dog", seed=1), request("blue", seed=2),
                request("red", seed=3, size=(SIZE, 48)),  # another size: a call of its own
                request("a cat", seed=4, guidance=2.0),  # another guidance scale: a call of its own
                request("", seed=5)]
    responses, calls = _served(lcm_bundle, requests)
    assert sorted(calls) == [1, 1, 4]  # the three requests of one size and guidance as one call
    for req, resp in zip(requests, responses):
        ref = _own_call(pipe, req)
        assert resp.error is None and resp.outputs["images"].shape == ref.shape
        assert np.abs(resp.outputs["images"] - ref).max() <= ATOL


def test_a_bad_request_in_a_merged_group_gets_its_own_message(lcm_bundle, pipe):
    requests = [request("a cat", seed=1, size=(SIZE, 20)), request("a dog", seed=2, size=(SIZE, 20)),
                request("ok", seed=3), request("also ok", seed=-1)]
    with Pipeline(lcm_bundle) as runner:
        bad_width, also_bad, good, bad_seed = PipelineRequestServer(runner, FakePb).execute(requests)
    assert "width must be a positive multiple of 8" in bad_width.error.message
    assert "width must be a positive multiple of 8" in also_bad.error.message
    assert bad_seed.error.code == FakePb.TritonError.INVALID_ARG and "seed must be in [0, 2**63)" in bad_seed.error.message
    assert good.error is None
    assert np.abs(good.outputs["images"] - pipe.generate("ok", seed=3, height=SIZE, width=SIZE)).max() <= ATOL


def test_merged_requests_with_negative_prompts_under_cfg(lora_bundle):
    """LCM-LoRA with classifier-free guidance: negative prompts concatenated in order, per request."""
    requests = [request("a cat", "a dog", seed=1, guidance=2.0, negative=["blurry", "dark"]),
                request("blue", seed=2, guidance=2.0, negative=["red"]),
                request("green", seed=3, guidance=2.0)]  # without negative prompts: a call of its own
    responses, calls = _served(lora_bundle, requests)
    assert sorted(calls) == [1, 3]
    with Pipeline(lora_bundle) as pipe:
        for req, resp in zip(requests, responses):
            assert resp.error is None and np.abs(resp.outputs["images"] - _own_call(pipe, req)).max() <= ATOL


def test_a_consistency_decoder_stage_never_merges(lcm_cd_bundle):
    """Its noise continues each seed's generator after the LCM's: one call per request, each exact."""
    requests = [request("a cat", seed=1), request("a dog", seed=2)]
    responses, calls = _served(lcm_cd_bundle, requests)
    assert calls == [1, 1]
    with Pipeline(lcm_cd_bundle) as pipe:
        for req, resp in zip(requests, responses):
            assert resp.error is None and np.array_equal(resp.outputs["images"], _own_call(pipe, req))


def test_repository_of_a_pipeline_bundle(pipeline_repo, lcm_bundle):
    from tests.serve.test_repository import dims, parse

    name = lcm_bundle.name
    assert sorted(p.name for p in pipeline_repo.iterdir()) == [name]  # no plain model: no single graph
    config = parse(pipeline_repo / name / "config.pbtxt")
    assert [(i.name, dims(i), i.optional) for i in config.input] == [
        ("prompt", [1], False), ("negative_prompt", [1], True), ("seed", [1], True), ("guidance_scale", [1], True),
        ("height", [1], True), ("width", [1], True)]
    assert (config.backend, config.max_batch_size, dims(config.output[0])) == ("python", MAX_BATCH, [3, -1, -1])
    served = pipeline_repo / name / "1" / "bundle"
    assert sorted(str(p.relative_to(served)) for p in served.rglob("*") if p.is_file()) == sorted(
        str(p.relative_to(lcm_bundle)) for p in lcm_bundle.rglob("*") if p.is_file())  # tokenizer/, parity/ too


def test_cli_writes_a_pipeline_model_and_refuses_a_backend_in_one_line(lcm_bundle, tmp_path, capsys):
    from cmrt.cli import main

    assert main(["triton", str(lcm_bundle), "--out", str(tmp_path / "r"), "--max-batch", "4"]) == 0
    assert f"{lcm_bundle.name} (python, max batch 4)" in capsys.readouterr().out
    assert main(["triton", str(lcm_bundle), "--out", str(tmp_path / "x"), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--backend tensorrt does not apply to" in err
    assert "a pipeline runs on ONNX Runtime" in err and not (tmp_path / "x").exists()


# --- a real Triton server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_repo(lcm_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-pipeline") / "models"
    write_repository([lcm_bundle], out, options=RepositoryOptions(max_batch=MAX_BATCH, max_queue_delay_us=QUEUE_DELAY_US))
    return out


@pytest.fixture(scope="module")
def pipeline_server(pipeline_repo, serve_python):
    from cmrt.serve.server import TritonServer

    s = TritonServer(pipeline_repo, python=serve_python)
    try:
        s.start(timeout_s=START_TIMEOUT_S)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(pipeline_server):
    c = http_client(pipeline_server)
    yield c
    c.close()


@pytest.mark.integration
def test_seeded_request_of_two_prompts_equals_generate(pipeline_server, client, lcm_bundle, pipe):
    from tests.serve.helpers import grpc_client

    name = lcm_bundle.name
    images = infer(client, name, **request("a red cat", "blue", seed=7, size=(SIZE, 48)))
    ref = pipe.generate(["a red cat", "blue"], seed=7, height=SIZE, width=48)
    assert images.shape == (2, 3, SIZE, 48)
    assert np.abs(images - ref).max() <= ATOL
    grpc = grpc_client(pipeline_server)
    try:  # the same over gRPC, with negative prompts (a full LCM ignores them, as diffusers does)
        again = infer(grpc, name, **request("a red cat", "blue", seed=7, size=(SIZE, 48), negative=["x", "y"]))
    finally:
        grpc.close()
    assert np.abs(again - ref).max() <= ATOL


@pytest.mark.integration
def test_guidance_scale_per_request_changes_the_image(client, lcm_bundle, pipe):
    name = lcm_bundle.name
    low, high = (infer(client, name, **request("a red cat", seed=3, guidance=g)) for g in (1.5, 8.0))
    assert np.abs(low - high).max() > 1e-2
    assert np.abs(low - pipe.generate("a red cat", seed=3, guidance_scale=1.5, height=SIZE, width=SIZE)).max() <= ATOL


@pytest.mark.integration
def test_bad_requests_get_errors_and_the_model_keeps_serving(pipeline_server, client, lcm_bundle):
    from tritonclient.utils import InferenceServerException

    name = lcm_bundle.name
    ok = request("a cat", seed=1)
    cases = {
        # answered by cmrt: Pipeline.generate's checks, or the wire format's
        "height not divisible by 8": (request("a cat", size=(30, SIZE)), "cmrt: height must be a positive multiple of 8"),
        "negative guidance": (request("a cat", guidance=-1.0), "cmrt: guidance_scale must be a finite number ≥ 0"),
        "NaN guidance": (request("a cat", guidance=np.nan), "cmrt: guidance_scale must be a finite number ≥ 0"),
        "two seeds in one request": (request("a", "b") | {"seed": np.array([[1], [2]])},
                                     "cmrt: seed must repeat one value on every row"),
        "prompt not UTF-8": (ok | {"prompt": np.array([[b"\xff\xfe"]], object)}, "cmrt: prompt row 0 is not UTF-8"),
        # answered by Triton from the model configuration, before cmrt runs
        "empty prompt list": ({"prompt": np.zeros((0, 1), object)}, "for inference input 'prompt'"),
        "guidance of the wrong type": (ok | {"guidance_scale": np.ones((1, 1), np.int64)}, "FP32"),
        "no prompt": ({"seed": rows(1, 1)}, "prompt"),
    }
    pid = pipeline_server.process.pid
    for label, (arrays, expected) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            infer(client, name, **arrays)
        assert expected in str(info.value), f"{label}: {info.value}"
    assert pipeline_server.running() and pipeline_server.process.pid == pid
    assert client.is_model_ready(name)
    assert infer(client, name, **ok).shape == (1, 3, SIZE, SIZE)


@pytest.mark.integration
def test_concurrent_requests_merge_and_stay_equal_to_generate(pipeline_server, lcm_bundle, pipe):
    """Four clients at once, three of one size (merged into one call when Triton hands them over
    together) and one of another: each answer is its own seeded ``generate``."""
    from tests.serve.test_server import _batch_sizes, _concurrently

    name = lcm_bundle.name
    sizes = [(SIZE, SIZE), (SIZE, SIZE), (SIZE, 48), (SIZE, SIZE)]
    before = _batch_sizes(pipeline_server, name)

    def work(i):
        c = http_client(pipeline_server)
        try:
            return infer(c, name, **request(f"prompt {i}", seed=20 + i, size=sizes[i]))
        finally:
            c.close()

    for i, images in enumerate(_concurrently(len(sizes), work)):
        ref = pipe.generate(f"prompt {i}", seed=20 + i, height=sizes[i][0], width=sizes[i][1])
        assert np.abs(images - ref).max() <= ATOL, i
    after = _batch_sizes(pipeline_server, name)
    assert any(b > 1 and n > before.get(b, 0) for b, n in after.items()), f"no merged execution: {after}"


@pytest.mark.integration
def test_docs_pipeline_client_snippet(pipeline_server, lcm_bundle, pipe):
    """docs/serving.md's pipeline client example, run as written against this server."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    block = re.search(r"<!-- serve-pipeline-client-test:start -->\s*```python\n(.*?)```\s*"
                      r"<!-- serve-pipeline-client-test:end -->", doc, re.S)
    assert block, "docs/serving.md lost its tested pipeline client block"
    code = block.group(1).replace('"localhost:8000", "lcm"', f'"{pipeline_server.http_url}", "{lcm_bundle.name}"')
    assert pipeline_server.http_url in code, "the snippet's URL/model line changed: update this test"
    scope: dict = {}
    exec(compile(code, "docs/serving.md", "exec"), scope)  # noqa: S102 - the repository's own docs
    ref = pipe.generate(["a photo of a cat", "a watercolor of a lighthouse"], seed=7, guidance_scale=4.0,
                        height=64, width=64)
    assert np.abs(scope["images"] - ref).max() <= ATOL
