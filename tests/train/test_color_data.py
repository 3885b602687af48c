"""The RGB digits consistency model's data (issue 11): ``digits-color`` as a class-conditional data
set at the run's size."""

from cmrt.train.data import load_data


def test_digits_color_size_follows_the_model_kind():
    cm = load_data("digits-color", size=16, kind="sampler")
    assert cm.x.shape[1:] == (3, 16, 16) and cm.num_classes == 10 and cm.labels is not None
    assert float(cm.x.min()) >= -1 and float(cm.x.max()) <= 1
    assert load_data("digits-color", size=16, kind="decoder").x.shape[1:] == (3, 32, 32)  # 8× its 4×4 latents
