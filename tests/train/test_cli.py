"""`cmrt train` on the command line (in process): its help, an existing run folder, a 2-D toy run at export."""

import argparse
import json

import pytest

from cmrt.cli import build_parser, main
from cmrt.train import runs as R
from cmrt.train.data import NAMED_SETS, TOY_SETS
from cmrt.train.loop import train

from tests.train.helpers import fixed_digits, tiny_cfg

TINY = ["--data", "digits", "--image-size", "8", "--widths", "32,32", "--attention", "false,true",
        "--batch-size", "4", "--threads", "1", "--no-progress"]


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_train_option_is_described_and_data_lists_every_set():
    p = _subparser("train")
    for action in p._actions:
        described = (action.help or "").split("(default")[0].strip()
        assert len(described) > 8, f"{action.option_strings or action.dest} has no description"
    text = " ".join(p.format_help().split())
    data = text[text.index("--data DATA "):text.index("--out DIR ")]
    for name in (*NAMED_SETS, *TOY_SETS):
        assert name in data, name


def test_train_into_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = train(tiny_cfg("ct", tmp_path / "r", max_steps=2), data=fixed_digits(), progress=False)
    capsys.readouterr()
    assert main(["train", "ct", "--out", str(run), "--max-steps", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run) in err and "--resume" in err and "--overwrite" in err, err
    assert R.load_run(run).step == 2
    with pytest.raises(SystemExit) as exc:  # argparse: the two exclude each other
        main(["train", "ct", "--out", str(run), "--resume", "--overwrite", *TINY])
    assert exc.value.code == 2
    assert main(["train", "ct", "--out", str(run), "--max-steps", "1", "--overwrite", *TINY]) == 0
    assert R.load_run(run).step == 1
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_exporting_a_2d_toy_run_says_it_cannot(tmp_path, capsys):
    toy = train(tiny_cfg("ct", tmp_path / "m", data="moons", max_steps=1, mlp_width=32), progress=False)
    for source in (toy, toy / "model.safetensors"):
        assert main(["export", "--model", str(source), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert "2-D toy run (--data moons)" in err and "cannot be exported" in err and "cmrt eval" in err, err
    assert not (tmp_path / "b").exists()
