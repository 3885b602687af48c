"""``cmrt build``: a bundle's FP16 graph → a TensorRT or TensorRT-RTX engine inside the bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

BUILD_EXAMPLES = """examples:
  cmrt export --model run/ --precision fp16 --out bundle
  cmrt build bundle                                   whichever TensorRT is installed
  cmrt build bundle --target tensorrt-rtx --compute-capability 8.6,8.9 --max-batch 4 --max-latent 128
  cmrt check bundle --backend tensorrt                engine vs the stored PyTorch outputs (fp16 tolerances)
  cmrt build lcm-bundle --target tensorrt-rtx --max-latent 96   a pipeline bundle: an engine per stage
"""


def latent_size(text: str) -> tuple[int, int]:
    """"64" or "64x48" → (h, w) in latent pixels."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a latent size like 64 or 64x48, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a latent size like 64 or 64x48, got {text!r}")
    return (parts[0], parts[-1])


def _build_args(p: argparse.ArgumentParser) -> None:
    from ..tensorrt import TARGETS, ProfileSpec

    d = ProfileSpec()
    p.description = (p.description or "") + "\n\n" + BUILD_EXAMPLES
    p.add_argument("bundle", type=Path, help="bundle folder with an FP16 graph (cmrt export --precision fp16), or a "
                   "pipeline bundle (an engine per stage: sampler and decoder from their FP16 graphs, text "
                   "encoders from their FP32 graphs)")
    p.add_argument("--target", choices=sorted(TARGETS), default=None,
                   help="engine library (default: whichever is installed, TensorRT first)")
    for level, i in (("min", 0), ("opt", 1), ("max", 2)):
        p.add_argument(f"--{level}-batch", type=int, default=d.batch[i],
                       help=f"{level} batch of the optimization profile (default: {d.batch[i]})")
    for level, i in (("min", 0), ("opt", 1), ("max", 2)):
        h, w = d.latent[i]
        p.add_argument(f"--{level}-latent", type=latent_size, default=d.latent[i],
                       help=f"{level} latent size HxW or H, decoders; image = 8× (default: {h}x{w})")
    p.add_argument("--workspace", type=float, default=None, metavar="GB",
                   help="builder workspace limit in GiB (default: the library's)")
    p.add_argument("--compute-capability", type=lambda s: [x for x in s.split(",") if x.strip()], default=None,
                   help="tensorrt-rtx: compute capabilities, e.g. 8.6,8.9,12.0 (default: its portable set)")
    p.add_argument("--timing-cache", type=Path, default=None,
                   help="tensorrt: timing cache file, read if present and updated (default: none)")


def _build_run(a: argparse.Namespace) -> int:
    from ..bundle import PIPELINE_MANIFEST
    from ..tensorrt import ProfileSpec, build

    profile = ProfileSpec(batch=(a.min_batch, a.opt_batch, a.max_batch),
                          latent=(tuple(a.min_latent), tuple(a.opt_latent), tuple(a.max_latent)))
    if a.bundle.is_dir() and (a.bundle / PIPELINE_MANIFEST).is_file():
        return _build_stages(a, profile)
    record = build(a.bundle, target=a.target, profile=profile, workspace_gb=a.workspace,
                   compute_capabilities=a.compute_capability, timing_cache=a.timing_cache)
    print(_wrote(a.bundle, record))
    return 0


def _wrote(folder: Path, record) -> str:
    ccs = record.compute_capabilities
    where = ", ".join(ccs) if isinstance(ccs, tuple) else ccs
    return (f"wrote {folder / record.file} ({record.library} {record.library_version}, from the {record.graph} graph, "
            f"compute capability {where}, {record.bytes / 2**20:.1f} MiB, built in {record.build_seconds:.1f} s)")


def _build_stages(a: argparse.Namespace, profile) -> int:
    """``cmrt build PIPELINE_BUNDLE``: an engine per graph stage (``cmrt.tensorrt.stages``)."""
    from ..errors import ConfigError
    from ..tensorrt.stages import build_stages

    if a.timing_cache is not None:
        raise ConfigError("--timing-cache applies to single bundles; a pipeline bundle's stages build without one: "
                          "drop --timing-cache")
    records = build_stages(a.bundle, target=a.target, profile=profile, workspace_gb=a.workspace,
                           compute_capabilities=a.compute_capability)
    for name, record in records.items():
        print(f"stage {name}: " + _wrote(a.bundle, record))
    return 0
