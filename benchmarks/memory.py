"""Peak memory of a decode against output resolution: cmrt untiled and tiled, diffusers beside it.

Every case runs in a fresh Python process (imports, model or session, one seeded decode of a
(1, 4, R/8, R/8) latent) and reports the process's RSS high-water mark (``VmHWM``): what a user's
process would need. The parent watches each child and stops it above ``--max-gib`` (the case
then "does not fit"). Model: the reduced-width decoder at the official depth (widths
32/64/64/64, 3 res blocks per level, random weights), 2 steps; cmrt on ONNX Runtime's CPU
backend with each arena setting asked for, diffusers' ``ConsistencyDecoderVAE.decode`` with the
same weights. ``--arena-time`` also times the four ONNX Runtime arena/memory-pattern settings in
paired rounds.

    python -m benchmarks.memory [--resolutions 256,512,1024,2048] [--tile 32] [--json J] [--plot P]
    python -m benchmarks.memory --plot-only --json benchmarks/memory.json --plot benchmarks/memory.png
    python -m benchmarks.memory --merge a.json b.json --json benchmarks/memory.json --plot benchmarks/memory.png
    python -m benchmarks.memory --bundle B --norms tile,shared,shared-means/4 --untiled-max 256 [--threads 1]

``--bundle``: measure that decoder bundle instead (no diffusers rows); ``--norms``: the tiled rows'
``Decoder.decode(norm=...)``, each optionally with ``/F`` for ``stats_factor=F`` (a bundle exported
with ``--tile-stats``); ``canvas+spill``: ``norm="canvas", spill=True``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MIB = 2**20
POLL_S = 0.1
UP = 8
MODEL = "decoder-reduced"
STEPS = 2
SEED = 0
ARENAS = {"arena+pattern": (True, True), "arena": (True, False), "pattern": (False, True), "none": (False, False)}
ARENA_LABELS = {"arena+pattern": "CPU arena on, memory patterns on", "arena": "CPU arena on, memory patterns off",
                "pattern": "CPU arena off, memory patterns on", "none": "CPU arena off, memory patterns off"}


# --- the child: one case in a fresh process ------------------------------------------------
def _status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    line = next(l for l in text.splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def child(case: dict) -> dict:
    """Run one case and return its figures (called in the fresh process)."""
    import numpy as np
    import torch

    side = case["resolution"] // UP
    z = np.random.default_rng(SEED).normal(0.0, 1.0, (1, 4, side, side)).astype(np.float32)
    if case["backend"] == "diffusers":
        run = _diffusers(case, torch.from_numpy(z))
    else:
        run = _cmrt(case, z)
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    assert out.shape[-1] == case["resolution"]
    return {"rss_before_decode_mib": before, "peak_rss_mib": _status_mib("VmHWM"), "decode_s": seconds}


def _cmrt(case: dict, z):
    import cmrt
    from cmrt.bundle import Bundle
    from cmrt.runtime.backends import OnnxRuntimeBackend

    bundle = Bundle.open(case["bundle"])
    arena, pattern = ARENAS[case["arena"]]
    backend = OnnxRuntimeBackend(bundle.graph_path(), device="cpu", cpu_arena=arena, mem_pattern=pattern,
                                 threads=case.get("threads") or None)
    decoder = cmrt.Decoder(bundle, backend=backend)
    return lambda: decoder.decode(z, seed=SEED, tile=case.get("tile"), overlap=case.get("overlap"),
                                  norm=case.get("norm"), stats_factor=case.get("stats_factor"),
                                  spill=case.get("spill"))


def _diffusers(case: dict, z):
    import torch
    from diffusers import ConsistencyDecoderVAE

    vae = ConsistencyDecoderVAE.from_pretrained(case["diffusers"]).eval()
    del vae.encoder  # decode never uses it

    def run():
        with torch.inference_mode():
            return vae.decode(z, generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS).sample
    return run


# --- the parent: prepare once, one process per case ----------------------------------------
def prepare(cache: Path) -> tuple[Path, Path]:
    """The reduced decoder's bundle (exported once, cached) and a diffusers folder with the same weights."""
    from cmrt import schedules as S
    from benchmarks.cases import MODELS, cached_bundle, weights_digest

    model = MODELS[MODEL].load()
    bundle = cached_bundle(model, weights_digest(model), cache, S.decoder_timesteps(STEPS))
    folder = cache / f"{MODEL}-diffusers-{weights_digest(model)[:12]}"
    if not (folder / "config.json").is_file():
        from diffusers import ConsistencyDecoderVAE

        cfg = model.unet.config
        vae = ConsistencyDecoderVAE(decoder_block_out_channels=cfg.block_out_channels,
                                    decoder_layers_per_block=cfg.layers_per_block,
                                    encoder_block_out_channels=(cfg.norm_groups,) * len(cfg.block_out_channels),
                                    encoder_layers_per_block=1)
        vae.decoder_unet.load_state_dict(model.unet.state_dict(), strict=True)
        vae.save_pretrained(folder)
    return bundle.path, folder


def run_case(case: dict, max_gib: float) -> dict:
    """Run ``case`` in a fresh process, stopped if its RSS passes ``max_gib``."""
    import psutil

    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(case)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss / MIB)
        except psutil.NoSuchProcess:
            break
        if peak > max_gib * 1024:
            proc.kill()
            proc.wait()
            return case | {"fits": False, "note": f"stopped above {max_gib} GiB"}
        time.sleep(POLL_S)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return case | {"fits": False, "note": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    return case | {"fits": True} | json.loads(out.strip().splitlines()[-1])


def cases(resolutions: list[int], tile: int, overlap: int | None, arenas: list[str], diffusers_max: int, bundle: Path,
          folder: Path | None, norms: list[str] = (), untiled_max: int | None = None, threads: int = 0) -> list[dict]:
    out = []
    for r in resolutions:
        for arena in arenas:
            common = {"backend": "cmrt", "resolution": r, "arena": arena, "bundle": str(bundle)}
            common |= {"threads": threads} if threads else {}
            if untiled_max is None or r <= untiled_max:
                out.append(common | {"mode": "untiled"})
            for norm in norms or [None]:
                out.append(common | {"mode": "tiled", "tile": tile, "overlap": overlap} | _norm_case(norm))
        if r <= diffusers_max:
            out.append({"backend": "diffusers", "mode": "untiled", "resolution": r, "diffusers": str(folder)})
    return out


def _norm_case(norm: str | None) -> dict:
    """"shared/4" → {"norm": "shared", "stats_factor": 4}; "canvas+spill" → {"norm": "canvas",
    "spill": True}; None → {} (the decoder's default)."""
    if norm is None:
        return {}
    name, _, factor = norm.partition("/")
    name, plus, _ = name.partition("+spill")
    return {"norm": name} | ({"stats_factor": int(factor)} if factor else {}) | ({"spill": True} if plus else {})


def arena_times(bundle: Path, resolution: int, rounds: int) -> dict:
    """Decode time with each arena setting, in paired rounds (medians, ms)."""
    import numpy as np

    import cmrt
    from cmrt.runtime.backends import OnnxRuntimeBackend
    from benchmarks.paired import paired_rounds

    z = np.random.default_rng(SEED).normal(0.0, 1.0, (1, 4, resolution // UP, resolution // UP)).astype(np.float32)
    calls = {}
    for name, (arena, pattern) in ARENAS.items():
        dec = cmrt.Decoder(bundle, backend=OnnxRuntimeBackend(Path(bundle) / "model.onnx", device="cpu",
                                                              cpu_arena=arena, mem_pattern=pattern))
        calls[name] = (lambda d: lambda: d.decode(z, seed=SEED))(dec)
    samples = paired_rounds(calls, rounds, per_round=1)
    base = np.asarray(samples["arena+pattern"])
    return {name: {"median_ms": float(np.median(v)), "ratio_vs_default": float(np.median(np.asarray(v) / base))}
            for name, v in samples.items()}


# --- the plot ---------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path, arena: str) -> None:
    """Peak RSS (MiB) against output side, log-log: cmrt untiled, cmrt tiled, diffusers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = {"cmrt untiled (ONNX Runtime CPU)": ("cmrt", "untiled"), "cmrt tiled, 256² tiles": ("cmrt", "tiled"),
              "diffusers ConsistencyDecoderVAE.decode": ("diffusers", "untiled")}
    for (label, (backend, mode)), color in zip(series.items(), ("C0", "C1", "C2")):
        mine = [r for r in rows if r["backend"] == backend and r["mode"] == mode and r.get("arena", arena) == arena]
        pts = sorted((r["resolution"], r["peak_rss_mib"]) for r in mine if r.get("fits"))
        if pts:
            ax.plot(*zip(*pts), marker="o", color=color, label=label)
        for r in mine:  # stopped at the memory limit: an arrow up from the limit
            if not r.get("fits") and "stopped above" in r.get("note", ""):
                limit = float(r["note"].split()[2]) * 1024
                ax.plot([r["resolution"]], [limit], marker="^", color=color, linestyle="none")
                ax.annotate(f"> {limit / 1024:.0f} GiB", (r["resolution"], limit), textcoords="offset points",
                            xytext=(-52, -3), fontsize=7, color=color)
    sides = sorted({r["resolution"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sides, [f"{r}²" for r in sides])
    ax.set_yscale("log")
    ax.set_xlabel("output side (pixels)")
    ax.set_ylabel("peak RSS of the process (MiB)")
    ax.set_title(f"Reduced-width decoder (official depth), 2 steps, batch 1\nONNX Runtime: {ARENA_LABELS[arena]}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", default="256,512,1024,2048")
    p.add_argument("--tile", type=int, default=32, help="tile side in latent pixels (32 → 256² output)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in latent pixels (default: cmrt's)")
    p.add_argument("--arenas", default="arena+pattern", help=f"ONNX Runtime settings to sweep: {','.join(ARENAS)}")
    p.add_argument("--diffusers-max", type=int, default=2048, help="largest side diffusers is tried at")
    p.add_argument("--max-gib", type=float, default=12.0, help="stop a case whose RSS passes this")
    p.add_argument("--arena-time", type=int, default=0, help="also time the arena settings at this side")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cmrt" / "bench")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--plot-arena", default="arena+pattern", help="which ONNX Runtime setting the plot shows")
    p.add_argument("--plot-only", action="store_true", help="redraw --plot from --json without running")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="merge the rows of earlier --json results into --json (and --plot) without running")
    p.add_argument("--bundle", type=Path, default=None,
                   help="measure this decoder bundle instead of the reduced decoder (no diffusers rows)")
    p.add_argument("--norms", default="", help="tiled rows: Decoder.decode(norm=...) values, each optionally /F "
                   "for stats_factor=F, e.g. tile,shared,shared-means/4 (default: one row, the decoder's default)")
    p.add_argument("--untiled-max", type=int, default=None, help="largest side with an untiled row (default: all)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if a.merge:
        parts = [json.loads(f.read_text()) for f in a.merge]
        merged = {"runs": [{k: v for k, v in r.items() if k != "rows"} for r in parts],
                  "rows": [row for r in parts for row in r["rows"]]}
        a.json.write_text(json.dumps(merged, indent=1))
    if a.plot_only or a.merge:
        if a.plot:
            plot(json.loads(a.json.read_text())["rows"], a.plot, a.plot_arena)
        return 0
    from benchmarks import measure

    a.cache.mkdir(parents=True, exist_ok=True)
    env = measure.environment()
    bundle, folder = (a.bundle, None) if a.bundle else prepare(a.cache)
    rows = []
    for case in cases([int(r) for r in a.resolutions.split(",")], a.tile, a.overlap, a.arenas.split(","),
                      a.diffusers_max if folder else 0, bundle, folder, [n for n in a.norms.split(",") if n],
                      a.untiled_max, a.threads):
        row = run_case(case, a.max_gib)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("bundle", "diffusers")}), flush=True)
    result = {"environment": env | {"load_1m_end": measure.load_average()},
              "model": str(a.bundle) if a.bundle else MODEL, "steps": STEPS,
              "tile": a.tile, "rows": [{k: v for k, v in r.items() if k not in ("bundle", "diffusers")} for r in rows]}
    if a.arena_time:
        result["arena_time"] = {"resolution": a.arena_time, "rounds": a.rounds,
                                "settings": arena_times(bundle, a.arena_time, a.rounds)}
        print(json.dumps(result["arena_time"]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    if a.plot:
        plot(result["rows"], a.plot, a.plot_arena)
    return 0


if __name__ == "__main__":
    sys.exit(main())
