"""Structured pruning of BERT-style encoders (layers, heads, FFN neurons) and magnitude pruning for size.

torch is imported inside the functions, so importing this package is cheap.
"""

from compress.encoder.prune.magnitude import MagnitudeReport
from compress.encoder.prune.stage import (LatencyComparison, PruneConfig, PruneResult, QualityPoint, RecoveryReport,
                                  prune_model, read_prune)

__all__ = ["LatencyComparison", "MagnitudeReport", "PruneConfig", "PruneResult", "QualityPoint", "RecoveryReport",
           "prune_model", "read_prune"]
