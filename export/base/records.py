"""Stage records: what each stage of a run read, did and wrote, and whether it can be skipped.

Every stage writes ``RUN_DIR/<stage>/stage.json``. A stage whose inputs (by sha256) and
parameters are unchanged since its last successful run is skipped, so an interrupted run
resumes where it stopped. The record is written last, atomically: a stage killed halfway has
no record and runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from export.base.version import __version__
from export.base.errors import CompressError
from export.base.files import atomic_write_json, sha256_tree

SCHEMA_VERSION = 1
_TRACKED_PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime-gpu", "bitsandbytes")


def library_versions() -> dict[str, str]:
    """Versions of the tool and the libraries whose behaviour a stage's output depends on."""
    versions = {"edge-compress": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class FileRef:
    """A file or folder a stage read, pinned by content."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> FileRef:
        return cls(path=str(path), sha256=sha256_tree(path))


@dataclass
class StageRecord:
    """The contents of one ``stage.json``."""

    stage: str
    inputs: dict[str, FileRef]
    params: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def fingerprint(self) -> str:
        """Hash of what determines the stage's result: its inputs' contents, its parameters, the tool version."""
        key = {
            "stage": self.stage,
            "inputs": {name: ref.sha256 for name, ref in sorted(self.inputs.items())},
            "params": self.params,
            "tool": self.versions.get("edge-compress"),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def finish(self) -> None:
        """Stamp the end time and duration, once (a record is written inside its ``StageTimer``)."""
        if not self.finished_at:
            self.finished_at = utc_now()
            started = getattr(self, "_clock", None)
            if started is not None:
                self.duration_s = round(time.perf_counter() - started, 3)

    def to_json(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload["fingerprint"] = self.fingerprint
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> StageRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in payload.items() if k in fields}
        data["inputs"] = {name: FileRef(**ref) for name, ref in data.get("inputs", {}).items()}
        return cls(**data)


def read_record(stage_dir: Path) -> StageRecord | None:
    """The stage's last successful record, or None if it never finished."""
    path = Path(stage_dir) / "stage.json"
    if not path.is_file():
        return None
    try:
        return StageRecord.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None  # a record we cannot read is a stage we must run again


def read_stage_result(stage_dir: str | os.PathLike[str], stage: str) -> dict[str, Any]:
    """The ``result`` a finished stage recorded in its ``stage.json``; CompressError if there is none."""
    record = read_record(Path(stage_dir))
    if record is None or record.stage != stage or "result" not in record.metrics:
        raise CompressError(f"{stage_dir} is not a finished {stage} folder (no readable stage.json)")
    return record.metrics["result"]


def is_up_to_date(stage_dir: Path, planned: StageRecord) -> StageRecord | None:
    """The previous record if it matches ``planned`` and all its outputs still exist."""
    previous = read_record(stage_dir)
    if previous is None or previous.fingerprint != planned.fingerprint:
        return None
    if not all((Path(stage_dir) / out).exists() for out in previous.outputs.values()):
        return None
    return previous


def stage_status(before: StageRecord | None, after: StageRecord | None) -> str:
    """``skipped`` when the stage's record is the one that was on disk before it was called, else ``ran``."""
    unchanged = before is not None and after is not None and before.fingerprint == after.fingerprint \
        and before.finished_at == after.finished_at
    return "skipped" if unchanged else "ran"


class StageTimer:
    """Fills a record's timestamps around the stage's work."""

    def __init__(self, record: StageRecord) -> None:
        self.record = record

    def __enter__(self) -> StageRecord:
        self.record.started_at = utc_now()
        self.record._clock = time.perf_counter()  # type: ignore[attr-defined]  # not a field: never serialised
        return self.record

    def __exit__(self, *exc: object) -> None:
        self.record.finish()


def write_record(stage_dir: Path, record: StageRecord) -> Path:
    """Write ``stage.json`` last and atomically, marking the stage complete."""
    record.finish()
    return atomic_write_json(Path(stage_dir) / "stage.json", record.to_json())


def utc_now() -> str:
    """Now, as ISO 8601 UTC to the second (what every record and report stamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
