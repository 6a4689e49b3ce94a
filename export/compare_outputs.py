"""One model's outputs against another's on the same feeds: which output, how it is compared.

Quality checks run on the CPU whatever the target: the question is what the model computes, not
how fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.base.errors import CompressError
from export.runtime.agreement import argmax_agreement, mean_cosine
from export.runtime.samples import Feed



@dataclass
class OutputView:
    """Which output of a model is compared, and how."""

    output: str
    metric: str  # mean_cosine | argmax_agreement

    @classmethod
    def of(cls, output_names: Sequence[str]) -> OutputView:
        if "sentence_embedding" in output_names:
            return cls("sentence_embedding", "mean_cosine")
        if "logits" in output_names:
            return cls("logits", "argmax_agreement")
        return cls(output_names[0], "mean_cosine")

    def rows(self, outputs: Sequence[np.ndarray], feeds: Sequence[Feed]) -> np.ndarray:
        """Stack per-feed outputs into rows: one per text, or one per real token for token-level outputs."""
        rows = []
        for out, feed in zip(outputs, feeds):
            out = np.asarray(out, dtype=np.float32)
            mask = feed.get("attention_mask")
            if out.ndim == 3 and mask is not None and mask.shape == out.shape[:2]:
                rows.append(out[mask.astype(bool)])
            else:
                rows.append(out.reshape(out.shape[0], -1) if out.ndim != 2 else out)
        return np.concatenate(rows, axis=0)

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        if self.metric == "argmax_agreement":
            return argmax_agreement(reference, candidate)
        return mean_cosine(reference, candidate)


def open_session(model: str | Path | bytes, threads: int = 2) -> Any:
    """A quiet CPU session (quality checks run on the CPU whatever the target)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable graphs
        where = "the model" if isinstance(model, bytes) else str(model)
        raise CompressError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from None


def run_outputs(session: Any, feeds: Sequence[Feed], output: str) -> list[np.ndarray]:
    return [session.run([output], feed)[0] for feed in feeds]
