"""``cmrt.Pipeline``: text → images with a pipeline bundle (``cmrt export --model DIFFUSERS_FOLDER``).

    with cmrt.Pipeline("lcm-bundle") as pipe:
        images = pipe.generate("a photo of a cat", seed=0)      # (1, 3, H, W) in [-1, 1]

Tokenization runs in Python with transformers' ``CLIPTokenizer`` on the bundle's own tokenizer
files (the ``diffusers`` extra); the text encoder(s), the K-step LCM sampler and the decoder each
run on a backend (``backend=``, chosen per stage by ``cmrt.runtime.stages``: ONNX Runtime,
OpenVINO in BF16 or FP32, or the stage's TensorRT engine). A seed draws every random tensor from
one ``torch.Generator().manual_seed(seed)`` in the order diffusers' pipelines draw them: the
initial latents, each step's noise, then a consistency decoder's noise, so a seeded call equals
diffusers' pipeline with that generator.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import PipelineManifest
from ..errors import ConfigError, InputError, InputTypeError, RunnerClosedError, require
from .inputs import as_float32, check_shape as _check_shape, generator, is_torch as _is_torch

logger = logging.getLogger("cmrt.pipeline")


class Pipeline:
    """A pipeline bundle opened on backends: ``generate(prompt, ...)`` → images.

    A context manager; ``close()`` frees every stage's backend. Calls from several threads are
    safe (stages on thread-safe backends run concurrently, an engine's calls one at a time;
    tokenization is serialized).

    Args:
        bundle: the pipeline bundle folder.
        device: ONNX Runtime's device: "cpu", "cuda" or "auto" (CUDA when onnxruntime-gpu and a
            GPU are present; the CPU with an OpenVINO backend).
        precision: "fp32", or "fp16" for ONNX Runtime on the FP16 sampler and decoder graphs
            (``cmrt export --precision fp16``); the text encoders stay FP32.
        backend: None (the default per stage: a stage engine that runs here, else OpenVINO BF16
            where the stage's recorded parity passed on a CPU of this class and timed it faster
            than ONNX Runtime FP32, else ONNX Runtime),
            or one of "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "openvino-bf16",
            "openvino-f32", "openvino", "tensorrt" for every stage (``cmrt.runtime.stages``: a
            text encoder stays FP32 unless its own BF16 record passed). ``stage_backends`` says
            what each stage runs.
    """

    def __init__(self, bundle: str | Path, *, device: str = "auto", precision: str = "fp32",
                 backend: str | None = None) -> None:
        from .stages import check_backend_name, check_precision

        self.path = Path(bundle)
        self.manifest = PipelineManifest.open(self.path)
        backend = check_backend_name(backend)
        check_precision(backend, precision)
        device = _device("cpu" if device == "auto" and backend is not None and backend.startswith("openvino")
                         else device)
        m = self.manifest
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and not any("fp16" in s.graphs for s in m.stages.values()):
            raise ConfigError(f"{self.path} has no FP16 graphs: export it with `cmrt export --precision fp16`, "
                              "or use precision='fp32'")
        self.precision = precision
        self._tokenizers = [_tokenizer(self.path / t.folder) for t in m.tokenizers]
        from .stages import open_stages

        self._stages: dict[str, Any] | None = open_stages(self.path, m, backend, device=device, precision=precision)
        self._decoder = None
        decoder = m.stages["decoder"]
        if decoder.bundle is not None:
            from .decoder import Decoder

            try:
                self._decoder = Decoder(self.path / decoder.bundle,
                                        backend=_nested_backend(self.path / decoder.bundle, backend, device, precision))
            except BaseException:
                for b in self._stages.values():
                    b.close()
                raise
        self._lock = threading.Lock()
        self._stage_locks = {name: threading.Lock() for name in self._stages}
        self.steps = m.steps

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._stages is None

    @property
    def backends(self) -> dict[str, Any]:
        """Stage name → its open backend (``.name``, ``.precision``); a consistency-decoder stage's
        is its ``Decoder``'s."""
        stages = dict(self._live())
        if self._decoder is not None:
            stages["decoder"] = self._decoder.backend
        return stages

    @property
    def stage_backends(self) -> dict[str, tuple[str, str]]:
        """Stage name → (backend, precision) it runs on, e.g. ``("openvino-bf16", "bf16")``."""
        return {name: (b.name, b.precision) for name, b in self.backends.items()}

    def describe(self) -> str:
        """One line: each stage's backend and precision."""
        return "stages: " + ", ".join(f"{n} {b} [{p}]" for n, (b, p) in self.stage_backends.items())

    def close(self) -> None:
        """Free every stage's backend; later calls raise ``RunnerClosedError``. Idempotent."""
        with self._lock:
            stages, self._stages = self._stages, None
            decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()
        for backend in (stages or {}).values():
            backend.close()

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
        latents = self._run(stages, "sampler", feeds)["latents"]
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
        for name, tokenizer in zip(_encoder_names(self.manifest), self._tokenizers):
            ids = self._tokenize(tokenizer, prompts, name)
            out = self._run(stages, name, {"input_ids": ids})
            hidden.append(out["prompt_embeds"])
            pooled = out.get("pooled", pooled)
        result = {"prompt_embeds": hidden[0] if len(hidden) == 1 else np.concatenate(hidden, axis=-1)}
        if pooled is not None:
            result["pooled"] = pooled
        return result

    def _run(self, stages: dict[str, Any], name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of stage ``name``; a backend that is not thread-safe (an engine's context)
        runs one call at a time."""
        backend = stages[name]
        if backend.thread_safe:
            return backend.run_all(feeds)
        with self._stage_locks[name]:
            return backend.run_all(feeds)

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
            return self._run(stages, "decoder", {"latents": latents})["images"]
        import torch

        unscaled = latents / np.float32(self.manifest.vae_scaling_factor)
        b, _, lh, lw = unscaled.shape
        f = self.manifest.vae_scale_factor
        g = generator(None) if g is None else g  # seeded: the same generator continues into the decoder
        dec_noise = [torch.randn((b, 3, f * lh, f * lw), generator=g).numpy() for _ in range(self._decoder.steps)]
        return np.clip(self._decoder.decode(unscaled, noise=dec_noise, tile=tile), -1.0, 1.0)


def _encoder_names(m: PipelineManifest) -> list[str]:
    return [n for n in ("text_encoder", "text_encoder_2") if n in m.stages]


def _nested_backend(bundle: Path, backend: str | None, device: str, precision: str) -> str:
    """What a consistency-decoder stage (a cmrt bundle of its own) opens for the pipeline's
    ``backend``: the same name where it fits; its own default (``default_backend_name``) for None
    and for "tensorrt" when it has no engine; ONNX Runtime on ``device`` in place of "onnxruntime"."""
    from ..bundle import Bundle
    from .backends import default_backend_name

    name = backend
    if (backend is None and precision == "fp32") or (backend == "tensorrt" and not Bundle.open(bundle).manifest.engines):
        name = default_backend_name(Bundle.open(bundle))
    if name is None or name == "onnxruntime":
        return f"onnxruntime-{device}"
    return name


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


@dataclass(frozen=True)
class PipelineCheckReport:
    """``cmrt check`` on a pipeline bundle: the files checked, then every graph stage's run of its
    stored inputs (``cmrt.runtime.stages.StageCheck``) and the per-stage records. Truthy when every
    stage passed."""

    path: Path
    files: int
    checks: dict[str, Any]
    records: tuple[str, ...]
    asked: str | None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.run.report.passed for c in self.checks.values())

    def __bool__(self) -> bool:
        return self.passed

    @property
    def reports(self) -> dict[str, Any]:
        """"stage/backend/tier" → ``ParityReport``."""
        return {c.key: c.run.report for c in self.checks.values()}

    def lines(self) -> list[str]:
        out = [f"integrity: {self.files} files match {self.path / 'pipeline.json'} (SHA-256)"]
        for name, c in self.checks.items():
            out += [f"stage {name}: " + line if i == 0 else line for i, line in enumerate(c.run.report.lines())]
        out += list(self.records)
        ran = ", ".join(f"{n} {c.backend} [{c.precision}]" for n, c in self.checks.items())
        return out + [f"stages: {ran}" + ("" if self.asked else " (the default here)")]

    def raise_if_failed(self) -> "PipelineCheckReport":
        from .stages import raise_if_failed

        raise_if_failed(self.checks)
        return self


def check_pipeline_report(bundle: str | Path, *, backend: str | None = None, device: str = "cpu",
                          record: bool = True) -> PipelineCheckReport:
    """Re-check a pipeline bundle: every listed file's SHA-256 (``IntegrityError`` on a changed
    file), then every graph stage on ``backend`` (None: the pipeline's default per stage) against
    the PyTorch outputs stored at export (``parity/<stage>.npz``), under the stage's tier in the
    precision it ran (``cmrt.runtime.stages.check_stages``); OpenVINO results and engine checks are
    recorded per stage in ``pipeline.json`` (``record``). A consistency-decoder stage is a bundle of
    its own: ``cmrt check BUNDLE/decoder``."""
    from .._io import sha256_file
    from ..errors import IntegrityError
    from .stages import check_stages, record_lines

    path = Path(bundle)
    m = PipelineManifest.open(path)
    changed = [r.file for r in m.files() if sha256_file(path / r.file) != r.sha256]
    if changed:
        raise IntegrityError(f"{path}: {', '.join(changed)} changed after export (SHA-256 differs): "
                             "re-export the bundle")
    checks = check_stages(path, backend, device=device, record=record)
    nested = [f"stage {n}: a cmrt bundle of its own: `cmrt check {path / s.bundle}`"
              for n, s in m.stages.items() if s.bundle is not None]
    lines = tuple(record_lines(PipelineManifest.open(path))) + tuple(nested)
    return PipelineCheckReport(path, len(m.files()), checks, lines, backend)


def check_pipeline(bundle: str | Path, *, backend: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """``check_pipeline_report``, raising ``ParityError`` on a failed stage. Returns
    "stage/backend/tier" → ``ParityReport``."""
    return check_pipeline_report(bundle, backend=backend, device=device).raise_if_failed().reports


__all__ = ["Pipeline", "PipelineCheckReport", "check_pipeline", "check_pipeline_report"]
