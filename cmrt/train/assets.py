"""Package a training run as a bundled model: EMA weights only (≤ 10 MB), spec and training record.

    python -m cmrt.train.assets RUN OUT.safetensors [--name NAME] [--encoder FILE --encoder-name NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..models.load import save_checkpoint
from . import runs as R

MAX_ASSET_BYTES = 10 * 1024 * 1024


def package(run_dir: str | Path, out: str | Path, *, name: str | None = None, encoder: str | Path | None = None,
            encoder_name: str | None = None) -> Path:
    """Write ``out`` from the run's EMA weights; with ``encoder``, copy it beside ``out`` and point to it.

    Args:
        run_dir: a training run folder or checkpoint.
        out: the asset file to write (a cmrt checkpoint that ``load_model`` reads).
        name: the model's name in its spec (default: the run's).
        encoder: decoders: the frozen encoder file to ship beside the decoder.
        encoder_name: its file name there (default: the encoder's own).
    """
    run = R.load_run(run_dir)
    out = Path(out)
    cfg = run.config
    if encoder is not None:
        dest = out.with_name(encoder_name or Path(encoder).name)
        if Path(encoder).resolve() != dest.resolve():
            shutil.copyfile(encoder, dest)
        cfg = cfg.with_(encoder=dest.name)  # found beside the decoder by `cmrt eval`
    spec = run.spec.with_(name=name or run.spec.name, trained=True)
    meta = {R.STEP_KEY: str(run.step), R.METHOD_KEY: cfg.method, R.CONFIG_KEY: json.dumps(cfg.to_dict())}
    save_checkpoint(out, spec, run.ema.state_dict(), metadata=meta)
    size = out.stat().st_size
    if size > MAX_ASSET_BYTES:
        out.unlink()
        raise ConfigError(f"{out} is {size / 2**20:.1f} MiB, over the {MAX_ASSET_BYTES / 2**20:.0f} MiB asset limit")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("out", type=Path)
    p.add_argument("--name", default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--encoder-name", default=None)
    a = p.parse_args(argv)
    print(f"wrote {package(a.run, a.out, name=a.name, encoder=a.encoder, encoder_name=a.encoder_name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
