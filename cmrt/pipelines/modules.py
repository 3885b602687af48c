"""The pipeline's stages as ``nn.Module``s with tensor inputs only, ready to export as one graph each.

- ``TextEncoderStage``: token ids → the hidden states the UNet attends to (and, for SDXL's
  encoders, the pooled embedding), as diffusers' ``encode_prompt`` takes them.
- ``UnrolledLCM``: the K-step LCM sampler with every random draw an input (``noise_0`` the initial
  latents, ``noise_i`` the noise before step i), guidance in the graph: the w-embedding for a
  UNet with ``time_cond_proj_dim``, else classifier-free guidance with negative embeddings.
- ``VaeDecoderStage``: latents (as the sampler outputs them) → images, dividing by the VAE's
  scaling factor first, as the pipelines do.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from . import lcm as L

#: ``num_upsamplers`` set while tracing, so that the UNet always forwards the skip connections'
#: sizes to its upsamplers (what diffusers does for latents not divisible by 2^num_upsamplers):
#: for divisible sizes that is the same interpolation, so one graph serves every size.
_ALWAYS_FORWARD_UPSAMPLE = 30


@dataclass(frozen=True)
class SamplerLayout:
    """Which conditioning inputs the sampler graph takes.

    Attributes:
        steps: network evaluations K (K noise inputs).
        embed_guidance: guidance as the UNet's w-embedding (``time_cond_proj_dim``), one UNet pass
            per step; else classifier-free guidance on a doubled batch (negative embeddings).
        xl: SDXL conditioning (pooled text embeddings and ``add_time_ids``).
    """

    steps: int
    embed_guidance: bool
    xl: bool = False

    @property
    def cfg(self) -> bool:
        return not self.embed_guidance

    def input_names(self) -> list[str]:
        names = ["prompt_embeds"]
        if self.cfg:
            names.append("negative_prompt_embeds")
        if self.xl:
            names += ["text_embeds", "time_ids"] + (["negative_text_embeds"] if self.cfg else [])
        return names + ["guidance_scale"] + [f"noise_{i}" for i in range(self.steps)]


#: The schedule values one sampler step takes (``LCMStepGraph``'s inputs after the conditioning).
STEP_VALUES = ("timestep", "sqrt_alpha", "sqrt_one_minus_alpha", "c_skip", "c_out", "sqrt_alpha_prev",
               "sqrt_one_minus_alpha_prev")


class UnrolledLCM(nn.Module):
    """``forward(*inputs)`` in ``layout.input_names()`` order → the final denoised latents."""

    def __init__(self, unet: nn.Module, config: L.LCMConfig, layout: SamplerLayout) -> None:
        super().__init__()
        self.unet, self.layout = unet, layout
        self.schedule = L.lcm_steps(config, layout.steps)
        self.step_values = step_values(self.schedule)
        self.proj_dim = getattr(unet.config, "time_cond_proj_dim", None)
        if layout.embed_guidance and self.proj_dim is None:
            raise ValueError("embedded guidance needs a UNet with time_cond_proj_dim")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.layout.input_names(), inputs))
        x = feeds["noise_0"]  # LCMScheduler.init_noise_sigma is 1
        d = x
        for i, values in enumerate(self.step_values):
            d = self.denoise(feeds, x, values)
            if i + 1 < len(self.schedule):
                x = L.renoise(d, feeds[f"noise_{i + 1}"], values["sqrt_alpha_prev"], values["sqrt_one_minus_alpha_prev"])
        return d

    def denoise(self, feeds: dict, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """One step's denoised latents from ``x`` at the step whose ``STEP_VALUES`` are ``values``."""
        scale = feeds["guidance_scale"]
        w_emb = None
        if self.proj_dim is not None:  # a full LCM's UNet takes the w-embedding (guidance − 1)
            w_emb = L.guidance_embedding(scale - 1.0, self.proj_dim)
        eps = self._eps(x, values["timestep"], feeds, scale, w_emb)
        x0 = L.predicted_x0(x, eps, values["sqrt_alpha"], values["sqrt_one_minus_alpha"])
        return L.denoised(x0, x, values["c_skip"], values["c_out"])

    def _eps(self, x, timestep: torch.Tensor, feeds: dict, scale, w_emb) -> torch.Tensor:
        emb, added = feeds["prompt_embeds"], self._added(feeds, negative=False)
        if self.layout.embed_guidance:
            return self._unet(x, timestep, emb, w_emb, added)
        x2 = torch.cat([x, x])
        emb2 = torch.cat([feeds["negative_prompt_embeds"], emb])
        added2 = None
        if added is not None:
            neg = self._added(feeds, negative=True)
            added2 = {k: torch.cat([neg[k], added[k]]) for k in added}
        w2 = None if w_emb is None else torch.cat([w_emb, w_emb])
        eps_u, eps_c = self._unet(x2, timestep, emb2, w2, added2).chunk(2)
        return L.classifier_free_guidance(eps_u, eps_c, scale[:, None, None, None])

    def _added(self, feeds: dict, *, negative: bool) -> dict | None:
        if not self.layout.xl:
            return None
        pooled = feeds["negative_text_embeds" if negative else "text_embeds"]
        return {"text_embeds": pooled, "time_ids": feeds["time_ids"]}

    def _unet(self, x, t, emb, w_emb, added) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=emb, timestep_cond=w_emb, added_cond_kwargs=added,
                         return_dict=False)[0]


class LCMStepGraph(UnrolledLCM):
    """One step of the sampler, its schedule values inputs: ``forward(*inputs)`` in
    ``input_names()`` order (the sampler's conditioning and guidance scale, ``x``, ``noise_next``,
    ``STEP_VALUES``) → (``denoised``, ``x_next``). Traced once and unrolled ``layout.steps`` times in
    ONNX (``cmrt.exporter.unroll``): tracing the K-step sampler itself took K times as long."""

    OUTPUTS = ("denoised", "x_next")

    def input_names(self) -> list[str]:
        conditioning = [n for n in self.layout.input_names() if not n.startswith("noise_")]
        return conditioning + ["x", "noise_next", *STEP_VALUES]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        feeds = dict(zip(self.input_names(), inputs))
        d = self.denoise(feeds, feeds["x"], feeds)
        return d, L.renoise(d, feeds["noise_next"], feeds["sqrt_alpha_prev"], feeds["sqrt_one_minus_alpha_prev"])


def step_values(schedule: list[L.LCMStep]) -> list[dict[str, torch.Tensor]]:
    """Every step's ``STEP_VALUES`` as tensors: the timestep int64, the rest float32 (the last
    step, which renoises nothing, gets zeros for the next step's values)."""
    out = []
    for s in schedule:
        floats = (s.sqrt_alpha, s.sqrt_one_minus_alpha, s.c_skip, s.c_out, s.sqrt_alpha_prev or 0.0,
                  s.sqrt_one_minus_alpha_prev or 0.0)
        out.append({"timestep": torch.tensor(s.t, dtype=torch.long)}
                   | {k: torch.tensor(v, dtype=torch.float32) for k, v in zip(STEP_VALUES[1:], floats)})
    return out


@contextmanager
def any_latent_size(unet: nn.Module) -> Iterator[None]:
    """While tracing: the UNet forwards upsample sizes for every latent size (``_ALWAYS_FORWARD_UPSAMPLE``)."""
    old = unet.num_upsamplers
    unet.num_upsamplers = _ALWAYS_FORWARD_UPSAMPLE
    try:
        yield
    finally:
        unet.num_upsamplers = old


class TextEncoderStage(nn.Module):
    """``input_ids`` (B, L) int64 → ``prompt_embeds`` (B, L, D) [, ``pooled`` (B, P)].

    ``hidden_layer``: None for the last hidden state (SD 1.x/2.x); −2 for the penultimate one
    (SDXL, ``output_hidden_states``). ``pooled``: also output the projected pooled embedding
    (SDXL's second encoder, a ``CLIPTextModelWithProjection``)."""

    def __init__(self, encoder: nn.Module, *, hidden_layer: int | None = None, pooled: bool = False) -> None:
        super().__init__()
        self.encoder, self.hidden_layer, self.pooled = encoder, hidden_layer, pooled

    def output_names(self) -> list[str]:
        return ["prompt_embeds"] + (["pooled"] if self.pooled else [])

    def forward(self, input_ids: torch.Tensor):
        out = self.encoder(input_ids, output_hidden_states=self.hidden_layer is not None)
        hidden = out[0] if self.hidden_layer is None else out.hidden_states[self.hidden_layer]
        if self.pooled:
            return hidden, out[0]  # CLIPTextModelWithProjection: text_embeds
        return hidden


class VaeDecoderStage(nn.Module):
    """``latents`` (B, C, h, w), as the sampler outputs them → ``images`` (B, 3, f·h, f·w):
    ``vae.decode(latents / scaling_factor)``, clamped to [-1, 1] as the pipelines' postprocessing does."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0].clamp(-1.0, 1.0)


__all__ = ["SamplerLayout", "UnrolledLCM", "LCMStepGraph", "STEP_VALUES", "step_values", "TextEncoderStage",
           "VaeDecoderStage", "any_latent_size"]
