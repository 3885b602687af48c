"""``cmrt export --model DIFFUSERS_FOLDER`` and ``cmrt generate``: real runs, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from cmrt.cli import main


def test_generate_writes_the_png_of_the_seeded_images(lcm_bundle, tmp_path, capsys):
    from PIL import Image

    from cmrt.images import to_uint8
    from cmrt.runtime.pipeline import Pipeline

    out = tmp_path / "cat.png"
    assert main(["generate", str(lcm_bundle), "a cat", "--seed", "7", "--height", "32", "--width", "48",
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with Pipeline(lcm_bundle) as pipe:
        expected = to_uint8(pipe.generate(["a cat"], seed=7, height=32, width=48))[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected)


@pytest.mark.parametrize("argv, match", [
    (["--height", "30"], "height must be a positive multiple of 8"),
    (["--guidance-scale", "nan"], "guidance_scale must be a finite"),
    (["--guidance-scale", "-2"], "guidance_scale must be a finite"),
])
def test_generate_bad_input_is_one_line(lcm_bundle, tmp_path, capsys, argv, match):
    assert main(["generate", str(lcm_bundle), "a cat", "--out", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_generate_on_a_missing_bundle(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "none"), "a", "--out", str(tmp_path / "x.png")]) == 2
    assert "pipeline.json" in capsys.readouterr().err


def test_export_cli_writes_a_pipeline_bundle(lcm_folder, tmp_path, capsys):
    from cmrt.bundle import PipelineManifest

    out = tmp_path / "b"
    assert main(["export", "--model", str(lcm_folder), "--steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LatentConsistencyModelPipeline" in text and "parity sampler" in text
    assert PipelineManifest.open(out).timesteps == (999,)


@pytest.mark.parametrize("argv, match", [
    (["--sigmas", "80,2"], "--sigmas does not apply"),
    (["--steps", "51"], "original_inference_steps"),
])
def test_export_cli_refuses_options(lcm_folder, tmp_path, capsys, argv, match):
    assert main(["export", "--model", str(lcm_folder), "--out", str(tmp_path / "b"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_lora_options_need_a_pipeline_folder(tmp_path, capsys):
    assert main(["export", "--lora", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "b")]) == 2
    assert "--lora applies to diffusers text-to-image folders" in capsys.readouterr().err
