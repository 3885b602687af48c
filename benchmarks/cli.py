"""``cmrt bench``: run a benchmark suite and write its rows as JSON, a markdown table and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from .backends import BENCH_BACKENDS
from .suites import DEFAULT_CACHE, SUITES

EXAMPLES = """examples:
  cmrt bench --suite quick --json q.json --markdown q.md --plot q.png
  cmrt bench --suite decoder --backend pytorch-eager,diffusers,onnxruntime-cpu
"""


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.add_argument("--suite", default="quick", help="one of: " + ", ".join(
        f"{s.name} ({s.description})" for s in SUITES.values()))
    p.add_argument("--backend", type=_names, action="extend", default=None, metavar="NAMES",
                   help="comma-separated backends (default: all; absent ones are listed with the reason): "
                        + ", ".join(BENCH_BACKENDS))
    p.add_argument("--json", type=Path, default=None, help="write the result rows here (JSON)")
    p.add_argument("--markdown", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--plot", type=Path, default=None, help="write the latency plot here (PNG)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of exported bundles, reused across runs")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per case (default: the suite's)")
    p.add_argument("--repeats", type=int, default=None, help="fewest timed calls per case (default: the suite's)")
    p.add_argument("--label", default=None, help="machine label in the results (default: CPU/GPU model and cores)")


def _bench_run(a: argparse.Namespace) -> int:
    from cmrt._io import check_writable
    from cmrt.errors import ConfigError

    from . import report
    from .suites import RunOptions, check_names, run_suite, skipped

    suite, backends = check_names(a.suite, a.backend)
    outputs = {kind: check_writable(path, f"--{kind}")
               for kind, path in (("json", a.json), ("markdown", a.markdown), ("plot", a.plot))}
    for flag, value in (("--warmup", a.warmup), ("--repeats", a.repeats)):
        if value is not None and value < (0 if flag == "--warmup" else 1):
            raise ConfigError(f"{flag} must be {'≥ 0' if flag == '--warmup' else '≥ 1'}, got {value}")
    skip = tuple(skipped(suite, backends, explicit=a.backend is not None).items())
    result = run_suite(suite, backends, RunOptions(cache=a.cache, warmup=a.warmup, repeats=a.repeats, label=a.label,
                                                   skipped=skip))
    print(report.markdown(result))
    writers = {"json": report.write_json, "markdown": report.write_markdown, "plot": report.plot}
    for kind, path in outputs.items():
        if path is not None:
            writers[kind](result, path)
            print(f"wrote {path}")
    return 0
