"""Which tiling technique: measured on the natural-image decoder against its own untiled decode.

The three tiling techniques, in PyTorch on the same weights, latents and noise:

* ``sampler``: whole-sampler tiles: every tile runs all steps on its crops; outputs blended at
  the end (what ``cmrt.Decoder.decode(tile=...)`` does on any backend).
* ``evaluation``: per-evaluation tiles: every network evaluation runs tile by tile and the
  predictions are blended on the canvas before the next noise injection (needs one graph per
  evaluation).
* ``+groupnorm``: either of the above with every GroupNorm using the statistics of the whole
  canvas (an oracle: the statistics are recorded from the untiled decode, the best any
  shared-statistics scheme, layer-synchronous or from a downscaled pass, can do).
* realisable shared statistics, with whole-sampler tiles: ``+stats/F`` (every GroupNorm's
  statistics from the untiled sampler on the canvas downscaled by F, what
  ``Decoder.decode(norm="shared")`` runs; ``-fresh``: its noise drawn anew instead of pooled),
  ``+mean/F+var/own`` (only their means, ``norm="shared-means"``), ``+tilestats`` (statistics
  pooled over the tiles of a first tiled pass; ``/2``: two rounds) and ``+mean/2+var/tiles``
  (and the reverse: means from one scheme, variances from the other).

For each held-out photo (and the face photo upscaled ×2 to 1024²) and each overlap: PSNR of the
tiled decode against the untiled one with the same noise, and the RMS error within 8 px of an
interior tile edge over the RMS error elsewhere.

    python -m benchmarks.tiling technique [--tile 32] [--overlaps 0,2,4,8] [--steps 1,2] [--json out.json]
    python -m benchmarks.tiling runtime --bundle B [--time-bundle B2 ...] [--tile 32] [--json out.json]

``runtime`` measures what users get: ``cmrt.Decoder.decode(tile=...)`` against the untiled call
on the bundle's backend, on the same photos, and the time of both in paired rounds; with a
bundle exported with ``--tile-stats``, also ``norm="shared"`` and ``"shared-means"``
(statistics from the canvas downscaled by 2 and by 4).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmrt import schedules as S
from cmrt.models.denoisers import build_denoiser
from cmrt.models.sources import load_model
from cmrt.parity import psnr
from cmrt.runtime import tiled as T
from cmrt.samplers import decoder_condition, decoder_sample

UP = S.DECODER_UPSCALE
BORDER_PX = 8  # the band around each interior tile edge whose error is compared with the rest
UPSCALED = {"astronaut": 2}  # photos also measured upscaled (bicubic), name → factor


# --- the three techniques -----------------------------------------------------------------
class GroupNormStats:
    """Record every GroupNorm's per-group mean and variance in call order, or replay them."""

    def __init__(self) -> None:
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mode, self.cursor = "off", 0
        self.own_variance = ""  # replay the recorded means only: each tile's own variance, "about-own-mean"
        # (its variance) or "about-shared-mean" (its mean square deviation from the recorded mean)

    @contextlib.contextmanager
    def patched(self, mode: str, start: int = 0):
        original = torch.nn.GroupNorm.forward
        stats = self

        def forward(gn, x):
            b, c = x.shape[:2]
            xg = x.reshape(b, gn.num_groups, -1)
            if stats.mode == "record":
                stats.recorded.append((xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)))
                return original(gn, x)
            mean, var = stats.recorded[stats.cursor]
            stats.cursor += 1
            if stats.own_variance == "about-own-mean":
                var = xg.var(-1, unbiased=False, keepdim=True)
            elif stats.own_variance == "about-shared-mean":
                var = (xg - mean).pow(2).mean(-1, keepdim=True)
            y = ((xg - mean) / torch.sqrt(var + gn.eps)).reshape_as(x)
            return y * gn.weight.view(1, c, 1, 1) + gn.bias.view(1, c, 1, 1)

        if mode == "record":
            self.recorded = []
        self.mode, self.cursor = mode, start
        torch.nn.GroupNorm.forward = forward
        try:
            yield self
        finally:
            torch.nn.GroupNorm.forward = original
            self.mode = "off"


    @classmethod
    def from_packed(cls, packed: torch.Tensor, groups: list[int]) -> "GroupNormStats":
        """From (N, 2, S) statistics (``cmrt.models.norm_stats``) and every call's group count."""
        stats, offset = cls(), 0
        for g in groups:
            part = packed[:, :, offset:offset + g, None]
            stats.recorded.append((part[:, 0], part[:, 1]))
            offset += g
        return stats


def _weights(lay: T.TileLayout) -> dict:
    return {t: torch.from_numpy(w) for t, w in T.blend_weights(lay, UP).items()}


def whole_sampler_tiles(den, z, timesteps, noise, lay, stats: GroupNormStats | None = None) -> torch.Tensor:
    """Each tile runs every step on its crops; blended once at the end."""
    canvas = torch.zeros(noise[0].shape)
    for t, w in _weights(lay).items():
        ctx = stats.patched("replay") if stats else contextlib.nullcontext()
        with ctx:
            out = decoder_sample(den, T.crop(z, t), timesteps, [T.crop(n, t, UP) for n in noise])
        r, c = t.image_index(UP)
        canvas[:, :, r, c] += out * w
    return canvas


def per_evaluation_tiles(den, z, timesteps, noise, lay, stats: GroupNormStats | None = None) -> torch.Tensor:
    """Each evaluation runs tile by tile; predictions blended before the next noise injection."""
    cond = decoder_condition(z)
    weights = _weights(lay)
    per_evaluation = len(stats.recorded) // len(timesteps) if stats else 0
    x = None
    for i, step in enumerate(timesteps):
        s = S.decoder_scalings(int(step))
        eps = s["sqrt_one_minus_alpha_bar"] * noise[i]
        x_in = eps if x is None else s["sqrt_alpha_bar"] * x + eps
        x = torch.zeros_like(x_in)
        for t, w in weights.items():
            ctx = stats.patched("replay", start=i * per_evaluation) if stats else contextlib.nullcontext()
            with ctx:
                out = den(T.crop(x_in, t, UP), int(step), T.crop(cond, t, UP))
            r, c = t.image_index(UP)
            x[:, :, r, c] += out * w
    return x


def untiled(den, z, timesteps, noise, stats: GroupNormStats | None = None) -> torch.Tensor:
    ctx = stats.patched("record") if stats else contextlib.nullcontext()
    with ctx:
        return decoder_sample(den, z, timesteps, noise)


# --- scores -------------------------------------------------------------------------------
def border_mask(lay: T.TileLayout, band: int = BORDER_PX) -> np.ndarray:
    """True within ``band`` image pixels of any tile edge inside the canvas."""
    h, w = UP * lay.height, UP * lay.width
    rows, cols = np.zeros(h, bool), np.zeros(w, bool)
    for spans, mask, length in ((lay.row_spans, rows, h), (lay.col_spans, cols, w)):
        for s in spans:
            for edge in (UP * s.start, UP * s.stop):
                if 0 < edge < length:
                    mask[max(edge - band, 0): edge + band] = True
    return rows[:, None] | cols[None, :]


def psnr_db(x: torch.Tensor, reference: torch.Tensor) -> float:
    return psnr(x.numpy(), reference.numpy())


def compare(tiled: torch.Tensor, reference: torch.Tensor, lay: T.TileLayout) -> dict:
    err = (tiled - reference).double().pow(2).mean(dim=(0, 1)).numpy()  # per-pixel squared error
    mask = border_mask(lay)
    near = math.sqrt(err[mask].mean()) if mask.any() else 0.0
    far = math.sqrt(err[~mask].mean()) if (~mask).any() else 0.0
    return {"psnr_db": psnr_db(tiled, reference), "rms_border": near,
            "rms_elsewhere": far, "border_ratio": near / far if far > 0 else math.inf}


# --- the run --------------------------------------------------------------------------------
def photo_images() -> dict[str, torch.Tensor]:
    """Held-out photos of at least 512 px (and upscaled ones), (C, H, W) in [-1, 1]."""
    from cmrt.train.photos import held_out_images

    images = held_out_images()
    for name, factor in UPSCALED.items():
        x = F.interpolate(images[name][None], scale_factor=factor, mode="bicubic", align_corners=False)
        images[f"{name}x{factor}"] = x[0].clamp(-1, 1)
    return {n: x for n, x in images.items() if max(x.shape[1:]) >= 512}


def photos(encoder_path: Path) -> dict[str, torch.Tensor]:
    """``photo_images`` as latents from the photo encoder."""
    from cmrt.train.autoencoder import encode, load_encoder

    encoder = load_encoder(encoder_path)
    return {n: encode(encoder, x[None]) for n, x in photo_images().items()}


#: Downscaled statistics passes measured: (technique name, factor, noise: "pooled" or "fresh").
STATS_PASSES = {"sampler+stats/2": (2, "pooled"), "sampler+stats/4": (4, "pooled"),
                "sampler+stats/2-fresh": (2, "fresh")}
#: Statistics pooled over the tiles of a first tiled pass: technique name → rounds.
TILE_AGGREGATES = {"sampler+tilestats": 1, "sampler+tilestats/2": 2}
#: Means from one scheme, variances from another: name → (means, variances).
HYBRIDS = {"sampler+mean/2+var/tiles": ("sampler+stats/2", "sampler+tilestats"),
           "sampler+mean/tiles+var/2": ("sampler+tilestats", "sampler+stats/2")}
#: The downscaled pass's means, each tile's own variances.
OWN_VARIANCE = {"sampler+mean/2+var/own": ("sampler+stats/2", "about-own-mean"),
                "sampler+mean/4+var/own": ("sampler+stats/4", "about-own-mean"),
                "sampler+mean/2+var/own-about-mean/2": ("sampler+stats/2", "about-shared-mean")}
TECHNIQUES = ("sampler", "evaluation", "sampler+groupnorm", "evaluation+groupnorm", *STATS_PASSES, *TILE_AGGREGATES,
              *HYBRIDS, *OWN_VARIANCE)


def downscaled_stats(den, z: torch.Tensor, timesteps, noise: list[torch.Tensor], factor: int, kind: str,
                     seed: int = 1) -> GroupNormStats:
    """A realisable shared-statistics scheme: the untiled sampler on the latents area-downscaled by
    ``factor``, every GroupNorm's statistics recorded. Its noise: the canvas's own noise pooled
    to variance 1 (``T.stats_canvas``, "pooled"), or a fresh draw at the low resolution ("fresh")."""
    low, pooled = T.stats_canvas(z.numpy(), [n.numpy() for n in noise], factor, UP)
    if kind == "fresh":
        g = torch.Generator().manual_seed(seed)
        pooled = [torch.randn(p.shape, generator=g).numpy() for p in pooled]
    stats = GroupNormStats()
    untiled(den, torch.from_numpy(low), timesteps, [torch.from_numpy(p) for p in pooled], stats)
    return stats


def aggregated_tile_stats(den, z: torch.Tensor, timesteps, noise: list[torch.Tensor], lay: T.TileLayout,
                          rounds: int) -> GroupNormStats:
    """Canvas statistics pooled over the tiles of a tiled pass (each tile weighted by its area:
    mean = Σ w·μ_t, var = Σ w·(σ²_t + μ_t²) − mean²); the first pass normalizes each tile by its
    own statistics, each further round by the previous round's pooled ones."""
    from cmrt.models import norm_stats as NS

    pooled, groups = None, []
    for _ in range(rounds):
        per_tile = []
        for t in lay.tiles:
            ctx = NS.shared(den, pooled) if pooled is not None else contextlib.nullcontext()
            with NS.recording(den) as rec, ctx:
                decoder_sample(den, T.crop(z, t), timesteps, [T.crop(n, t, UP) for n in noise])
            per_tile.append(NS.pack(rec).double())
            groups = [r.shape[2] for r in rec]
        w = torch.tensor([t.rows.size * t.cols.size for t in lay.tiles], dtype=torch.float64)
        w = (w / w.sum()).view(-1, 1, 1)
        s = torch.stack(per_tile)  # (tiles, N, 2, S)
        mean = (w * s[:, :, 0]).sum(0)
        second = (w * (s[:, :, 1] + s[:, :, 0] ** 2)).sum(0)
        pooled = torch.stack([mean, (second - mean ** 2).clamp_min(0)], dim=1).float()
    return GroupNormStats.from_packed(pooled, groups)


def measure(den, z: torch.Tensor, steps: int, tile: int, overlap: int, seed: int = 0,
            techniques: tuple[str, ...] = TECHNIQUES) -> dict:
    timesteps = S.decoder_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(z.shape[0], 3, UP * z.shape[2], UP * z.shape[3], generator=g) for _ in timesteps]
    lay = T.layout(z.shape[2], z.shape[3], tile, overlap)
    stats = GroupNormStats()
    t0 = time.perf_counter()
    ref = untiled(den, z, timesteps, noise, stats)
    rows = {"untiled_s": time.perf_counter() - t0, "tiles": len(lay.tiles), "tile_shape": lay.tile_shape,
            "work_ratio": lay.work_ratio}
    for name in techniques:
        run = whole_sampler_tiles if name.startswith("sampler") else per_evaluation_tiles
        t0 = time.perf_counter()
        shared = stats if name.endswith("groupnorm") else None
        if name in STATS_PASSES:
            shared = downscaled_stats(den, z, timesteps, noise, *STATS_PASSES[name])
        if name in TILE_AGGREGATES:
            shared = aggregated_tile_stats(den, z, timesteps, noise, lay, TILE_AGGREGATES[name])
        if name in OWN_VARIANCE:
            pass_, shared_variance = OWN_VARIANCE[name]
            shared = downscaled_stats(den, z, timesteps, noise, *STATS_PASSES[pass_])
            shared.own_variance = shared_variance
        if name in HYBRIDS:
            means, variances = HYBRIDS[name]
            a = downscaled_stats(den, z, timesteps, noise, *STATS_PASSES["sampler+stats/2"])
            b = aggregated_tile_stats(den, z, timesteps, noise, lay, 1)
            first, second = (a, b) if means == "sampler+stats/2" else (b, a)
            shared = GroupNormStats()
            shared.recorded = [(m, v) for (m, _), (_, v) in zip(first.recorded, second.recorded)]
        out = run(den, z, timesteps, noise, lay, shared)
        rows[name] = compare(out, ref, lay) | {"seconds": time.perf_counter() - t0}
    return rows


def run(decoder: Path, encoder: Path, tile: int, overlaps: list[int], steps: list[int], names: list[str] | None = None,
        log=print, techniques: tuple[str, ...] = TECHNIQUES) -> dict:
    model = load_model(decoder)
    den = build_denoiser(model.spec, model.unet).eval()
    results = {}
    for name, z in photos(encoder).items():
        if names and name not in names:
            continue
        for k in steps:
            for o in overlaps:
                r = measure(den, z, k, tile, o, techniques=techniques)
                results[f"{name}/{k}step/overlap{o}"] = r
                log(f"{name} {tuple(z.shape[2:])} {k} step(s) overlap {o}: {r['tiles']} tiles of {r['tile_shape']}, "
                    f"work ×{r['work_ratio']:.2f}; " + "; ".join(
                        f"{t} {r[t]['psnr_db']:.1f} dB, border ×{r[t]['border_ratio']:.2f}" for t in techniques))
    return results


# --- the runtime: cmrt.Decoder tiled vs untiled (quality and paired time) -----------------------
def _decoder(bundle: Path, threads: int):
    """``cmrt.Decoder`` on the bundle, on ONNX Runtime CPU with ``threads`` intra-op threads (0: its default)."""
    import cmrt
    from cmrt.runtime.backends import OnnxRuntimeBackend

    if not threads:
        return cmrt.Decoder(bundle)
    b = cmrt.bundle.Bundle.open(bundle)
    return cmrt.Decoder(b, backend=OnnxRuntimeBackend(b.graph_path(), device="cpu", threads=threads))


#: Tiled decodes beside ``norm="tile"`` on a ``--tile-stats`` bundle: name → ``decode`` options.
SHARED_MODES = {"shared/2": {"norm": "shared", "stats_factor": 2}, "shared/4": {"norm": "shared", "stats_factor": 4},
                "shared-means/2": {"norm": "shared-means", "stats_factor": 2},
                "shared-means/4": {"norm": "shared-means", "stats_factor": 4},
                "canvas": {"norm": "canvas"}, "canvas+spill": {"norm": "canvas", "spill": True}}


def _modes(dec, wanted: list[str] | None) -> dict[str, dict]:
    """The ``SHARED_MODES`` to run (``wanted``: names; None: all), none on a bundle without the graphs."""
    if dec.bundle.manifest.norm_stats is None:
        return {}
    return {k: v for k, v in SHARED_MODES.items() if (k in wanted if wanted is not None else k != "canvas+spill")}


def runtime_quality(bundle: Path, latents: dict[str, torch.Tensor], tile: int, overlap: int | None,
                    originals: dict[str, torch.Tensor] | None = None, log=print, threads: int = 0,
                    modes: list[str] | None = None) -> dict:
    """``cmrt.Decoder.decode`` tiled vs untiled, same seed, on the bundle's backend; with
    ``originals`` (name → image), both also against the original photo. ``modes``: which of
    ``SHARED_MODES`` besides ``norm="tile"`` (None: all but "canvas+spill", the same images as "canvas")."""

    out = {}
    with _decoder(bundle, threads) as dec:
        chosen = _modes(dec, modes)
        for name, z in latents.items():
            zn = z.numpy()
            ref = torch.from_numpy(dec.decode(zn, seed=0))
            tiled = torch.from_numpy(dec.decode(zn, seed=0, tile=tile, overlap=overlap, norm="tile"))
            lay = T.choose_tile(zn.shape[2], zn.shape[3], tile=tile, overlap=overlap, max_pixels=None,
                                limits=T.ShapeLimits(), upscale=UP)
            out[name] = compare(tiled, ref, lay) | {"shape": list(ref.shape[2:]), "tiles": len(lay.tiles),
                                                     "tile_shape": lay.tile_shape, "work_ratio": lay.work_ratio}
            shared = {key: torch.from_numpy(dec.decode(zn, seed=0, tile=tile, overlap=overlap, **options))
                      for key, options in chosen.items()}
            for key, img in shared.items():
                out[name][key] = compare(img, ref, lay)
            if originals is not None:  # is the untiled decode the better one? (the decoder saw 64² crops)
                x = originals[name][None]
                out[name] |= {"untiled_vs_original_db": psnr_db(ref, x), "tiled_vs_original_db": psnr_db(tiled, x)}
                for key, img in shared.items():
                    out[name][key]["vs_original_db"] = psnr_db(img, x)
            r = out[name]
            log(f"runtime {name} {tuple(ref.shape[2:])}: {r['tiles']} tiles of {r['tile_shape']} (work ×"
                f"{r['work_ratio']:.2f}): {r['psnr_db']:.1f} dB, border ×{r['border_ratio']:.2f}"
                + "".join(f"; {key}: {r[key]['psnr_db']:.1f} dB, border ×{r[key]['border_ratio']:.2f}"
                          + (f" ({r[key]['vs_original_db']:.2f} dB vs the original)" if originals is not None else "")
                          for key in shared)
                + (f"; vs the original: untiled {r['untiled_vs_original_db']:.2f} dB, tiled "
                   f"{r['tiled_vs_original_db']:.2f} dB" if originals is not None else ""))
    return out


def runtime_time(bundle: Path, resolutions: list[int], tile: int, overlap: int | None, rounds: int,
                 log=print, threads: int = 0, modes: list[str] | None = None) -> dict:
    """Untiled vs tiled decode time of a (1, 4, R/8, R/8) latent, paired rounds (medians, ms);
    ``modes``: which of ``SHARED_MODES`` to time besides ``norm="tile"`` (None: "shared/2" and "canvas")."""
    from benchmarks.paired import paired_rounds

    out = {}
    with _decoder(bundle, threads) as dec:
        chosen = _modes(dec, modes or ["shared/2", "canvas"])
        for r in resolutions:
            z = np.random.default_rng(0).normal(0, 1, (1, 4, r // UP, r // UP)).astype(np.float32)
            calls = {"untiled": lambda: dec.decode(z, seed=0),
                     "tiled": lambda: dec.decode(z, seed=0, tile=tile, overlap=overlap, norm="tile")}
            for key, options in chosen.items():
                calls[f"tiled_{key}"] = lambda o=options: dec.decode(z, seed=0, tile=tile, overlap=overlap, **o)
            samples = paired_rounds(calls, rounds, per_round=1)
            out[r] = {"untiled_ms": float(np.median(samples["untiled"]))}
            for name in [c for c in calls if c != "untiled"]:
                ratio = np.asarray(samples[name]) / np.asarray(samples["untiled"])
                out[r] |= {f"{name}_ms": float(np.median(samples[name])), f"{name}_ratio": float(np.median(ratio)),
                           f"{name}_ratio_range": [float(ratio.min()), float(ratio.max())]}
                log(f"time {r}²: untiled {out[r]['untiled_ms']:.0f} ms, {name} {out[r][f'{name}_ms']:.0f} ms, "
                    f"{name}/untiled {out[r][f'{name}_ratio']:.2f} (rounds {ratio.min():.2f}–{ratio.max():.2f})")
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    from cmrt.models.load import ASSETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("technique", "runtime"), help="technique: the three techniques in PyTorch; "
                   "runtime: cmrt.Decoder tiled vs untiled on a bundle (quality, and time in paired rounds)")
    p.add_argument("--decoder", type=Path, default=ASSETS / "photos_decoder.safetensors")
    p.add_argument("--encoder", type=Path, default=ASSETS / "photos_autoencoder.safetensors")
    p.add_argument("--bundle", type=Path, help="runtime: the decoder bundle whose quality is measured")
    p.add_argument("--time-bundle", type=Path, action="append", default=[],
                   help="runtime: bundles to time (repeatable; default: --bundle)")
    p.add_argument("--tile", type=int, default=32, help="tile side in latent pixels (32 → 256² output)")
    p.add_argument("--overlap", type=int, default=None, help="runtime: overlap (default: cmrt's)")
    p.add_argument("--overlaps", default="0,2,4,8", help="technique: overlaps to measure")
    p.add_argument("--steps", default="1,2", help="technique: step counts")
    p.add_argument("--techniques", default=",".join(TECHNIQUES), help="technique: the columns to measure "
                   f"(default: all of {', '.join(TECHNIQUES)})")
    p.add_argument("--resolutions", default="512,1024", help="runtime: sides to time")
    p.add_argument("--norms", default=None, help="runtime: the tiled modes beside norm='tile' to measure, of "
                   f"{', '.join(SHARED_MODES)} (default: all for quality; shared/2 and canvas for time)")
    p.add_argument("--photos", default="", help="only these photos (comma-separated; default: all ≥ 512 px)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch threads, and ONNX Runtime intra-op threads in runtime mode (0: their defaults)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    if a.mode == "technique":
        techniques = tuple(t for t in a.techniques.split(",") if t)
        unknown = sorted(set(techniques) - set(TECHNIQUES))
        if unknown:
            p.error(f"--techniques: unknown {', '.join(unknown)} (known: {', '.join(TECHNIQUES)})")
        result = run(a.decoder, a.encoder, a.tile, _ints(a.overlaps), _ints(a.steps),
                     [n for n in a.photos.split(",") if n], techniques=techniques)
    else:
        from benchmarks import measure

        norms = None if a.norms is None else [n for n in a.norms.split(",") if n]
        unknown = sorted(set(norms or ()) - set(SHARED_MODES))
        if unknown:
            p.error(f"--norms: unknown {', '.join(unknown)} (known: {', '.join(SHARED_MODES)})")

        env = measure.environment()
        result = {"environment": env, "tile": a.tile, "overlap": a.overlap or T.default_overlap(a.tile),
                  "threads": a.threads}
        if a.bundle:
            wanted = [n for n in a.photos.split(",") if n]
            latents = {n: z for n, z in photos(a.encoder).items() if not wanted or n in wanted}
            result["quality"] = runtime_quality(a.bundle, latents, a.tile, a.overlap, photo_images(),
                                                threads=a.threads, modes=norms)
        result["time"] = {str(b): runtime_time(b, _ints(a.resolutions), a.tile, a.overlap, a.rounds, threads=a.threads,
                                               modes=norms)
                          for b in (a.time_bundle or [a.bundle])}
        result["environment"]["load_1m_end"] = measure.load_average()
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
