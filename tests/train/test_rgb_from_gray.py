"""The RGB digits consistency model's ingredients (issue 11): ``digits-color`` as a class-conditional
data set at the run's size, and ``--init`` from a gray run inflated to RGB."""

import pytest
import torch

from cmrt.errors import ConfigError
from cmrt.models.unet import UNet
from cmrt.train.data import load_data
from cmrt.train.loop import init_state
from tests.conftest import randomize, tiny_cm_spec


def test_digits_color_size_follows_the_model_kind():
    cm = load_data("digits-color", size=16, kind="sampler")
    assert cm.x.shape[1:] == (3, 16, 16) and cm.num_classes == 10 and cm.labels is not None
    assert float(cm.x.min()) >= -1 and float(cm.x.max()) <= 1
    assert load_data("digits-color", size=16, kind="decoder").x.shape[1:] == (3, 32, 32)  # 8× its 4×4 latents


def test_gray_init_inflates_to_rgb_exactly():
    gray = randomize(UNet(tiny_cm_spec(channels=1).unet), seed=1).eval()
    rgb = UNet(tiny_cm_spec(channels=3).unet).eval()
    rgb.load_state_dict(init_state(rgb.state_dict(), gray.state_dict(), "gray-run"))
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10.0]), torch.tensor([1, 7])
    with torch.no_grad():
        want, got = gray(x, t, y), rgb(x.expand(-1, 3, -1, -1), t, y)
    assert torch.allclose(got, want.expand(-1, 3, -1, -1), atol=1e-5)  # a gray image in, the gray result out


def test_init_refuses_other_architectures():
    a = UNet(tiny_cm_spec().unet).state_dict()
    b = UNet(tiny_cm_spec(num_classes=None).unet).state_dict()
    with pytest.raises(ConfigError, match="--init other: its network has other layers"):
        init_state(a, b, "other")
    wide = {k: torch.zeros(v.shape[0], 5, *v.shape[2:]) if k == "conv_in.weight" else v for k, v in a.items()}
    with pytest.raises(ConfigError, match="conv_in.weight has shape"):
        init_state(a, wide, "other")
