"""Training methods, one object each: what the method trains, against what, and with which loss.

The trainer (``loop.Trainer``) asks the run's method for everything that differs between methods:

* ``denoiser``: the preconditioning it trains (EDM for the teacher, the consistency boundary
  scalings for ct/cd, the decoder's own parameterization);
* ``target``: the network the loss compares against (cd: an EMA copy θ⁻; else the online network);
* ``teacher``: cd's frozen EDM teacher; ``condition``: the decoder's latents;
* ``loss``; ``after_step`` (cd's θ⁻ update); ``state``/``load_state`` (what resume restores beyond
  the optimizer: cd's θ⁻).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import schedules as S
from ..errors import ConfigError
from ..models.denoisers import DecoderDenoiser, KarrasDenoiser
from . import losses as L
from .ema import update_ema

if TYPE_CHECKING:
    from ..models.spec import ModelSpec
    from .loop import Trainer


class Method:
    """The consistency-training defaults; subclasses override what differs."""

    name = ""
    kind = "sampler"  # what it trains: a consistency model ("sampler") or a "decoder"
    image_only = False  # needs an image data set (not a 2-D toy)
    one_step = True  # a consistency model (samples in 1+ steps); False: a diffusion model (many-step Heun)

    def denoiser(self, backbone: nn.Module, spec: "ModelSpec | None") -> nn.Module:
        sigma_data = spec.sigma_data if spec else S.SIGMA_DATA
        sigma_min = spec.sigma_min if spec else S.SIGMA_MIN
        return KarrasDenoiser(backbone, sigma_data=sigma_data, sigma_min=sigma_min, boundary=True)

    def target(self, trainer: "Trainer") -> nn.Module:
        return trainer.denoiser  # the online network, without gradient (iCT: no EMA target)

    def teacher(self, trainer: "Trainer") -> nn.Module | None:
        return None

    def condition(self, trainer: "Trainer") -> torch.Tensor | None:
        return None

    def loss(self, trainer: "Trainer", x: torch.Tensor, y: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, trainer: "Trainer") -> None:
        """Updates after each optimizer step (beyond the EMA of the weights)."""

    def state(self, trainer: "Trainer") -> dict:
        return {}

    def load_state(self, trainer: "Trainer", state: dict) -> None:
        """Restore what ``state`` saved."""


class EDM(Method):
    """The diffusion teacher: EDM preconditioning and loss (no boundary condition)."""

    name = "edm"
    one_step = False

    def denoiser(self, backbone, spec):
        sigma_data = spec.sigma_data if spec else S.SIGMA_DATA
        return KarrasDenoiser(backbone, sigma_data=sigma_data, boundary=False)

    def loss(self, trainer, x, y, c):
        return L.edm_loss(trainer.model, x, y, trainer.gen)


class CT(Method):
    """Improved consistency training: pseudo-Huber, lognormal σ-index, the N-doubling curriculum."""

    name = "ct"

    def loss(self, trainer, x, y, c):
        cfg = trainer.cfg
        n = L.ct_discretization(trainer.step, cfg.max_steps, cfg.ct_s0, cfg.ct_s1)
        return L.ct_loss(trainer.model, trainer.target, x, y, trainer.gen, n=n, distance=cfg.loss_distance)


class CD(Method):
    """Consistency distillation from an EDM teacher, with an EMA target network θ⁻."""

    name = "cd"

    def target(self, trainer):
        return self.denoiser(copy.deepcopy(trainer.backbone).requires_grad_(False), trainer.spec)

    def teacher(self, trainer):
        from . import runs as R

        run = R.load_run(trainer.cfg.teacher)
        if run.config.method != "edm":
            raise ConfigError(f"--teacher {trainer.cfg.teacher} was trained with '{run.config.method}', not 'edm'")
        return EDM().denoiser(run.ema.to(trainer.env.device).requires_grad_(False), run.spec)

    def loss(self, trainer, x, y, c):
        cfg = trainer.cfg
        return L.cd_loss(trainer.model, trainer.target, trainer.teacher, x, y, trainer.gen, n=cfg.cd_grid,
                         distance=cfg.loss_distance)

    def after_step(self, trainer):
        update_ema(trainer.target.unet, trainer.backbone, trainer.cfg.target_ema)

    def state(self, trainer):
        return {"target": trainer.target.unet.state_dict()}

    def load_state(self, trainer, state):
        trainer.target.unet.load_state_dict(state["target"])


class Decoder(Method):
    """A consistency decoder on the latents of a frozen encoder (consistency training on the
    decoder's cosine schedule and parameterization)."""

    name = "decoder"
    kind = "decoder"
    image_only = True

    def denoiser(self, backbone, spec):
        return DecoderDenoiser(backbone, sigma_data=spec.sigma_data if spec else S.SIGMA_DATA)

    def condition(self, trainer):
        from .autoencoder import encode, load_encoder
        from .photos import CropSet

        encoder = load_encoder(trainer.cfg.encoder)
        if isinstance(trainer.data, CropSet):  # latents of each whole image, cropped with it per batch
            return tuple(encode(encoder, x[None])[0] for x in trainer.data.images)
        return encode(encoder, trainer.data.x)

    def loss(self, trainer, x, y, c):
        cfg = trainer.cfg
        n = L.ct_discretization(trainer.step, cfg.max_steps, cfg.ct_s0, cfg.ct_s1)
        return L.decoder_loss(trainer.model, trainer.target, x, c, trainer.gen, n=n,
                              denoise_weight=cfg.denoise_weight, distance=cfg.loss_distance)


#: Every method by its ``--method`` name.
METHODS: dict[str, Method] = {m.name: m for m in (EDM(), CT(), CD(), Decoder())}


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown training method {name!r}: choose one of {sorted(METHODS)}") from None
