"""A small autoencoder whose encoder gives the latents a cmrt consistency decoder is trained on.

The encoder maps an image (B, 3, H, W) in [-1, 1] to 4 channels at H/8 × W/8 and states its
output in the SD-VAE convention the decoder bundle's contract uses: the network predicts the
*normalized* latent n (bounded to ±``LATENT_BOUND``), and ``encode`` returns the unscaled latent
z = (n·std + mean)/0.18215 (``schedules.denormalize_latents``), so that the exported decoder's
own ``normalize_latents`` recovers n exactly. Weights and config are one safetensors file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import schedules as S
from ..errors import SourceError

ENCODER_KEY = "cmrt.encoder"
LATENT_BOUND = 3.0  # n = 3·tanh(raw/3): normalized latents stay within ±3 std
LATENT_PENALTY = 1e-3  # weight of the mean n² penalty that keeps the latents near unit scale
AE_LR = 1e-3


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder/decoder widths; three stride-2 stages make the ×8 reduction of the decoder contract."""

    in_channels: int = 3
    widths: tuple[int, int, int] = (16, 32, 64)
    latent_channels: int = S.LATENT_CHANNELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class Encoder(nn.Module):
    """image (B, C, H, W) → normalized latent n (B, 4, H/8, W/8)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        w = cfg.widths
        self.net = nn.Sequential(nn.Conv2d(cfg.in_channels, w[0], 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(w[0], w[0], 4, stride=2, padding=1), nn.SiLU(),
                                 nn.Conv2d(w[0], w[1], 4, stride=2, padding=1), nn.SiLU(),
                                 nn.Conv2d(w[1], w[2], 4, stride=2, padding=1), nn.SiLU(),
                                 nn.Conv2d(w[2], cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LATENT_BOUND * torch.tanh(self.net(x) / LATENT_BOUND)


class PixelDecoder(nn.Module):
    """The autoencoder's plain decoder (used only to train the encoder): n → image."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        w = cfg.widths
        up = lambda a, b: [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), nn.SiLU()]
        self.net = nn.Sequential(nn.Conv2d(cfg.latent_channels, w[2], 3, padding=1), nn.SiLU(),
                                 *up(w[2], w[1]), *up(w[1], w[0]), *up(w[0], w[0]),
                                 nn.Conv2d(w[0], cfg.in_channels, 3, padding=1))

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        return self.net(n)


def encode(encoder: Encoder, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Images in [-1, 1] → unscaled SD-convention latents (B, 4, H/8, W/8), the decoder bundle's input."""
    with torch.no_grad():
        n = torch.cat([encoder(images[i:i + batch]) for i in range(0, len(images), batch)])
    return S.denormalize_latents(n)


def save_encoder(path: Path, encoder: Encoder, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {ENCODER_KEY: json.dumps(asdict(encoder.config))} | {k: json.dumps(v) for k, v in (extra or {}).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_encoder(path: str | Path) -> Encoder:
    """Read an encoder written by ``save_encoder`` (``cmrt train-autoencoder``)."""
    from safetensors.torch import load_file

    from ..models.load import read_checkpoint_metadata

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"encoder {path} does not exist (train one with `cmrt train-autoencoder --out FILE`)")
    meta = read_checkpoint_metadata(path)
    if ENCODER_KEY not in meta:
        raise SourceError(f"{path} has no '{ENCODER_KEY}' metadata: not a cmrt encoder")
    cfg = json.loads(meta[ENCODER_KEY])
    encoder = Encoder(EncoderConfig(**cfg))
    encoder.load_state_dict(load_file(str(path)), strict=True)
    return encoder.eval().requires_grad_(False)


def train_autoencoder(data: str, out: Path, *, max_steps: int = 2000, batch_size: int = 64, seed: int = 0,
                      cfg: EncoderConfig | None = None) -> dict:
    """Train encoder + pixel decoder with MSE (and a small latent-scale penalty); save the encoder.

    Returns a small report: final training MSE, held-out PSNR of the plain decoder, wall time.
    """
    from .data import load_data, load_digits_color
    from ..parity import psnr_per_image

    torch.manual_seed(seed)
    x = load_data(data, size=S.DECODER_UPSCALE * 4, channels=3).x
    cfg = cfg or EncoderConfig(in_channels=x.shape[1])
    enc, dec = Encoder(cfg), PixelDecoder(cfg)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=AE_LR)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(max_steps):
        xb = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        n = enc(xb)
        loss = F.mse_loss(dec(n), xb) + LATENT_PENALTY * n.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    report = {"steps": max_steps, "train_loss": float(loss.detach()), "wall_s": wall, "img_s": max_steps * batch_size / wall}
    if data == "digits-color":
        test = load_digits_color("test").x
        with torch.no_grad():
            report["test_psnr_pixel_decoder"] = float(psnr_per_image(dec(enc(test)).clamp(-1, 1), test).mean())
    save_encoder(out, enc.eval(), {"cmrt.autoencoder_report": report, "cmrt.data": data})
    return report


DEFAULT_ENCODER = Path(__file__).resolve().parent.parent / "assets" / "digits_encoder.safetensors"
DEFAULT_IMAGE_SIZE = 32  # the bundled encoder was trained on 32×32 images


def encode_file(path: str | Path, *, encoder: str | Path | None = None, size: int = DEFAULT_IMAGE_SIZE):
    """An image file → SD-convention latents (1, 4, size/8, size/8) as numpy, for ``cmrt.Decoder``.

    Args:
        path: a PNG/JPEG image (converted to RGB and resized to ``size``×``size``).
        encoder: an encoder file; None = the bundled digits encoder.
        size: the side the image is resized to (a multiple of 8).
    """
    import numpy as np

    from ..errors import InputError, require

    if size % S.DECODER_UPSCALE:
        raise InputError(f"size must be a multiple of {S.DECODER_UPSCALE}, got {size}")
    Image = require("PIL.Image", "train", "reading images")
    img = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
    x = torch.from_numpy(img / 127.5 - 1.0).permute(2, 0, 1)[None]
    return encode(load_encoder(encoder or DEFAULT_ENCODER), x).numpy()
