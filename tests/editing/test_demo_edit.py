"""``make demo``'s editing section on the bundled digits model (slow: three exports)."""

import pytest


@pytest.mark.slow
def test_editing_demo_writes_its_grids(tmp_path, capsys):
    from cmrt.demo import editing_demo

    editing_demo(tmp_path)
    out = capsys.readouterr().out
    for name in ("inpaint.png", "superres.png", "stroke.png"):
        assert (tmp_path / name).stat().st_size > 0 and f"wrote {tmp_path / name}" in out


def test_paintings_are_digits_at_the_model_size():
    from cmrt.demo import PAINTINGS, _paintings

    images, labels = _paintings(16)
    assert images.shape == (len(PAINTINGS), 1, 16, 16) and labels.tolist() == list(PAINTINGS)
    assert set(images.unique().tolist()) == {-1.0, 1.0}
