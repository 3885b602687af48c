"""Drop-in use of a cmrt decoder bundle in diffusers' Stable Diffusion (1.x/2.x) pipelines.

    from cmrt.interop.diffusers import use_cmrt_decoder
    use_cmrt_decoder(pipe, "decoder-bundle")          # pipe.vae.decode now runs the bundle
    image = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]

or, for ``output_type="latent"`` results:

    latents = pipe(prompt, output_type="latent").images
    images = decode_latents("decoder-bundle", latents, seed=0)   # (B, 3, 8h, 8w) in [-1, 1]

Pipelines call ``vae.decode(latents / vae.config.scaling_factor, generator=generator)``: those
are the unscaled latents cmrt's ``Decoder`` takes. The noise of each step is drawn from the
pipeline's generator in the order diffusers' ``ConsistencyDecoderVAE.decode`` draws it, so the
images equal diffusers' with the same generator. Only the SD 1.x/2.x latent space works
(scaling factor 0.18215, 4 channels); SDXL and later latents are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import schedules as S
from ..errors import ConfigError, InputTypeError
from ..runtime.decoder import Decoder

SCALE_TOLERANCE = 1e-6


@dataclass
class DecodedImages:
    """What ``vae.decode(..., return_dict=True)`` returns: images in ``.sample`` (B, 3, H, W), [-1, 1]."""

    sample: Any


def _as_decoder(decoder: Decoder | str | Path, backend: str | None) -> Decoder:
    return decoder if isinstance(decoder, Decoder) else Decoder(decoder, backend=backend)


def check_latent_space(scaling_factor: float, latent_channels: int = S.LATENT_CHANNELS) -> None:
    """Refuse latents from another VAE than SD 1.x/2.x's (e.g. SDXL's, scaling factor 0.13025)."""
    if abs(float(scaling_factor) - S.LATENT_SCALE) > SCALE_TOLERANCE or latent_channels != S.LATENT_CHANNELS:
        raise ConfigError(f"the consistency decoder works on SD 1.x/2.x latents (scaling factor {S.LATENT_SCALE}, "
                          f"{S.LATENT_CHANNELS} channels); this VAE has scaling factor {scaling_factor} and "
                          f"{latent_channels} channels (SDXL latents do not work with it)")


def draw_like_diffusers(shape: Sequence[int], steps: int, generator: Any = None, dtype: Any = None) -> list:
    """The decoder's per-step noise, drawn as diffusers' ``randn_tensor`` draws it: one whole-batch
    tensor per step from one generator, or per image from a list of generators (on the
    generator's device, then moved to the CPU)."""
    import torch

    dtype = dtype or torch.float32
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ConfigError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per image")
        return [torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).cpu()
                           for g in generator]) for _ in range(steps)]
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    return [torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).cpu()
            for _ in range(steps)]


class CmrtVaeDecode:
    """A callable that stands in for ``pipe.vae.decode``: ``(z, return_dict=True, generator=None)``.

    Args:
        decoder: a ``cmrt.Decoder`` or a decoder bundle path.
        backend: backend name when a path is given (default: ONNX Runtime).
    """

    def __init__(self, decoder: Decoder | str | Path, *, backend: str | None = None) -> None:
        self.decoder = _as_decoder(decoder, backend)

    def __call__(self, z, return_dict: bool = True, generator: Any = None):
        import torch

        if not isinstance(z, torch.Tensor):
            raise InputTypeError(f"latents must be a torch tensor (as diffusers passes them), got {type(z).__name__}")
        m = self.decoder.bundle.manifest
        up = m.latent.upscale
        if z.dim() != 4:
            raise ConfigError(f"latents must have shape (B, 4, h, w), got {tuple(z.shape)}")
        shape = (z.shape[0], m.image.channels, up * z.shape[2], up * z.shape[3])
        noise = draw_like_diffusers(shape, m.steps, generator, z.dtype)
        images = self.decoder.decode(z.detach().float(), noise=[n.float() for n in noise]).to(z.dtype)
        return DecodedImages(images) if return_dict else (images,)


def use_cmrt_decoder(pipe: Any, decoder: Decoder | str | Path, *, backend: str | None = None) -> Any:
    """Make a diffusers Stable Diffusion pipeline decode with a cmrt decoder bundle.

    ``pipe.vae`` stays (its config and encoder are still used); its ``decode`` is replaced.

    Args:
        pipe: a diffusers pipeline with an SD 1.x/2.x ``vae``.
        decoder: a ``cmrt.Decoder`` or a decoder bundle path.
        backend: backend name when a path is given.

    Returns:
        The same pipeline.
    """
    cfg = pipe.vae.config
    check_latent_space(cfg.scaling_factor, getattr(cfg, "latent_channels", S.LATENT_CHANNELS))
    pipe.vae.decode = CmrtVaeDecode(decoder, backend=backend)
    return pipe


def decode_latents(decoder: Decoder | str | Path, latents: Any, *, scaling_factor: float = S.LATENT_SCALE,
                   seed: int | None = None, generator: Any = None, backend: str | None = None):
    """Decode a pipeline's ``output_type="latent"`` result (scaled latents) into images in [-1, 1].

    Args:
        decoder: a ``cmrt.Decoder`` or a decoder bundle path.
        latents: the pipeline's latents, still multiplied by the VAE's scaling factor.
        scaling_factor: the pipeline VAE's ``config.scaling_factor`` (SD 1.x/2.x: 0.18215).
        seed: seeds the decoder noise (``torch.Generator().manual_seed(seed)``).
        generator: or a generator (or list of them), drawn from as diffusers would.
        backend: backend name when a path is given.
    """
    check_latent_space(scaling_factor, int(latents.shape[1]) if getattr(latents, "ndim", 0) == 4 else S.LATENT_CHANNELS)
    if seed is not None and generator is not None:
        raise ConfigError("pass either seed or generator, not both")
    dec = _as_decoder(decoder, backend)
    if generator is None:
        return dec.decode(latents / scaling_factor, seed=seed)
    return CmrtVaeDecode(dec)(latents / scaling_factor, return_dict=False, generator=generator)[0]


__all__ = ["CmrtVaeDecode", "DecodedImages", "use_cmrt_decoder", "decode_latents", "check_latent_space",
           "draw_like_diffusers"]
