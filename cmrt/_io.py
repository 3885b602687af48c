"""Small file helpers, each written once: digests (files, code, tensors), atomic writes, atomic folder
replacement; and handing freed memory back to the OS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import ConfigError, OutputExistsError


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``), so that
    what comes next (a compile, a measured case) has the room."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError) as exc:  # no glibc (OSError) or no malloc_trim in it (AttributeError)
        import logging

        logging.getLogger("cmrt").debug("release_memory: malloc_trim unavailable (%s); freed memory may stay "
                                        "with the allocator", exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(root: str | os.PathLike, files: Iterable[str | os.PathLike]) -> str:
    """SHA-256 of ``files`` (paths under ``root``, in the order given): each one's path relative to
    ``root`` and the SHA-256 of its contents. Code digests (``cmrt``'s sources) and folders use it."""
    root = Path(root)
    h = hashlib.sha256()
    for f in files:
        f = root / f
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    return sha256_files(p, sorted(x for x in p.rglob("*") if x.is_file()))


def sha256_tensors(tensors: Mapping[str, Any], *, header: str = "") -> str:
    """SHA-256 of named tensors (a ``state_dict``): ``header`` (e.g. a spec's JSON), then each
    name and its bytes, in sorted name order. Equal weights give equal digests in any process."""
    h = hashlib.sha256(header.encode())
    for name, value in sorted(tensors.items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place, so
    ``path`` is never seen half-written; on any error the temporary file goes and ``path`` is
    untouched. The file gets the usual mode (umask), not ``mkstemp``'s 0600. Returns ``path``.

    Args:
        path: the file to write or replace (its folder must exist).
        write: writes the whole file at the path it is given (it may replace that file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (``write_atomic``)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def write_bytes_atomic(path: str | os.PathLike, data) -> Path:
    """Write a bytes-like object (``bytes``, ``memoryview``, TensorRT's ``IHostMemory``) atomically
    (``write_atomic``); returns ``path``.

    Args:
        path: the file to write or replace.
        data: any object with the buffer protocol; it is written without an extra copy.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
    return write_atomic(path, write)


@contextmanager
def staged_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it
    is removed, so ``out`` never holds a half-written result."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty: remove it, choose another --out, "
                                "or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a bundle gets the usual folder mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | os.PathLike | None, what: str) -> Path | None:
    """Fail before any work if ``path`` cannot be written: a ``ConfigError`` that names ``what``
    (the user's option, e.g. ``--out``) and says why."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder: give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{what} {p}: folder {parent} does not exist: create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", dir=parent)
    except OSError as exc:
        raise ConfigError(f"{what} {p}: cannot write in {parent} ({exc.strerror}): choose another path") from None
    os.close(fd)
    os.unlink(probe)
    return p
