"""The CLI through a subprocess: exit codes, one-line errors, no tracebacks."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # the CLI in fresh processes

CMRT = [sys.executable, "-m", "cmrt.cli"]


def run(*args, cwd=None):
    return subprocess.run([*CMRT, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


def assert_one_line_error(p, code=2):
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("cmrt")]
    assert len(lines) == 1, p.stderr


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("export", "check", "sample"):
        assert cmd in p.stdout


def test_check_and_sample_through_the_entry_point(cm_bundle, tmp_path):
    """(Exporting the bundled model through the CLI is tests/test_readme.py's quick start.)"""
    p = run("check", cm_bundle.path)
    assert p.returncode == 0 and "PASS" in p.stdout and "max abs" in p.stdout and "PSNR" in p.stdout
    assert "integrity:" in p.stdout
    p = run("sample", cm_bundle.path, "--n", "4", "--out", tmp_path / "g.png")
    assert p.returncode == 0 and (tmp_path / "g.png").stat().st_size > 0


def test_check_fails_with_exit_1(cm_bundle, tmp_path):
    import shutil

    b = tmp_path / "t"
    shutil.copytree(cm_bundle.path, b)
    with np.load(b / "parity.npz") as d:
        arrays = dict(d)
    arrays["output/images"] = -arrays["output/images"]
    np.savez(b / "parity.npz", **arrays)
    p = run("check", b)
    assert p.returncode == 1 and "FAIL" in p.stdout and "parity.npz" in p.stdout


@pytest.mark.parametrize("args", [
    ["export", "--steps", "0", "--out", "{tmp}/x"],
    ["export", "--model", "{tmp}/missing.safetensors", "--out", "{tmp}/x"],
    ["export", "--sigmas", "1,80", "--out", "{tmp}/x"],
    ["check", "{tmp}/nothing"],
    ["sample", "{tmp}", "--out", "{tmp}/g.png"],
])
def test_bad_input_one_line(tmp_path, args):
    p = run(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(p)
    assert not (tmp_path / "x").exists()


def test_bad_model_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    p = run("export", "--model", bad, "--out", tmp_path / "x")
    assert_one_line_error(p)
    assert str(bad) in p.stderr


# --- in-process: help text, option hints, Ctrl-C -----------------------------------------------
def _help(capsys, *argv):
    from cmrt.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _option_blocks(text):
    """Each option's help (its lines from '  -...' to the next option or section)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    return [" ".join(b) for b in blocks]


def test_help_says_each_default_once_and_no_markup(capsys):
    from cmrt.cli import COMMANDS

    top = _help(capsys)
    assert "``" not in top and "cmrt: a thin command line" in top
    for command in COMMANDS:
        try:
            text = _help(capsys, command)
        except ModuleNotFoundError:  # an install without benchmarks
            continue
        assert "``" not in text, command
        for block in _option_blocks(text):
            assert block.count("(default:") <= 1, (command, block)
    export = {b.split()[0]: b for b in _option_blocks(_help(capsys, "export"))}
    assert "default" not in export["--no-clip"] and "(default: bundle)" in export["--out"]
    assert "OpenAI" in export["--clip"]


@pytest.mark.parametrize("argv,hint", [
    (["export", "--fp16"], "use --precision fp16 instead of --fp16"),
    (["export", "--half", "--out", "x"], "use --precision fp16"),
    (["export", "--stpes", "2"], "did you mean --steps?"),
    (["sample", "b", "--output", "g.png"], "use --out instead of --output"),
])
def test_unknown_option_hint_is_one_line_exit_2(capsys, argv, hint):
    from cmrt.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and hint in err, err
    assert err.startswith(f"cmrt {argv[0]}: error: unrecognized arguments: ")


def _wrapped_interrupt(how):
    """A Ctrl-C as a library reports it: torch.onnx's TorchExportError caused by (or raised while
    handling) the KeyboardInterrupt, its message in terminal colours."""
    from torch.onnx._internal.exporter._errors import TorchExportError

    def raise_it(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ki:
            if how == "cause":
                raise TorchExportError("\x1b[31mFailed to export the model with torch.export\x1b[0m") from ki
            raise TorchExportError("\x1b[31mFailed to export the model\x1b[0m")  # __context__ only
    return raise_it


@pytest.mark.parametrize("how", ["cause", "context"])
def test_ctrl_c_wrapped_by_the_exporter_says_interrupted_and_writes_nothing(monkeypatch, capsys, tmp_path, how):
    import cmrt.exporter.api as api
    from cmrt.cli import main

    monkeypatch.setattr(api, "export_graph", _wrapped_interrupt(how))  # inside the staged bundle folder
    code = main(["export", "--steps", "1", "--no-cache", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 130 and err == "cmrt: interrupted\n", err
    assert list(tmp_path.iterdir()) == []  # no bundle, no staged .b.tmp-* folder


def test_internal_error_is_one_line_without_colour_codes(monkeypatch, capsys, tmp_path):
    import cmrt.exporter.api as api
    from cmrt.cli import main
    from torch.onnx._internal.exporter._errors import TorchExportError

    def fail(*args, **kwargs):
        raise TorchExportError("\x1b[31mFailed\x1b[0m to export:\n  \x1b[1mdetails\x1b[0m")

    monkeypatch.setattr(api, "export_graph", fail)
    monkeypatch.delenv("CMRT_DEBUG", raising=False)
    code = main(["export", "--steps", "1", "--no-cache", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "\x1b" not in err
    assert "internal error: TorchExportError: Failed to export: details" in err


# --- decode ------------------------------------------------------------------------------------
def test_decode_through_the_entry_point_matches_the_library(decoder_bundle, tmp_path):
    import cmrt
    from cmrt.images import grid

    z = np.random.default_rng(0).standard_normal((2, 4, 3, 5)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    p = run("decode", decoder_bundle.path, tmp_path / "z.npy", "--seed", "3", "--out", tmp_path / "d.png")
    assert p.returncode == 0, p.stderr
    assert "2 image(s), 24x40" in p.stdout
    expected = cmrt.Decoder(decoder_bundle.path).decode(z, seed=3)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d.png")), grid(expected))


def test_decode_reads_safetensors_and_images_and_tiles(decoder_bundle, tmp_path, capsys):
    import cmrt
    from PIL import Image
    from safetensors.numpy import save_file

    from cmrt.cli import main
    from cmrt.train.autoencoder import PHOTOS_AUTOENCODER, encode_file

    z = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    save_file({"other": z[:, :1], "latents": z}, str(tmp_path / "z.safetensors"))
    dec = cmrt.Decoder(decoder_bundle.path)
    assert main(["decode", str(decoder_bundle.path), str(tmp_path / "z.safetensors"), "--tile", "4", "--overlap", "1",
                 "--out", str(tmp_path / "t.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), dec.decode(z, seed=0, tile=4, overlap=1))

    Image.fromarray((np.random.default_rng(2).random((20, 27, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    assert main(["decode", str(decoder_bundle.path), str(tmp_path / "p.png"), "--out", str(tmp_path / "p.npy")]) == 0
    latents = encode_file(tmp_path / "p.png", encoder=PHOTOS_AUTOENCODER, size=None)  # 16×24 after the crop
    assert latents.shape == (1, 4, 2, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), dec.decode(latents, seed=0))
    assert "1 image(s), 16x24" in capsys.readouterr().out


# --- the original decoder's clamp (--clip) ------------------------------------------------------
def test_export_clip_on_a_decoder_clamps_as_openais_original(tmp_path, capsys):
    """OpenAI's consistencydecoder clamps x0 to [-1, 1] after every step (diffusers does not):
    `--clip` is that option, recorded in the manifest, the graph checked against a PyTorch
    source that clamps too. A tiny decoder with a loud output layer, so the clamp bites."""
    import torch

    import cmrt
    from cmrt.cli import main
    from cmrt.models.denoisers import build_denoiser
    from cmrt.models.load import save_checkpoint
    from cmrt.parity import compare_output, tolerance_for
    from cmrt.samplers import decoder_sample
    from tests.conftest import loaded, tiny_decoder_spec

    model = loaded(tiny_decoder_spec())
    with torch.no_grad():
        model.unet.conv_out.weight.mul_(20.0)
        model.unet.conv_out.bias.add_(0.5)
    save_checkpoint(tmp_path / "dec.safetensors", model.spec, model.unet.state_dict())
    assert main(["export", "--model", str(tmp_path / "dec.safetensors"), "--clip", "--out", str(tmp_path / "b")]) == 0
    assert "parity onnxruntime-cpu [fp32]" in capsys.readouterr().out
    bundle = cmrt.Decoder(tmp_path / "b")
    assert bundle.bundle.manifest.clip is True and bundle.bundle.manifest.kind == "decoder"

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 4, generator=g)
    steps = bundle.bundle.manifest.timesteps
    noise = [torch.randn(2, 3, 24, 32, generator=g) for _ in steps]
    images = bundle.decode(z.numpy(), noise=[n.numpy() for n in noise])
    denoiser = build_denoiser(model.spec, model.unet)
    with torch.no_grad():
        clamped = decoder_sample(denoiser, z, steps, noise, clip=True).numpy()
        plain = decoder_sample(denoiser, z, steps, noise, clip=False).numpy()
    assert np.abs(plain).max() > 1.1  # unclamped, this decoder leaves [-1, 1] ...
    assert images.min() >= -1.0 and images.max() <= 1.0  # ... the exported one does not
    assert compare_output("images", images, clamped, tolerance_for("fp32")).passed


def test_a_command_imports_only_its_own_module():
    """`cmrt --version`, `cmrt serve` etc. build only their own parser: torch (which `bench` and
    `train` import) never loads for them, so they start and exit in a fraction of a second."""
    code = ("import sys\nfrom cmrt.cli import build_parser\n"
            "for argv in ([], ['--version'], ['serve', 'b'], ['triton', 'b'], ['check', 'b'], ['sample', 'b'],\n"
            "             ['decode', 'b', 'z.npy'], ['edit', 'b'], ['upgrade', 'b']):\n"
            "    build_parser(argv)\n"
            "print(sorted(m for m in ('torch', 'benchmarks', 'cmrt.train') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", (p.stdout, p.stderr)


def test_decode_picks_the_encoder_of_the_bundled_decoder(decoder_bundle):
    from dataclasses import replace

    from cmrt.cli import _bundled_encoder
    from cmrt.models.load import DEFAULT_DECODER, PHOTOS_DECODER

    m = decoder_bundle.manifest
    assert _bundled_encoder(m) == "photos"  # a decoder of unknown training: the natural-image encoder
    assert _bundled_encoder(replace(m, source=replace(m.source, path=str(DEFAULT_DECODER)))) == "digits"
    assert _bundled_encoder(replace(m, source=replace(m.source, path=str(PHOTOS_DECODER)))) == "photos"
