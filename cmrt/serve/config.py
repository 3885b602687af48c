"""Triton model configurations (``config.pbtxt``) for a bundle, as plain data rendered in protobuf
text format.

Three kinds of model per bundle:

* ``python_config``: cmrt's own runtime in Triton's Python backend (seeds, input checks, backend
  choice are cmrt's; noise drawn per request). Inputs carry the request's batch size ``B`` in
  their first axis, as Triton requires of a batching model: a decoder takes ``latents`` (B, 4, h, w)
  and an optional ``seed`` (B, 1); a sampler takes ``class_labels`` (B, 1) (class-conditional
  models) and/or ``seed`` (B, 1); an editor takes ``image`` (and ``mask`` for inpainting) with
  the graph's shapes, optional ``class_labels`` and an optional ``seed``. ``seed`` repeats one value on every row: one seed per request.
  A pipeline bundle takes ``prompt`` BYTES (B, 1) and optional ``negative_prompt``, ``seed``,
  ``guidance_scale``, ``height``, ``width`` (``cmrt.serve.pipeline``).
* ``onnx_config``: the bundle's graph on Triton's ``onnxruntime_onnx`` platform, for callers who
  bring their own noise (every ``noise_i`` is an input).
* ``tensorrt_config``: a TensorRT engine of the bundle on ``tensorrt_plan``, same inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..bundle import OUTPUT_NAME, EngineRecord, Manifest, PipelineManifest, TensorSpec

SEED_INPUT = "seed"
LABELS_INPUT = "class_labels"
IMAGE_INPUT = "image"
MASK_INPUT = "mask"
PROMPT_INPUT = "prompt"
NEGATIVE_INPUT = "negative_prompt"
GUIDANCE_INPUT = "guidance_scale"
HEIGHT_INPUT = "height"
WIDTH_INPUT = "width"
PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
BUNDLE_PARAMETER = "bundle"
BACKEND_PARAMETER = "backend"
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
           "bytes": "TYPE_STRING"}


class Enum(str):
    """A protobuf enum value: rendered bare (``TYPE_FP32``), not quoted."""


def python_config(name: str, manifest: Manifest | PipelineManifest, *, max_batch: int, instances: int,
                  max_queue_delay_us: int, dynamic_batching: bool, bundle_dir: str,
                  backend: str | None = None) -> dict[str, Any]:
    """The Python-backend model that runs ``cmrt.Decoder``/``Sampler``/``Editor``/``Pipeline`` on the
    bundle in ``bundle_dir`` (relative to the model's version folder)."""
    params = {BUNDLE_PARAMETER: bundle_dir} | ({BACKEND_PARAMETER: backend} if backend else {})
    out_dims = [3, -1, -1] if isinstance(manifest, PipelineManifest) else _item_dims(manifest.outputs[0].shape)
    return {
        "name": name, "backend": "python", "max_batch_size": max_batch,
        "input": python_inputs(manifest),
        "output": [_tensor(OUTPUT_NAME, "float32", out_dims)],
        **_batching(dynamic_batching, max_queue_delay_us),
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
        "parameters": [{"key": k, "value": {"string_value": v}} for k, v in params.items()],
    }


def onnx_config(name: str, manifest: Manifest, *, max_batch: int, instances: int, max_queue_delay_us: int,
                dynamic_batching: bool) -> dict[str, Any]:
    """The FP32 graph on ONNX Runtime (``onnxruntime_onnx``): inputs are the graph's, noise included."""
    return {
        "name": name, "platform": "onnxruntime_onnx", "default_model_filename": ONNX_FILE, "max_batch_size": max_batch,
        "input": [_graph_input(i, "fp32") for i in manifest.inputs],
        "output": [_tensor(o.name, o.dtype, _item_dims(o.shape)) for o in manifest.outputs],
        **_batching(dynamic_batching, max_queue_delay_us),
        "instance_group": [{"count": instances}],  # KIND_AUTO: a GPU when there is one
    }


def tensorrt_config(name: str, manifest: Manifest, engine: EngineRecord, *, max_batch: int, instances: int,
                    max_queue_delay_us: int, dynamic_batching: bool) -> dict[str, Any]:
    """A TensorRT engine (``tensorrt_plan``) with the compute capabilities it was built for; its
    I/O dtype is the engine's (FP16 I/O engines take FP16)."""
    io = engine.io
    ccs = engine.compute_capabilities
    config = {
        "name": name, "platform": "tensorrt_plan", "default_model_filename": PLAN_FILE, "max_batch_size": max_batch,
        "input": [_graph_input(i, io) for i in manifest.inputs],
        "output": [_tensor(o.name, _io_dtype(o.dtype, io), _item_dims(o.shape)) for o in manifest.outputs],
        **_batching(dynamic_batching, max_queue_delay_us),
        "instance_group": [{"count": instances, "kind": Enum("KIND_GPU")}],
    }
    if isinstance(ccs, tuple) and ccs:
        config["cc_model_filenames"] = [{"key": cc, "value": PLAN_FILE} for cc in ccs]
    return config


def engine_max_batch(engine: EngineRecord) -> int | None:
    """The largest batch of an engine's optimization profile (None: not recorded)."""
    profiles = engine.profiles
    if not profiles:
        return None
    return min(int(spec.max[0]) for spec in profiles[0].values())


def _batching(dynamic: bool, max_queue_delay_us: int) -> dict[str, Any]:
    return {"dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us}} if dynamic else {}


def python_inputs(manifest: Manifest | PipelineManifest) -> list[dict]:
    """The Python-backend model's inputs: the runner's arguments, each with the batch axis first."""
    if isinstance(manifest, PipelineManifest):  # Pipeline.generate's arguments, one prompt per row
        optional = {"optional": True}
        return [_tensor(PROMPT_INPUT, "bytes", [1]), _tensor(NEGATIVE_INPUT, "bytes", [1]) | optional,
                _tensor(SEED_INPUT, "int64", [1]) | optional, _tensor(GUIDANCE_INPUT, "float32", [1]) | optional,
                _tensor(HEIGHT_INPUT, "int64", [1]) | optional, _tensor(WIDTH_INPUT, "int64", [1]) | optional]
    seed = _tensor(SEED_INPUT, "int64", [1]) | {"optional": True}
    if manifest.kind == "decoder":
        latents = next(i for i in manifest.inputs if i.name == "latents")
        return [_tensor("latents", "float32", _item_dims(latents.shape)), seed]
    if manifest.kind == "editor":  # the graph's image (and mask) inputs, as Editor.edit takes them
        images = [_tensor(i.name, "float32", _item_dims(i.shape)) for i in manifest.inputs
                  if i.name in (IMAGE_INPUT, MASK_INPUT)]
        labels = [_tensor(LABELS_INPUT, "int64", [1]) | {"optional": True}] if manifest.num_classes else []
        return images + labels + [seed]
    if manifest.num_classes is None:
        return [seed | {"optional": False}]  # the seed carries the request's batch size
    return [_tensor(LABELS_INPUT, "int64", [1]) | {"optional": True}, seed]


def _graph_input(spec: TensorSpec, io: str) -> dict:
    dims = _item_dims(spec.shape)
    tensor = _tensor(spec.name, _io_dtype(spec.dtype, io), dims or [1])
    if not dims:  # a (B,) graph input: one value per item, as [B, 1] reshaped to [B]
        tensor["reshape"] = {"shape": []}
    return tensor


def _io_dtype(dtype: str, io: str) -> str:
    return "float16" if io == "fp16" and dtype == "float32" else dtype


def _item_dims(shape: Sequence[Any]) -> list[int]:
    """A manifest shape without its batch axis; symbolic axes (strings) are -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _tensor(name: str, dtype: str, dims: list[int]) -> dict:
    return {"name": name, "data_type": Enum(_DTYPES[dtype]), "dims": dims}


# --- protobuf text format --------------------------------------------------------------
def render(config: dict[str, Any], header: str = "") -> str:
    """``config`` in protobuf text format (Triton's ``config.pbtxt``), after ``header`` as comments."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + "".join(_field(k, v, 0) for k, v in config.items())


def _field(key: str, value: Any, depth: int) -> str:
    pad = "  " * depth
    if isinstance(value, dict):
        return f"{pad}{key} {{\n" + "".join(_field(k, v, depth + 1) for k, v in value.items()) + f"{pad}}}\n"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ",\n".join(_message(v, depth + 1) for v in value)
        return f"{pad}{key} [\n{items}\n{pad}]\n"
    if isinstance(value, list):
        return f"{pad}{key}: [" + ", ".join(_scalar(v) for v in value) + "]\n"
    return f"{pad}{key}: {_scalar(value)}\n"


def _message(value: dict, depth: int) -> str:
    pad = "  " * depth
    return f"{pad}{{\n" + "".join(_field(k, v, depth + 1) for k, v in value.items()) + f"{pad}}}"


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot render {type(value).__name__} in protobuf text format")
