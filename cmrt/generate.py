"""``cmrt generate`` and the pipeline branch of ``cmrt export``: thin CLI over
``cmrt.exporter.pipeline.export_pipeline`` and ``cmrt.Pipeline``.

    cmrt export --model lcm-folder/ --steps 4 --out lcm-bundle
    cmrt export --model sd15-folder/ --lora lcm-lora.safetensors --out lora-bundle
    cmrt generate lcm-bundle "a photo of a cat" --seed 0 --out cat.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import positive_int
from .errors import ConfigError

#: ``cmrt export`` options that a pipeline folder does not take (they set up other exports).
_NOT_FOR_PIPELINES = {"sigmas": "--sigmas", "timesteps": "--timesteps", "grid": "--grid", "clip": "--clip/--no-clip",
                      "factor": "--factor", "arch": "--arch", "image_size": "--image-size", "int8": "--int8",
                      "int8_latents": "--int8-latents", "int8_min_speedup": "--int8-min-speedup"}


def export_options(p: argparse.ArgumentParser) -> None:
    """The options ``cmrt export`` takes for diffusers text-to-image folders."""
    p.add_argument("--decoder", type=Path, default=None, metavar="SRC",
                   help="text-to-image folders: a consistency decoder (OpenAI decoder.pt or a diffusers "
                        "ConsistencyDecoderVAE folder) as the last stage instead of the folder's VAE")
    p.add_argument("--lora", type=Path, default=None, metavar="FILE",
                   help="text-to-image folders: an LCM-LoRA .safetensors fused into the UNet at export")
    p.add_argument("--lora-scale", type=float, default=1.0, help="the LCM-LoRA's scale (with --lora)")


def is_pipeline_source(model) -> bool:
    """A diffusers folder whose model_index.json names a supported text-to-image pipeline."""
    if model is None or not Path(model).is_dir():
        return False
    from .pipelines.load import PIPELINES, pipeline_class

    return pipeline_class(model) in PIPELINES


def export_run(a: argparse.Namespace) -> int:
    """``cmrt export --model DIFFUSERS_FOLDER``: write a pipeline bundle and print its stages' parity."""
    from .bundle import PipelineManifest
    from .exporter.pipeline import export_pipeline

    given = [flag for key, flag in _NOT_FOR_PIPELINES.items() if getattr(a, key, None) not in (None, False)]
    if getattr(a, "task", "sample") != "sample":
        given.append("--task")
    if getattr(a, "tile_stats", False):
        given.append("--tile-stats")
    if given:
        raise ConfigError(f"{', '.join(given)} does not apply: {a.model} is a diffusers text-to-image folder, "
                          "which takes --steps, --decoder (with --embedding, --trust), --lora, --lora-scale, --precision, --out, "
                          "--overwrite")
    out = export_pipeline(a.model, out=a.out, steps=a.steps, decoder=a.decoder, lora=a.lora, lora_scale=a.lora_scale,
                          precision=a.precision, overwrite=a.overwrite, embedding=a.embedding, trust=a.trust)
    m = PipelineManifest.open(out)
    print(f"wrote {out} (pipeline: {m.pipeline}, {m.steps} LCM step(s), timesteps {list(m.timesteps)}, "
          f"guidance {m.guidance})")
    for name, stage in m.stages.items():
        for r in stage.parity.values():
            print(f"parity {name} {r.backend} [{r.precision}]: " + ", ".join(
                f"{o.name} max abs {o.max_abs:.3g}" for o in r.outputs))
    from .runtime.stages import record_lines

    for line in record_lines(m):
        print(line)
    return 0


def refuse_pipeline_options(a: argparse.Namespace) -> None:
    """--decoder/--lora given for a source that is not a text-to-image folder."""
    for key, flag in (("decoder", "--decoder"), ("lora", "--lora")):
        if getattr(a, key, None) is not None:
            raise ConfigError(f"{flag} applies to diffusers text-to-image folders (LatentConsistencyModelPipeline, "
                              f"StableDiffusionPipeline, StableDiffusionXLPipeline); {a.model or 'the default model'} "
                              "is not one")



def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a pipeline bundle (cmrt export --model DIFFUSERS_FOLDER)")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--negative-prompt", default=None,
                   help="what to steer away from (classifier-free guidance bundles, with --guidance-scale > 1)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="guidance scale (default: the diffusers pipeline's own, recorded in the bundle)")
    p.add_argument("--height", type=int, default=None, help="image height, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width, a multiple of 8 (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed (images equal diffusers' with this generator seed)")
    p.add_argument("--n", type=positive_int, default=1, help="number of images (the prompt repeated)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: the bundle's FP16 sampler and decoder graphs on ONNX Runtime "
                        "(cmrt export --precision fp16)")
    p.add_argument("--backend", default=None,
                   help="onnxruntime, onnxruntime-cpu, onnxruntime-cuda, openvino-bf16, openvino-f32, openvino, "
                        "tensorrt for every stage (default: per stage, a stage engine that runs here, else OpenVINO "
                        "BF16 where the stage's recorded parity passed on a CPU like this one and timed it faster, else "
                        "onnxruntime; "
                        "printed)")
    p.add_argument("--out", type=Path, default=Path("generated.png"), help="PNG to write (a grid when --n > 1)")


def generate_run(a: argparse.Namespace) -> int:
    from ._io import check_writable
    from .images import save_grid
    from .runtime.pipeline import Pipeline

    check_writable(a.out, "--out")
    negatives = None if a.negative_prompt is None else [a.negative_prompt] * a.n
    with Pipeline(a.bundle, precision=a.precision, backend=a.backend) as pipe:
        print(pipe.describe())
        images = pipe.generate([a.prompt] * a.n, negative_prompt=negatives, guidance_scale=a.guidance_scale,
                               height=a.height, width=a.width, seed=a.seed)
    save_grid(images, a.out, pad=0 if a.n == 1 else 2)  # one image: the image itself
    print(f"wrote {a.out} ({a.n} image(s), {images.shape[2]}×{images.shape[3]})")
    return 0
