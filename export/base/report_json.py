"""Reports as JSON files: written atomically, read back with their kind and schema checked.

``JsonReport`` gives a report dataclass (one with ``kind`` and ``schema_version`` fields) its
round trip: ``to_json(path)`` writes it, ``from_json(path_or_text)`` refuses a report of another
kind or a newer schema and rebuilds the nested dataclasses, naming the key that is missing or of
the wrong shape. Stdlib only: the device side reads these too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover (Python 3.10: pydantic brings typing_extensions)
    from typing_extensions import Self

from export.base.errors import CompressError
from export.base.files import atomic_write_json

SCHEMA_VERSION = 1
T = TypeVar("T")
R = TypeVar("R", bound="JsonReport")


class JsonRecord:
    """Mixin for a dataclass kept inside another JSON file: a JSON-ready dict and back.

    ``from_json`` rebuilds nested dataclasses and paths and names a key that is missing or of the
    wrong shape (:func:`dataclass_from_dict`); unknown keys are ignored.
    """

    def to_json(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return dataclass_from_dict(cls, data)


def _plain(value: Any) -> Any:
    """Paths as strings, everything else as JSON has it."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


class JsonReport:
    """Mixin for report dataclasses that carry ``kind`` and ``schema_version`` fields."""

    kind: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        payload = self.to_dict()
        if path is not None:
            atomic_write_json(path, payload)
        return json.dumps(payload, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        check_schema(data, cls.kind)
        return dataclass_from_dict(cls, data)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike[str]) -> Self:
        """Read a report back from a file path (or JSON text). Bad input raises CompressError."""
        return cls.from_dict(read_json_object(path_or_text, f"{cls.kind} report"))


def read_json_object(path_or_text: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """A JSON object from a file path (or JSON text); CompressError naming ``what`` otherwise."""
    text = str(path_or_text)
    source = "text"
    if not text.lstrip().startswith("{"):
        path = Path(path_or_text)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CompressError(f"{what} not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CompressError(f"cannot read {what} {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompressError(f"{what} {source} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CompressError(f"{what} {source} is not a JSON object")
    return data


def check_schema(data: dict[str, Any], kind: str) -> None:
    """Refuse a report of another kind, or one written by a newer schema than this code reads."""
    if data.get("kind") != kind:
        raise CompressError(f"expected a {kind} report, found kind={data.get('kind')!r}")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CompressError(f"{kind} report has schema_version {version!r}; this compress reads up to {SCHEMA_VERSION}")


def dataclass_from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` (nested dataclasses, lists, optionals) from parsed JSON.

    Unknown keys are ignored (a newer writer may add fields); a missing required key or a
    value of the wrong shape raises CompressError naming the key.
    """
    if not isinstance(data, dict):
        raise CompressError(f"report: {where or cls.__name__}: expected an object")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CompressError(f"report: missing key {key}")
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, where)
    if hint is Path:
        if not isinstance(value, str):
            raise CompressError(f"report: {where}: expected a path, found {value!r}")
        return Path(value)
    if origin is dict and args:
        if not isinstance(value, dict):
            raise CompressError(f"report: {where}: expected an object")
        return {key: _coerce(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise CompressError(f"report: {where}: expected a list")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CompressError(f"report: {where}: expected a number, found {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CompressError(f"report: {where}: expected an integer, found {value!r}")
        return value
    if hint is str and not isinstance(value, str):
        raise CompressError(f"report: {where}: expected a string, found {value!r}")
    return value
