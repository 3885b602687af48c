"""Tiny training configurations shared by the training tests (8×8 digits, 2-level UNets)."""

from pathlib import Path

import torch

from cmrt.train.data import Dataset, load_digits, load_digits_color
from cmrt.train.models import TrainConfig

TINY = dict(image_size=8, widths=(32, 32), attention=(False, True), layers_per_block=1, head_dim=32,
            batch_size=16, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=2, threads=1, ema_decay=0.9)


def tiny_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**({"method": method, "out": str(out), "data": "digits"} | TINY | kw))


def fixed_digits(n: int = 16) -> Dataset:
    d = load_digits(8)
    return Dataset(d.name, "image", d.x[:n], d.labels[:n], d.num_classes)


def fixed_color(n: int = 16, size: int = 16) -> Dataset:
    """RGB digits average-pooled from 32×32 to ``size`` (latents size/8), to keep decoder tests fast."""
    d = load_digits_color("train", copies=1)
    x = torch.nn.functional.adaptive_avg_pool2d(d.x[:n], size)
    return Dataset(d.name, "image", x, None, None)


def random_encoder(path: Path) -> Path:
    from cmrt.train.autoencoder import Encoder, EncoderConfig, save_encoder

    torch.manual_seed(0)
    save_encoder(path, Encoder(EncoderConfig()).eval())
    return path
