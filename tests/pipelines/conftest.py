"""Tiny diffusers text-to-image folders and their pipeline bundles, made once per test run.

The folders are real diffusers layouts (``save_pretrained``) with random weights (``tiny.py``);
the bundles are exported from them by ``cmrt.exporter.pipeline`` exactly as a user would.
Under pytest-xdist the workers share one copy (a file lock guards the first build).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import run_shared

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def lcm_folder(tmp_path_factory) -> Path:
    """A tiny ``LatentConsistencyModelPipeline`` folder (UNet with ``time_cond_proj_dim``)."""
    from tiny import save_sd_folder

    return run_shared(tmp_path_factory, "lcm-folder", lambda out: save_sd_folder(out, lcm=True), "model_index.json")


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny ``StableDiffusionPipeline`` folder (a plain UNet, for LCM-LoRA)."""
    from tiny import save_sd_folder

    return run_shared(tmp_path_factory, "sd-folder", lambda out: save_sd_folder(out, lcm=False, seed=1),
                   "model_index.json")


def _bundle(factory, folder: Path, name: str, **options) -> Path:
    from cmrt.exporter.pipeline import export_pipeline

    return run_shared(factory, name, lambda out: export_pipeline(folder, out=out, overwrite=True, **options),
                   "pipeline.json")


@pytest.fixture(scope="session")
def lcm_bundles(tmp_path_factory, lcm_folder) -> Callable[[int], Path]:
    """steps → the tiny LCM's pipeline bundle at that many steps (exported on first use)."""
    return lambda steps: _bundle(tmp_path_factory, lcm_folder, f"lcm-{steps}", steps=steps)


@pytest.fixture(scope="session")
def lcm_bundle(lcm_bundles) -> Path:
    return lcm_bundles(4)


@pytest.fixture(scope="session")
def lcm_lora(tmp_path_factory, sd_folder) -> Path:
    """A random LoRA for the tiny SD UNet, in diffusers' key layout."""
    from tiny import save_lcm_lora

    folder = run_shared(tmp_path_factory, "lora", lambda out: save_lcm_lora(sd_folder, out),
                     "pytorch_lora_weights.safetensors")
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def lora_bundle(tmp_path_factory, sd_folder, lcm_lora) -> Path:
    """The tiny SD folder with the LoRA fused at scale 0.8, 2 LCM steps, CFG in the graph."""
    return _bundle(tmp_path_factory, sd_folder, "lora-2", steps=2, lora=lcm_lora, lora_scale=0.8)


@pytest.fixture(scope="session")
def cd_folder(tmp_path_factory) -> Path:
    from tiny import save_consistency_decoder

    return run_shared(tmp_path_factory, "cd-folder", save_consistency_decoder, "config.json")


@pytest.fixture(scope="session")
def lcm_cd_bundle(tmp_path_factory, lcm_folder, cd_folder) -> Path:
    """The tiny LCM at 2 steps with the consistency decoder as its last stage."""
    return _bundle(tmp_path_factory, lcm_folder, "lcm-cd-2", steps=2, decoder=cd_folder)


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory) -> Path:
    """A tiny full-LCM ``StableDiffusionXLPipeline`` folder (as lcm-sdxl)."""
    from tiny import save_sdxl_folder

    return run_shared(tmp_path_factory, "sdxl-folder", save_sdxl_folder, "model_index.json")


@pytest.fixture(scope="session")
def sdxl_bundle(tmp_path_factory, sdxl_folder) -> Path:
    return _bundle(tmp_path_factory, sdxl_folder, "sdxl-2", steps=2)


@pytest.fixture(scope="session")
def lcm16_bundle(tmp_path_factory, lcm_folder) -> Path:
    """The tiny LCM at 2 steps with FP16 sampler and decoder graphs (``--precision fp16``)."""
    return _bundle(tmp_path_factory, lcm_folder, "lcm16-2", steps=2, precision="fp16")
