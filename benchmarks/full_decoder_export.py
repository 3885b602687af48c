"""Measure ``cmrt export`` of the full-size consistency decoder (issues 3 and 10).

Builds diffusers' ``ConsistencyDecoderVAE()`` (the published 621M-parameter configuration) with
random weights, saves it as a diffusers folder once, then runs ``cmrt export`` on it in a child
process under ``/usr/bin/time -v``, twice: with an empty network-graph cache (``CMRT_CACHE_DIR`` a
fresh folder: the network is traced) and again with the graph that run cached. Prints wall time,
peak resident memory and the export's stage breakdown from the manifest.

    python benchmarks/full_decoder_export.py --work /tmp/cd-full
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 1024**3


def make_folder(folder: Path) -> None:
    import torch
    from diffusers import ConsistencyDecoderVAE

    torch.manual_seed(0)
    ConsistencyDecoderVAE().save_pretrained(folder)


def measure(folder: Path, out: Path, cache: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "cmrt.cli", "export", "--model", str(folder),
           "--out", str(out), "--overwrite"]
    env = {**os.environ, "CMRT_CACHE_DIR": str(cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    stages = {}
    if proc.returncode == 0:
        graph = json.loads((out / "cmrt.json").read_text())["graphs"]["fp32"]
        stages = {"export_seconds": graph["export_seconds"]} | graph["export_stages"]
    return {"returncode": proc.returncode, "wall_s": seconds, "peak_rss_gib": peak_kib * 1024 / GIB,
            "stages": stages, "stdout": proc.stdout.strip(), "stderr_tail": "\n".join(proc.stderr.splitlines()[-30:])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/cd-full"), help="scratch folder (default: /tmp/cd-full)")
    a = p.parse_args()
    folder = a.work / "vae"
    if not (folder / "config.json").is_file():
        make_folder(folder)
    with tempfile.TemporaryDirectory(prefix="cmrt-cache-", dir=a.work) as cache:
        for label in ("cold cache (network traced)", "warm cache"):
            r = measure(folder, a.work / "bundle", Path(cache))
            print(f"{label}: returncode {r['returncode']}  wall {r['wall_s']:.1f} s  peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB  stages {r['stages']}")
            print(r["stdout"])
            if r["returncode"]:
                print(r["stderr_tail"])
                return r["returncode"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
