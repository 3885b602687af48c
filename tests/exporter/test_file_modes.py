"""Every file of a bundle has the usual mode (0666 less the umask), as every other file the user
writes: onnx creates an external data file 0600, which the FP16 graph's ``.data`` must not keep."""

from __future__ import annotations

import os
import stat


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fp16_bundle_files_share_the_usual_mode(cm16):
    files = sorted(p for p in cm16.path.iterdir() if p.is_file())
    assert any(p.name.endswith(".fp16.onnx.data") for p in files), [p.name for p in files]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o666 & ~_umask()}, {k: oct(v) for k, v in modes.items()}
