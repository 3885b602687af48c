"""``cmrt.Pipeline``: text → images with a pipeline bundle (``cmrt export --model DIFFUSERS_FOLDER``).

    with cmrt.Pipeline("lcm-bundle") as pipe:
        images = pipe.generate("a photo of a cat", seed=0)      # (1, 3, H, W) in [-1, 1]

Tokenization runs in Python with transformers' ``CLIPTokenizer`` on the bundle's own tokenizer
files (the ``diffusers`` extra); the text encoder(s), the K-step LCM sampler and the decoder run
on ONNX Runtime. A seed draws every random tensor from one ``torch.Generator().manual_seed(seed)``
in the order diffusers' pipelines draw them: the initial latents, each step's noise, then a
consistency decoder's noise, so a seeded call equals diffusers' pipeline with that generator.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import PipelineManifest
from ..errors import ConfigError, InputError, InputTypeError, RunnerClosedError, require
from .inputs import as_float32, check_shape as _check_shape, generator, is_torch as _is_torch

logger = logging.getLogger("cmrt.pipeline")


class _Stage:
    """One graph of the bundle on an ONNX Runtime session (``run`` is thread-safe)."""

    def __init__(self, path: Path, device: str) -> None:
        from ..errors import BundleError
        from .backends import session_options

        ort = require("onnxruntime", "onnxruntime", "running a pipeline bundle")
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if device == "cuda" else ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(str(path), session_options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path} could not be loaded by ONNX Runtime ({str(exc).splitlines()[0]}): "
                              "re-export the bundle") from None
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))


class Pipeline:
    """A pipeline bundle opened on ONNX Runtime: ``generate(prompt, ...)`` → images.

    A context manager; ``close()`` frees the sessions. Calls from several threads are safe (the
    sessions run concurrently; tokenization is serialized).

    Args:
        bundle: the pipeline bundle folder.
        device: "cpu", "cuda" or "auto" (CUDA when onnxruntime-gpu and a GPU are present).
        precision: "fp32", or "fp16" for the FP16 sampler and decoder graphs
            (``cmrt export --precision fp16``); the text encoders stay FP32.
    """

    def __init__(self, bundle: str | Path, *, device: str = "auto", precision: str = "fp32") -> None:
        self.path = Path(bundle)
        self.manifest = PipelineManifest.open(self.path)
        device = _device(device)
        m = self.manifest
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and not any("fp16" in s.graphs for s in m.stages.values()):
            raise ConfigError(f"{self.path} has no FP16 graphs: export it with `cmrt export --precision fp16`, "
                              "or use precision='fp32'")
        self.precision = precision
        self._stages: dict[str, Any] | None = {
            name: _Stage(self.path / s.graphs.get(precision, s.graph).file, device)
            for name, s in m.stages.items() if s.graph is not None}
        self._decoder = None
        decoder = m.stages["decoder"]
        if decoder.bundle is not None:
            from .decoder import Decoder

            self._decoder = Decoder(self.path / decoder.bundle,
                                    backend="onnxruntime-cuda" if device == "cuda" else "onnxruntime-cpu")
        self._tokenizers = [_tokenizer(self.path / t.folder) for t in m.tokenizers]
        self._lock = threading.Lock()
        self.steps = m.steps

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._stages is None

    def close(self) -> None:
        """Free the sessions; later calls raise ``RunnerClosedError``. Idempotent."""
        with self._lock:
            stages, self._stages = self._stages, None
            decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()
        del stages

    def __enter__(self) -> "Pipeline":
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self) -> dict[str, Any]:
        stages = self._stages
        if stages is None:
            raise RunnerClosedError(f"this Pipeline was closed: open a new one on {self.path}")
        return stages

    # --- generation ------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], *, negative_prompt: str | Sequence[str] | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 seed: int | None = None, noise: Sequence[Any] | None = None, tile: int | None = None):
        """Images (B, 3, H, W) in [-1, 1] for ``prompt``.

        Args:
            prompt: a string or a non-empty list of strings (one image each).
            negative_prompt: what to steer away from (classifier-free guidance bundles, used when
                ``guidance_scale`` > 1; a full LCM ignores it, as diffusers' LCM pipeline does):
                a string, or a list as long as ``prompt``.
            guidance_scale: None: the diffusers pipeline's default (recorded in the bundle);
                a finite number ≥ 0.
            height, width: image size, divisible by the VAE's factor (8); None: the pipeline's default.
            seed: draws every random tensor from ``torch.Generator().manual_seed(seed)`` in diffusers'
                order (initial latents, each step's noise, a consistency decoder's noise).
            noise: instead of ``seed``: ``steps`` standard-normal latent tensors (B, C, h, w) (the
                initial latents, then each step's noise); numpy in → numpy out, torch → torch.
            tile: tiled decoding of a consistency decoder stage (``cmrt.Decoder.decode(tile=...)``).

        Returns:
            numpy float32 images, or torch when ``noise`` is torch.
        """
        m = self.manifest
        prompts = _prompts(prompt)
        negatives = _negatives(negative_prompt, len(prompts))
        scale = _guidance(guidance_scale, m.default_guidance_scale)
        h, w = (_size(v, d, name, m.vae_scale_factor) for v, d, name in
                ((height, m.default_height, "height"), (width, m.default_width, "width")))
        if tile is not None and self._decoder is None:
            raise ConfigError("tile= applies to a consistency decoder stage (`cmrt export --decoder`); this bundle "
                              "decodes with its VAE: drop tile")
        stages = self._live()
        feeds, like = self._conditioning(stages, prompts, negatives, scale, h, w), None
        g = None
        if noise is not None:
            if seed is not None:
                raise InputError("pass either seed or noise, not both")
            arrays = self._given_noise(noise, len(prompts), h, w)
            like = noise[0] if _is_torch(noise[0]) else None
        else:
            g = generator(seed)
            arrays = self._draw_noise(g, len(prompts), h, w)
        feeds |= {f"noise_{i}": a for i, a in enumerate(arrays)}
        latents = stages["sampler"].run(feeds)["latents"]
        images = self._decode(stages, latents, g, tile)
        if like is not None:
            import torch

            return torch.from_numpy(images).to(like.device)
        return images

    def _conditioning(self, stages, prompts, negatives, scale: float, h: int, w: int) -> dict[str, np.ndarray]:
        m = self.manifest
        b = len(prompts)
        cfg = m.guidance == "cfg"
        use_cfg = cfg and scale > 1.0
        cond = self._encode(stages, prompts)
        feeds = {"prompt_embeds": cond["prompt_embeds"]}
        if m.family == "sdxl":
            feeds["text_embeds"] = cond["pooled"]
            feeds["time_ids"] = np.tile(np.array([[h, w, 0, 0, h, w]], np.float32), (b, 1))
        if cfg:
            if not use_cfg:  # guidance ≤ 1: diffusers runs no CFG; ε_c + 1·(ε_c − ε_c) is exactly ε_c
                uncond, scale = cond, 1.0
            elif negatives is None and m.force_zeros_for_empty_prompt:
                uncond = {k: np.zeros_like(v) for k, v in cond.items()}
            else:
                uncond = self._encode(stages, negatives if negatives is not None else [""] * b)
            feeds["negative_prompt_embeds"] = uncond["prompt_embeds"]
            if m.family == "sdxl":
                feeds["negative_text_embeds"] = uncond["pooled"]
        feeds["guidance_scale"] = np.full((b,), scale, np.float32)
        return feeds

    def _encode(self, stages, prompts: list[str]) -> dict[str, np.ndarray]:
        hidden, pooled = [], None
        for (name, stage), tokenizer in zip(((n, stages[n]) for n in _encoder_names(self.manifest)),
                                            self._tokenizers):
            ids = self._tokenize(tokenizer, prompts, name)
            out = stage.run({"input_ids": ids})
            hidden.append(out["prompt_embeds"])
            pooled = out.get("pooled", pooled)
        result = {"prompt_embeds": hidden[0] if len(hidden) == 1 else np.concatenate(hidden, axis=-1)}
        if pooled is not None:
            result["pooled"] = pooled
        return result

    def _tokenize(self, tokenizer, prompts: list[str], name: str) -> np.ndarray:
        """Token ids padded and truncated to the encoder's context, as diffusers' ``encode_prompt``;
        a prompt that does not fit is truncated with a warning naming what was cut."""
        with self._lock:
            n = tokenizer.model_max_length
            ids = tokenizer(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="np").input_ids
            full = tokenizer(prompts, padding="longest", return_tensors="np").input_ids
            if full.shape[-1] > ids.shape[-1]:
                removed = tokenizer.batch_decode(full[:, n - 1:-1])
                logger.warning("prompt truncated: the text encoder (%s) takes %d tokens; this part was cut: %s",
                               name, n, removed)
                import warnings

                warnings.warn(f"prompt longer than the text encoder's {n} tokens: truncated as diffusers does "
                              f"(cut: {removed})", UserWarning, stacklevel=4)
        return ids.astype(np.int64)

    def _latent_shape(self, b: int, h: int, w: int) -> tuple[int, int, int, int]:
        f = self.manifest.vae_scale_factor
        return (b, self.manifest.latent_channels, h // f, w // f)

    def _draw_noise(self, g, b: int, h: int, w: int) -> list[np.ndarray]:
        import torch

        shape = self._latent_shape(b, h, w)
        return [torch.randn(shape, generator=g).numpy() for _ in range(self.steps)]

    def _given_noise(self, noise, b: int, h: int, w: int) -> list[np.ndarray]:
        if isinstance(noise, np.ndarray) or _is_torch(noise) or not isinstance(noise, Sequence):
            raise InputTypeError(f"noise must be a list of {self.steps} arrays (the initial latents, then one per "
                                 f"later step), got {type(noise).__name__}")
        if len(noise) != self.steps:
            raise InputError(f"this bundle runs {self.steps} steps and needs {self.steps} noise tensors, "
                             f"got {len(noise)}")
        arrays = [as_float32(n, f"noise[{i}]") for i, n in enumerate(noise)]
        for i, a in enumerate(arrays):
            _check_shape(_host(a), f"noise[{i}]", self._latent_shape(b, h, w))
        return [_host(a) for a in arrays]

    def _decode(self, stages, latents: np.ndarray, g, tile: int | None) -> np.ndarray:
        if self._decoder is None:
            return stages["decoder"].run({"latents": latents})["images"]
        import torch

        unscaled = latents / np.float32(self.manifest.vae_scaling_factor)
        b, _, lh, lw = unscaled.shape
        f = self.manifest.vae_scale_factor
        g = generator(None) if g is None else g  # seeded: the same generator continues into the decoder
        dec_noise = [torch.randn((b, 3, f * lh, f * lw), generator=g).numpy() for _ in range(self._decoder.steps)]
        return np.clip(self._decoder.decode(unscaled, noise=dec_noise, tile=tile), -1.0, 1.0)


def _encoder_names(m: PipelineManifest) -> list[str]:
    return [n for n in ("text_encoder", "text_encoder_2") if n in m.stages]


def _host(a):
    return a.detach().cpu().numpy() if _is_torch(a) else a


def _device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        ort = require("onnxruntime", "onnxruntime", "running a pipeline bundle")
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return device


def _tokenizer(folder: Path):
    transformers = require("transformers", "diffusers", "tokenizing prompts")
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def _prompts(prompt) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
        raise InputTypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    if len(prompt) == 0:
        raise InputError("prompt is an empty list: pass at least one prompt")
    return list(prompt)


def _negatives(negative_prompt, n: int) -> list[str] | None:
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    if not isinstance(negative_prompt, (list, tuple)) or not all(isinstance(p, str) for p in negative_prompt):
        raise InputTypeError(f"negative_prompt must be a string or a list of strings, "
                             f"got {type(negative_prompt).__name__}")
    if len(negative_prompt) != n:
        raise InputError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {n}: "
                         "pass one negative prompt per prompt (or a single string)")
    return list(negative_prompt)


def _guidance(value, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InputTypeError(f"guidance_scale must be a number, got {type(value).__name__}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise InputError(f"guidance_scale must be a finite number ≥ 0, got {value}")
    return float(value)


def _size(value, default: int, name: str, factor: int) -> int:
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < factor or value % factor:
        raise InputError(f"{name} must be a positive multiple of {factor} (the VAE's factor), got {value}")
    return int(value)




def check_pipeline(bundle: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Re-check a pipeline bundle: every listed file's SHA-256, and every stage's graph(s) on
    ONNX Runtime against the PyTorch outputs stored at export (``parity/<stage>.npz``), with the
    precision each was recorded under. Returns "stage/backend/precision" → ``ParityReport``;
    raises ``IntegrityError`` on a changed file and ``ParityError`` on a failed stage."""
    from .._io import sha256_file
    from ..errors import IntegrityError
    from ..parity import compare

    path = Path(bundle)
    m = PipelineManifest.open(path)
    changed = [r.file for r in m.files() if sha256_file(path / r.file) != r.sha256]
    if changed:
        raise IntegrityError(f"{path}: {', '.join(changed)} changed after export (SHA-256 differs): "
                             "re-export the bundle")
    reports = {}
    for name, stage in m.stages.items():
        if stage.graph is None or stage.parity_inputs is None:
            continue  # a nested cmrt bundle: `cmrt check` checks it
        with np.load(path / stage.parity_inputs.file, allow_pickle=False) as data:
            inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
            outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
        (key, recorded), = ((k, r) for k, r in stage.parity.items() if k.endswith("fp32") or "fp32-" in k)
        actual = _Stage(path / stage.graph.file, _device(device)).run(inputs)
        reports[f"{name}/{key}"] = compare(actual, outputs, backend=recorded.backend, precision=recorded.precision)
    for report in reports.values():
        report.raise_if_failed()
    return reports


__all__ = ["Pipeline", "check_pipeline"]
