"""One chain at a time in a run directory, and nothing left behind by a run that bad input stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from export.base.errors import CompressError
from export.base.files import make_folder, process_alive

LOCK_FILE = ".lock"


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir`` for one chain.

    A second chain on the same folder is refused with the first one's PID (their stages would
    interleave); a lock left by a process that no longer runs is taken over. When bad input stops
    a run that created the folder before any stage finished, the folder goes too.
    """
    created = _first_missing(run_dir)  # run_dir, or the highest of its parents this call makes
    make_folder(run_dir)
    lock = run_dir / LOCK_FILE
    _take(lock, run_dir)
    try:
        yield run_dir
    except CompressError:
        if created is not None and not _holds_work(run_dir):
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()


def _first_missing(path: Path) -> Path | None:
    missing = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _take(lock: Path, run_dir: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder != os.getpid() and process_alive(holder):
                raise CompressError(f"{run_dir} is in use by another compress run (PID {holder}); wait for it "
                                    "to finish, or choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return
    raise CompressError(f"cannot lock {run_dir}: another process keeps taking {lock}")


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holds_work(run_dir: Path) -> bool:
    """A finished stage, a checkpoint or teacher answers (paid for): work a cleanup must not throw away."""
    return any(any(run_dir.glob(pattern)) for pattern in ("*/stage.json", "*/checkpoint*", "*/teacher_answers.jsonl"))
