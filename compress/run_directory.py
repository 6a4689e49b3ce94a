"""One chain at a time in a run directory, and nothing left behind by a run that bad input stopped."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from export.base.errors import CompressError
from export.base.files import make_folder

LOCK_FILE = ".lock"


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir`` for one chain.

    A second chain on the same folder is refused with the first one's PID (their stages would
    interleave). The hold is an advisory lock on ``.lock`` taken with ``flock``: the kernel takes
    it atomically and drops it when the holder dies, so a killed run never blocks the folder and a
    reused PID never holds it. When bad input stops a run that created the folder before any
    stage finished, the folder goes too.
    """
    created = _first_missing(run_dir)  # run_dir, or the highest of its parents this call makes
    make_folder(run_dir)
    lock = run_dir / LOCK_FILE
    try:
        fd = _take(lock, run_dir)
    except CompressError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        yield run_dir
    except CompressError:
        if created is not None and not _holds_work(run_dir):
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            if _same_file(lock, fd):
                lock.unlink()  # while still holding it: whoever opens the path next makes a new file
        os.close(fd)


def _first_missing(path: Path) -> Path | None:
    missing = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _take(lock: Path, run_dir: Path) -> int:
    """The open, locked ``.lock`` (its PID written for the message another run prints)."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise CompressError(f"cannot lock {run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CompressError(f"{run_dir} is in use by another compress run (PID {holder or '?'}); wait for it "
                                "to finish, or choose another --out") from None
        if _same_file(lock, fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the holder before us unlinked it as we opened it: lock the new file instead
    raise CompressError(f"cannot lock {run_dir}: another process keeps taking {lock}")


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _holds_work(run_dir: Path) -> bool:
    """A finished stage, a checkpoint or teacher answers (paid for): work a cleanup must not throw away."""
    return any(any(run_dir.glob(pattern)) for pattern in ("*/stage.json", "*/checkpoint*", "*/teacher_answers.jsonl"))
