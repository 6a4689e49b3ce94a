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

from export.base.errors import CompressError

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


def agreement_with_teacher(model: Path, teacher: Path, texts: Sequence[str], *, source: str) -> TeacherAgreement:
    """Run ``model`` and ``teacher`` (ONNX files, tokenizer beside each) on ``texts`` and compare.

    ``teacher`` is whatever ``model`` is measured against: the teacher's export for the release's
    quality, or the student's own fp32 export for what quantization cost.

    Raises CompressError when the two graphs have no common output to compare or their outputs
    do not line up (different widths, or token outputs from tokenizers that split differently).
    """
    from export.runtime.agreement import neighbour_agreement
    from export.compare_outputs import OutputView, open_session, run_outputs
    from export.runtime.samples import model_samples

    if not texts:
        raise CompressError(f"no held-out texts to measure quality on ({source})")
    rows = {}
    views = {}
    for name, path in (("model", Path(model)), ("teacher", Path(teacher))):
        session = open_session(path)
        views[name] = OutputView.of([o.name for o in session.get_outputs()])
        samples = model_samples(path, session.get_inputs(), texts=list(texts), source=source)
        if samples.kind != "text":
            raise CompressError(f"{path}: no tokenizer.json beside the model; cannot measure quality on text")
        rows[name] = views[name].rows(run_outputs(session, samples.feeds, views[name].output), samples.feeds)
    view = views["model"]
    if view != views["teacher"]:
        raise CompressError(f"{model} outputs {view.output} but the teacher {teacher} outputs "
                            f"{views['teacher'].output}; they cannot be compared")
    if rows["model"].shape != rows["teacher"].shape:
        raise CompressError(f"{model} and the teacher {teacher} give outputs of different shapes "
                            f"({rows['model'].shape} vs {rows['teacher'].shape}) on the same texts")
    neighbours = None
    if view.metric == "mean_cosine" and len(rows["model"]) >= MIN_ROWS_FOR_NEIGHBOURS:
        neighbours = neighbour_agreement(rows["teacher"], rows["model"])
    return TeacherAgreement(
        metric=view.metric, teacher_agreement=view.agreement(rows["teacher"], rows["model"]),
        neighbour_agreement=neighbours, output=view.output, samples=len(texts), source=source,
    )
