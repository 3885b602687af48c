"""Training methods, one object each: what the method trains, against what, and with which loss.

A method sees only what its loss needs, as explicit arguments (the trainer, ``loop.Trainer``,
builds them and the method never sees it):

* its own hyperparameters, fixed when it is built from the run's config (``from_config``);
* ``Networks``: the online network f_θ, the target it is compared against and cd's teacher;
* ``Batch``: the images, their labels and the decoder's latents;
* the schedule state (the optimizer step, from which iCT's discretization N follows) and the
  ``torch.Generator`` every random draw of the loss comes from.

Hooks: ``denoiser`` (the preconditioning it trains: EDM for the teacher, the consistency boundary
scalings for ct/cd, the decoder's own parameterization), ``target`` (cd: an EMA copy θ⁻; else the
online network), ``teacher`` (cd's frozen EDM teacher), ``condition`` (the decoder's latents),
``loss``, ``after_step`` (cd's θ⁻ update), ``state``/``load_state`` (what resume restores beyond
the optimizer: cd's θ⁻).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
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
    from .data import Dataset
    from .models import TrainConfig
    from .photos import CropSet


@dataclass(frozen=True)
class Networks:
    """The networks a loss sees.

    Attributes:
        online: f_θ, the denoiser being trained (DDP-wrapped under torchrun); gradients flow here.
        target: what f_θ is compared against, without gradient: f_θ itself (iCT, the decoder), cd's
            EMA copy f_θ⁻, or unused (edm).
        teacher: cd's frozen EDM teacher; None for the other methods.
    """

    online: nn.Module
    target: nn.Module
    teacher: nn.Module | None = None


@dataclass(frozen=True)
class Batch:
    """One training batch.

    Attributes:
        images: x0, (N, C, H, W) in [-1, 1], or (N, 2) points for the 2-D toys.
        labels: (N,) class labels, or None.
        cond: the decoder's condition (its latents, upsampled to the image), or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    cond: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    """The consistency-training defaults; subclasses override what differs."""

    name = ""
    kind = "sampler"  # what it trains: a consistency model ("sampler") or a "decoder"
    image_only = False  # needs an image data set (not a 2-D toy)
    one_step = True  # a consistency model (samples in 1+ steps); False: a diffusion model (many-step Heun)

    @classmethod
    def from_config(cls, cfg: "TrainConfig") -> "Method":
        """The method with the hyperparameters of run ``cfg``."""
        return cls()

    def denoiser(self, backbone: nn.Module, spec: "ModelSpec | None") -> nn.Module:
        sigma_data = spec.sigma_data if spec else S.SIGMA_DATA
        sigma_min = spec.sigma_min if spec else S.SIGMA_MIN
        return KarrasDenoiser(backbone, sigma_data=sigma_data, sigma_min=sigma_min, boundary=True)

    def target(self, denoiser: nn.Module, spec: "ModelSpec | None") -> nn.Module:
        """The network the loss compares against, given the online ``denoiser`` (not DDP-wrapped)."""
        return denoiser  # the online network, without gradient (iCT: no EMA target)

    def teacher(self, device: torch.device) -> nn.Module | None:
        return None

    def condition(self, data: "Dataset | CropSet") -> torch.Tensor | tuple[torch.Tensor, ...] | None:
        """What every image of ``data`` is conditioned on (the decoder's latents), or None."""
        return None

    def loss(self, nets: Networks, batch: Batch, step: int, generator: torch.Generator) -> torch.Tensor:
        """The loss of ``batch`` at optimizer step ``step``, every random draw from ``generator``."""
        raise NotImplementedError

    def after_step(self, backbone: nn.Module, target: nn.Module) -> None:
        """Updates after each optimizer step (beyond the EMA of the weights)."""

    def state(self, target: nn.Module) -> dict:
        """What resume needs beyond the weights, optimizer and generators."""
        return {}

    def load_state(self, target: nn.Module, state: dict) -> None:
        """Restore what ``state`` saved."""


@dataclass(frozen=True)
class EDM(Method):
    """The diffusion teacher: EDM preconditioning and loss (no boundary condition)."""

    name = "edm"
    one_step = False

    def denoiser(self, backbone, spec):
        sigma_data = spec.sigma_data if spec else S.SIGMA_DATA
        return KarrasDenoiser(backbone, sigma_data=sigma_data, boundary=False)

    def loss(self, nets, batch, step, generator):
        return L.edm_loss(nets.online, batch.images, batch.labels, generator)


@dataclass(frozen=True)
class CT(Method):
    """Improved consistency training: pseudo-Huber, lognormal σ-index, the N-doubling curriculum.

    Attributes:
        total_steps: the run's optimizer steps K, over which N doubles from ``s0`` to ``s1``.
    """

    name = "ct"
    total_steps: int
    s0: int
    s1: int
    distance: str

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.max_steps, cfg.ct_s0, cfg.ct_s1, cfg.loss_distance)

    def discretization(self, step: int) -> int:
        """iCT's N at optimizer step ``step``."""
        return L.ct_discretization(step, self.total_steps, self.s0, self.s1)

    def loss(self, nets, batch, step, generator):
        return L.ct_loss(nets.online, nets.target, batch.images, batch.labels, generator,
                         n=self.discretization(step), distance=self.distance)


@dataclass(frozen=True)
class CD(Method):
    """Consistency distillation from an EDM teacher, with an EMA target network θ⁻.

    Attributes:
        teacher_run: the EDM teacher's run folder or checkpoint (``--teacher``).
        grid: N, the Karras grid the σ pairs are drawn on (``--cd-grid``).
        target_ema: the EMA decay of θ⁻ (``--target-ema``).
    """

    name = "cd"
    teacher_run: str
    grid: int
    target_ema: float
    distance: str

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.teacher, cfg.cd_grid, cfg.target_ema, cfg.loss_distance)

    def target(self, denoiser, spec):
        return self.denoiser(copy.deepcopy(denoiser.unet).requires_grad_(False), spec)

    def teacher(self, device):
        from . import runs as R

        run = R.load_run(self.teacher_run)
        if run.config.method != "edm":
            raise ConfigError(f"--teacher {self.teacher_run} was trained with '{run.config.method}', not 'edm'")
        return EDM.from_config(run.config).denoiser(run.ema.to(device).requires_grad_(False), run.spec)

    def loss(self, nets, batch, step, generator):
        return L.cd_loss(nets.online, nets.target, nets.teacher, batch.images, batch.labels, generator,
                         n=self.grid, distance=self.distance)

    def after_step(self, backbone, target):
        update_ema(target.unet, backbone, self.target_ema)

    def state(self, target):
        return {"target": target.unet.state_dict()}

    def load_state(self, target, state):
        target.unet.load_state_dict(state["target"])


@dataclass(frozen=True)
class Decoder(CT):
    """A consistency decoder on the latents of a frozen encoder (consistency training on the
    decoder's cosine schedule and parameterization, with iCT's N curriculum).

    Attributes:
        encoder: the frozen encoder file (``--encoder``).
        denoise_weight: the weight of the x0 anchor term (``--denoise-weight``).
    """

    name = "decoder"
    kind = "decoder"
    image_only = True
    encoder: str
    denoise_weight: float

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.max_steps, cfg.ct_s0, cfg.ct_s1, cfg.loss_distance, cfg.encoder, cfg.denoise_weight)

    def denoiser(self, backbone, spec):
        return DecoderDenoiser(backbone, sigma_data=spec.sigma_data if spec else S.SIGMA_DATA)

    def condition(self, data):
        from .autoencoder import encode, load_encoder
        from .photos import CropSet

        encoder = load_encoder(self.encoder)
        if isinstance(data, CropSet):  # latents of each whole image, cropped with it per batch
            return tuple(encode(encoder, x[None])[0] for x in data.images)
        return encode(encoder, data.x)

    def loss(self, nets, batch, step, generator):
        return L.decoder_loss(nets.online, nets.target, batch.images, batch.cond, generator,
                              n=self.discretization(step), denoise_weight=self.denoise_weight,
                              distance=self.distance)


#: Every method by its ``--method`` name.
METHODS: dict[str, type[Method]] = {m.name: m for m in (EDM, CT, CD, Decoder)}


def method(name: str) -> type[Method]:
    """The class of method ``name`` (its kind and what it needs; ``configure`` builds one)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown training method {name!r}: choose one of {sorted(METHODS)}") from None


def configure(cfg: "TrainConfig") -> Method:
    """The method of run ``cfg`` with its hyperparameters."""
    return method(cfg.method).from_config(cfg)
