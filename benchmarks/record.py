"""The envelope every benchmark result shares: what ran, where, when, and how busy the machine was.

    record = ResultRecord.start("quantization")
    ... measure ...
    payload = record.finish(out_path, model=..., results=rows)

``finish`` writes the JSON atomically and returns it. The 1-minute load average before and after
is kept because other processes on a shared machine move absolute latency; the interleaved ratios
are the numbers to read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from export.base.files import atomic_write_json  # noqa: E402
from export.runtime.host import HostInfo, detect_host  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@dataclass
class ResultRecord:
    """A benchmark run in progress: its kind, command line, start time and load average."""

    kind: str
    command: str
    started: float = field(default_factory=time.perf_counter)
    load_before: float | None = field(default_factory=_load_average)

    @classmethod
    def start(cls, kind: str) -> ResultRecord:
        """Begin a record for the script now running (its own command line is kept)."""
        script = Path(sys.argv[0]).name
        return cls(kind=kind, command=" ".join([f"python benchmarks/{script}", *sys.argv[1:]]).strip())

    def finish(self, path: str | os.PathLike[str], host: HostInfo | None = None, **fields: Any) -> dict[str, Any]:
        """Write the result (envelope + ``fields``) atomically to ``path`` and return it."""
        host = host or detect_host()
        payload = {
            "schema_version": 1, "kind": self.kind,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu_model": host.cpu_model, "logical_cores": host.logical_cores,
                        "usable_cores": host.usable_cores, "arch": host.arch, "flags": host.relevant_flags,
                        "os": host.os, "versions": host.versions, "python": host.python},
            "command": self.command,
            **fields,
            "wall_s": round(time.perf_counter() - self.started, 1),
            "load_average_1m_before_after": [self.load_before, _load_average()],
        }
        atomic_write_json(path, payload)
        print(f"wrote {path} in {payload['wall_s']} s; 1-minute load average before/after: "
              f"{payload['load_average_1m_before_after']}", file=sys.stderr)
        return payload


def run_distill(*args: str) -> float:
    """``compress distill ARGS`` as a user runs it, in a child process (torch never loads into the
    measuring one); returns its wall time in seconds. Exit 1 and 3 are verdicts, not crashes."""
    started = time.perf_counter()
    command = [sys.executable, "-c", "from compress.cli import main; main()", "distill", *args]
    code = subprocess.run(command, cwd=ROOT).returncode
    if code not in (0, 1, 3):
        raise SystemExit(f"the chain failed with exit code {code}")
    return time.perf_counter() - started
