"""``ModelSpec``: everything about a model besides its weights, written beside every artifact."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from .. import schedules as S
from ..errors import ConfigError
from .unet import UNetConfig

KINDS = ("sampler", "decoder")


@dataclass(frozen=True)
class ModelSpec:
    """A consistency model ("sampler") or consistency decoder ("decoder").

    Attributes:
        kind: "sampler" (noise → image) or "decoder" (SD latents → image).
        unet: the backbone configuration.
        image_channels: channels of the produced image (the UNet may output more; the first are used).
        image_size: sampler image side in pixels; None for decoders (8 × the latent size).
        num_classes: class count of a class-conditional sampler, else None.
        sigma_min, sigma_max, sigma_data, rho: the Karras grid and scalings (samplers).
        grid_size: points of the Karras grid that ``--steps N`` spaces on (samplers).
        clip: clamp x0 to [-1, 1] after every evaluation (the source's own sampler).
        name: a short human-readable name.
        trained: False for a model with random weights (the demo says so plainly).
    """

    kind: str
    unet: UNetConfig
    image_channels: int = 3
    image_size: int | None = None
    num_classes: int | None = None
    sigma_min: float = S.SIGMA_MIN
    sigma_max: float = S.SIGMA_MAX
    sigma_data: float = S.SIGMA_DATA
    rho: float = S.RHO
    grid_size: int = 40
    clip: bool = True
    name: str = "model"
    trained: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "sampler" and not self.image_size:
            raise ConfigError("a sampler spec needs image_size")
        if self.num_classes != self.unet.num_classes:
            raise ConfigError(f"num_classes ({self.num_classes}) differs from the UNet's ({self.unet.num_classes})")

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        unet = UNetConfig.from_dict(d.pop("unet"))
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model spec keys: {sorted(unknown)}")
        return cls(unet=unet, **d)
