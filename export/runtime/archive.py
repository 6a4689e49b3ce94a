"""Release archives: byte-reproducible ``.tar.gz`` writing, and extraction that trusts nothing.

Writing: entries sorted, one fixed mtime, uid/gid 0, empty owner names, modes 0o644/0o755 and
a gzip header without a time or a file name, so the same inputs give the same bytes.

Reading: an archive arrives from elsewhere. Every entry is checked before a byte of it is
written: regular files and folders only (no symlinks, hardlinks, devices, FIFOs, sparse
files), relative names without ``..``, one top-level folder, no duplicates, and caps on the
entry count, each file's size and the total. Decompressed bytes are counted as they are read,
so a header that lies about sizes (or a gzip bomb) is cut off at the cap too. Files are created
with ``O_EXCL | O_NOFOLLOW`` inside a fresh folder. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from export.base.errors import CompressError
from export.base.files import atomic_file

_CHUNK = 1 << 20
_FILE_MODE = 0o644
_EXEC_MODE = 0o755


class UnsafeArchiveError(CompressError):
    """The archive holds something that extraction refuses (bad path, link, device, too large)."""


@dataclass(frozen=True)
class ArchiveEntry:
    """One file to put into an archive: its name inside the archive and where its bytes come from."""

    name: str  # posix path inside the archive, e.g. "model-1.0-rpi5/model/model.onnx"
    source: Path | None = None  # a file on disk ...
    data: bytes | None = None  # ... or bytes in memory
    executable: bool = False

    def size(self) -> int:
        return len(self.data) if self.data is not None else Path(self.source).stat().st_size  # type: ignore[arg-type]

    def open(self) -> io.BufferedIOBase:
        return io.BytesIO(self.data) if self.data is not None else open(self.source, "rb")  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on what extraction accepts. Edge models are tens to hundreds of MB; these leave room."""

    max_entries: int = 1000
    max_file_bytes: int = 4 << 30
    max_total_bytes: int = 8 << 30


@dataclass(frozen=True)
class ArchiveSeal:
    """A small file that must come right after the index (a signature over it), checked before anything else.

    ``check(index, seal)`` raises CompressError to refuse the archive; ``seal`` is None when the
    archive's second file is not the seal (an unsigned archive), so the refusal comes before a
    byte of the model is written.
    """

    name: str
    check: Callable[[Path, Path | None], None]
    max_bytes: int = 64 << 10


@dataclass(frozen=True)
class ArchiveIndex:
    """The archive's first file, which declares every other file and its size.

    Extraction reads it first and then refuses, before writing a byte, a member it does not
    declare or one larger than declared: a small archive cannot expand into gigabytes.
    """

    name: str  # path relative to the top-level folder, e.g. manifest.json
    read: Callable[[Path], dict[str, int]]  # the declared files and sizes (CompressError when unreadable)
    max_bytes: int = 1 << 20
    undeclared: tuple[tuple[str, int], ...] = ()  # (name, at most bytes) allowed without a declaration
    seal: ArchiveSeal | None = None  # required right after the index, and checked before the rest


@dataclass(frozen=True)
class ExtractedFile:
    """A regular file extraction wrote, with the sha256 of the bytes actually written."""

    name: str  # path relative to the archive's top-level folder
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Extracted:
    """What :func:`safe_extract` produced."""

    root: Path  # the archive's top-level folder, inside the destination
    top_level: str
    files: dict[str, ExtractedFile]  # by name relative to ``root``


def write_archive(path: str | Path, entries: Iterable[ArchiveEntry], *, mtime: int = 0,
                  first: tuple[str, ...] = ()) -> Path:
    """Write a reproducible ``.tar.gz`` atomically (temporary sibling, fsync, rename).

    Parent folders get their own entries (mode 0o755) so that ``tar xzf`` recreates them with
    sane permissions whatever the extracting user's umask. ``first``: the entries written before
    all other files, in this order (an index that lets extraction check every later member
    before writing it, and its signature).
    """
    target = Path(path)
    rank = {name: position for position, name in enumerate(first)}
    entries = sorted(entries, key=lambda e: (rank.get(e.name, len(rank)), e.name))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate archive entry names")
    folders = sorted({str(p) for name in names for p in PurePosixPath(name).parents if str(p) != "."})
    with atomic_file(target) as raw:
        # filename="" and mtime=0 keep the gzip header free of anything that varies between runs.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for folder in folders:
                    tar.addfile(_info(folder + "/", tarfile.DIRTYPE, 0, _EXEC_MODE, mtime))
                for entry in entries:
                    mode = _EXEC_MODE if entry.executable else _FILE_MODE
                    with entry.open() as handle:
                        tar.addfile(_info(entry.name, tarfile.REGTYPE, entry.size(), mode, mtime), handle)
    return target


def _info(name: str, kind: bytes, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def check_member_name(name: str) -> PurePosixPath:
    """The entry's name as a relative posix path, or UnsafeArchiveError saying what is wrong with it."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"archive entry {name!r}: empty name or NUL byte")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive entry {name!r}: absolute path")
    if "\\" in name:
        raise UnsafeArchiveError(f"archive entry {name!r}: backslash in path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UnsafeArchiveError(f"archive entry {name!r}: '..' component (path traversal)")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise UnsafeArchiveError(f"archive entry {name!r}: names no file")
    return PurePosixPath(*clean)


def _check_member_kind(member: tarfile.TarInfo) -> None:
    name = member.name
    if member.issym():
        raise UnsafeArchiveError(f"archive entry {name!r}: symbolic link (to {member.linkname!r}) refused")
    if member.islnk():
        raise UnsafeArchiveError(f"archive entry {name!r}: hard link (to {member.linkname!r}) refused")
    if member.ischr() or member.isblk():
        raise UnsafeArchiveError(f"archive entry {name!r}: device file refused")
    if member.isfifo():
        raise UnsafeArchiveError(f"archive entry {name!r}: FIFO refused")
    if member.issparse():
        raise UnsafeArchiveError(f"archive entry {name!r}: sparse file refused")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive entry {name!r}: unsupported entry type {member.type!r}")


class _CappedReader(io.RawIOBase):
    """Decompressed bytes, with a hard cap: a lying header or a gzip bomb stops at the limit."""

    def __init__(self, inner: io.BufferedIOBase, cap: int, archive: Path) -> None:
        self._inner = inner
        self._left = cap
        self._archive = archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self._left -= len(data)
        if self._left < 0:
            raise UnsafeArchiveError(f"{self._archive}: expands beyond the size cap while decompressing")
        buffer[: len(data)] = data
        return len(data)


def safe_extract(archive: str | Path, destination: str | Path, limits: ExtractLimits = ExtractLimits(),
                 index: ArchiveIndex | None = None) -> Extracted:
    """Extract ``archive`` into the empty folder ``destination``, refusing anything unsafe.

    The archive must hold exactly one top-level folder. Returns the files written with their
    sha256 (of the bytes written, not of anything the archive claims). With ``index`` its first
    file must be the index, and every later file must be one it declares, at the declared size.
    """
    archive = Path(archive)
    destination = Path(destination).resolve()
    if not archive.is_file():
        raise CompressError(f"archive not found: {archive}")
    if any(destination.iterdir()):
        raise ValueError(f"extraction target {destination} is not empty")
    # Headers, PAX records and block padding add to the payload (at most ~3 KiB an entry, plus the
    # final 10 KiB record): allow for them in the cap on decompressed bytes.
    stream_cap = limits.max_total_bytes + 3072 * (limits.max_entries + 1) + 20480
    top_level: str | None = None
    seen: set[str] = set()
    files: dict[str, ExtractedFile] = {}
    declared: dict[str, int] | None = None  # what the index declares, once it has been read
    sealed = index is None or index.seal is None  # the seal, when one is required, has been checked
    total = 0
    count = 0
    try:
        with gzip.open(archive, "rb") as zipped:
            capped = io.BufferedReader(_CappedReader(zipped, stream_cap, archive), _CHUNK)
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                for member in tar:
                    count += 1
                    if count > limits.max_entries:
                        raise UnsafeArchiveError(f"{archive}: more than {limits.max_entries} entries")
                    relative = check_member_name(member.name)
                    _check_member_kind(member)
                    key = relative.as_posix()
                    if key in seen:
                        raise UnsafeArchiveError(f"archive entry {member.name!r}: appears twice")
                    seen.add(key)
                    if top_level is None:
                        top_level = relative.parts[0]
                    elif relative.parts[0] != top_level:
                        raise UnsafeArchiveError(
                            f"archive entry {member.name!r}: outside the archive's one top-level folder {top_level!r}"
                        )
                    if member.isdir():
                        _make_dirs(destination, relative)
                        continue
                    if len(relative.parts) < 2:
                        raise UnsafeArchiveError(f"archive entry {member.name!r}: a file outside the top-level folder")
                    if member.size > limits.max_file_bytes:
                        raise UnsafeArchiveError(
                            f"archive entry {member.name!r}: {member.size} bytes, over the per-file cap of {limits.max_file_bytes}"
                        )
                    total += member.size
                    if total > limits.max_total_bytes:
                        raise UnsafeArchiveError(f"{archive}: expands to more than the cap of {limits.max_total_bytes} bytes")
                    inner = PurePosixPath(*relative.parts[1:]).as_posix()
                    if index is not None and declared is not None and not sealed:
                        sealed = _check_seal(index, files[index.name].path, inner, member.size)
                    if index is not None:
                        declared = _check_declared(archive, index, declared, inner, member.size)
                    files[inner] = _write_member(tar, member, destination, relative, inner, limits)
                    if index is not None and declared is None:
                        declared = index.read(files[inner].path)
                    elif index is not None and index.seal is not None and inner == index.seal.name:
                        index.seal.check(files[index.name].path, files[inner].path)
    except CompressError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CompressError(f"{archive}: not a readable .tar.gz archive ({exc})") from None
    except OSError as exc:
        raise CompressError(f"{archive}: extraction into {destination} failed: {exc}") from None
    if top_level is None:
        raise CompressError(f"{archive}: the archive is empty")
    if index is not None and declared is not None and not sealed:
        index.seal.check(files[index.name].path, None)  # type: ignore[union-attr] - the index alone
    return Extracted(root=destination / top_level, top_level=top_level, files=files)


def _check_declared(archive: Path, index: ArchiveIndex, declared: dict[str, int] | None, inner: str,
                    size: int) -> dict[str, int] | None:
    """Refuse a member the index does not allow, before any of its bytes are written."""
    if declared is None:
        if inner != index.name:
            raise UnsafeArchiveError(f"{archive}: the first file must be {index.name}, not {inner!r}")
        if size > index.max_bytes:
            raise UnsafeArchiveError(f"{archive}: {index.name} is {size:,} bytes, over {index.max_bytes:,}")
        return None
    allowed = declared.get(inner, dict(index.undeclared).get(inner))
    if allowed is None:
        raise UnsafeArchiveError(f"{inner}: in the archive but not listed in {index.name}")
    if size > allowed:
        raise UnsafeArchiveError(f"{inner}: {size:,} bytes in the archive, {index.name} declares {allowed:,}")
    return declared


def _check_seal(index: ArchiveIndex, index_path: Path, inner: str, size: int) -> bool:
    """The member after the index must be its seal; anything else means there is none (refused by check)."""
    seal = index.seal
    assert seal is not None
    if inner != seal.name:
        seal.check(index_path, None)
        raise UnsafeArchiveError(f"{seal.name} must come right after {index.name}")  # check refused nothing
    if size > seal.max_bytes:
        raise UnsafeArchiveError(f"{seal.name} is {size:,} bytes, over {seal.max_bytes:,}")
    return True


def _make_dirs(destination: Path, relative: PurePosixPath) -> Path:
    current = destination
    for part in relative.parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            # Only a folder we made ourselves can be here (links are never created); check anyway.
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise UnsafeArchiveError(f"archive entry {relative.as_posix()!r}: a file and a folder share a name") from None
    return current


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path, relative: PurePosixPath,
                  inner: str, limits: ExtractLimits) -> ExtractedFile:
    parent = _make_dirs(destination, relative.parent)
    target = parent / relative.name
    if not str(target.resolve(strict=False)).startswith(str(destination) + os.sep):
        raise UnsafeArchiveError(f"archive entry {member.name!r}: resolves outside the extraction folder")
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchiveError(f"archive entry {member.name!r}: has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, _FILE_MODE)
    except FileExistsError:
        raise UnsafeArchiveError(f"archive entry {member.name!r}: a file and a folder share a name") from None
    digest = hashlib.sha256()
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limits.max_file_bytes:
                raise UnsafeArchiveError(f"archive entry {member.name!r}: over the per-file cap of {limits.max_file_bytes}")
            digest.update(chunk)
            out.write(chunk)
    return ExtractedFile(name=inner, path=target, size=written, sha256=digest.hexdigest())
