"""TensorRT-RTX's runtime cache beside the engine, and the manifest's engine records, written
under one file lock.

The runtime cache holds the kernels TensorRT-RTX JIT-compiles for this GPU. It is loaded when a
backend opens, saved after the context is created (the compile at open) and again at close
(kernels compiled lazily for shapes seen since), and recorded in the manifest with its size and
SHA-256 so ``cmrt check`` verifies it like every other file. This follows TensorRT-RTX's demo
(``demo/utils/engine.py``: ``Engine.activate`` loads the cache and ``Engine.deactivate`` saves it,
each under Polygraphy's ``LockFile(<cache path>)``, a ``<path>.lock`` beside it). Here the lock
also covers the manifest, because writing the cache and recording it are two steps: two processes
opening one bundle (Triton instances) would otherwise leave a manifest that records the other's
file. Every change to an engine record (``update_engine``: the cache, ``cmrt check``'s parity)
re-reads the manifest under the lock, so no writer puts back records it read earlier.
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from .._io import write_bytes_atomic
from ..bundle import Bundle, EngineRecord, Gpu, RuntimeCache
from .seam import serialize_runtime_cache
from .targets import RUNTIME_CACHE_FILE

#: The lock file beside the runtime cache (Polygraphy's ``LockFile`` convention: ``<path>.lock``).
LOCK_FILE = RUNTIME_CACHE_FILE + ".lock"
#: Seconds to wait for another process's save before giving up (a save is one file and the manifest).
LOCK_TIMEOUT = 60.0


@contextmanager
def bundle_lock(bundle_path: Path, *, required: bool = True) -> Iterator[bool]:
    """Hold the bundle's runtime-cache lock; yields True when held.

    ``required=False`` (reading): a bundle where the lock file cannot be created (a read-only
    install) is read without it, since nobody can write there either; ``required=True`` raises
    the ``OSError``.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(bundle_path) / LOCK_FILE), timeout=LOCK_TIMEOUT)
    held = True
    try:
        lock.acquire()
    except (OSError, Timeout):
        if required:
            raise
        held = False
    try:
        yield held
    finally:
        if held:
            lock.release()


def update_engine(bundle: Bundle | Path, target: str, **changes: Any) -> EngineRecord | None:
    """Replace fields of the manifest's ``engines[target]`` record, re-read from disk (the caller
    holds the lock). A ``Bundle`` passed in is refreshed and updated in place. Returns the new
    record, or None when the manifest has no such engine."""
    if isinstance(bundle, Bundle):
        bundle.manifest = Bundle.open(bundle.path, check_files=False).manifest  # another process may have changed it
    else:
        bundle = Bundle.open(bundle, check_files=False)
    engines = dict(bundle.manifest.engines)
    if target not in engines:
        return None
    engines[target] = replace(engines[target], **changes)
    bundle.update(engines=engines)
    return engines[target]


def record_engine(bundle: Bundle | Path, target: str, **changes: Any) -> EngineRecord | None:
    """``update_engine`` under the bundle's lock."""
    with bundle_lock(bundle.path if isinstance(bundle, Bundle) else bundle):
        return update_engine(bundle, target, **changes)


def _stored_record(bundle_path: Path, target: str) -> RuntimeCache | None:
    engines = Bundle.open(bundle_path, check_files=False).manifest.engines
    return engines[target].runtime_cache if target in engines else None


def runtime_cache_blob(bundle_path: Path, record: EngineRecord) -> bytes | None:
    """The stored runtime cache for this engine, read under the lock with the manifest's record
    as it is now, or None (none yet, or its SHA-256 does not match the manifest's: warned, and
    rebuilt by the JIT)."""
    with bundle_lock(bundle_path, required=False):
        info = _stored_record(bundle_path, record.target) or record.runtime_cache
        path = bundle_path / (info.file if info else RUNTIME_CACHE_FILE)
        if not path.is_file():
            return None
        blob = path.read_bytes()
    if info is not None and info.sha256 and hashlib.sha256(blob).hexdigest() != info.sha256:
        warnings.warn(f"{path} does not match the SHA-256 recorded in the manifest: not used (it is rebuilt)",
                      stacklevel=3)
        return None
    return blob


def save_runtime_cache(bundle_path: Path, record: EngineRecord, cache, *, library_version: str,
                       gpu: dict) -> RuntimeCache | None:
    """Serialize ``cache`` and, when it differs from the file the manifest records, write it
    atomically and record it under ``engines[target].runtime_cache``, both under the lock.

    A bundle that cannot be written (read-only install) is warned about, not fatal: the next
    process then compiles the kernels again. Returns the new record, or None.
    """
    data = serialize_runtime_cache(cache, file=record.file)
    if data is None:
        return None
    digest = hashlib.sha256(memoryview(data)).hexdigest()
    try:
        with bundle_lock(bundle_path):
            stored = _stored_record(bundle_path, record.target) or record.runtime_cache
            name = stored.file if stored else RUNTIME_CACHE_FILE
            if stored and stored.sha256 == digest and (bundle_path / name).is_file():
                return None
            path = write_bytes_atomic(bundle_path / name, data)
            info = RuntimeCache(name, digest, path.stat().st_size, library_version, Gpu(**gpu))
            update_engine(bundle_path, record.target, runtime_cache=info)
    except OSError as exc:
        warnings.warn(f"could not save the TensorRT-RTX runtime cache in {bundle_path} ({exc}): each process "
                      "will JIT-compile the engine again", stacklevel=3)
        return None
    return info


def fresh_runtime_cache(bundle_path: Path) -> RuntimeCache:
    """A new engine invalidates the runtime cache of the old one: remove the file (under the
    lock); the first run on a GPU writes it again with its SHA-256."""
    with bundle_lock(bundle_path):
        (Path(bundle_path) / RUNTIME_CACHE_FILE).unlink(missing_ok=True)
    return RuntimeCache(RUNTIME_CACHE_FILE)
