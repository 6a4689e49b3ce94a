"""How close a release is to its teacher, as the gate is told: a quality JSON or a stage record's metrics.

Its own module, below both the bench reports (which say which quality budgets apply to their kind
of model) and the gate (which checks them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.base.errors import CompressError
from export.base.report_json import read_json_object


@dataclass
class QualityEvidence:
    """How close the released model is to the teacher, measured on held-out data.

    ``teacher_agreement`` is the task's agreement metric (``metric`` names it: mean_cosine for
    embeddings, argmax_agreement for classifiers); ``quantization_drop`` is how much agreement
    quantization cost against the fp32 ONNX model, when there was a quantization step.
    """

    teacher_agreement: float
    metric: str
    quantization_drop: float | None = None
    source: str | None = None
    perplexity_ratio: float | None = None  # causal LMs: student over teacher, held-out, fp32
    neighbour_agreement: float | None = None  # embeddings: top-10 neighbours kept
    similarity_spearman: float | None = None  # embeddings: rank correlation of pairwise cosines
    quantization_perplexity_ratio: float | None = None  # causal LMs: release precision over fp32 ONNX

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> QualityEvidence:
        """From a quality JSON: the keys at the top level, or inside a ``metrics`` object (a stage.json)."""
        where = source or "quality evidence"
        if not isinstance(data, dict):
            raise CompressError(f"{where}: expected a JSON object")
        block = data
        if "teacher_agreement" not in data and isinstance(data.get("metrics"), dict):
            block = data["metrics"]
        if "teacher_agreement" not in block:
            raise CompressError(f"{where}: no teacher_agreement (at the top level or in metrics)")
        agreement = _number(block["teacher_agreement"], f"{where}: teacher_agreement")
        if not -1.0 <= agreement <= 1.0:
            raise CompressError(f"{where}: teacher_agreement {agreement} is outside [-1, 1]")
        optional = {}
        for name in ("quantization_drop", "perplexity_ratio", "quantization_perplexity_ratio", "neighbour_agreement",
                     "similarity_spearman"):
            value = block.get(name)
            optional[name] = None if value is None else _number(value, f"{where}: {name}")
        metric = block.get("metric") or data.get("metric") or "unspecified"
        if not isinstance(metric, str):
            raise CompressError(f"{where}: metric must be a string")
        return cls(teacher_agreement=agreement, metric=metric, source=source, **optional)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> QualityEvidence:
        """Read a quality JSON file (or a stage.json with ``metrics``). Bad input raises CompressError."""
        return cls.from_dict(read_json_object(Path(path), "quality file"), source=str(path))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CompressError(f"{where} must be a finite number, found {value!r}")
    return float(value)
