"""``cmrt``: a thin command line over the library. Each subcommand maps its options to one call.

User errors print one line (``cmrt: error: ...``) and exit 2; a failed parity check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import CmrtError, ConfigError, ParityError

EXAMPLES = """examples:
  cmrt export --steps 2 --out bundle            export the bundled default model
  cmrt export --model run/ --sigmas 80,1.38     a training run, explicit σ's
  cmrt export --model cd_imagenet64_l2.pt --arch imagenet64 --sigmas 80,1.3824
  cmrt export --model decoder.pt --embedding embedding.safetensors --out dec
  cmrt check bundle                             re-check parity on ONNX Runtime
  cmrt sample bundle --n 16 --seed 0 --out grid.png
"""

#: subcommand name → (add_arguments, run). Other modules register theirs with ``command``.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def wrap(fn_pair):
        COMMANDS[name] = (*fn_pair, help)
        return fn_pair
    return wrap


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# --- export ----------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="SRC", default=None,
                   help="model source: a cmrt checkpoint or training run folder, a diffusers ConsistencyDecoderVAE, "
                        "ConsistencyModelPipeline or UNet2DModel folder, an OpenAI consistency-model .pt, or OpenAI's "
                        "decoder.pt (default: the bundled model)")
    p.add_argument("--steps", type=int, default=None, help="network evaluations (default: 2, or the number of --sigmas)")
    p.add_argument("--sigmas", type=float_list, default=None, help="σ of every evaluation, e.g. 80,1.3824 (samplers)")
    p.add_argument("--timesteps", type=int_list, default=None, help="timestep of every evaluation, e.g. 1008,512 (decoders)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", dest="clip", action="store_true", default=None, help="clamp x0 to [-1, 1] after each step")
    clip.add_argument("--no-clip", dest="clip", action="store_false", help="do not clamp x0 between steps")
    p.add_argument("--out", type=Path, default=Path("bundle"), help="bundle folder to write (default: ./bundle)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 also writes a calibrated FP16 graph (model.fp16.onnx) for TensorRT")
    p.add_argument("--io", choices=("fp32", "fp16"), default="fp32",
                   help="input/output dtype of the FP16 graph (with --precision fp16)")
    p.add_argument("--arch", choices=("imagenet64", "lsun256"), default=None,
                   help="OpenAI consistency-model checkpoints: check the file against this published configuration")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels, for an OpenAI checkpoint of unpublished layout or a UNet without sample_size")
    p.add_argument("--trust", action="store_true",
                   help="load a TorchScript decoder.pt whose SHA-256 is not the published one (it carries code)")
    p.add_argument("--embedding", type=Path, default=None, metavar="FILE",
                   help="embedding.safetensors with the decoder's time-embedding table (OpenAI decoder.pt lacks it)")


def _export_run(a: argparse.Namespace) -> int:
    from .export.api import export

    steps = a.steps if (a.steps is not None or a.sigmas or a.timesteps) else 2
    bundle = export(a.model, a.out, steps=steps, sigmas=a.sigmas, timesteps=a.timesteps, clip=a.clip,
                    overwrite=a.overwrite, precision=a.precision, io=a.io, **_load_options(a))
    m = bundle.manifest
    sched = f"σ {m.sigmas}" if m.sigmas else f"timesteps {m.timesteps}"
    print(f"wrote {bundle.path} ({m.kind}, {m.steps} step(s), {sched})")
    if not m.model.get("trained", True):
        print("note: this model is UNTRAINED (random weights): its images are noise-like by design")
    for report in m.parity.values():
        print(f"parity {report['backend']} [{report['precision']}]: " + ", ".join(
            f"{o['name']} max abs {o['max_abs']:.3g}" for o in report["outputs"]))
    return 0


def _load_options(a: argparse.Namespace) -> dict:
    """Format-specific load options given on the command line (the published formats)."""
    given = {"arch": a.arch, "image_size": a.image_size, "trust": a.trust or None, "embedding": a.embedding}
    return {k: v for k, v in given.items() if v is not None}


command("export", "export a model's fixed-step sampler to an ONNX bundle, checked against PyTorch")(
    (_export_args, _export_run))


# --- check -----------------------------------------------------------------------------
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (or a graph/engine inside it)")
    p.add_argument("--backend", default=None, help="onnxruntime (default), onnxruntime-cpu, onnxruntime-cuda, tensorrt")


def _check_run(a: argparse.Namespace) -> int:
    from .runtime.check import check

    report = check(a.bundle, backend=a.backend)
    print("\n".join(report.lines()))
    print("PASS" if report.passed else "FAIL")
    return 0 if report.passed else 1


command("check", "re-check a bundle's parity with the PyTorch outputs stored in it")((_check_args, _check_run))


# --- sample ----------------------------------------------------------------------------
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a sampler bundle")
    p.add_argument("--n", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--labels", type=int_list, default=None, help="class labels, one per image or one for all")
    p.add_argument("--backend", default=None, help="backend name (default: onnxruntime)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid to write (default: samples.png)")


def _sample_run(a: argparse.Namespace) -> int:
    from .runtime.api import Sampler
    from .images import save_grid

    sampler = Sampler(a.bundle, backend=a.backend)
    labels = None
    if a.labels is not None:
        labels = a.labels[0] if len(a.labels) == 1 else a.labels
    images = sampler.sample(a.n, class_labels=labels, seed=a.seed)
    save_grid(images, a.out)
    print(f"wrote {a.out} ({a.n} images)")
    return 0


command("sample", "sample images from a sampler bundle into a PNG grid")((_sample_args, _sample_run))


# --- main ------------------------------------------------------------------------------
def _load_plugins() -> None:
    """Subcommands that live with their subsystems register themselves on import."""
    import importlib

    for mod in ("cmrt.export.cli", "cmrt.train.cli", "cmrt.serve.cli", "benchmarks.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod and not mod.startswith(str(exc.name)):
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="cmrt", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cmrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add(p)
        p.set_defaults(_run=run)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except ParityError as exc:
        print(f"cmrt: parity failure: {exc}", file=sys.stderr)
        return 1
    except (CmrtError, OSError) as exc:
        msg = str(exc).replace("\n", " ") or type(exc).__name__
        print(f"cmrt: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m cmrt.cli`: run the importable module, so plugins (which import cmrt.cli) register into one COMMANDS
    from cmrt.cli import main as _main

    sys.exit(_main())
