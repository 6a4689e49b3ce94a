"""What quantizing a model wrote and measured: the report ``compress quantize`` prints and a run records.

Shared by the ONNX methods (:mod:`export.quantize`) and bitsandbytes (:mod:`export.bnb`).
"""

from __future__ import annotations
from export.base.report_json import JsonRecord

from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1




@dataclass
class ExcludedNode:
    """A node left in fp32 because quantizing it cost too much quality."""

    name: str
    op_type: str
    sensitivity: float  # relative squared error quantizing it alone adds to its output


@dataclass
class Attempt:
    """One quantization tried during the accuracy-aware search."""

    excluded: int
    quality_drop: float


@dataclass
class SpeedComparison:
    """The quantized model against its fp32 source on this host, runs interleaved in one process."""

    fp32_p50_ms: float
    quantized_p50_ms: float
    speedup: float  # fp32 p50 / quantized p50: 3.0 = three times faster
    verdict: str  # faster | no faster | slower  (within ±SPEED_NOISE counts as no faster)
    runs: int
    providers_used: list[str]
    host: str
    workload: str  # "batch 1 x 128 tokens (synthetic (seed 0))"


@dataclass
class QuantizeResult(JsonRecord):
    """What ``quantize_model`` wrote and what it measured."""

    method: str
    preset: str | None  # arm64 | avx2 | avx512_vnni | tensorrt; None for fp16/int4/bitsandbytes
    profile: str
    input_path: Path
    out_path: Path
    size_before_bytes: int
    size_after_bytes: int
    metric: str  # mean_cosine | argmax_agreement
    output: str  # the compared output
    agreement: float  # quantized vs fp32 on held-out samples
    quality_drop: float  # 1 - agreement
    max_quantization_drop: float  # the profile's budget
    within_budget: bool
    max_abs_diff: float
    samples: int
    sample_kind: str  # text | synthetic
    sample_source: str
    excluded_nodes: list[ExcludedNode] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    calibration_samples: int = 0
    calibration_source: str | None = None
    speed: SpeedComparison | None = None
    host: str = ""
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def size_ratio(self) -> float:
        return self.size_before_bytes / max(self.size_after_bytes, 1)
