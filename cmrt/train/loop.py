"""The training loop shared by every method: EMA, checkpoints, exact resume, metrics, DDP, AMP.

Run under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on the CPU,
nccl on GPUs); rank 0 writes the run, every rank writes the SHA-256 of its final weights to
``rank_<r>.sha256`` so that identical replicas can be checked.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .._io import sha256_tensors, write_json_atomic
from ..errors import ConfigError
from ..samplers import decoder_condition
from . import runs as R
from .data import Dataset, load_data
from .ema import update_ema
from .methods import Batch, Networks, configure
from .models import T2I_METHODS, TrainConfig, build_backbone, model_spec
from .photos import CropSet

EMA_WARMUP = 10.0  # EMA decay ramps as (1 + k)/(EMA_WARMUP + k) early on


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on the CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank() if world > 1 else 0, world, device)


def weights_digest(module: nn.Module) -> str:
    return sha256_tensors(module.state_dict())


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


class Trainer:
    """One run: builds the model and loss of ``cfg.method`` on ``data`` and steps it."""

    def __init__(self, cfg: TrainConfig, data: Dataset | None = None, env: Dist | None = None) -> None:
        self.cfg, self.env = cfg, env or Dist()
        self.method = configure(cfg)
        self.data = data or _load(cfg, self.method.kind)
        self.out = Path(cfg.out)
        image = self.data.kind == "image"
        self.crops = isinstance(self.data, CropSet)  # photos: random crops drawn per batch
        if not image and self.method.image_only:
            raise ConfigError(f"the {cfg.method} method needs an image data set")
        if image and self.data.channels != cfg.channels:
            raise ConfigError(f"--data {cfg.data} has {self.data.channels} channel(s): pass --channels {self.data.channels}")
        side = self.data.crop if self.crops else self.data.x.shape[-1] if image else None
        if image and self.method.kind == "sampler" and side != cfg.image_size:
            raise ConfigError(f"--data {cfg.data} has {side}-pixel images: pass --image-size {side}")
        self.spec = model_spec(cfg, self.data.num_classes, self.data.name, self.method.kind) if image else None
        torch.manual_seed(cfg.seed)
        self.backbone = build_backbone(cfg, self.spec).to(self.env.device)
        if cfg.init:
            self.backbone.load_state_dict(R.load_run(cfg.init).ema.state_dict())
        self.ema = copy.deepcopy(self.backbone).requires_grad_(False)
        self.denoiser = self.method.denoiser(self.backbone, self.spec)
        self.model = self._wrap(self.denoiser)
        target = self.method.target(self.denoiser, self.spec)
        self.nets = Networks(self.model, target, self.method.teacher(self.env.device))
        self.cond = self.method.condition(self.data)
        self.opt = torch.optim.Adam(self.backbone.parameters(), lr=cfg.lr)
        self.gen = torch.Generator(self.env.device).manual_seed(cfg.seed * 1000 + self.env.rank)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank + 1)
        self.step = 0

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.env.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    # --- one step ---------------------------------------------------------------------
    def batch(self) -> Batch:
        """The next batch, drawn from ``data_gen``."""
        if self.crops:  # crops of the images and, at the same place, of their latents
            where = self.data.draw(self.cfg.batch_size, self.data_gen)
            c = decoder_condition(self.data.take(where, self.cond, scale=1)) if self.cond is not None else None
            return Batch(self.data.take(where).to(self.env.device), None,
                         None if c is None else c.to(self.env.device))
        idx = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=self.data_gen)
        x = self.data.x[idx].to(self.env.device)
        y = self.data.labels[idx].to(self.env.device) if self.data.labels is not None else None
        c = decoder_condition(self.cond[idx]).to(self.env.device) if self.cond is not None else None
        return Batch(x, y, c)

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """The method's loss on images ``x`` (labels ``y``, condition ``c``) at the current step, drawn from ``gen``."""
        return self.method.loss(self.nets, Batch(x, y, c), self.step, self.gen)

    def train_step(self) -> float:
        """One optimizer step (gradient clipping, warm-up, EMA and target updates); returns the loss."""
        cfg = self.cfg
        self.backbone.train()
        batch = self.batch()
        amp = cfg.amp and self.env.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = self.method.loss(self.nets, batch, self.step, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), cfg.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        self.opt.step()
        update_ema(self.ema, self.backbone, min(cfg.ema_decay, (1 + self.step) / (EMA_WARMUP + self.step)))
        self.method.after_step(self.backbone, self.nets.target)
        self.step += 1
        return float(loss.detach())

    # --- checkpoints ------------------------------------------------------------------
    def save(self) -> Path:
        path = R.step_path(self.out, self.step)
        R.save_weights(path, self.cfg, self.spec, self.backbone.state_dict(), self.ema.state_dict(), self.step)
        state = {"step": self.step, "optimizer": self.opt.state_dict(), "generator": self.gen.get_state(),
                 "data_generator": self.data_gen.get_state()} | self.method.state(self.nets.target)
        R.save_trainer_state(R.trainer_state_path(path), state)
        return path

    def resume(self) -> Path | None:
        """Continue from the latest checkpoint at its exact step (weights, EMA, optimizer, target, RNG)."""
        path = R.latest_checkpoint(self.out)
        if path is None:
            return None
        self.load_weights(path)
        state = R.load_trainer_state(R.trainer_state_path(path))
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.data_gen.set_state(state["data_generator"])
        self.method.load_state(self.nets.target, state)
        self.step = int(state["step"])
        return path

    def load_weights(self, path: Path) -> None:
        """The raw and EMA weights of checkpoint ``path`` into ``backbone`` and ``ema``."""
        run = R.load_run(path)
        self.backbone.load_state_dict(run.backbone.state_dict())
        self.ema.load_state_dict(run.ema.state_dict())

    def finish(self) -> Path:
        """The final checkpoint, also as ``model.safetensors`` (what ``load_model(run)`` and export read)."""
        path = R.step_path(self.out, self.step)
        if not path.is_file():
            path = self.save()
        final = self.out / R.FINAL
        R.save_weights(final, self.cfg, self.spec, self.backbone.state_dict(), self.ema.state_dict(), self.step)
        return final


def _load(cfg: TrainConfig, kind: str):
    """``--data``: ``digits-text`` (the captioned digits' renders, labelled by digit; for a decoder,
    ``--image-size`` crops of them, as photos) or ``data.load_data``'s sets."""
    if cfg.data == "digits-text":
        from .captions import as_crops, as_dataset

        return as_dataset("train", size=cfg.image_size) if kind == "sampler" else as_crops("train", cfg.image_size)
    return load_data(cfg.data, size=cfg.image_size, channels=cfg.channels, kind=kind)


def _log(out: Path, record: dict) -> None:
    with open(out / R.METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, data: Dataset | None = None,
          progress: bool = True, trainer_cls: type[Trainer] | None = None) -> Path:
    """Train ``cfg`` to ``cfg.max_steps``; returns the run folder. Runs under torchrun use DDP.

    Args:
        cfg: the run's configuration; ``cfg.out`` is the run folder.
        resume: continue the run in ``cfg.out`` from its latest checkpoint, at its exact step.
        overwrite: replace a run in ``cfg.out`` (its files are removed once the new run is set up).
            Without ``resume`` or ``overwrite``, a folder that holds a run is refused (``OutputExistsError``).
        data: the data set (default: ``cfg.data``).
        progress: show a progress bar.
        trainer_cls: the trainer (default: ``Trainer``; the text-to-image methods pass
            ``t2i.T2ITrainer`` through ``t2i.train_t2i``).
    """
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed()
    R.check_out(Path(cfg.out), resume=resume, overwrite=overwrite)
    if env.world > 1:
        dist.barrier()  # every rank has looked at the run folder before rank 0 changes it
    if trainer_cls is None and cfg.method in T2I_METHODS:
        raise ConfigError(f"the {cfg.method} method trains with cmrt.train.t2i.train_t2i (`cmrt train {cfg.method}`)")
    trainer = (trainer_cls or Trainer)(cfg, data, env)
    out = trainer.out
    if env.main:
        if overwrite:
            R.remove_run(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / R.CONFIG, {"config": cfg.to_dict(), "versions": R.versions(), "world": env.world})
    if env.world > 1:
        dist.barrier()  # the run folder exists before any rank writes to it
    if resume:
        found = trainer.resume()
        if env.main:
            print(f"resuming from step {trainer.step} ({found})" if found else f"no checkpoint in {out}: starting at step 0",
                  flush=True)
    bar = tqdm(total=cfg.max_steps, initial=trainer.step, disable=not (progress and env.main), dynamic_ncols=True)
    t0, last = time.perf_counter(), trainer.step
    while trainer.step < cfg.max_steps:
        loss = trainer.train_step()
        bar.update(1)
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.max_steps:
            dt = time.perf_counter() - t0
            its = (trainer.step - last) / dt if dt > 0 else 0.0
            bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{its * cfg.batch_size * env.world:.0f}")
            if env.main:
                _log(out, {"step": trainer.step, "loss": loss, "lr": lr_at(cfg, trainer.step - 1), "it_s": its,
                           "img_s": its * cfg.batch_size * env.world, "time": time.time()})
            t0, last = time.perf_counter(), trainer.step
        if trainer.step % cfg.ckpt_every == 0 and env.main:
            trainer.save()
    bar.close()
    if env.main:
        trainer.finish()
    (out / f"rank_{env.rank}.sha256").write_text(weights_digest(trainer.backbone) + "\n")
    if env.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out
