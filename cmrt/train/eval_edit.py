"""``cmrt eval SOURCE --task inpaint|superres|colorize``: zero-shot editing quality on digits.

The digits are the 20% that cmrt's digit classifier was *not* trained on (its held-out split, 360
digits; the bundled digits CM was trained on all 1,797, so they are held out from the classifier
only), at the model's size, with their true class labels:

- inpaint: an 8×8 box (25% of a 16×16 image) placed at random over the digit's central 12×12
  area is generated. Scored by the classifier's accuracy on the inpainted digits and the PSNR of
  the generated region against the original, beside a baseline that fills the box with the
  class's mean digit (the mean over the classifier's training digits of that class).
- superres: the 4×4 block means of each digit are super-resolved to 16×16. Scored by accuracy and
  PSNR against the original, beside bicubic upsampling of the same 4×4 inputs.
- colorize (RGB models, ``digits-color`` held-out split, one colouring each): the luma of each
  image is colorized. Scored by the luma error (the projection keeps it), the accuracy on the
  strokes of the result, its colourfulness relative to the real colourings, and the PSNR against
  the true colouring (ambiguous by nature: a digit may come back in other colours), beside the
  gray image (R = G = B = luma).

``SOURCE`` is an editing bundle of that task (its graph runs, at its one schedule) or any model
source ``cmrt export`` reads (the PyTorch editor runs at each ``--steps`` with the task's default
σ's, ``schedules.default_edit_sigmas``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import editing as E
from .. import schedules as S
from ..errors import ConfigError, InputError
from ..parity import IMAGE_PEAK_TO_PEAK, psnr_per_image
from .data import DIGITS_CLASSES, digits_8x8, load_digits_color, pool_to_8x8, upscale_digits
from .eval import EvalReport, digit_strokes, load_classifier

EDIT_EVAL_TASKS = ("inpaint", "superres", "colorize")
BOX_FRACTION = 0.5  # box side / image side: a quarter of the image area
BOX_REGION = (0.125, 0.875)  # the box lies within this central fraction of the image (where the strokes are)
SUPERRES_FACTOR = 4  # 16×16 from 4×4
CLASSIFIER_SEED, CLASSIFIER_HELD_OUT = 0, 0.2  # the split ``eval.train_classifier`` used

#: (image, mask, labels, steps, seed) → (edited images, the σ's used)
Editor = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, int, int], tuple[np.ndarray, list[float]]]


# --- data --------------------------------------------------------------------------------------
def classifier_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the classifier's training and held-out digits (``train_classifier``'s split)."""
    images, _ = digits_8x8()
    order = np.random.default_rng(CLASSIFIER_SEED).permutation(len(images))
    cut = int(len(images) * (1 - CLASSIFIER_HELD_OUT))
    return order[:cut], order[cut:]


def held_out_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's held-out digits at ``size``: (N, 1, size, size) in [-1, 1] and labels."""
    images, labels = digits_8x8()
    _, test = classifier_split()
    return upscale_digits(images[test], size), torch.from_numpy(labels[test])


def class_means(size: int) -> torch.Tensor:
    """(10, 1, size, size): the mean digit of each class over the classifier's training digits."""
    images, labels = digits_8x8()
    train, _ = classifier_split()
    x, y = upscale_digits(images[train], size), torch.from_numpy(labels[train])
    return torch.stack([x[y == k].mean(0) for k in range(DIGITS_CLASSES)])


def box_masks(n: int, size: int, seed: int) -> torch.Tensor:
    """(N, 1, size, size): one box of 1s (side ``BOX_FRACTION``·size) per image, inside ``BOX_REGION``."""
    g = torch.Generator().manual_seed(seed)
    side = int(size * BOX_FRACTION)
    lo, hi = (int(size * f) for f in BOX_REGION)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        top, left = (int(torch.randint(lo, hi - side + 1, (), generator=g)) for _ in range(2))
        masks[i, :, top:top + side, left:left + side] = 1.0
    return masks


# --- scores ------------------------------------------------------------------------------------
def classify(images: torch.Tensor | np.ndarray, classifier) -> np.ndarray:
    """The classifier's predicted classes of (N, C, H, W) digits in [-1, 1]."""
    with torch.no_grad():
        return classifier(torch.from_numpy(pool_to_8x8(images))).argmax(1).numpy()


def region_psnr(actual, expected, mask) -> float:
    """Mean over images of the PSNR (dB) on the pixels where ``mask`` is 1."""
    a, e, m = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (actual, expected, mask))
    m = m.expand_as(a)
    mse = (((a - e) ** 2) * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return float((10 * torch.log10(IMAGE_PEAK_TO_PEAK**2 / mse.clamp_min(1e-12))).mean())


def _scores(images, originals, labels, classifier, mask=None) -> dict[str, float]:
    acc = float((classify(images, classifier) == labels.numpy()).mean())
    p = region_psnr(images, originals, mask) if mask is not None else float(
        psnr_per_image(np.asarray(images), originals.numpy()).mean())
    return {"accuracy": acc, "psnr_db": p}


# --- editors -----------------------------------------------------------------------------------
def _bundle_editor(path: Path, task: str) -> tuple[Editor, str]:
    from ..runtime.editor import Editor as Runner

    runner = Runner(path)
    if runner.task != task:
        raise InputError(f"{path} is a {runner.task} bundle: evaluate it with --task {runner.task}, or export "
                         f"one with `cmrt export --task {task}`")
    m = runner.bundle.manifest

    def run(image, mask, labels, steps, seed):
        out = runner.edit(image.numpy(), mask=None if mask is None else mask.numpy(), class_labels=labels.numpy(),
                          seed=seed)
        return np.asarray(out), list(m.schedule.sigmas)
    return run, "bundle"


def _model_editor(source: str, task: str) -> tuple[Editor, object]:
    from ..models.denoisers import build_denoiser
    from ..models.sources import load_model
    from ..samplers import edit_sample

    model = load_model(source)
    spec = model.spec
    if spec.kind != "sampler" or spec.num_classes != DIGITS_CLASSES:
        raise InputError(f"{source}: editing is evaluated on class-conditional digits consistency models")
    den = build_denoiser(spec, model.unet)

    def run(image, mask, labels, steps, seed):
        sigmas = S.default_edit_sigmas(task, steps, spec.grid_size, spec.sigma_min, spec.sigma_max, spec.rho)
        g = torch.Generator().manual_seed(seed)
        noise = [torch.randn(len(image), spec.image_channels, spec.image_size, spec.image_size, generator=g)
                 for _ in sigmas]
        with torch.no_grad():
            out = edit_sample(den, task, image, sigmas, noise, mask=mask, class_labels=labels,
                              sigma_min=spec.sigma_min, clip=spec.clip,
                              factor=SUPERRES_FACTOR if task == "superres" else None)
        return out.numpy(), sigmas
    return run, spec


def _editor(source: str, task: str) -> tuple[Editor, str | None, int, int]:
    """(editor, "bundle" for a bundle's one schedule else None, image channels, image size)."""
    path = Path(source)
    if (path / "cmrt.json").is_file():
        from ..bundle import Bundle

        run, schedule = _bundle_editor(path, task)
        image = Bundle.open(path).manifest.image
        return run, schedule, image.channels, int(image.height)
    run, spec = _model_editor(source, task)
    return run, None, spec.image_channels, spec.image_size


# --- the modes ---------------------------------------------------------------------------------
def evaluate_edit(source: str, task: str, *, steps: list[int], seed: int = 0) -> EvalReport:
    """Score ``source`` on an editing task (module docstring) at each number of steps."""
    if task not in EDIT_EVAL_TASKS:
        raise ConfigError(f"--task must be one of {', '.join(EDIT_EVAL_TASKS)} for cmrt eval, got {task!r}")
    run, fixed, channels, size = _editor(source, task)
    if task == "colorize":
        return _colorize(source, run, fixed, channels, size, steps, seed)
    if channels != 1:
        raise InputError(f"{source}: --task {task} is evaluated on 1-channel digits models (this one has {channels})")
    if task == "inpaint":
        return _inpaint(source, run, fixed, size, steps, seed)
    return _superres(source, run, fixed, size, steps, seed)


def _prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in scores.items()}


def _rows(run, fixed: str | None, steps: list[int], inputs: tuple, score: Callable[[np.ndarray], dict],
          seed: int) -> list[dict]:
    rows = []
    for k in ([0] if fixed else steps):
        images, sigmas = run(*inputs, k, seed)
        rows.append({"steps": len(sigmas), "sigmas": ", ".join(f"{s:.4g}" for s in sigmas)} | score(images))
    return rows


def _inpaint(source, run, fixed, size, steps, seed) -> EvalReport:
    classifier = load_classifier()
    x, y = held_out_digits(size)
    mask = box_masks(len(x), size, seed)
    image = x * (1 - mask)  # what the user has: the box's content is unknown
    fill = (1 - mask) * x + mask * class_means(size)[y]
    report = EvalReport(source, "inpainting digits (8×8 box = 25% of each 16×16 digit, true labels)", reference={
        "digits": len(x), "original_accuracy": _scores(x, x, y, classifier)["accuracy"],
        **_prefixed("class_mean_fill", _scores(fill, x, y, classifier, mask))})
    report.rows = _rows(run, fixed, steps, (image, mask, y), lambda out: _scores(out, x, y, classifier, mask), seed)
    return report


def _superres(source, run, fixed, size, steps, seed) -> EvalReport:
    classifier = load_classifier()
    x, y = held_out_digits(size)
    low = E.block_mean(x, SUPERRES_FACTOR)
    bicubic = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    report = EvalReport(source, f"super-resolution of digits from {size // SUPERRES_FACTOR}×{size // SUPERRES_FACTOR} "
                                "(true labels)", reference={
        "digits": len(x), "original_accuracy": _scores(x, x, y, classifier)["accuracy"],
        **_prefixed("bicubic", _scores(bicubic, x, y, classifier))})
    report.rows = _rows(run, fixed, steps, (low, None, y), lambda out: _scores(out, x, y, classifier), seed)
    return report


def colourfulness(rgb) -> float:
    """Mean absolute deviation of the channels from their luma (0 for a gray image)."""
    x = torch.as_tensor(np.asarray(rgb), dtype=torch.float64)
    return float((x - E.luma(x)).abs().mean())


def _colorize(source, run, fixed, channels, size, steps, seed) -> EvalReport:
    if channels != E.RGB:
        raise InputError(f"{source}: --task colorize needs an RGB (3-channel) model, this one has {channels}")
    classifier = load_classifier()
    test = load_digits_color("test", copies=1, size=size)
    x, y = test.x, test.labels
    gray = E.luma(x)
    real_colour = colourfulness(x)

    def score(out):
        acc = float((classify(digit_strokes(out), classifier) == y.numpy()).mean())
        return {"accuracy": acc, "psnr_db_vs_true_colours": float(psnr_per_image(out, x.numpy()).mean()),
                "colourfulness_ratio": colourfulness(out) / real_colour,
                "luma_max_error": float(np.abs(E.luma(out) - gray.numpy()).max())}
    report = EvalReport(source, f"colorizing held-out digits-color images ({len(x)}, true labels)", reference={
        "images": len(x), "strokes_accuracy_of_originals": float((classify(digit_strokes(x), classifier) == y.numpy()).mean()),
        "gray_psnr_db": float(psnr_per_image(gray.expand_as(x), x).mean())})
    report.rows = _rows(run, fixed, steps, (gray, None, y), score, seed)
    return report
