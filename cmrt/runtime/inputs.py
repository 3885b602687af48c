"""The runners' inputs: numpy or torch in, checked float32 arrays out (a CUDA tensor stays on its
device), shapes checked per axis, seeds and the ``torch.Generator`` they seed, noise drawn (whole
batch, in step order) or checked, and class labels checked or drawn; results returned as the
input came (numpy, or torch on the input's device). Every error names the user's argument."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError, InputTypeError

_FLOAT_KINDS = "fiu"  # numpy dtype kinds that cast to float32 (float, signed, unsigned int)


# --- numpy / torch ----------------------------------------------------------------------------
def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def is_device_tensor(x: Any) -> bool:
    return is_torch(x) and getattr(x, "is_cuda", False)


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy array from numpy or torch input; anything else is a TypeError that says so."""
    if is_torch(x):
        import torch

        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InputTypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def host(x: Any) -> np.ndarray:
    """A numpy array of a numpy array or torch tensor (copied to the host)."""
    return x.detach().cpu().numpy() if is_torch(x) else x


def return_like(a: Any, like: Any):
    """``a`` as the input ``like`` came: a torch tensor on its device (None: as it is)."""
    if is_torch(a):  # a device backend returned a tensor on the inputs' GPU: no host copy
        return a
    if like is None:
        return a
    import torch

    return torch.from_numpy(a).to(like.device)


# --- float32 arrays and shapes ----------------------------------------------------------------
def _device_float32(x: Any, name: str):
    """Checks of a CUDA tensor done on the device (no host copy); returns it as float32."""
    import torch

    if x.dtype == torch.bool or x.is_complex():
        raise InputTypeError(f"{name} has dtype {x.dtype}, which cannot be used as float32 image data")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}): pass at least one item")
    x = x.detach().float().contiguous()
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf: check the upstream model or its dtype")
    return x


def as_float32(x: Any, name: str):
    """A contiguous float32 array (a CUDA tensor stays a CUDA tensor), checked for emptiness and NaN/Inf."""
    if is_device_tensor(x):
        return _device_float32(x, name)
    a = to_numpy(x, name)
    if a.dtype.kind not in _FLOAT_KINDS or a.dtype == np.bool_:
        raise InputTypeError(f"{name} has dtype {a.dtype}, which cannot be used as float32 image data: "
                             "pass a float (or integer) array")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape}): pass at least one item")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or Inf: check the upstream model or its dtype")
    return a


def check_shape(a: np.ndarray, name: str, expected: tuple) -> None:
    """``expected`` has ints or None (any) per axis."""
    if a.ndim != len(expected):
        raise InputError(f"{name} must have rank {len(expected)} with shape {fmt_shape(expected)}, got shape {a.shape}")
    for axis, (got, want) in enumerate(zip(a.shape, expected)):
        if want is not None and got != want:
            raise InputError(f"{name} must have shape {fmt_shape(expected)}; axis {axis} is {got}, expected {want}")


def fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_max_batch(value: Any, name: str = "max_batch") -> int | None:
    """None, or an int ≥ 1 (``InputTypeError``/``InputError`` naming the argument)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name} must be ≥ 1, got {value}")
    return int(value)


# --- seeds and noise --------------------------------------------------------------------------
def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise InputError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def generator(seed: int | None):
    """``torch.Generator().manual_seed(seed)``, or a freshly seeded one when seed is None."""
    import torch

    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(check_seed(seed))
    return g


def call_generator(seed: int | None, noise: Sequence[Any] | None):
    """The generator of a call given ``seed`` or ``noise`` (not both)."""
    if seed is not None and noise is not None:
        raise InputError("pass either seed or noise, not both")
    return generator(seed)


def draw_noise(shape: tuple, steps: int, g) -> list[np.ndarray]:
    """One whole-batch standard-normal tensor per step, in step order, from generator ``g``."""
    import torch

    return [torch.randn(shape, generator=g).numpy() for _ in range(steps)]


def step_noise(noise: Sequence[Any] | None, steps: int, g, shape: tuple) -> list[np.ndarray]:
    """The noise of every step: drawn from ``g`` when ``noise`` is None, else the user's list
    checked (one float32 array of ``shape`` per step)."""
    if noise is None:
        return draw_noise(shape, steps, g)
    if isinstance(noise, (np.ndarray,)) or is_torch(noise) or not isinstance(noise, Sequence):
        raise InputTypeError(f"noise must be a list of {steps} arrays (one per step), "
                             f"got {type(noise).__name__}")
    if len(noise) != steps:
        raise InputError(f"this bundle runs {steps} steps and needs {steps} noise tensors, "
                         f"got {len(noise)}")
    arrays = [as_float32(n, f"noise[{i}]") for i, n in enumerate(noise)]
    for i, a in enumerate(arrays):
        check_shape(a, f"noise[{i}]", shape)
    return arrays


def noise_items(noise: Any) -> tuple:
    """The items of a noise list (anything else: none, to be refused by ``step_noise``)."""
    return tuple(noise) if isinstance(noise, (list, tuple)) else ()


# --- class labels -----------------------------------------------------------------------------
def checked_labels(class_labels: Any, batch: int, num_classes: int, g) -> np.ndarray:
    """(B,) int64 labels: the given ones checked (one int is broadcast), or drawn from ``g``."""
    if class_labels is None:
        import torch

        return torch.randint(0, num_classes, (batch,), generator=g).numpy()
    labels = labels_array(class_labels)
    if labels.dtype.kind not in "iu":
        raise InputTypeError(f"class_labels must be integers, got dtype {labels.dtype}")
    labels = np.broadcast_to(labels, (batch,)) if labels.ndim == 0 else labels
    if labels.ndim != 1:
        raise InputError(f"class_labels must be one int or shape (B,), got shape {labels.shape}")
    if len(labels) != batch:
        raise InputError(f"class_labels has {len(labels)} labels for a batch of {batch}: pass one per image "
                         "(or one int for all)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"class_labels must lie in [0, {num_classes}), got values "
                         f"{labels.min()}..{labels.max()}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def labels_array(x: Any) -> np.ndarray:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return np.asarray(x, dtype=np.int64)
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    return to_numpy(x, "class_labels")


def as_float32_output(value) -> np.ndarray:
    """A backend's output as numpy, float ones as float32 (an FP16-I/O graph's outputs are float16)."""
    value = np.asarray(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
