"""The output folder of a run: checked before any training, held under an exclusive lock while a
run writes into it, and cleared of the temporaries a killed run leaves behind.

``check_writable_dir`` / ``check_writable_file`` probe a destination and leave nothing behind.
``locked_run_dir`` creates the folder, takes a non-blocking ``flock`` on ``OUT/.lock`` (a second
run into the same folder fails at once with ``OutputDirError``), removes stale temporaries of
``OUTPUT_FILES`` and, on exit, removes the lock file and any folder it created that stayed empty.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

__all__ = ["LOCK_NAME", "OUTPUT_FILES", "OutputDirError", "check_writable_dir", "check_writable_file", "locked_run_dir",
           "remove_stale_temporaries"]

LOCK_NAME = ".lock"
#: Files a run writes into its folder (atomically: ``NAME.tmp`` or ``.NAME.<random>.tmp`` first).
OUTPUT_FILES = ("checkpoint.pt", "metrics.json", "model.safetensors", "reliability.png", "ood_scores.png")


class OutputDirError(ValueError):
    """The output folder cannot be used: it is a file, cannot be written, or another run holds it."""


def _create_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the folders it created, deepest first. Errors as ``OutputDirError``."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == path else f" cannot be created: {probe}"
        raise OutputDirError(f"output folder {path}{where} is a file, not a folder; choose another --out")
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.insert(0, folder)
    except OSError as error:
        _remove_empty(created)
        raise OutputDirError(f"cannot write the output folder {path}: {error.strerror or error}; choose another --out") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _probe(folder: Path, what: Path) -> None:
    """Create and delete a temporary file in ``folder``: ``OutputDirError`` naming ``what`` if that fails."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cigl-probe.", dir=folder)
    except OSError as error:
        raise OutputDirError(f"cannot write {what}: {error.strerror or error}; choose another --out") from None
    os.close(fd)
    os.unlink(tmp)


def check_writable_dir(path: str | os.PathLike) -> None:
    """Raise ``OutputDirError`` unless ``path`` is, or can be created as, a writable folder.
    Nothing is left behind."""
    path = Path(path)
    created = _create_dirs(path)
    try:
        _probe(path, path)
    finally:
        _remove_empty(created)


def check_writable_file(path: str | os.PathLike) -> None:
    """Raise ``OutputDirError`` unless a file can be written at ``path`` (not a folder; its folder
    writable or creatable). Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(f"{path} is a folder; pass a file name for --out, e.g. {path / 'out'}")
    created = _create_dirs(path.parent)
    try:
        _probe(path.parent, path)
    finally:
        _remove_empty(created)


def _lock(folder: Path) -> int | None:
    """Hold an exclusive lock on ``folder / LOCK_NAME``; return its descriptor."""
    if fcntl is None:
        return None
    path = folder / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputDirError(f"cannot write the output folder {folder}: {error.strerror or error}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputDirError(f"output folder {folder} is in use by another run{f' (pid {holder})' if holder else ''}; "
                                 "wait for it to finish or choose another --out") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)  # the previous holder removed the file while we locked it: lock the new one
    raise OutputDirError(f"could not lock the output folder {folder}; try again")


def _unlock(folder: Path, fd: int | None) -> None:
    if fd is None:
        return
    (folder / LOCK_NAME).unlink(missing_ok=True)  # while still held, so no one locks a removed file
    os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of ``OUTPUT_FILES`` a killed run left in ``folder``; return them."""
    stale = [p for name in OUTPUT_FILES for pattern in (f"{name}.tmp", f".{name}.*.tmp") for p in folder.glob(pattern)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def locked_run_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create ``path`` and hold it exclusively for the block (``OutputDirError`` if another run holds
    it or it cannot be written); stale temporaries are removed first. Folders created here that
    are still empty afterwards (a run that failed before writing) are removed again."""
    folder = Path(path)
    created = _create_dirs(folder)
    try:
        fd = _lock(folder)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        remove_stale_temporaries(folder)
        yield folder
    finally:
        _unlock(folder, fd)
        _remove_empty(created)
