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
from ..errors import ConfigError
from .data import NAMED_SETS, TOY_SETS
from .models import DEFAULT_DISTANCE, METHODS, TrainConfig

TRAIN_EXAMPLES = """examples:
  cmrt train edm --data digits --out runs/teacher --max-steps 6000
  cmrt train cd --data digits --teacher runs/teacher --init runs/teacher --out runs/cd
  cmrt train ct --data moons --out runs/moons --max-steps 2000
  torchrun --nproc_per_node 2 -m cmrt.cli train ct --data digits --out runs/ct   (DDP)
  cmrt train vae --data digits-text --out runs/vae
  cmrt train ldm --data digits-text --vae runs/vae --out runs/ldm
  cmrt train lcm --data digits-text --teacher runs/ldm --out runs/lcm     (--lora-rank 8: LCM-LoRA)
"""
SKIP = {"method", "out", "data", "max_steps"}  # options of their own in _train_args

#: The help of every other ``TrainConfig`` field (the default is appended).
OPTION_HELP = {
    "batch_size": "images (2-D toys: points) per optimizer step, per process",
    "lr": "Adam learning rate",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "ema_decay": "decay of the EMA of the weights that export and eval use (ramped up as (1+k)/(10+k) early on)",
    "grad_clip": "clip the gradient's global norm to this; 0: no clipping",
    "seed": "seed of the initialization, the noise and the batches",
    "image_size": "image side in pixels, a multiple of 8 (digits are resized to it; photos: the random crop's side; "
                  "decoders on digits-color: 32)",
    "channels": "image channels: 1 (gray) or 3 (RGB: digits-color, photos)",
    "widths": "UNet channels at each resolution level",
    "layers_per_block": "residual blocks per UNet level",
    "attention": "self-attention at each UNet level, one true/false per --widths entry (decoders: none)",
    "head_dim": "channels per attention head",
    "norm_groups": "GroupNorm groups (every width must divide by it)",
    "dropout": "dropout probability in the residual blocks",
    "distance": "the loss's distance, l2 or pseudo_huber (default: the method's: "
                + ", ".join(f"{m} {d}" for m, d in DEFAULT_DISTANCE.items()) + ")",
    "init": "initialize the network from this run's EMA weights (e.g. the EDM teacher's)",
    "ct_s0": "ct, decoder: iCT's discretization curriculum starts at N = s0 + 1 ...",
    "ct_s1": "... and doubles over the run up to N = s1 + 1",
    "teacher": "cd, lcm (required): the teacher's run folder (cd: 'cmrt train edm'; lcm: 'cmrt train ldm')",
    "cd_grid": "cd: the points N of the Karras grid that adjacent σ pairs are drawn from",
    "target_ema": "cd: EMA decay of the target network θ⁻",
    "encoder": "decoder (required): the frozen encoder file (trained with 'cmrt train-autoencoder')",
    "denoise_weight": "decoder: weight of the term that pulls the one-step output towards the clean image",
    "vae": "ldm (required): the AutoencoderKL run folder (trained with 'cmrt train vae')",
    "kl_weight": "vae: weight of the KL term beside the reconstruction MSE",
    "text_width": "ldm: the CLIP text encoder's hidden size (trained with the UNet)",
    "text_layers": "ldm: the text encoder's transformer layers",
    "cond_dropout": "ldm: probability of an empty caption (classifier-free guidance)",
    "weight_cap": "ldm: weight each timestep's ε-MSE by min(1/ᾱ_t, cap) (EDM's weighting for unit-variance latents, "
                  "capped; 1: unweighted)",
    "guidance_min": "lcm: guidance scales ω + 1 are drawn uniformly from [--guidance-min, --guidance-max]",
    "guidance_max": "lcm: the upper end of that range",
    "lcm_skip": "lcm: the skipping step k; the teacher's DDIM solver steps from t to t − k on the 1000-step schedule",
    "time_cond_dim": "lcm: size of the guidance-scale embedding (the UNet's time_cond_proj_dim)",
    "lora_rank": "lcm: > 0 learns an LCM-LoRA of this rank on the teacher's UNet instead of a full student",
    "mlp_width": "2-D toys: the MLP's hidden width",
    "log_every": "append a line to the run's metrics.jsonl every this many steps",
    "ckpt_every": "write a checkpoint (weights, EMA, optimizer and generator states) every this many steps",
    "threads": "torch CPU threads; 0: torch's default",
    "amp": "bf16 autocast on a GPU (true/false)",
    "name": "the model's name in its checkpoints (default: DATA-METHOD)",
}
DATA_HELP = ("what to train on: " + ", ".join(NAMED_SETS) + " (random crops of scikit-image's photographs, for "
             "decoders), a 2-D toy set (" + ", ".join(TOY_SETS) + ": a small MLP, scored by 'cmrt eval', not "
             "exportable), a folder of images, or an .npz with 'images' (and 'labels')")


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
        text = OPTION_HELP[f.name]
        if isinstance(default, bool):
            g.add_argument(_flag(f.name), type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                           metavar="BOOL", help=f"{text} (default: {str(default).lower()})")
        elif isinstance(default, tuple):
            shown = ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in default)
            g.add_argument(_flag(f.name), type=_tuple_type(type(default[0])), default=None, metavar="A,B,..",
                           help=f"{text} (default: {shown})")
        else:
            shown = "" if default == "" or "default" in text else f" (default: {default})"
            g.add_argument(_flag(f.name), type=type(default), default=None, metavar=_metavar(f.name, default),
                           help=text + shown)


def _metavar(name: str, default) -> str:
    if isinstance(default, str):
        return "RUN" if name in ("init", "teacher") else "FILE" if name == "encoder" else name.upper()
    return "N" if isinstance(default, int) else "X"


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.epilog = TRAIN_EXAMPLES
    if not issubclass(p.formatter_class, argparse.RawDescriptionHelpFormatter):
        p.formatter_class = argparse.RawDescriptionHelpFormatter  # the examples' lines as written
    p.add_argument("method", choices=METHODS, help="edm (the diffusion teacher), ct (consistency training), cd "
                   "(consistency distillation from --teacher), decoder (a consistency decoder on --encoder's latents); "
                   "text to image on digits-text: vae (an AutoencoderKL), ldm (a text-conditioned latent diffusion "
                   "teacher), lcm (latent consistency distillation of --teacher; --lora-rank R: LCM-LoRA)")
    p.add_argument("--data", default=None, metavar="DATA", help=f"{DATA_HELP} (default: {d.data})")
    p.add_argument("--out", default=None, metavar="DIR", help=f"the run folder (default: ./{d.out})")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help=f"train until this optimizer step (default: {d.max_steps})")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint, at its exact step")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (its files are removed; other files stay)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON file of training options (the command line overrides it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(p)


def _train_run(a: argparse.Namespace) -> int:
    from .loop import train
    from .models import T2I_METHODS

    overrides = {f.name: getattr(a, f.name, None) for f in fields(TrainConfig)}
    overrides["method"] = a.method
    cfg = TrainConfig.from_sources(a.config, overrides)
    if cfg.method in T2I_METHODS:
        from .t2i import train_t2i as train
    out = train(cfg, resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress)
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
    t2i = p.add_argument_group("text to image (SOURCE: a diffusers folder or a `cmrt train ldm/lcm` run)")
    t2i.add_argument("--guidance", type=float_list, default=None, metavar="G,G,..",
                     help="guidance scales to score (default: 1,2,4,8); text-to-image sources only")
    t2i.add_argument("--lora", type=Path, default=None, metavar="FILE",
                     help="score a teacher folder with this LCM-LoRA and LCM's scheduler (default: the teacher "
                          "itself, DDIM with classifier-free guidance)")
    t2i.add_argument("--teacher-steps", type=int, default=None, metavar="N",
                     help="the teacher's DDIM steps (default: 25)")


def _eval_run(a: argparse.Namespace) -> int:
    from .eval import evaluate

    from .t2i_eval import TEACHER_STEPS, evaluate_t2i, is_t2i_source

    if is_t2i_source(a.source):
        if a.task or a.sigmas:
            raise ConfigError("--task and --sigmas do not apply to a text-to-image source")
        report = evaluate_t2i(a.source, steps=a.steps, guidance=a.guidance or [1.0, 2.0, 4.0, 8.0], lora=a.lora,
                              teacher_steps=a.teacher_steps or TEACHER_STEPS, seed=a.seed, grid=a.grid)
    elif a.guidance or a.lora or a.teacher_steps:
        raise ConfigError(f"--guidance, --lora and --teacher-steps apply to text-to-image sources; {a.source} is not "
                          "a diffusers folder or a `cmrt train ldm/lcm` run")
    elif a.task is not None:
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
