"""Every subcommand against a table of bad values: exit code 2, one line on stderr naming the
user's own argument, no traceback, nothing written. Run in-process (``cmrt.cli.main``) for speed;
``tests/test_cli.py`` covers the same contract through a real subprocess."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmrt.cli import main

# (argv with {tmp}, {cm}, {dec} placeholders, text that must appear in the one error line)
CASES = [
    # export: schedules
    (["export", "--steps", "0", "--out", "{tmp}/x"], "--steps"),
    (["export", "--steps", "two", "--out", "{tmp}/x"], "--steps"),
    (["export", "--steps", "41", "--out", "{tmp}/x"], "--steps 41"),
    (["export", "--sigmas", "1,80", "--out", "{tmp}/x"], "--sigmas"),
    (["export", "--sigmas", "100", "--out", "{tmp}/x"], "--sigmas"),
    (["export", "--sigmas", "a,b", "--out", "{tmp}/x"], "--sigmas"),
    (["export", "--steps", "3", "--sigmas", "80,2", "--out", "{tmp}/x"], "--steps 3"),
    (["export", "--grid", "1", "--out", "{tmp}/x"], "--grid"),
    (["export", "--grid", "10", "--sigmas", "80,2", "--out", "{tmp}/x"], "--grid"),
    (["export", "--timesteps", "1008,512", "--out", "{tmp}/x"], "--sigmas"),
    # export: sources and options that do not apply
    (["export", "--model", "{tmp}/missing.safetensors", "--out", "{tmp}/x"], "missing.safetensors"),
    (["export", "--model", "{tmp}/junk.safetensors", "--out", "{tmp}/x"], "junk.safetensors"),
    (["export", "--model", "{tmp}/empty_dir", "--out", "{tmp}/x"], "empty_dir"),
    (["export", "--model", "{tmp}/junk.pt", "--out", "{tmp}/x"], "junk.pt"),
    (["export", "--arch", "imagenet64", "--out", "{tmp}/x"], "--arch"),
    (["export", "--arch", "cifar10", "--out", "{tmp}/x"], "--arch"),
    (["export", "--embedding", "{tmp}/e.safetensors", "--out", "{tmp}/x"], "--embedding"),
    (["export", "--trust", "--out", "{tmp}/x"], "--trust"),
    (["export", "--image-size", "32", "--out", "{tmp}/x"], "--image-size"),
    (["export", "--io", "fp16", "--out", "{tmp}/x"], "--io fp16"),
    (["export", "--precision", "fp8", "--out", "{tmp}/x"], "--precision"),
    (["export", "--tile-stats", "--out", "{tmp}/x"], "--tile-stats"),  # the default model is no decoder
    (["export", "--task", "inpaint", "--int8", "--out", "{tmp}/x"], "--int8"),  # editors are not quantized
    (["export", "--int8", "--int8-latents", "{tmp}/missing.npy", "--out", "{tmp}/x"], "--int8-latents"),
    (["export", "--int8-min-speedup", "2", "--out", "{tmp}/x"], "--int8-min-speedup"),
    (["export", "--int8", "--int8-min-speedup", "-1", "--out", "{tmp}/x"], "--int8-min-speedup"),
    # export: editing tasks (issue 11; the bundled default model is a 1-channel digits model)
    (["export", "--task", "colorize", "--out", "{tmp}/x"], "--task colorize"),
    (["export", "--task", "paint", "--out", "{tmp}/x"], "--task"),
    (["export", "--factor", "4", "--out", "{tmp}/x"], "--factor"),
    (["export", "--task", "inpaint", "--factor", "4", "--out", "{tmp}/x"], "--factor"),
    (["export", "--task", "superres", "--out", "{tmp}/x"], "--factor"),
    (["export", "--task", "superres", "--factor", "3", "--out", "{tmp}/x"], "--factor"),
    (["export", "--task", "superres", "--factor", "0", "--out", "{tmp}/x"], "--factor"),
    (["export", "--task", "denoise", "--out", "{tmp}/x"], "--sigmas"),
    (["export", "--task", "denoise", "--sigmas", "1,0.5", "--out", "{tmp}/x"], "--sigmas"),
    (["export", "--task", "stroke", "--timesteps", "1008", "--out", "{tmp}/x"], "--sigmas"),
    # export: outputs
    (["export", "--out", "{tmp}/full"], "full"),
    (["export", "--out", "{tmp}/a_file.txt"], "a_file.txt"),
    (["export", "--out", "{tmp}/a_file.txt/sub"], "a_file.txt"),
    # check
    (["check", "{tmp}/nothing"], "nothing"),
    (["check", "{tmp}/empty_dir"], "empty_dir"),
    (["check", "{tmp}/bad_json"], "cmrt.json"),
    (["check", "{tmp}/a_file.txt"], "a_file.txt"),
    (["check", "{cm}", "--backend", "nope"], "nope"),
    # sample
    (["sample", "{cm}", "--n", "0", "--out", "{tmp}/s.png"], "--n"),
    (["sample", "{cm}", "--out", "{tmp}/no/such/dir/s.png"], "--out"),
    (["sample", "{cm}", "--out", "{tmp}/empty_dir"], "--out"),
    (["sample", "{cm}", "--class-labels", "11", "--out", "{tmp}/s.png"], "class_labels"),
    (["sample", "{cm}", "--class-labels", "x", "--out", "{tmp}/s.png"], "--class-labels"),
    (["sample", "{cm}", "--seed", "-1", "--out", "{tmp}/s.png"], "seed"),
    (["sample", "{dec}", "--out", "{tmp}/s.png"], "cmrt.Decoder"),
    (["sample", "{cm}", "--backend", "tensorrt", "--out", "{tmp}/s.png"], "cmrt build"),
    (["sample", "{tmp}/nothing", "--out", "{tmp}/s.png"], "nothing"),
    # decode (latents from .npy / .safetensors, or an image the encoder turns into latents)
    (["decode", "{dec}", "{tmp}/missing.npy", "--out", "{tmp}/d.png"], "missing.npy"),
    (["decode", "{dec}", "{tmp}/junk.safetensors", "--out", "{tmp}/d.png"], "junk.safetensors"),
    (["decode", "{dec}", "{tmp}/a_file.txt", "--out", "{tmp}/d.png"], "a_file.txt"),
    (["decode", "{dec}", "{tmp}/rgb.npy", "--out", "{tmp}/d.png"], "latents"),
    (["decode", "{dec}", "{tmp}/lat.npy", "--out", "{tmp}/no/such/dir/d.png"], "--out"),
    (["decode", "{dec}", "{tmp}/lat.npy", "--tile", "0", "--out", "{tmp}/d.png"], "--tile"),
    (["decode", "{dec}", "{tmp}/lat.npy", "--norm", "shared", "--out", "{tmp}/d.png"], "--tile-stats"),
    (["decode", "{dec}", "{tmp}/img.png", "--size", "30", "--out", "{tmp}/d.png"], "--size"),
    (["decode", "{dec}", "{tmp}/img.png", "--encoder", "{tmp}/missing.safetensors", "--out", "{tmp}/d.png"],
     "missing.safetensors"),
    (["decode", "{cm}", "{tmp}/lat.npy", "--out", "{tmp}/d.png"], "cmrt.Sampler"),
    # edit
    (["edit", "{cm}", "--out", "{tmp}/e.png"], "--image"),
    (["edit", "{cm}", "--image", "{tmp}/img.png", "--out", "{tmp}/e.png"], "cmrt.Sampler"),
    (["edit", "{dec}", "--image", "{tmp}/img.png", "--out", "{tmp}/e.png"], "cmrt.Decoder"),
    (["edit", "{tmp}/nothing", "--image", "{tmp}/img.png", "--out", "{tmp}/e.png"], "nothing"),
    # build
    (["build", "{cm}"], "--precision fp16"),
    (["build", "{cm}", "--target", "nope"], "--target"),
    (["build", "{cm}", "--min-batch", "4", "--max-batch", "2", "--target", "tensorrt-rtx"], "batch"),
    (["build", "{cm}", "--compute-capability", "9.0", "--target", "tensorrt-rtx"], "9.0"),
    (["build", "{cm}", "--max-latent", "big", "--target", "tensorrt-rtx"], "--max-latent"),
    (["build", "{cm}", "--target", "tensorrt-rtx", "--timing-cache", "{tmp}/t.cache"], "--timing-cache"),
    (["build", "{tmp}/nothing"], "nothing"),
    # train, train-autoencoder, eval
    (["train", "ct", "--data", "digits", "--widths", "48", "--out", "{tmp}/r"], "--widths 48"),
    (["train", "ct", "--data", "digits", "--max-steps", "0", "--out", "{tmp}/r"], "--max-steps"),
    (["train", "ct", "--data", "no-such-data", "--out", "{tmp}/r"], "no-such-data"),
    (["train", "ct", "--config", "{tmp}/missing.json", "--out", "{tmp}/r"], "--config"),
    (["train", "cd", "--data", "digits", "--out", "{tmp}/r"], "--teacher"),
    (["train", "decoder", "--data", "digits-color", "--out", "{tmp}/r"], "--encoder"),
    (["train", "nope", "--out", "{tmp}/r"], "nope"),
    (["train", "ct", "--data", "digits", "--lr", "fast", "--out", "{tmp}/r"], "--lr"),
    (["train-autoencoder", "--data", "no-such-data", "--out", "{tmp}/e.safetensors"], "no-such-data"),
    (["train-autoencoder", "--data", "digits-color"], "--out"),
    (["eval", "{tmp}/nothing"], "nothing"),
    (["eval", "{cm}", "--steps", "x"], "--steps"),
    # bench
    (["bench", "--suite", "nope"], "nope"),
    (["bench", "--backend", "nope"], "nope"),
    (["bench", "--json", "{tmp}/no/such/dir/r.json"], "--json"),
    (["bench", "--repeats", "0"], "--repeats"),
    # upgrade
    (["upgrade", "{tmp}/nothing"], "nothing"),
    (["upgrade", "{tmp}/empty_dir"], "empty_dir"),
    # no such command / option
    (["frobnicate"], "frobnicate"),
    (["export", "--stpes", "2"], "--stpes"),
    (["export", "--stpes", "2"], "did you mean --steps?"),  # the closest option as a hint
    (["export", "--fp16", "--out", "{tmp}/x"], "--precision fp16"),  # an other tool's flag: what cmrt calls it
]


@pytest.fixture(scope="module")
def places(tmp_path_factory, cm_bundle, decoder_bundle):
    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "junk.safetensors").write_bytes(b"\x00" * 16)
    (tmp / "junk.pt").write_bytes(b"not a zip, not a pickle")
    (tmp / "e.safetensors").write_bytes(b"")
    (tmp / "empty_dir").mkdir()
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("user data")
    (tmp / "a_file.txt").write_text("not a folder")
    (tmp / "bad_json").mkdir()
    (tmp / "bad_json" / "cmrt.json").write_text("{not json")
    np.save(tmp / "lat.npy", np.zeros((1, 4, 4, 4), np.float32))
    np.save(tmp / "rgb.npy", np.zeros((1, 3, 4, 4), np.float32))  # an image, not latents
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp / "img.png")
    return {"tmp": tmp, "cm": cm_bundle.path, "dec": decoder_bundle.path}


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2(places, capsys, argv, names):
    argv = [a.format(**places) for a in argv]
    before = sorted(p.name for p in places["tmp"].iterdir())
    code = run_main(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, (code, out.err, out.out)
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err and "internal error" not in out.err
    assert names.format(**places) in lines[0], lines[0]
    assert sorted(p.name for p in places["tmp"].iterdir()) == before  # nothing written
    assert (places["tmp"] / "full" / "keep.txt").read_text() == "user data"
