"""Reading a small YAML file that a user wrote: a profile, devices.yaml, a recipe.

One reader for all of them, so every one gets the same guards: a size cap checked before a byte
is parsed, UTF-8, pyyaml's safe loader (no Python tags), no anchors or aliases (a file that
refers to itself, or a "billion laughs" that expands a few kB into gigabytes, is refused, not
walked), and a mapping at the top. Every failure is a one-line CompressError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from export.base.errors import CompressError


class _PlainLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors and aliases: a user's config never needs them."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[arg-type]


def read_yaml_mapping(path: str | Path, what: str, *, max_bytes: int, hint: str = "a few kB") -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (``what`` names it in errors: "profile", ...)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CompressError(f"{what} {path} is {size:,} bytes; a {what} is {hint} (at most {max_bytes:,})")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise CompressError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise CompressError(f"{what} {path} is a directory, not a YAML file") from None
    except OSError as exc:
        raise CompressError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew since stat, or is not a regular file
        raise CompressError(f"{what} {path} is over {max_bytes:,} bytes; a {what} is {hint}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompressError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a safe loader, stricter still
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({problem})" if problem and ("alias" in problem or "anchor" in problem) else ""
        raise CompressError(f"{what} {path}:{where} is not valid YAML{detail}") from None
    except RecursionError:
        raise CompressError(f"{what} {path}: nested too deeply to be a {what}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CompressError(f"{what} {path}: expected a mapping of keys at the top level")
    return raw
