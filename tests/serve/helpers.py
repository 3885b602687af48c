"""Helpers of the serving tests: clients with timeouts, request builders."""

from __future__ import annotations

import numpy as np

MAX_BATCH = 8
QUEUE_DELAY_US = 20_000  # long enough that concurrent requests reliably merge on a busy 2-core machine
START_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0


def http_client(server):
    import tritonclient.http as http

    return http.InferenceServerClient(server.http_url, connection_timeout=CLIENT_TIMEOUT_S,
                                      network_timeout=CLIENT_TIMEOUT_S)


def grpc_client(server):
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(server.grpc_url)


def protocol(client) -> object:
    """The tritonclient module (http or grpc) a client belongs to."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    return grpc if isinstance(client, grpc.InferenceServerClient) else http


_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
              np.dtype(np.int32): "INT32", np.dtype(object): "BYTES"}  # object arrays: strings (prompts)


def infer(client, model: str, **arrays: np.ndarray) -> np.ndarray:
    """One request with the given inputs (name → array, dtype as given); its ``images``."""
    mod = protocol(client)
    inputs = []
    for name, a in arrays.items():
        i = mod.InferInput(name, list(a.shape), _DATATYPES[a.dtype])
        i.set_data_from_numpy(a)
        inputs.append(i)
    kwargs = {"client_timeout": CLIENT_TIMEOUT_S} if mod.__name__.endswith("grpc") else {}
    return client.infer(model, inputs, **kwargs).as_numpy("images")


def seed_rows(seed: int, batch: int) -> np.ndarray:
    """A request's ``seed`` input: one seed on each of its ``batch`` rows."""
    return np.full((batch, 1), seed, dtype=np.int64)


def latents(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, h, w)).astype(np.float32)


# --- a stand-in for triton_python_backend_utils (unit tests of the model without a server) ----
class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors, error=None) -> None:
        self.outputs, self.error = {t.name(): t.as_numpy() for t in output_tensors}, error


class FakeLogger:
    lines: list = []

    @classmethod
    def log_error(cls, msg: str) -> None:
        cls.lines.append(msg)

    log_info = log_error


class FakePb:
    """The parts of ``triton_python_backend_utils`` cmrt's model uses; a request is a dict of arrays."""

    Tensor, InferenceResponse, TritonError, Logger = FakeTensor, FakeResponse, FakeError, FakeLogger

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str):
        return FakeTensor(name, request[name]) if name in request else None
