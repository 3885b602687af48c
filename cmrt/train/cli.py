"""``cmrt train`` and ``cmrt eval`` (registered into ``cmrt.cli`` on import).

Every ``TrainConfig`` field is an option (``--batch-size``, ``--ct-s1`` ...): the command line
overrides ``--config FILE``, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

from .._args import float_list, int_list
from .models import METHODS, TrainConfig

TRAIN_EXAMPLES = """examples:
  cmrt train edm --data digits --out runs/teacher --max-steps 6000
  cmrt train cd --data digits --teacher runs/teacher --init runs/teacher --out runs/cd
  cmrt train ct --data moons --out runs/moons --max-steps 2000
  torchrun --nproc_per_node 2 -m cmrt.cli train ct --data digits --out runs/ct   (DDP)
"""
SKIP = {"method", "out", "data", "max_steps"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _tuple_type(kind):
    def parse(text: str):
        items = [x for x in text.split(",") if x.strip()]
        if kind is bool:
            return tuple(x.strip().lower() in ("1", "true", "yes", "y") for x in items)
        return tuple(kind(x) for x in items)
    return parse


def _add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training options (default: the value shown, or --config)")
    for f in fields(TrainConfig):
        if f.name in SKIP:
            continue
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            g.add_argument(_flag(f.name), type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                           metavar="BOOL", help=f"(default: {default})")
        elif isinstance(default, tuple):
            g.add_argument(_flag(f.name), type=_tuple_type(type(default[0])), default=None, metavar="A,B,..",
                           help=f"(default: {','.join(str(v) for v in default)})")
        else:
            g.add_argument(_flag(f.name), type=type(default), default=None, help=f"(default: {default!r})")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.epilog = TRAIN_EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("method", choices=METHODS, help="edm (diffusion teacher), ct, cd, decoder")
    p.add_argument("--data", default=None,
                   help="digits (default), digits-color, moons/circles/blobs/swissroll, an image folder or a .npz")
    p.add_argument("--out", default=None, help="run folder (default: ./run)")
    p.add_argument("--max-steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint at its exact step")
    p.add_argument("--config", default=None, help="JSON file of training options")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(p)


def _train_run(a: argparse.Namespace) -> int:
    from .loop import train

    overrides = {f.name: getattr(a, f.name, None) for f in fields(TrainConfig)}
    overrides["method"] = a.method
    cfg = TrainConfig.from_sources(a.config, overrides)
    out = train(cfg, resume=a.resume, progress=not a.no_progress)
    print(f"wrote {out}")
    return 0




def _ae_args(p: argparse.ArgumentParser) -> None:
    from .autoencoder import AutoencoderConfig

    d = AutoencoderConfig()
    p.add_argument("--data", default=d.data, help="digits-color, photos (crops of scikit-image's photographs), "
                   "an image folder or a .npz (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="encoder file to write (.safetensors; + .json beside it)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="training image side; photos: the random crop (default: %(default)s)")
    p.add_argument("--widths", type=int_list, default=d.widths, metavar="A,B,C",
                   help=f"the three stage widths (default: {','.join(map(str, d.widths))})")
    p.add_argument("--blocks", type=int, default=d.blocks, help="residual blocks per stage (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--lr-min", type=float, default=None, help="learning rate at the last step, cosine decay "
                   "(default: --lr, constant)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads, 0 = default (default: %(default)s)")


def _ae_run(a: argparse.Namespace) -> int:
    from .autoencoder import AutoencoderConfig, train_autoencoder

    cfg = AutoencoderConfig(data=a.data, max_steps=a.max_steps, batch_size=a.batch_size, seed=a.seed,
                            image_size=a.image_size, widths=tuple(a.widths), blocks=a.blocks, lr=a.lr,
                            lr_min=a.lr if a.lr_min is None else a.lr_min, threads=a.threads)
    report = train_autoencoder(cfg, a.out)
    print(json.dumps(report))
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a training run folder, checkpoint or sampler/decoder bundle")
    p.add_argument("--steps", type=int_list, default=[1, 2], help="sampling steps to score, e.g. 1,2")
    p.add_argument("--n-per-class", type=int, default=30, help="digits: samples per class (30 → sets of 300)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.add_argument("--sigmas", type=float_list, default=None, help="digits runs: score this σ schedule, e.g. 80,1.0")
    p.add_argument("--grid", type=Path, default=None, help="also write sample grids, <stem>_<k>step.png")
    p.add_argument("--task", choices=("inpaint", "superres", "colorize"), default=None,
                   help="score zero-shot editing instead of sampling: inpaint (25%% box) and superres (from 4×4) on "
                        "digits, with baselines; colorize on held-out digits-color (RGB models). SOURCE: a model "
                        "source or an editing bundle of that task")


def _eval_run(a: argparse.Namespace) -> int:
    from .eval import evaluate

    if a.task is not None:
        from .eval_edit import evaluate_edit

        report = evaluate_edit(a.source, a.task, steps=a.steps, seed=a.seed)
    else:
        report = evaluate(a.source, steps=a.steps, n_per_class=a.n_per_class, seed=a.seed, grid=a.grid,
                          sigmas=a.sigmas)
    for line in report.lines():
        print(line)
    if a.json:
        from .._io import write_json_atomic

        write_json_atomic(a.json, report.to_dict())
    return 0
