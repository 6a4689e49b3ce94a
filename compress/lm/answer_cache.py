"""Teacher answers on disk: one JSONL line per answer, keyed by what produced it.

Answers are the slow part of sequence-level distillation: a local teacher generates them token by
token, an endpoint is paid per request. Each answer is kept as one JSON line whose ``key`` is the
sha256 of (teacher, generation settings, exact prompt), so a re-run, or a run resumed after
Ctrl-C or a kill, asks again only for prompts whose answers are missing.

The file is rewritten through an atomic rename after each batch of new answers: an interrupted
run leaves the previous complete file, never a half-written line. Lines that do not parse (a file
edited by hand) are ignored, and their prompts are simply answered again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from export.base.errors import CompressError
from export.base.files import atomic_write_text


def answer_key(*parts: object) -> str:
    """sha256 of ``parts`` as sorted-key JSON: the identity of one answer."""
    payload = json.dumps(list(parts), sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    """The answers in ``path``, by key; ``add`` then ``save`` to keep new ones."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CompressError(f"cannot read the teacher-answer cache {self.path}: {exc}") from None
        rows: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("completion"), str):
                rows[row["key"]] = row
        return rows

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.rows[key]

    def add(self, row: dict[str, Any]) -> None:
        """Keep ``row`` (it must hold ``key`` and ``completion``) in memory until the next ``save``."""
        self.rows[row["key"]] = row

    def save(self) -> None:
        """Replace the file with every answer held, atomically."""
        atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows.values()))

    def sha256(self) -> str:
        """sha256 of the file as saved (empty string when there is none)."""
        if not self.path.is_file():
            return ""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()
