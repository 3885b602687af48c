"""A small autoencoder whose encoder gives the latents a cmrt consistency decoder is trained on.

The encoder maps an image (B, 3, H, W) in [-1, 1] to 4 channels at H/8 × W/8 and states its
output in the SD-VAE convention the decoder bundle's contract uses: the network predicts the
*normalized* latent n (bounded to ±``LATENT_BOUND``), and ``encode`` returns the unscaled latent
z = (n·std + mean)/0.18215 (``schedules.denormalize_latents``), so that the exported decoder's
own ``normalize_latents`` recovers n exactly. Weights and config are one safetensors file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import schedules as S
from ..errors import ConfigError, SourceError

ENCODER_KEY = "cmrt.encoder"
LATENT_BOUND = 3.0  # n = 3·tanh(raw/3): normalized latents stay within ±3 std
LATENT_PENALTY = 1e-3  # weight of the mean n² penalty that keeps the latents near unit scale
AE_LR = 1e-3
PIXEL_DECODER_PREFIX = "pixel_decoder."
AE_LOG_EVERY = 100  # progress lines on stdout


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder and pixel-decoder layout; three stride-2 stages make the ×8 reduction of the decoder contract.

    Attributes:
        in_channels: image channels.
        widths: channels of the three stages (full, 1/2 and 1/4 resolution; the 1/8 stage uses the last).
        latent_channels: latent channels (4, as SD's VAE).
        blocks: residual blocks after each stage (0: the plain conv stack of the digits encoder).
    """

    in_channels: int = 3
    widths: tuple[int, int, int] = (16, 32, 64)
    latent_channels: int = S.LATENT_CHANNELS
    blocks: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 3 or min(self.widths) < 1 or self.blocks < 0:
            raise ConfigError(f"the autoencoder needs three positive widths and blocks ≥ 0, got widths "
                              f"{self.widths}, blocks {self.blocks}")


class ResConv(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))): no normalization, so a crop of the input decodes like the
    same crop of the whole image away from its borders."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResConv(channels) for _ in range(n)]


class Encoder(nn.Module):
    """image (B, C, H, W) → normalized latent n (B, 4, H/8, W/8)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        w, b = cfg.widths, cfg.blocks
        down = lambda a, c: [nn.Conv2d(a, c, 4, stride=2, padding=1), nn.SiLU(), *_blocks(c, b)]
        self.net = nn.Sequential(nn.Conv2d(cfg.in_channels, w[0], 3, padding=1), nn.SiLU(), *_blocks(w[0], b),
                                 *down(w[0], w[0]), *down(w[0], w[1]), *down(w[1], w[2]),
                                 nn.Conv2d(w[2], cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LATENT_BOUND * torch.tanh(self.net(x) / LATENT_BOUND)


class PixelDecoder(nn.Module):
    """The autoencoder's plain decoder, trained with MSE beside the encoder: n → image."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        w, b = cfg.widths, cfg.blocks
        up = lambda a, c: [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, c, 3, padding=1), nn.SiLU(),
                           *_blocks(c, b)]
        self.net = nn.Sequential(nn.Conv2d(cfg.latent_channels, w[2], 3, padding=1), nn.SiLU(), *_blocks(w[2], b),
                                 *up(w[2], w[1]), *up(w[1], w[0]), *up(w[0], w[0]),
                                 nn.Conv2d(w[0], cfg.in_channels, 3, padding=1))

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        return self.net(n)


@dataclass(frozen=True)
class AutoencoderConfig:
    """An autoencoder run (``cmrt train-autoencoder``), written beside the encoder it produces.

    Attributes:
        data: ``digits-color``, ``photos`` (random crops of scikit-image's photographs), a folder or .npz.
        max_steps: optimizer steps.
        batch_size: images (or crops) per step.
        seed: seed of the weights and the batches.
        image_size: side of the training images (photos: of the random crops).
        widths: the three stage widths.
        blocks: residual blocks per stage.
        lr: Adam's learning rate.
        lr_min: the learning rate reached at the last step (cosine decay; equal to ``lr``: constant).
        threads: torch CPU threads (0: torch's default).
    """

    data: str = "digits-color"
    max_steps: int = 2000
    batch_size: int = 64
    seed: int = 0
    image_size: int = S.DECODER_UPSCALE * 4
    widths: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 0
    lr: float = AE_LR
    lr_min: float = AE_LR
    threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.max_steps < 1 or self.batch_size < 1:
            raise ConfigError("--max-steps and --batch-size must be ≥ 1")
        if not 0 < self.lr_min <= self.lr:
            raise ConfigError(f"--lr-min must lie in (0, --lr], got {self.lr_min} (lr {self.lr})")

    def encoder_config(self, in_channels: int) -> EncoderConfig:
        return EncoderConfig(in_channels=in_channels, widths=self.widths, blocks=self.blocks)

    def lr_at(self, step: int) -> float:
        """Cosine decay from ``lr`` to ``lr_min`` over the run."""
        frac = step / max(self.max_steps - 1, 1)
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + math.cos(math.pi * frac))


def encode(encoder: Encoder, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Images in [-1, 1] → unscaled SD-convention latents (B, 4, H/8, W/8), the decoder bundle's input."""
    with torch.no_grad():
        n = torch.cat([encoder(images[i:i + batch]) for i in range(0, len(images), batch)])
    return S.denormalize_latents(n)


def decode_pixels(decoder: PixelDecoder, latents: torch.Tensor) -> torch.Tensor:
    """The MSE decoder on unscaled SD-convention latents → images clamped to [-1, 1]."""
    with torch.no_grad():
        return decoder(S.normalize_latents(latents)).clamp(-1, 1)


def save_encoder(path: Path, encoder: Encoder, extra: dict | None = None,
                 pixel_decoder: PixelDecoder | None = None) -> None:
    """The encoder (and, when given, its pixel decoder under ``pixel_decoder.``) as one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {ENCODER_KEY: json.dumps(asdict(encoder.config))} | {k: json.dumps(v) for k, v in (extra or {}).items()}
    tensors = dict(encoder.state_dict())
    if pixel_decoder is not None:
        tensors |= {PIXEL_DECODER_PREFIX + k: v for k, v in pixel_decoder.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _read_autoencoder(path: str | Path) -> tuple[EncoderConfig, dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    from ..models.load import read_checkpoint_metadata

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"encoder {path} does not exist (train one with `cmrt train-autoencoder --out FILE`)")
    meta = read_checkpoint_metadata(path)
    if ENCODER_KEY not in meta:
        raise SourceError(f"{path} has no '{ENCODER_KEY}' metadata: not a cmrt encoder")
    cfg = json.loads(meta[ENCODER_KEY])
    return EncoderConfig(**cfg), load_file(str(path)), meta


class KLEncoder(nn.Module):
    """A diffusers ``AutoencoderKL``'s encoder as the decoder contract's encoder: image → the
    *normalized* latent of its posterior mean (so that ``encode`` hands out the unscaled mean)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return S.normalize_latents(self.vae.encode(x).latent_dist.mean)


def load_kl_encoder(path: str | Path) -> KLEncoder:
    """An ``AutoencoderKL`` folder (or a ``cmrt train vae`` run) as a ``KLEncoder``."""
    from diffusers import AutoencoderKL

    p = Path(path)
    folder = p / "diffusers" if (p / "diffusers" / "config.json").is_file() else p
    if not (folder / "config.json").is_file():
        raise SourceError(f"encoder {path}: not an AutoencoderKL folder or `cmrt train vae` run (no config.json)")
    return KLEncoder(AutoencoderKL.from_pretrained(str(folder))).eval().requires_grad_(False)


def load_encoder(path: str | Path) -> Encoder | KLEncoder:
    """Read an encoder written by ``save_encoder`` (``cmrt train-autoencoder``), or a diffusers
    ``AutoencoderKL`` folder / ``cmrt train vae`` run (``load_kl_encoder``)."""
    if Path(path).is_dir():
        return load_kl_encoder(path)
    cfg, tensors, _ = _read_autoencoder(path)
    encoder = Encoder(cfg)
    encoder.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(PIXEL_DECODER_PREFIX)}, strict=True)
    return encoder.eval().requires_grad_(False)


def load_pixel_decoder(path: str | Path) -> PixelDecoder:
    """Read the MSE pixel decoder saved beside an encoder (``SourceError`` if the file has none)."""
    cfg, tensors, _ = _read_autoencoder(path)
    state = {k[len(PIXEL_DECODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(PIXEL_DECODER_PREFIX)}
    if not state:
        raise SourceError(f"{path} holds no pixel decoder (it was saved before they were kept)")
    decoder = PixelDecoder(cfg)
    decoder.load_state_dict(state, strict=True)
    return decoder.eval().requires_grad_(False)


def _batches(cfg: AutoencoderConfig):
    """A function drawing one training batch from ``cfg.data`` with a seeded generator, and the channels."""
    from .data import load_data
    from .photos import CropSet

    data = load_data(cfg.data, size=cfg.image_size, channels=3)
    g = torch.Generator().manual_seed(cfg.seed)
    if isinstance(data, CropSet):
        return (lambda: data.take(data.draw(cfg.batch_size, g))), data.channels
    x = data.x
    return (lambda: x[torch.randint(0, len(x), (cfg.batch_size,), generator=g)]), x.shape[1]


def held_out_psnr(data: str, enc: Encoder, dec: PixelDecoder) -> dict[str, float]:
    """PSNR of the plain decoder on the data set's held-out images (whole photos for ``photos``)."""
    from ..parity import psnr_per_image

    if data == "digits-color":
        from .data import load_digits_color

        test = load_digits_color("test").x
        with torch.no_grad():
            return {"test_psnr_pixel_decoder": float(psnr_per_image(dec(enc(test)).clamp(-1, 1), test).mean())}
    if data == "photos":
        from .photos import held_out_images

        with torch.no_grad():
            return {f"held_out_psnr_{name}": float(psnr_per_image(dec(enc(x[None])).clamp(-1, 1), x[None])[0])
                    for name, x in held_out_images().items()}
    return {}


def train_autoencoder(cfg: AutoencoderConfig, out: Path) -> dict:
    """Train encoder + pixel decoder with MSE (and a small latent-scale penalty); save both in ``out``
    with the resolved config in its metadata and as JSON beside it.

    Returns a small report: final training MSE, held-out PSNR of the plain decoder, wall time.
    """
    from .._io import write_json_atomic

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    draw, channels = _batches(cfg)
    enc, dec = Encoder(cfg.encoder_config(channels)), PixelDecoder(cfg.encoder_config(channels))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        xb = draw()
        n = enc(xb)
        mse = F.mse_loss(dec(n), xb)
        loss = mse + LATENT_PENALTY * n.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % AE_LOG_EVERY == 0:
            print(f"step {step + 1}/{cfg.max_steps}  mse {float(mse.detach()):.5f}  {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    report = {"steps": cfg.max_steps, "train_loss": float(loss.detach()), "train_mse": float(mse.detach()),
              "wall_s": wall, "img_s": cfg.max_steps * cfg.batch_size / wall}
    enc.eval(), dec.eval()
    report |= held_out_psnr(cfg.data, enc, dec)
    resolved = asdict(cfg)
    save_encoder(out, enc, {"cmrt.autoencoder_report": report, "cmrt.data": cfg.data,
                            "cmrt.autoencoder_config": resolved}, pixel_decoder=dec)
    write_json_atomic(Path(out).with_suffix(".json"), {"config": resolved, "report": report})
    return report


DEFAULT_ENCODER = Path(__file__).resolve().parent.parent / "assets" / "digits_encoder.safetensors"
DEFAULT_IMAGE_SIZE = 32  # the bundled encoder was trained on 32×32 images
#: The natural-image autoencoder: encoder + its MSE pixel decoder (``--data photos``), beside ``PHOTOS_DECODER``.
PHOTOS_AUTOENCODER = DEFAULT_ENCODER.with_name("photos_autoencoder.safetensors")


def encode_file(path: str | Path, *, encoder: str | Path | None = None,
                size: int | tuple[int, int] | None = DEFAULT_IMAGE_SIZE):
    """An image file → SD-convention latents (1, 4, H/8, W/8) as numpy, for ``cmrt.Decoder``.

    Args:
        path: a PNG/JPEG image, converted to RGB.
        encoder: an encoder file; None = the bundled digits encoder (``PHOTOS_AUTOENCODER`` for
            natural images, with the photos decoder).
        size: the image size the encoder sees: an int S resizes to S×S (bicubic), (H, W) to H×W
            (each a multiple of 8); None keeps the image's own size, center-cropped to the
            nearest multiples of 8 below it (at most 7 rows and 7 columns go).
    """
    import numpy as np

    from ..errors import InputError
    from ..images import crop_to_multiple, read_image

    up = S.DECODER_UPSCALE
    if size is None:
        x = np.ascontiguousarray(crop_to_multiple(read_image(path, channels=3), up))
        if min(x.shape[-2:]) < up:
            raise InputError(f"{path} is smaller than {up}×{up} pixels: nothing to encode")
    else:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or any(not isinstance(v, int) or v < up or v % up for v in hw):
            raise InputError(f"size must be an int or (height, width), multiples of {up}, got {size!r}")
        x = read_image(path, channels=3, size=hw)
    return encode(load_encoder(encoder or DEFAULT_ENCODER), torch.from_numpy(x)).numpy()
