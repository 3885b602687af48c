"""A training run folder on disk: checkpoints (safetensors + JSON config + trainer state) and reading them back.

    run/
      config.json                         the resolved TrainConfig
      metrics.jsonl                       one line per logged step
      model.safetensors (+ model.json)    the final checkpoint (what ``load_model(run)`` reads)
      rank_<r>.sha256                     each DDP rank's final weights digest
      checkpoints/step_0001000.safetensors   weights + ``ema/`` weights + spec/config metadata
      checkpoints/step_0001000.json          the resolved config, step and versions
      checkpoints/step_0001000.state.pt      optimizer, target network and RNG states (tensors only:
                                             loads with ``torch.load(weights_only=True)``)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._io import write_atomic, write_json_atomic
from ..errors import ConfigError, OutputExistsError, SourceError
from ..models.load import (EMA_PREFIX, SPEC_KEY, TRAIN_CONFIG_KEY, load_state, read_checkpoint_metadata,
                           save_checkpoint)
from ..models.spec import ModelSpec
from .models import TrainConfig, ToyMLP, build_backbone

STEP_KEY = "cmrt.step"
METHOD_KEY = "cmrt.method"
CONFIG_KEY = TRAIN_CONFIG_KEY
CKPT_DIR = "checkpoints"
FINAL = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TRASH_PREFIX = ".cmrt-overwritten-"  # an old run's files on their way out (``remove_run``)


def versions() -> dict[str, str]:
    from .. import __version__

    return {"cmrt": __version__, "torch": torch.__version__}


def step_path(out: Path, step: int) -> Path:
    return out / CKPT_DIR / f"step_{step:07d}.safetensors"


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CKPT_DIR).glob("step_*.safetensors"), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    return ckpts[-1] if ckpts else None


def save_weights(path: Path, cfg: TrainConfig, spec: ModelSpec | None, state: dict, ema: dict, step: int) -> None:
    """Weights + EMA as safetensors (atomically), and the resolved config JSON beside them."""
    meta = {STEP_KEY: str(step), METHOD_KEY: cfg.method, CONFIG_KEY: json.dumps(cfg.to_dict())}
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec is not None:
        save_checkpoint(path, spec, state, ema=ema, metadata=meta)
    else:  # 2-D toys: no image spec, not exportable
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        tensors |= {EMA_PREFIX + k: v.detach().contiguous().cpu() for k, v in ema.items()}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    write_json_atomic(path.with_suffix(".json"), {"step": step, "config": cfg.to_dict(), "versions": versions(),
                                                  "spec": spec.to_dict() if spec else None})


def save_trainer_state(path: Path, state: dict) -> None:
    """Optimizer / target / RNG states (tensors, numbers, lists, dicts only), atomically."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_trainer_state(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"{path} is missing: the run cannot resume exactly (its checkpoint has no trainer state)")
    return torch.load(path, map_location="cpu", weights_only=True)


def trainer_state_path(ckpt: Path) -> Path:
    return ckpt.with_suffix(".state.pt")


def run_files(out: Path) -> list[Path]:
    """The files and folders of a training run in ``out`` (none: not a run), in removal order: the
    final model first, the config last, so that a removal cut short still reads as a run."""
    if not out.is_dir():
        return []
    final = out / FINAL
    named = [final, final.with_suffix(".json"), out / CKPT_DIR, *sorted(out.glob("rank_*.sha256")), out / METRICS,
             out / CONFIG]
    return [p for p in named if p.exists()]


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds a run unless told to continue it or replace it."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder: choose another --out")
    if run_files(out) and not (resume or overwrite):
        raise OutputExistsError(f"{out} already holds a training run: pass --resume to continue it, --overwrite to "
                                "replace it, or choose another --out")


def remove_run(out: Path) -> None:
    """Remove the run in ``out`` (only what ``cmrt train`` wrote; other files stay): each of its files
    is first moved into one hidden folder, then that folder is deleted."""
    trash = out / f"{TRASH_PREFIX}{os.getpid()}"
    files = run_files(out)
    if files:
        trash.mkdir()
        for p in files:
            os.replace(p, trash / p.name)
    for old in out.glob(f"{TRASH_PREFIX}*"):  # this one, and any an interrupted overwrite left
        shutil.rmtree(old)


@dataclass
class Run:
    """A checkpoint read back: its config, spec (None for toys), step and the raw / EMA backbones."""

    path: Path
    config: TrainConfig
    spec: ModelSpec | None
    step: int
    backbone: nn.Module
    ema: nn.Module


def resolve_checkpoint(source: str | Path) -> Path:
    """A run folder (its ``model.safetensors`` or latest checkpoint) or a checkpoint file."""
    p = Path(source)
    if p.is_dir():
        final = p / FINAL
        found = final if final.is_file() else latest_checkpoint(p)
        if found is None:
            raise SourceError(f"{p}: no {FINAL} or {CKPT_DIR}/step_*.safetensors: not a training run")
        return found
    if not p.is_file():
        raise SourceError(f"{p} does not exist")
    return p


def load_run(source: str | Path) -> Run:
    """Read a cmrt training checkpoint (any method) with its config."""
    from safetensors.torch import load_file

    path = resolve_checkpoint(source)
    meta = read_checkpoint_metadata(path)
    if CONFIG_KEY not in meta:
        raise SourceError(f"{path} has no training config ('{CONFIG_KEY}'): not written by `cmrt train`")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta[CONFIG_KEY]).items()})
    spec = ModelSpec.from_dict(json.loads(meta[SPEC_KEY])) if SPEC_KEY in meta else None
    tensors = load_file(str(path))
    raw = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or raw
    nets = []
    for state in (raw, ema):
        net = build_backbone(cfg, spec)
        if isinstance(net, ToyMLP):
            net.load_state_dict(state, strict=True)
        else:
            load_state(net, state, str(path))
        nets.append(net.eval())
    return Run(path, cfg, spec, int(meta.get(STEP_KEY, 0)), nets[0], nets[1])
