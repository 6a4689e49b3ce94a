"""The static-embedding candidate against model2vec's own distillation of the same teacher.

Side by side on the default teacher (all-MiniLM-L6-v2) and the default corpus's held-out split:

* the teacher: its fp32 ONNX export (`compress export`), tokenizer + onnxruntime;
* model2vec's distillation as its README makes it (``distill(..., pca_dims=256)``), and with the
  teacher's own 384 dimensions (``pca_dims=None``: the vectors the chain starts from), each encoding
  with ``StaticModel.encode``;
* ours: those 384-d vectors trained further on the training split (the chain's
  :func:`compress.encoder.static_student.build_static_student`, same settings), its ONNX graph run
  with its tokenizer + onnxruntime.

Quality against the teacher's embeddings on the held-out texts: top-10 neighbours kept and the
Spearman correlation of pairwise cosines (cosine too where the dimensions match). Speed: end to
end per text (tokenize + encode, batch 1), every model in turn on the same text, texts in rounds,
medians; one intra-op thread for onnxruntime (model2vec runs numpy in this process).

    python benchmarks/static_student.py          # ~7 minutes on a 2-core CPU

Prints a table and writes benchmarks/results/static_student.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

import numpy as np

from compress.encoder.static_student import StaticSettings, build_static_student
from compress.encoder.teacher import resolve_teacher
from compress.training.progress import Reporter
from export.base.corpus import default_split
from export.onnx_export import export_model
from export.runtime.agreement import mean_cosine, neighbour_agreement, similarity_spearman
from export.runtime.host import detect_host
from export.runtime.samples import TextEncoder

SPEED_TEXTS = 200


class OnnxEncoder:
    """Tokenizer + onnxruntime, one thread: how a static or transformer ONNX release encodes."""

    def __init__(self, model: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.encoder = TextEncoder(model.parent / "tokenizer.json", 256)
        self.names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> np.ndarray:
        feed = self.encoder.encode(texts)
        return self.session.run(["sentence_embedding"], {n: feed[n] for n in self.names})[0]


class Model2VecEncoder:
    def __init__(self, model: object) -> None:
        self.model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts)  # type: ignore[attr-defined]


def quality(teacher: np.ndarray, other: np.ndarray) -> dict[str, float | None]:
    return {"cosine": round(mean_cosine(teacher, other), 4) if teacher.shape == other.shape else None,
            "top10_neighbours": round(neighbour_agreement(teacher, other), 4),
            "spearman": round(similarity_spearman(teacher, other), 4)}


def main() -> None:
    from model2vec.distill import distill

    record = ResultRecord.start("static_student")
    os.environ["HF_HUB_OFFLINE"] = "1"
    teacher_name, teacher_dir = resolve_teacher(None)
    split = default_split(0)
    train = [e.text for e in split.train]
    held = [e.text for e in split.held_out]
    work = Path(tempfile.mkdtemp(prefix="static-bench-"))
    print("exporting the teacher ...", file=sys.stderr)
    teacher_onnx = export_model(teacher_dir, work / "teacher").onnx_path
    timings: dict[str, float] = {}
    models: dict[str, object] = {"teacher fp32 ONNX": OnnxEncoder(teacher_onnx)}
    for label, dims in (("model2vec (pca 256, its default)", 256), ("model2vec (384-d, no PCA)", None)):
        print(f"distilling {label} ...", file=sys.stderr)
        start = time.perf_counter()
        models[label] = Model2VecEncoder(distill(str(teacher_dir), pca_dims=dims, device="cpu"))
        timings[label] = round(time.perf_counter() - start, 1)
    print("building ours (model2vec 384-d + training) ...", file=sys.stderr)
    start = time.perf_counter()
    ours = build_static_student(teacher_dir, teacher_onnx, train, work / "static", StaticSettings(),
                                Reporter(show_progress=False))
    timings["ours: model2vec 384-d + trained"] = round(time.perf_counter() - start, 1)
    models["ours: model2vec 384-d + trained"] = OnnxEncoder(ours)

    embeddings = {label: np.concatenate([m.encode(held[i:i + 64]) for i in range(0, len(held), 64)])  # type: ignore[attr-defined]
                  for label, m in models.items()}
    reference = embeddings["teacher fp32 ONNX"]

    # Speed: each text through every model in turn (interleaved), medians per model.
    per_text: dict[str, list[float]] = {label: [] for label in models}
    for text in held[:10]:
        for m in models.values():
            m.encode([text])  # type: ignore[attr-defined]
    for text in held[:SPEED_TEXTS]:
        for label, m in models.items():
            start = time.perf_counter()
            m.encode([text])  # type: ignore[attr-defined]
            per_text[label].append((time.perf_counter() - start) * 1000)
    teacher_ms = statistics.median(per_text["teacher fp32 ONNX"])
    rows = {}
    for label in models:
        median = statistics.median(per_text[label])
        rows[label] = {**quality(reference, embeddings[label]), "ms_per_text": round(median, 4),
                       "speedup": round(teacher_ms / median, 2), "build_s": timings.get(label)}
    print(f"{'model':<36} {'cosine':>7} {'top-10':>7} {'rho':>7} {'ms/text':>8} {'speed':>7} {'build s':>8}")
    for label, row in rows.items():
        cosine = "-" if row["cosine"] is None else f"{row['cosine']:.4f}"
        print(f"{label:<36} {cosine:>7} {row['top10_neighbours']:>7.4f} {row['spearman']:>7.4f} "
              f"{row['ms_per_text']:>8.3f} {row['speedup']:>6.1f}x {row['build_s'] or '-':>8}")
    record.finish(RESULTS_DIR / "static_student.json", detect_host(), teacher=teacher_name,
                  held_out_texts=len(held), training_texts=len(train), speed_texts=SPEED_TEXTS,
                  settings=StaticSettings().__dict__, rows=rows)


if __name__ == "__main__":
    main()
