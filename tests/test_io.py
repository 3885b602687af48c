"""``cmrt._io``: the one atomic write and the one digest helper every writer and cache key uses."""

import os
import stat

import pytest
import torch

from cmrt._io import (sha256_file, sha256_files, sha256_path, sha256_tensors, write_atomic, write_bytes_atomic,
                      write_json_atomic)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_atomic_replaces_whole_files_with_the_usual_mode(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    write_atomic(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    write_json_atomic(tmp_path / "j.json", {"a": 1})
    assert (tmp_path / "j.json").read_text() == '{\n  "a": 1\n}\n'
    assert write_bytes_atomic(tmp_path / "b.bin", memoryview(b"\x00\x01")).read_bytes() == b"\x00\x01"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_file_and_folder_digests(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.py").write_text("x = 1\n")
    (tmp_path / "d" / "sub" / "b.py").write_text("y = 2\n")
    folder = sha256_path(tmp_path / "d")
    assert folder == sha256_files(tmp_path / "d", ["a.py", "sub/b.py"])
    assert sha256_path(tmp_path / "d" / "a.py") == sha256_file(tmp_path / "d" / "a.py")
    (tmp_path / "d" / "sub" / "b.py").rename(tmp_path / "d" / "sub" / "c.py")  # a name is part of it
    assert sha256_path(tmp_path / "d") != folder


def test_tensor_digest_is_of_names_and_values_in_any_order():
    a = {"w": torch.arange(4.0), "b": torch.zeros(2)}
    digest = sha256_tensors(a)
    assert digest == sha256_tensors(dict(reversed(list(a.items()))))
    assert digest != sha256_tensors(a | {"b": torch.ones(2)})
    assert digest != sha256_tensors({"v": a["w"], "b": a["b"]})
    assert digest != sha256_tensors(a, header="spec")
