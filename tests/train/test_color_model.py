"""The shipped RGB digits consistency model (issue 11): what it is, and that it colorizes held-out
gray digits (luma kept exactly, strokes still read as the right digits)."""

import torch

from cmrt import editing as E
from cmrt import schedules as S
from cmrt.models.denoisers import build_denoiser
from cmrt.models.load import COLOR_MODEL
from cmrt.models.sources import load_model
from cmrt.samplers import edit_sample
from cmrt.train.data import load_digits_color
from cmrt.train.eval import digit_strokes
from cmrt.train.eval_edit import classify, colourfulness, load_classifier


def test_rgb_model_is_small_trained_and_colorizes():
    m = load_model(COLOR_MODEL)
    s = m.spec
    assert (s.image_channels, s.image_size, s.num_classes, s.trained) == (3, 16, 10, True)
    assert COLOR_MODEL.stat().st_size <= 10 * 2**20
    test = load_digits_color("test", copies=1, size=16)
    x, y = test.x[:40], test.labels[:40]
    sigmas = S.default_edit_sigmas("colorize", 4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = edit_sample(build_denoiser(s, m.unet), "colorize", E.luma(x), sigmas,
                          [torch.randn(x.shape, generator=g) for _ in sigmas], class_labels=y)
    assert float((E.luma(out) - E.luma(x)).abs().max()) <= 1e-5
    assert (classify(digit_strokes(out), load_classifier()) == y.numpy()).mean() >= 0.85  # measured 0.96 on 180
    assert colourfulness(out) > 0.5 * colourfulness(x)  # colours, not gray
