"""The released model against its teacher, both as ONNX, on held-out text.

This is the quality number a release is gated on: what the edge team will run (the final,
possibly quantized, student graph) against what they would otherwise run (the teacher's fp32
export), each fed real held-out text through its own tokenizer, one text at a time at its own
length, as an edge caller sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.base.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

    from export.compare_outputs import OutputView

# Top-k neighbour overlap needs enough rows to mean anything.
MIN_ROWS_FOR_NEIGHBOURS = 20


@dataclass
class TeacherAgreement:
    """How closely a model's outputs follow the teacher's on held-out text."""

    metric: str  # mean_cosine | argmax_agreement
    teacher_agreement: float
    neighbour_agreement: float | None  # embeddings: top-10 neighbour overlap with the teacher
    output: str  # the compared output (sentence_embedding, logits, ...)
    samples: int  # held-out texts
    source: str  # where the texts came from
    similarity_spearman: float | None = None  # embeddings: rank correlation of pairwise cosines with the teacher's


@dataclass
class ModelOutputs:
    """One ONNX model's compared output on a list of texts (what :func:`compare_outputs` takes)."""

    path: Path
    view: OutputView
    rows: np.ndarray  # one per text, or one per token for token outputs
    texts: int


def model_outputs(model: Path, texts: Sequence[str], *, source: str) -> ModelOutputs:
    """Run ``model`` (an ONNX file, tokenizer beside it) on ``texts``: one run per model, however many
    comparisons use it."""
    from export.compare_outputs import OutputView, open_session, run_outputs
    from export.runtime.samples import model_samples

    if not texts:
        raise CompressError(f"no held-out texts to measure quality on ({source})")
    path = Path(model)
    session = open_session(path)
    view = OutputView.of([o.name for o in session.get_outputs()])
    samples = model_samples(path, session.get_inputs(), texts=list(texts), source=source)
    if samples.kind != "text":
        raise CompressError(f"{path}: no tokenizer.json beside the model; cannot measure quality on text")
    rows = view.rows(run_outputs(session, samples.feeds, view.output), samples.feeds)
    return ModelOutputs(path, view, rows, len(texts))


def compare_outputs(model: ModelOutputs, teacher: ModelOutputs, *, source: str) -> TeacherAgreement:
    """How closely ``model``'s outputs follow ``teacher``'s, both from :func:`model_outputs` on the same texts.

    Raises CompressError when the two graphs have no common output to compare or their outputs
    do not line up (different widths, or token outputs from tokenizers that split differently).
    """
    from export.runtime.agreement import neighbour_agreement, similarity_spearman

    view = model.view
    if view != teacher.view:
        raise CompressError(f"{model.path} outputs {view.output} but the teacher {teacher.path} outputs "
                            f"{teacher.view.output}; they cannot be compared")
    if model.rows.shape != teacher.rows.shape:
        raise CompressError(f"{model.path} and the teacher {teacher.path} give outputs of different shapes "
                            f"({model.rows.shape} vs {teacher.rows.shape}) on the same texts")
    neighbours = spearman = None
    if view.metric == "mean_cosine" and len(model.rows) >= MIN_ROWS_FOR_NEIGHBOURS:
        neighbours = neighbour_agreement(teacher.rows, model.rows)
        spearman = similarity_spearman(teacher.rows, model.rows)
    return TeacherAgreement(
        metric=view.metric, teacher_agreement=view.agreement(teacher.rows, model.rows),
        neighbour_agreement=neighbours, output=view.output, samples=model.texts, source=source,
        similarity_spearman=spearman,
    )


def agreement_with_teacher(model: Path, teacher: Path, texts: Sequence[str], *, source: str) -> TeacherAgreement:
    """Run ``model`` and ``teacher`` (ONNX files, tokenizer beside each) on ``texts`` and compare.

    ``teacher`` is whatever ``model`` is measured against: the teacher's export for the release's
    quality, or the student's own fp32 export for what quantization cost. Errors as
    :func:`compare_outputs`.
    """
    return compare_outputs(model_outputs(model, texts, source=source), model_outputs(teacher, texts, source=source),
                           source=source)
