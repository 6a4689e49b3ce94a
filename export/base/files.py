"""Atomic writes and file hashing.

Every file a stage produces is written under a temporary name and renamed into place, so a
killed run never leaves a half-written file that a later stage (or a later run) would trust.
Standard library only (and the project's one error type): the device-side commands use it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from export.base.errors import CompressError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_json_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is absent or holds no object.

    For the optional side files of a model folder (``tokenizer_config.json``, ``generation_config.json``
    ...); a file that is there but is not valid JSON is a CompressError, not silently empty.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _writable(target: Path) -> Iterator[None]:
    """A place that cannot be written (a file where a folder must be, no permission, a full disk) is bad input."""
    try:
        yield
    except OSError as exc:
        raise CompressError(f"cannot write {target}: {exc.strerror or exc}") from None


def make_folder(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, with a one-line CompressError where it cannot be made."""
    folder = Path(path)
    with _writable(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _default_file_mode() -> int:
    """What ``open()`` would give a new file under this process's umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file written under a temporary sibling name, fsynced and renamed to ``path`` on success.

    The file gets ``mode``, or the mode a plain ``open()`` would (the user's umask), before its
    first byte is written; on any error, or Ctrl-C, the temporary file is removed and ``path`` is
    left as it was.
    """
    target = Path(path)
    with _writable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _default_file_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (see atomic_file)."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented, key-sorted JSON atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; swap it into place on success.

    An existing directory at ``path`` is replaced only once the new one is complete, in one atomic
    exchange where the kernel offers it (Linux): there is never a moment with no directory at
    ``path``. On any error (or Ctrl-C) the temporary directory is removed and ``path`` is left as
    it was; one left behind by a killed process is removed by the next call for the same path.
    """
    target = Path(path)
    with _writable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists() and _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        elif target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2  # renameat2(2) flag
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _temporary_prefix(target: Path) -> str:
    # The writer's PID in the name tells a later call whether the writer is still alive.
    return f".{target.name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporary siblings of ``target`` left by writers that no longer run; return what went."""
    removed = []
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        pid = leftover.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
