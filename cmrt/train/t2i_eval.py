"""``cmrt eval`` of text-to-image models on the held-out captions of ``digits-text``.

Every held-out caption (180, one per held-out digit) is generated once per setting with diffusers'
own pipelines: a full LCM (``LatentConsistencyModelPipeline``) at each number of steps × guidance
scale; Stable Diffusion + an LCM-LoRA (``LCMScheduler`` + ``load_lora_weights``) likewise, with
classifier-free guidance when the scale is above 1; the teacher with DDIM and classifier-free
guidance. Scores: the digit the bundled digits classifier reads from each image's strokes
(``eval.digit_strokes``), the foreground and background palette colours read back
(``captions.read_colors``), all three right at once, and two Fréchet distances against the
held-out renders (``eval.frechet_distance``): in the digits classifier's features of the strokes
and in a 20-component PCA of the renders pooled to 8×8×3; a set of training renders of the same
size gives the real-vs-real reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .captions import CaptionSet, load_captioned, read_colors
from .data import pool_to_8x8
from .eval import PCA_COMPONENTS, EvalReport, digit_strokes, frechet_distance, load_classifier

TEACHER_STEPS = 25
GRID_PROMPTS = 8


def is_t2i_source(source: str | Path) -> bool:
    """A diffusers pipeline folder, or a ``cmrt train ldm/lcm`` run holding one."""
    p = Path(source)
    return (p / "model_index.json").is_file() or (p / "diffusers" / "model_index.json").is_file()


def _pooled_rgb(images: torch.Tensor) -> np.ndarray:
    x = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(images).clamp(-1, 1), 8)
    return x.reshape(len(x), -1).numpy()


class Scorer:
    """The held-out renders and captions, and what every sample set is compared with."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.decomposition import PCA

        self.test: CaptionSet = load_captioned("test", copies=1)
        train = load_captioned("train", copies=1)
        self.classifier = load_classifier()
        self.pca = PCA(PCA_COMPONENTS, random_state=0).fit(_pooled_rgb(train.x))
        pick = np.random.default_rng(seed).choice(len(train), len(self.test), replace=False)
        self.real = self._features(self.test.x)
        self.reference = self.score(train.x[pick], (train.digits[pick], train.fg[pick], train.bg[pick]))
        self.reference["note"] = "training renders vs held-out renders"

    def _features(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        strokes = torch.tensor(pool_to_8x8(digit_strokes(images)), dtype=torch.float32)
        with torch.no_grad():
            feats, pred = self.classifier.features(strokes).numpy(), self.classifier(strokes).argmax(1).numpy()
        return feats, self.pca.transform(_pooled_rgb(images)), pred

    def score(self, images: torch.Tensor, truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
        """Accuracies and Fréchet distances of ``images`` made for the captions whose (digit, fg, bg)
        are ``truth`` (default: the held-out captions)."""
        digits, fg_true, bg_true = truth or (self.test.digits, self.test.fg, self.test.bg)
        feats, pca, digit = self._features(images)
        fg, bg = read_colors(images)
        ok_d, ok_f, ok_b = digit == digits, fg == fg_true, bg == bg_true
        return {"digit_acc": float(ok_d.mean()), "fg_acc": float(ok_f.mean()), "bg_acc": float(ok_b.mean()),
                "all_acc": float((ok_d & ok_f & ok_b).mean()), "fd_classifier": frechet_distance(feats, self.real[0]),
                "fd_pca_rgb": frechet_distance(pca, self.real[1])}


def _load(source: str | Path, lora: str | Path | None):
    """The pipeline of ``source`` and how it samples: "lcm", "lora" (LCM scheduler + LoRA) or "teacher"."""
    from diffusers import DiffusionPipeline, LCMScheduler

    from .t2i import diffusers_folder

    folder = diffusers_folder(source)
    pipe = DiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    if name == "LatentConsistencyModelPipeline":
        if lora is not None:
            raise ConfigError("--lora applies to a teacher (StableDiffusionPipeline) folder, not a full LCM")
        return pipe, "lcm"
    if lora is not None:
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        pipe.load_lora_weights(str(lora))
        return pipe, "lora"
    return pipe, "teacher"


def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1] from a diffusers pipeline, one seeded generator."""
    with torch.no_grad():
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(seed)).images
    return out * 2 - 1


def evaluate_t2i(source: str, *, steps: list[int], guidance: list[float], lora: str | None = None,
                 teacher_steps: int = TEACHER_STEPS, seed: int = 0, grid: Path | None = None) -> EvalReport:
    """Score a text-to-image ``source`` on the held-out captions (module docstring).

    Args:
        source: a diffusers folder (``LatentConsistencyModelPipeline`` or ``StableDiffusionPipeline``)
            or a ``cmrt train ldm/lcm`` run.
        steps: LCM steps to score (full LCM and LoRA).
        guidance: guidance scales to score.
        lora: an LCM-LoRA file for a teacher folder (None: score the teacher itself with DDIM).
        teacher_steps: the teacher's DDIM steps.
        seed: the generator's seed.
        grid: also write ``<stem>_<k>step_g<g>.png`` grids of the first ``GRID_PROMPTS`` captions.
    """
    import time

    from ..images import save_grid

    pipe, how = _load(source, lora)
    scorer = Scorer(seed)
    report = EvalReport(str(source), f"text to image ({how})", reference=scorer.reference)
    prompts = list(scorer.test.captions)
    for k in ([teacher_steps] if how == "teacher" else steps):
        for g in guidance:
            t0 = time.perf_counter()
            images = generate(pipe, prompts, k, g, seed)
            wall = time.perf_counter() - t0
            report.rows.append({"sampler": "DDIM + CFG" if how == "teacher" else how, "steps": k, "guidance": g}
                               | scorer.score(images) | {"s_per_image": wall / len(prompts)})
            if grid is not None:
                save_grid(images[:GRID_PROMPTS], grid.with_name(f"{grid.stem}_{k}step_g{g:g}.png"), cols=GRID_PROMPTS,
                          scale=3)
    return report
