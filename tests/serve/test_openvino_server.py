"""A real Triton server whose Python model runs whatever backend cmrt's runner picks: on a CPU with
native BF16 (the flags set through ``$CMRT_CPU_FLAGS``, which the server inherits) and a bundle
whose OpenVINO BF16 parity passed, that is ``openvino-bf16``; and one model asked for it by name."""

from __future__ import annotations

import numpy as np
import pytest

import cmrt
from cmrt.runtime import openvino as ovb
from cmrt.serve.repository import RepositoryOptions, write_repository
from tests.conftest import timed_as
from tests.serve.helpers import START_TIMEOUT_S, http_client, infer, latents, seed_rows

pytest.importorskip("openvino")
BF16 = "avx512f avx512_bf16 avx512_vnni avx2"


@pytest.mark.integration
def test_server_runs_the_default_openvino_backend(decoder_bundle, bundle_copy, serve_python, tmp_path, monkeypatch):
    from cmrt.serve.server import TritonServer

    bundle = bundle_copy(decoder_bundle, "ovdec")  # the shared bundle, exported before the flags change
    monkeypatch.setenv(ovb.CPU_FLAGS_ENV, BF16)
    assert ovb.check_and_record(bundle).passed
    bundle = timed_as(bundle, 1.5)  # measured faster: the default the server's runner must take
    named = bundle_copy(decoder_bundle, "ovdec_named")
    write_repository([bundle.path], tmp_path / "models", options=RepositoryOptions(max_batch=4, plain=False))
    write_repository([named.path], tmp_path / "named", options=RepositoryOptions(max_batch=4, plain=False,
                                                                                 backend="openvino-bf16"))
    import shutil

    shutil.copytree(tmp_path / "named" / "ovdec_named", tmp_path / "models" / "ovdec_named")
    z = latents(2, 4, 6, seed=1)
    with cmrt.Decoder(bundle.path) as d:
        assert d.backend.name == "openvino-bf16"
        ref = d.decode(z, seed=7)
    server = TritonServer(tmp_path / "models", python=serve_python, models=["ovdec", "ovdec_named"],
                          log_file=tmp_path / "triton.log")
    try:
        server.start(timeout_s=START_TIMEOUT_S)
        client = http_client(server)
        try:
            for model in ("ovdec", "ovdec_named"):
                images = infer(client, model, latents=z, seed=seed_rows(7, 2))
                assert np.abs(images - ref).max() <= 1e-5, model
        finally:
            client.close()
    finally:
        server.stop()
    log = server.log_file.read_text(errors="replace")
    assert "ovdec serves" in log and "backend openvino-bf16" in log
    assert log.count("backend openvino-bf16") >= 2, log[-2000:]
