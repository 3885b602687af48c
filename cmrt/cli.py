"""``cmrt``: a thin command line over the library. Each subcommand maps its options to one call.

User errors print one line (``cmrt: error: ...``) and exit 2; a failed check exits 1; an
unexpected internal error prints one line and exits 3 (``CMRT_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from ._args import float_list, int_list, positive_int  # shared with the subcommands' modules
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
  cmrt decode dec photo.png --out decoded.png   encode a photo (the bundled autoencoder), decode it
  cmrt decode dec latents.npy --tile 32 --out big.png
  cmrt edit inpaint --image in.png --mask mask.png --n 4 --out edits.png   white in the mask = generate
"""

#: Every subcommand: name → (module, add-arguments function, run function, help). One literal
#: table; a command's module is imported only when that command runs (or its --help is asked).
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "export": ("cmrt.cli", "_export_args", "_export_run",
               "export a model's fixed-step sampler to an ONNX bundle, checked against PyTorch"),
    "check": ("cmrt.cli", "_check_args", "_check_run",
              "verify a bundle's files and re-check its parity with the PyTorch outputs stored in it"),
    "sample": ("cmrt.cli", "_sample_args", "_sample_run", "sample images from a sampler bundle into a PNG grid"),
    "decode": ("cmrt.cli", "_decode_args", "_decode_run",
               "decode latents (a .npy/.safetensors file, or an image it encodes first) with a decoder bundle into a PNG"),
    "edit": ("cmrt.cli", "_edit_args", "_edit_run",
             "edit an image (inpaint with a mask, colorize, superres, stroke, denoise) with an editor bundle into a PNG"),
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
    "bench": ("cmrt.bench", "bench_args", "bench_run",
              "benchmark latency, memory and FLOP rate against PyTorch and diffusers (a source checkout's suites)"),
}


#: Options users type from other tools or older cmrt → what to write instead (a hint in the error).
OPTION_HINTS = {"--fp16": "--precision fp16", "--half": "--precision fp16", "--fp32": "--precision fp32",
                "--float16": "--precision fp16", "--clamp": "--clip", "--num-steps": "--steps",
                "--batch-size": "--n", "--num-images": "--n", "--output": "--out", "-o": "--out"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``cmrt export: error: ...``) and exit 2;
    an unrecognized option gets a hint: a known other name (``--fp16`` → ``--precision fp16``) or
    the closest option of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def unknown(self, extras: Sequence[str]) -> NoReturn:
        """The error for options no command knows, with a hint where one fits."""
        import difflib

        known = [o for a in self._actions for o in a.option_strings]
        hints = []
        for arg in extras:
            name = arg.split("=", 1)[0]
            if not name.startswith("-"):
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            hint = OPTION_HINTS.get(name) or (close[0] if close else None)
            if hint is not None and hint.split()[0] in known:
                hints.append(f"did you mean {hint}?" if name not in OPTION_HINTS else f"use {hint} instead of {name}")
        self.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else ""))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; "(default: X)" added to an option's help only where the
    text does not already say its default and the option takes a value; no RST markup."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(text.replace("``", ""), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("``", "")
        if ("default" in text or action.nargs == 0 or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


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
    clip.add_argument("--clip", dest="clip", action="store_true", default=None,
                      help="clamp x0 to [-1, 1] after each step, recorded in the manifest (default: the source's own "
                           "sampler: on for consistency models and OpenAI's decoder.pt, which clamps; off for "
                           "diffusers' decoder and cmrt's decoders, whose images then reach about ±1.2)")
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
                   help="trace the network anew instead of reusing a cached graph of the same architecture (the "
                        "cache: $CMRT_CACHE_DIR/networks, default ~/.cache/cmrt/networks)")
    p.add_argument("--tile-stats", action="store_true",
                   help="decoders: also write the statistics and shared-statistics graphs (model.stats.onnx, "
                        "model.shared.onnx, model.shared-means.onnx, reading model.onnx's weights) with which a "
                        "tiled decode shares GroupNorm statistics across its tiles "
                        "(Decoder.decode(norm='canvas'|'shared'|'shared-means'))")
    p.add_argument("--int8", action="store_true",
                   help="also quantize the sampler or decoder graph to INT8 (NNCF post-training, OpenVINO IR "
                        "model.int8.xml, backend openvino-int8), shipped only where its parity passes the int8 "
                        "tier and it runs --int8-min-speedup times as fast as the path it replaces; needs "
                        "cmrt[openvino]")
    p.add_argument("--int8-min-speedup", type=float, default=None, metavar="X",
                   help="with --int8: the speed-up over OpenVINO BF16 (on a CPU with native BF16; else ONNX "
                        "Runtime FP32), timed at export (samplers: a calibration call; decoders: a 256² image), "
                        "that the INT8 model must reach to ship (default 1.3; 0: ship on parity alone)")
    p.add_argument("--int8-latents", type=Path, default=None, metavar="FILE.npy",
                   help="decoders with --int8: real encoded images' latents (N, 4, h, w) to calibrate on "
                        "(default: the source's own training images through its encoder)")
    from .generate import export_options

    export_options(p)


def _int8_latents(a: argparse.Namespace):
    """``--int8-latents FILE.npy`` read, else (with ``--int8``) the source's own training images
    encoded, drawn only if the source turns out to be a decoder (``cmrt.train.calibration``)."""
    if a.int8_latents is not None:
        import numpy as np

        from .errors import ConfigError

        try:
            return np.load(a.int8_latents, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--int8-latents {a.int8_latents}: not a readable .npy array ({exc})") from None
    if not a.int8:
        return None

    def encoded():
        from .train.calibration import decoder_latents

        return decoder_latents(a.model)
    return encoded


def _export_run(a: argparse.Namespace) -> int:
    from .exporter.api import export
    from .generate import export_run, is_pipeline_source, refuse_pipeline_options

    if is_pipeline_source(a.model):  # a diffusers text-to-image folder: a pipeline bundle
        return export_run(a)
    refuse_pipeline_options(a)
    bundle = export(a.model, out=a.out, steps=a.steps, sigmas=a.sigmas, timesteps=a.timesteps, grid=a.grid,
                    clip=a.clip, overwrite=a.overwrite, precision=a.precision, io=a.io, arch=a.arch,
                    image_size=a.image_size, trust=a.trust, embedding=a.embedding, cache=a.cache, task=a.task,
                    factor=a.factor, tile_stats=a.tile_stats, int8=a.int8,
                    int8_latents=_int8_latents(a), int8_min_speedup=a.int8_min_speedup)
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
    if m.int8 is not None:
        from .exporter.int8 import summary_line

        print(summary_line(m.int8))
    return 0


# --- check -------------------------------------------------------------------------------------
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (or a graph/engine inside it), or a pipeline bundle "
                   "folder (every stage is run on its stored inputs)")
    p.add_argument("--backend", default=None, help="onnxruntime, onnxruntime-cpu, onnxruntime-cuda, tensorrt, "
                   "openvino, openvino-bf16, openvino-f32, openvino-int8 (default: the bundle's default choice, "
                   "per stage for a pipeline bundle, printed); OpenVINO results are recorded in the manifest")


def _check_run(a: argparse.Namespace) -> int:
    from .bundle import PIPELINE_MANIFEST
    from .runtime.check import check
    from .runtime.pipeline import check_pipeline_report

    if a.bundle.is_dir() and (a.bundle / PIPELINE_MANIFEST).is_file():  # a pipeline bundle: every stage
        report = check_pipeline_report(a.bundle, backend=a.backend)
    else:
        report = check(a.bundle, backend=a.backend)
    print("\n".join(report.lines()))
    print("PASS" if report.passed else "FAIL")
    return 0 if report.passed else 1


#: ``--backend``: what the runners choose when it is not given.
BACKEND_HELP = ("backend name (default: a backend whose recorded parity passed on a CPU like this one and that "
                "was timed faster than onnxruntime there, else onnxruntime; openvino-int8, the INT8 model of "
                "`cmrt export --int8`, only when named)")


# --- sample ------------------------------------------------------------------------------------
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a sampler bundle")
    _generation_args(p, n=16, n_help="number of images", per="image", out=Path("samples.png"),
                     out_help="PNG grid to write; a .npy name keeps the raw values")


def _generation_args(p: argparse.ArgumentParser, *, n: int, n_help: str, per: str, out: Path, out_help: str) -> None:
    """The options ``sample`` and ``edit`` share: count, seed, class labels, backend, output file."""
    p.add_argument("--n", type=positive_int, default=n, help=n_help)
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--class-labels", "--labels", dest="labels", type=int_list, default=None,
                   help=f"class labels, one per {per} or one for all (default: drawn from the seed)")
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.add_argument("--out", type=Path, default=out, help=out_help)


def _labels(a: argparse.Namespace):
    """``--class-labels`` as the runners take it: None, one label for all, or one per image."""
    return None if a.labels is None else (a.labels[0] if len(a.labels) == 1 else a.labels)


def _sample_run(a: argparse.Namespace) -> int:
    from ._io import check_writable
    from .images import save_images
    from .runtime.sampler import Sampler

    check_writable(a.out, "--out")
    with Sampler(a.bundle, backend=a.backend) as sampler:
        images = sampler.sample(a.n, class_labels=_labels(a), seed=a.seed)
    save_images(images, a.out)
    print(f"wrote {a.out} ({a.n} images)")
    return 0


# --- decode ------------------------------------------------------------------------------------
#: ``--norm`` values (``cmrt.runtime.tiled.options.NORM_MODES``, written out so that ``--help`` imports nothing heavy).
NORM_CHOICES = ("tile", "shared", "shared-means", "canvas")
#: Latent files read as arrays; any other suffix is an image to encode.
ARRAY_SUFFIXES = (".npy", ".safetensors")
#: ``--encoder`` names of the bundled autoencoders (``cmrt.train.autoencoder``).
ENCODERS = {"photos": "PHOTOS_AUTOENCODER", "digits": "DEFAULT_ENCODER"}


def image_size(text: str) -> int | tuple[int, int]:
    """"256" or "256x192" (height x width) → 256 or (256, 192)."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 8 or any(v % 8 for v in parts):
        raise argparse.ArgumentTypeError(f"expected a size like 256 or 256x192 (height x width, multiples of 8), "
                                         f"got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a decoder bundle")
    p.add_argument("latents", type=Path, metavar="LATENTS",
                   help="unscaled SD-convention latents (B, 4, h, w) or (4, h, w): a .npy file, a .safetensors file "
                        "(its tensor 'latents', or its only tensor), or an image file (PNG, JPEG, ...) that --encoder "
                        "turns into latents first")
    p.add_argument("--out", type=Path, default=Path("decoded.png"),
                   help="PNG grid of the decoded images; a .npy name keeps the raw values")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--encoder", default=None, metavar="NAME|FILE",
                   help="image LATENTS: the autoencoder that encodes it: photos (the bundled natural-image one), "
                        "digits (the bundled 32×32 digits one) or a file from `cmrt train-autoencoder` (default: "
                        "digits for a bundle of the bundled digits decoder, else photos)")
    p.add_argument("--size", type=image_size, default=None, metavar="S|HxW",
                   help="image LATENTS: resize it to S×S or H×W pixels (multiples of 8) before encoding (default: "
                        "its own size, center-cropped to multiples of 8; 32 for --encoder digits)")
    p.add_argument("--tile", type=positive_int, default=None,
                   help="decode in tiles of at most TILE×TILE latent pixels (default: one tile)")
    p.add_argument("--overlap", type=int, default=None,
                   help="latent pixels shared by neighbouring tiles (default: the runtime's, wider for --norm canvas)")
    p.add_argument("--norm", choices=NORM_CHOICES, default=None,
                   help="GroupNorm statistics of a tiled decode (default: canvas for --tile-stats bundles, else tile)")
    p.add_argument("--backend", default=None, help=BACKEND_HELP)


def _read_latents(path: Path, encoder: str, size: int | tuple[int, int] | None):
    """The ``LATENTS`` argument as an array: a .npy/.safetensors file, or an image encoded."""
    import numpy as np

    from .errors import BundleNotFoundError, InputError

    if not path.is_file():
        raise BundleNotFoundError(f"LATENTS {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"LATENTS {path} is not a plain .npy array ({exc})") from None
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type on a damaged header
            raise InputError(f"LATENTS {path} is not a safetensors file ({_one_line(exc)})") from None
        if "latents" not in tensors and len(tensors) != 1:
            raise InputError(f"LATENTS {path} holds {len(tensors)} tensors and none named 'latents': "
                             "name the one to decode 'latents'")
        a = tensors.get("latents", next(iter(tensors.values()), None))
    else:
        from .train import autoencoder as AE

        file = getattr(AE, ENCODERS[encoder]) if encoder in ENCODERS else Path(encoder)
        if size is None and encoder == "digits":
            size = AE.DEFAULT_IMAGE_SIZE
        return AE.encode_file(path, encoder=file, size=size)
    return a[None] if a is not None and a.ndim == 3 else a


def _bundled_encoder(manifest) -> str:
    """The ``--encoder`` name that fits a decoder bundle: digits for the bundled digits decoder."""
    from .models.load import DEFAULT_DECODER

    return "digits" if Path(manifest.source.path).name == DEFAULT_DECODER.name else "photos"


def _decode_run(a: argparse.Namespace) -> int:
    from ._io import check_writable
    from .images import save_images
    from .runtime.decoder import Decoder

    check_writable(a.out, "--out")
    with Decoder(a.bundle, backend=a.backend) as decoder:
        latents = _read_latents(a.latents, a.encoder or _bundled_encoder(decoder.bundle.manifest), a.size)
        images = decoder.decode(latents, seed=a.seed, tile=a.tile, overlap=a.overlap, norm=a.norm)
    save_images(images, a.out)
    b, _, h, w = images.shape
    print(f"wrote {a.out} ({b} image(s), {h}x{w}, values in [{float(images.min()):.3g}, {float(images.max()):.3g}])")
    return 0


# --- edit --------------------------------------------------------------------------------------
def _edit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="an editor bundle (cmrt export --task ...)")
    p.add_argument("--image", type=Path, required=True,
                   help="the image to edit (PNG, JPEG, ...), converted to the bundle's channels and resized to its "
                        "input size (superres: the low-resolution size); colorize reads RGB and keeps its luma")
    p.add_argument("--mask", type=Path, default=None,
                   help="inpaint: a mask image, white = generate, black = keep (gray levels in between), resized to "
                        "the bundle's size")
    _generation_args(p, n=1, n_help="edits of the image, each with its own noise", per="edit",
                     out=Path("edited.png"), out_help="PNG grid of the edits; a .npy name keeps the raw values")


def _edit_run(a: argparse.Namespace) -> int:
    import numpy as np

    from ._io import check_writable
    from .errors import ConfigError
    from .images import read_image, read_mask, save_images
    from .runtime.editor import Editor

    check_writable(a.out, "--out")
    with Editor(a.bundle, backend=a.backend) as editor:
        m = editor.bundle.manifest
        shape = {i.name: [int(d) for d in i.shape[1:]] for i in m.inputs if i.name in ("image", "mask")}
        c, h, w = shape["image"]
        image = read_image(a.image, channels=3 if editor.task == "colorize" else c, size=(h, w))
        mask = None
        if "mask" in shape:
            if a.mask is None:
                raise ConfigError("this inpainting bundle needs --mask MASK.png (white = generate, black = keep)")
            mask = np.repeat(read_mask(a.mask, size=(h, w)), a.n, axis=0)
        elif a.mask is not None:
            raise ConfigError(f"--mask applies to inpainting; this bundle's task is {editor.task}: drop --mask")
        images = editor.edit(np.repeat(image, a.n, axis=0), mask=mask, class_labels=_labels(a), seed=a.seed)
    save_images(images, a.out)
    print(f"wrote {a.out} ({a.n} edit(s), {editor.task}, {images.shape[2]}x{images.shape[3]})")
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
def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of the command named in ``argv`` is imported (its options added),
    so that ``cmrt --help``, ``cmrt serve`` etc. never load torch for another command's options.
    ``argv`` None: every command's options (everything imported)."""
    from . import __version__

    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = OneLineParser(prog="cmrt", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                           formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"cmrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, add, run, help_) in COMMANDS.items():
        if importlib.util.find_spec(module_name.split(".")[0]) is None:  # an install without benchmarks
            continue
        if chosen in (None, name):
            module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        if chosen in (None, name):
            getattr(module, add)(p)
            p.set_defaults(_run=getattr(module, run))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        command.unknown(extras)
    try:
        return args._run(args)
    except KeyboardInterrupt:
        return _interrupted()
    except ParityError as exc:
        print(f"cmrt: parity failure: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (CmrtError, OSError) as exc:
        print(f"cmrt: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, the traceback only on request
        if _interrupt_inside(exc):  # Ctrl-C that a library (torch.export, onnx) wrapped in its own error
            return _interrupted()
        if os.environ.get("CMRT_DEBUG"):
            raise
        print(f"cmrt: internal error: {type(exc).__name__}: {_one_line(exc)} (run with CMRT_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return 3


def _interrupted() -> int:
    print("cmrt: interrupted", file=sys.stderr)
    return 130


def _interrupt_inside(exc: BaseException) -> bool:
    """Whether a ``KeyboardInterrupt`` is in the exception's chain (``__cause__``/``__context__``)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


#: Terminal colour and cursor codes (ESC [ ... letter) that some libraries put in their messages.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CmrtError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
