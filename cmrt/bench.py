"""``cmrt bench``: the benchmark suites of a source checkout.

The suites (``benchmarks/`` beside ``cmrt/`` in the repository) compare cmrt with what users run
today, which needs diffusers, matplotlib and minutes of exports; they are not installed with
cmrt. ``cmrt bench`` finds them in the checkout cmrt runs from (an editable install, ``make
setup``) or in the checkout ``$CMRT_CHECKOUT`` names, and otherwise says, in one line, how to get
one. Nothing in cmrt imports ``benchmarks`` otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import ConfigError

CHECKOUT_ENV = "CMRT_CHECKOUT"
PACKAGE = "benchmarks"
MARKERS = ("__init__.py", "cli.py", "suites.py")  # a folder named benchmarks that is cmrt's
HOW = ("`cmrt bench` needs a source checkout of cmrt (its benchmarks/ folder is not installed): "
       "`git clone` the repository and `make setup` (an editable install), or set {env} to the checkout's folder")


def is_checkout(root: Path) -> bool:
    """True if ``root`` holds cmrt's ``benchmarks/`` package."""
    return all((root / PACKAGE / f).is_file() for f in MARKERS)


def find_checkout(env: dict | None = None, package_dir: Path | None = None) -> Path | None:
    """The source checkout whose ``benchmarks/`` to run: ``$CMRT_CHECKOUT`` if set (it must be one),
    else the folder above the imported ``cmrt`` package if it is one (a source checkout or an
    editable install), else None (an installed wheel)."""
    env = os.environ if env is None else env
    named = env.get(CHECKOUT_ENV)
    if named:
        root = Path(named).expanduser().resolve()
        if not is_checkout(root):
            raise ConfigError(f"{CHECKOUT_ENV}={named} has no {PACKAGE}/ folder of cmrt's: set it to the folder of "
                              "a cmrt source checkout (the one holding cmrt/ and benchmarks/)")
        return root
    root = (package_dir or Path(__file__).resolve().parent).parent
    return root if is_checkout(root) else None


def load_benchmarks_cli(root: Path):
    """``benchmarks.cli`` of the checkout at ``root`` (put first on ``sys.path``)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"{PACKAGE}.cli")
    found = Path(module.__file__).resolve().parent.parent
    if found != root:
        raise ConfigError(f"`import {PACKAGE}` found {found / PACKAGE}, not the checkout's {root / PACKAGE}: "
                          f"run cmrt bench from the checkout, or set {CHECKOUT_ENV}")
    return module


def bench_args(p: argparse.ArgumentParser) -> None:
    """The suites' own options when a checkout is found; otherwise any arguments, for ``bench_run``
    to answer with how to get a checkout (not argparse's "unrecognized arguments")."""
    try:
        root = find_checkout()
    except ConfigError:
        root = None  # bench_run names the bad variable
    if root is None:
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.prefix_chars = "\0"  # every argument, options too, is this one's: bench_run answers them all
        p.set_defaults(_checkout=None)
        return
    module = load_benchmarks_cli(root)
    module._bench_args(p)
    p.set_defaults(_checkout=root)


def bench_run(a: argparse.Namespace) -> int:
    root = a._checkout if a._checkout is not None else find_checkout()
    if root is None:
        raise ConfigError(HOW.format(env=CHECKOUT_ENV))
    return load_benchmarks_cli(root)._bench_run(a)
