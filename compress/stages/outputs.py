"""What each stage hands the chain: typed results, from which the chain assembles its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.runtime.gate import GateReport
    from export.runtime.release_choice import ReleaseChoice


@dataclass
class Pruned:
    """The model folder to export, and whether pruning ran (None: the family never prunes)."""

    model_dir: Path
    status: str | None


@dataclass
class Exported:
    """An ONNX export the chain can use: where it is, how close it follows PyTorch, ran or skipped."""

    model: Path
    parity: str  # one line, e.g. "mean_cosine 1.000000 to PyTorch"
    status: str


@dataclass
class Quantized:
    """The quantize stage's release (None: fp32 stays the release) and what it noted."""

    status: str
    model: Path | None = None
    precision: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Released:
    """The release stage's choice among the candidates (model None: the earlier choice stands)."""

    status: str
    choice: ReleaseChoice
    model: Path | None = None
    precision: str | None = None


@dataclass
class Benched:
    """The release timed against the teacher: the family's headline figures, the speed-up, the host."""

    status: str
    speed: dict[str, Any]
    speedup: float | None
    host: str


@dataclass
class Gated:
    """The gate's verdict and the quality figures it judged."""

    status: str
    report: GateReport
    quality: dict[str, Any] | None
