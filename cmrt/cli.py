"""``cmrt``: a thin command line over the library. Each subcommand maps its options to one call.

User errors print one line (``cmrt: error: ...``) and exit 2; a failed check exits 1; an
unexpected internal error prints one line and exits 3 (``CMRT_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from .errors import CmrtError, ParityError

EXAMPLES = """examples:
  cmrt export --steps 2 --out bundle            export the bundled default model
  cmrt export --model run/ --sigmas 80,1.38     a training run, explicit σ's
  cmrt export --model cd_imagenet64_l2.pt --arch imagenet64 --sigmas 80,1.3824
  cmrt export --model decoder.pt --embedding embedding.safetensors --out dec
  cmrt export --task inpaint --steps 4 --out inpaint    an editing graph (cmrt.Editor)
  cmrt export --task superres --factor 4 --steps 4 --out sr
  cmrt check bundle                             verify the files, re-check parity on ONNX Runtime
  cmrt sample bundle --n 16 --seed 0 --out grid.png
"""

#: Every subcommand: name → (module, add-arguments function, run function, help). One literal
#: table; modules are imported when the parser is built (each imports cheaply).
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "export": ("cmrt.cli", "_export_args", "_export_run",
               "export a model's fixed-step sampler to an ONNX bundle, checked against PyTorch"),
    "check": ("cmrt.cli", "_check_args", "_check_run",
              "verify a bundle's files and re-check its parity with the PyTorch outputs stored in it"),
    "sample": ("cmrt.cli", "_sample_args", "_sample_run", "sample images from a sampler bundle into a PNG grid"),
    "generate": ("cmrt.generate", "generate_args", "generate_run",
                 "text → images with a pipeline bundle (an exported LCM / LCM-LoRA) into a PNG"),
    "upgrade": ("cmrt.cli", "_upgrade_args", "_upgrade_run",
                "upgrade a bundle made by an older cmrt to this manifest format, in place"),
    "build": ("cmrt.exporter.cli", "_build_args", "_build_run",
              "build a TensorRT / TensorRT-RTX engine from a bundle's FP16 graph (strongly typed)"),
    "train": ("cmrt.train.cli", "_train_args", "_train_run",
              "train a consistency model (ct, cd), an EDM teacher (edm) or a consistency decoder"),
    "train-autoencoder": ("cmrt.train.cli", "_ae_args", "_ae_run",
                          "train the small frozen encoder (image → SD-convention latents) for decoder runs"),
    "eval": ("cmrt.train.cli", "_eval_args", "_eval_run",
             "score sample quality: Fréchet distance and class accuracy (digits), SWD (2-D), PSNR (decoders)"),
    "triton": ("cmrt.serve.cli", "triton_args", "triton_run",
               "write a Triton Inference Server model repository serving bundles (dynamic batching)"),
    "serve": ("cmrt.serve.cli", "serve_args", "serve_run",
              "serve bundles on a local Triton Inference Server (PyTriton's tritonserver) until Ctrl-C"),
    "bench": ("benchmarks.cli", "_bench_args", "_bench_run",
              "benchmark latency, memory and FLOP rate of every backend against PyTorch and diffusers"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``cmrt export: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- argument types ----------------------------------------------------------------------------
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# --- export ------------------------------------------------------------------------------------
#: ``--task`` values (``cmrt.exporter.api.TASKS``, written out so that ``--help`` imports nothing heavy).
TASK_CHOICES = ("sample", "inpaint", "colorize", "superres", "stroke", "denoise")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="SRC", default=None,
                   help="model source: a cmrt checkpoint or training run folder, a diffusers ConsistencyDecoderVAE, "
                        "ConsistencyModelPipeline or UNet2DModel folder, an OpenAI consistency-model .pt, or OpenAI's "
                        "decoder.pt (default: the bundled model)")
    p.add_argument("--task", choices=TASK_CHOICES, default="sample",
                   help="what the graph computes: sample (the model's sampler; decoders decode), or a zero-shot "
                        "edit with a consistency model: inpaint (image + mask, 1 = generate), colorize (gray → RGB, "
                        "3-channel models), superres (low-res image, --factor), stroke (rough painting → image), "
                        "denoise (one σ, --sigmas S)")
    p.add_argument("--factor", type=positive_int, default=None,
                   help="--task superres: the upsampling factor P (the input is H/P × W/P)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="network evaluations (default: 2, or the number of --sigmas/--timesteps; editing tasks "
                        "use the sampling σ's, stroke from σ = 5)")
    p.add_argument("--sigmas", type=float_list, default=None, help="σ of every evaluation, e.g. 80,1.3824 (samplers)")
    p.add_argument("--timesteps", type=int_list, default=None, help="timestep of every evaluation, e.g. 1008,512 (decoders)")
    p.add_argument("--grid", type=positive_int, default=None,
                   help="Karras grid points that --steps spaces on (samplers; default: the model's, e.g. 40, "
                        "201 for ct_imagenet64.pt, 151 for the LSUN-256 CT checkpoints)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", dest="clip", action="store_true", default=None, help="clamp x0 to [-1, 1] after each step")
    clip.add_argument("--no-clip", dest="clip", action="store_false", help="do not clamp x0 between steps")
    p.add_argument("--out", type=Path, default=Path("bundle"), help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 also writes a calibrated FP16 graph (model.fp16.onnx) for TensorRT")
    p.add_argument("--io", choices=("fp32", "fp16"), default="fp32",
                   help="input/output dtype of the FP16 graph (with --precision fp16)")
    p.add_argument("--arch", choices=("imagenet64", "lsun256"), default=None,
                   help="OpenAI consistency-model checkpoints: check the file against this published configuration")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="image side in pixels, for an OpenAI checkpoint of unpublished layout or a UNet without sample_size")
    p.add_argument("--trust", action="store_true",
                   help="load a TorchScript decoder.pt whose SHA-256 is not the published one (it carries code)")
    p.add_argument("--embedding", type=Path, default=None, metavar="FILE",
                   help="embedding.safetensors with the decoder's time-embedding table (OpenAI decoder.pt lacks it)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="trace the network anew instead of reusing a cached graph of the same architecture")
    p.add_argument("--tile-stats", action="store_true",
                   help="decoders: also write the statistics and shared-statistics graphs (model.stats.onnx, "
                        "model.shared.onnx, model.shared-means.onnx, reading model.onnx's weights) with which a "
                        "tiled decode shares GroupNorm statistics across its tiles "
                        "(Decoder.decode(norm='canvas'|'shared'|'shared-means'))")
    from .generate import export_options

    export_options(p)


def _export_run(a: argparse.Namespace) -> int:
    from .exporter.api import export
    from .generate import export_run, is_pipeline_source, refuse_pipeline_options

    if is_pipeline_source(a.model):  # a diffusers text-to-image folder: a pipeline bundle
        return export_run(a)
    refuse_pipeline_options(a)
    bundle = export(a.model, out=a.out, steps=a.steps, sigmas=a.sigmas, timesteps=a.timesteps, grid=a.grid,
                    clip=a.clip, overwrite=a.overwrite, precision=a.precision, io=a.io, arch=a.arch,
                    image_size=a.image_size, trust=a.trust, embedding=a.embedding, cache=a.cache, task=a.task,
                    factor=a.factor, tile_stats=a.tile_stats)
    m = bundle.manifest
    s = m.schedule
    sched = f"σ {[round(x, 4) for x in s.sigmas]}" if s.sigmas else f"timesteps {list(s.timesteps)}"
    what = m.kind if m.kind != "editor" else f"editor: {m.task.name}" + (f" ×{m.task.factor}" if m.task.factor else "")
    print(f"wrote {bundle.path} ({what}, {m.steps} step(s), {sched}: {s.rule})")
    rule = m.source.details.get("grid_rule")
    if rule and s.grid is not None:
        print(f"grid: {rule}")
    if not m.model.trained:
        print("note: this model is UNTRAINED (random weights): its images are noise-like by design")
    for report in m.parity.values():
        print(f"parity {report.backend} [{report.precision}]: " + ", ".join(
            f"{o.name} max abs {o.max_abs:.3g}" for o in report.outputs))
    if m.norm_stats is not None:
        ns = m.norm_stats
        print(f"shared GroupNorm statistics: {len(ns.groups)} norms, {sum(ns.groups)} groups "
              f"({ns.stats_graph.file}, {ns.shared_graph.file}, {ns.means_graph.file}); " + ", ".join(
                  f"{k} max abs {r.outputs[0].max_abs:.3g}" for k, r in ns.parity.items()))
    return 0


# --- check -------------------------------------------------------------------------------------
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (or a graph/engine inside it)")
    p.add_argument("--backend", default=None, help="onnxruntime (default), onnxruntime-cpu, onnxruntime-cuda, tensorrt")


def _check_run(a: argparse.Namespace) -> int:
    from .runtime.check import check

    report = check(a.bundle, backend=a.backend)
    print("\n".join(report.lines()))
    print("PASS" if report.passed else "FAIL")
    return 0 if report.passed else 1


# --- sample ------------------------------------------------------------------------------------
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a sampler bundle")
    p.add_argument("--n", type=positive_int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--class-labels", "--labels", dest="labels", type=int_list, default=None,
                   help="class labels, one per image or one for all (default: drawn from the seed)")
    p.add_argument("--backend", default=None, help="backend name (default: onnxruntime)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid to write")


def _sample_run(a: argparse.Namespace) -> int:
    from ._io import check_writable
    from .images import save_grid
    from .runtime.api import Sampler

    check_writable(a.out, "--out")
    labels = None if a.labels is None else (a.labels[0] if len(a.labels) == 1 else a.labels)
    with Sampler(a.bundle, backend=a.backend) as sampler:
        images = sampler.sample(a.n, class_labels=labels, seed=a.seed)
    save_grid(images, a.out)
    print(f"wrote {a.out} ({a.n} images)")
    return 0


# --- upgrade -----------------------------------------------------------------------------------
def _upgrade_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a bundle folder made by an older cmrt")


def _upgrade_run(a: argparse.Namespace) -> int:
    from .bundle import FORMAT_VERSION, upgrade_bundle

    bundle = upgrade_bundle(a.bundle)
    print(f"{bundle.path}: manifest format {FORMAT_VERSION}, {len(bundle.manifest.files())} files recorded")
    return 0


# --- main --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = OneLineParser(prog="cmrt", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cmrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, add, run, help_) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an install without the benchmarks package
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        getattr(module, add)(p)
        p.set_defaults(_run=getattr(module, run))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except ParityError as exc:
        print(f"cmrt: parity failure: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (CmrtError, OSError) as exc:
        print(f"cmrt: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmrt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("CMRT_DEBUG"):
            raise
        print(f"cmrt: internal error: {type(exc).__name__}: {_one_line(exc)} (run with CMRT_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return 3


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CmrtError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
