"""The training loop: a few steps lower each method's loss on a fixed batch; exact resume; run layout."""

import json

import pytest
import torch

from cmrt.models.sources import load_model
from cmrt.train import runs as R
from cmrt.train.loop import Trainer, train

from tests.train.helpers import fixed_color, fixed_digits, random_encoder, tiny_cfg

STEPS = 30
EVAL_SEEDS = range(4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    return train(tiny_cfg("edm", out, max_steps=2), data=fixed_digits(), progress=False)


def fixed_loss(trainer: Trainer) -> float:
    """The loss on the whole fixed data set with fixed draws (mean over a few seeds)."""
    d = trainer.data
    cond = None
    if trainer.cond is not None:
        from cmrt.samplers import decoder_condition

        cond = decoder_condition(trainer.cond)
    total = 0.0
    with torch.no_grad():
        for seed in EVAL_SEEDS:
            trainer.gen = torch.Generator().manual_seed(100 + seed)
            total += float(trainer.loss(d.x, d.labels, cond))
    return total / len(EVAL_SEEDS)


@pytest.mark.parametrize("method", ["edm", "ct", "cd", "decoder"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(method, teacher, tmp_path):
    torch.manual_seed(0)
    extra = {"teacher": str(teacher)} if method == "cd" else {}
    if method == "decoder":
        extra = {"encoder": str(random_encoder(tmp_path / "enc.safetensors")), "channels": 3,
                 "attention": (False, False), "denoise_weight": 1.0}
    cfg = tiny_cfg(method, tmp_path / method, max_steps=STEPS, ct_s1=20, **extra)
    trainer = Trainer(cfg, fixed_color() if method == "decoder" else fixed_digits())
    trainer.step = STEPS // 2  # a fixed point of the CT curriculum for before/after
    before = fixed_loss(trainer)
    trainer.gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        trainer.train_step()
        trainer.step = STEPS // 2
    after = fixed_loss(trainer)
    # the decoder's 32×32 RGB images are slower to fit than the 8×8 digits
    assert after < (0.95 if method == "decoder" else 0.8) * before, (method, before, after)


@pytest.mark.parametrize("method", ["ct", "cd"])
def test_resume_continues_at_the_exact_step(method, teacher, tmp_path):
    extra = {"teacher": str(teacher)} if method == "cd" else {}
    straight = train(tiny_cfg(method, tmp_path / "a", max_steps=4, **extra), data=fixed_digits(), progress=False)
    train(tiny_cfg(method, tmp_path / "b", max_steps=2, **extra), data=fixed_digits(), progress=False)
    resumed = train(tiny_cfg(method, tmp_path / "b", max_steps=4, **extra), data=fixed_digits(), resume=True,
                    progress=False)
    a, b = R.load_run(straight), R.load_run(resumed)
    assert a.step == b.step == 4
    for key, value in a.backbone.state_dict().items():
        torch.testing.assert_close(b.backbone.state_dict()[key], value, rtol=0, atol=0)
    for key, value in a.ema.state_dict().items():
        torch.testing.assert_close(b.ema.state_dict()[key], value, rtol=0, atol=0)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # the resumed run logged steps 3 and 4


def test_resume_says_from_which_step(teacher, tmp_path, capsys):
    train(tiny_cfg("ct", tmp_path / "r", max_steps=2), data=fixed_digits(), progress=False)
    train(tiny_cfg("ct", tmp_path / "r", max_steps=3), data=fixed_digits(), resume=True, progress=False)
    assert "resuming from step 2" in capsys.readouterr().out


def test_run_layout_and_safe_loading(teacher, tmp_path):
    run = train(tiny_cfg("ct", tmp_path / "run", max_steps=2), data=fixed_digits(), progress=False)
    ckpt = R.latest_checkpoint(run)
    assert ckpt.name == "step_0000002.safetensors" and ckpt.with_suffix(".json").is_file()
    state = torch.load(R.trainer_state_path(ckpt), weights_only=True)  # no pickled code
    assert state["step"] == 2 and "optimizer" in state
    assert json.loads(ckpt.with_suffix(".json").read_text())["config"]["method"] == "ct"
    assert (run / "config.json").is_file() and (run / "model.safetensors").is_file()
    model = load_model(run)
    assert model.spec.trained and model.spec.kind == "sampler" and model.source["weights"] == "ema"
    assert model.spec.num_classes == 10 and model.spec.image_size == 8


def test_package_writes_an_ema_only_asset_that_loads(tmp_path):
    from cmrt.train.assets import package

    run = train(tiny_cfg("ct", tmp_path / "run", max_steps=2), data=fixed_digits(), progress=False)
    out = package(run, tmp_path / "asset.safetensors", name="tiny-digits")
    model = load_model(out)
    assert model.spec.name == "tiny-digits" and model.spec.trained
    ema = R.load_run(run).ema.state_dict()
    for key, value in model.unet.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)
    assert out.stat().st_size < (run / "model.safetensors").stat().st_size  # no raw copy


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    from cmrt.errors import ConfigError, OutputExistsError

    run = train(tiny_cfg("ct", tmp_path / "r", max_steps=2), data=fixed_digits(), progress=False)
    before = _files(run)
    with pytest.raises(OutputExistsError, match=f"{run} already holds a training run: pass --resume .* --overwrite"):
        train(tiny_cfg("ct", run, max_steps=1), data=fixed_digits(), progress=False)
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        train(tiny_cfg("ct", run, max_steps=1), data=fixed_digits(), resume=True, overwrite=True, progress=False)
    assert _files(run) == before  # nothing written, nothing removed


def test_overwrite_replaces_the_old_run_and_keeps_other_files(tmp_path):
    run = train(tiny_cfg("ct", tmp_path / "r", max_steps=4, log_every=1, ckpt_every=2), data=fixed_digits(),
                progress=False)
    (run / "notes.txt").write_text("mine")
    train(tiny_cfg("ct", run, max_steps=1, seed=1), data=fixed_digits(), overwrite=True, progress=False)
    assert sorted(p.name for p in (run / R.CKPT_DIR).iterdir()) == ["step_0000001.json", "step_0000001.safetensors",
                                                                     "step_0000001.state.pt"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 1
    assert R.load_run(run).step == 1 and R.load_run(run).config.seed == 1
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "model.json",
                                                     "model.safetensors", "notes.txt", "rank_0.sha256"]
