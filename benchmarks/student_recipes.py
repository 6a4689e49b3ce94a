"""Quality per CPU-minute: the same students trained for the same wall-clock time with each loss recipe.

The default teacher (all-MiniLM-L6-v2) and its default corpus; two students, the jetson profile's
(3 of the 6 layers, 384 wide) and the x86-avx512-vnni search's (2 layers, 288 wide); each recipe
trains for ``--train-seconds`` of training on this machine, back to back (a training run cannot
be interleaved), with the 1-minute load average recorded around each run:

* ``cosine``: today's loss, 1 - cos to the teacher's embedding;
* ``relation-kl``: + the relational KL (each text's softmax over its in-batch cosines, T = 0.05);
* ``relation-mse``: + MSE on the in-batch cosine matrix;
* ``layers``: + hidden-state MSE to the teacher layer each student layer was copied from (the
  teacher runs every step: its outputs cannot be cached);
* ``relation-kl-0.1``: the relational KL at a tenth of the weight;
* ``neighbours``: that, with batches that pair each text with its nearest neighbour by the
  teacher's embedding after the first epoch (``--neighbour-batches``);

Each student is then exported to ONNX and scored as the gate scores a release: against the
teacher's ONNX export on the first 256 held-out texts (cosine, top-10 neighbours, Spearman of
pairwise cosines over every pair) and on 256 quotations (a genre never trained on); and in
PyTorch on the whole held-out split (1,000 texts) as distillation reports it.

    python benchmarks/student_recipes.py                                   # ~35 minutes here
    python benchmarks/student_recipes.py --train-seconds 480 --recipes cosine relation-kl --students jetson

Prints a table and writes benchmarks/results/student_recipes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from record import RESULTS_DIR, ResultRecord, _load_average  # first: puts the checkout on sys.path

STUDENTS = {"jetson": "layers=3", "x86-avx512-vnni": "layers=2,hidden=288,heads=9,ffn=1152"}
RECIPES = {
    "cosine": {},
    "relation-kl": {"relation_weight": 1.0, "relation_loss": "kl"},
    "relation-mse": {"relation_weight": 10.0, "relation_loss": "mse"},
    "layers": {"hidden_weight": 1.0},
    "relation-kl-0.1": {"relation_weight": 0.1, "relation_loss": "kl"},
    "neighbours": {"relation_weight": 0.1, "relation_loss": "kl", "neighbour_batches": True},
}
QUALITY_TEXTS = 256


def train(student: str, recipe: dict, seconds: float, work: Path) -> dict:
    """Distil for ``seconds`` of training; the student folder and the distillation's own figures."""
    from compress.encoder import DistillConfig, Reporter, distill

    config = DistillConfig(student=student, time_budget_s=seconds, device="cpu", **recipe)
    load_before = _load_average()
    result = distill(config, work, reporter=Reporter(show_progress=False))
    assert result is not None
    q, t = result.quality, result.training
    return {"student_dir": str(result.student_dir), "held_out": str(result.held_out_path),
            "cross_domain": str(result.cross_domain_path), "parameters": result.student_parameters,
            "steps": t.steps, "epochs": t.epochs, "train_time_s": t.train_time_s, "samples_per_s": t.samples_per_s,
            "pytorch_1000": {"cosine": q.teacher_agreement, "top10": q.neighbour_agreement,
                             "spearman": q.similarity_spearman},
            "agreement_by_step": [{"step": e["step"], "elapsed_s": e["elapsed_s"], "cosine": e["teacher_agreement"],
                                   "top10": e.get("neighbour_agreement")}
                                  for e in t.history if e.get("teacher_agreement") is not None],
            "load_1m_before_after": [load_before, _load_average()]}


def score(model: Path, teacher: Path, texts: list[str], source: str) -> dict:
    from compress.evaluate import agreement_with_teacher

    agreement = agreement_with_teacher(model, teacher, texts, source=source)
    return {"cosine": round(agreement.teacher_agreement, 4), "top10": round(agreement.neighbour_agreement, 4),
            "spearman": round(agreement.similarity_spearman, 4), "texts": agreement.samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seconds", type=float, default=240.0,
                        help="each distillation's time budget (setup and the final evaluation inside it, as in the chain)")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "student_recipes.json")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to the results already in --out (the same --train-seconds)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from compress.encoder.teacher import resolve_teacher
    from export.onnx_export import export_model
    from export.runtime.samples import read_texts

    record = ResultRecord.start("student_recipes")
    rows, earlier = [], []
    if args.append and args.out.is_file():
        previous = json.loads(args.out.read_text())
        if previous["train_seconds"] != args.train_seconds:
            raise SystemExit(f"{args.out} holds runs of {previous['train_seconds']} s, not {args.train_seconds} s")
        earlier = [{"finished": previous["date"], **row} for row in previous["results"]]
    with tempfile.TemporaryDirectory(prefix="student-recipes-") as scratch:
        root = Path(scratch)
        teacher_onnx = export_model(resolve_teacher(None)[1], root / "teacher").onnx_path
        for name in args.students:
            for recipe in args.recipes:
                work = root / f"{name}-{recipe}"
                started = time.perf_counter()
                row = {"student": name, "spec": STUDENTS[name], "recipe": recipe, "settings": RECIPES[recipe],
                       **train(STUDENTS[name], RECIPES[recipe], args.train_seconds, work / "distill")}
                onnx = export_model(row.pop("student_dir"), work / "export").onnx_path
                held, cross = read_texts(row.pop("held_out")), read_texts(row.pop("cross_domain"))
                row["onnx_held_out"] = score(onnx, teacher_onnx, held[:QUALITY_TEXTS], "held_out.jsonl")
                row["onnx_quotations"] = score(onnx, teacher_onnx, cross[:QUALITY_TEXTS], "cross_domain.jsonl")
                row["wall_s"] = round(time.perf_counter() - started, 1)
                row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                rows.append(row)
                print(_line(row), flush=True)
    print("\nstudent            recipe         steps  samples/s  cos    top-10  rho    | quot. cos  top-10  rho")
    for row in rows:
        print(_line(row))
    record.finish(args.out, train_seconds=args.train_seconds, quality_texts=QUALITY_TEXTS,
                  results=earlier + rows)


def _line(row: dict) -> str:
    h, q = row["onnx_held_out"], row["onnx_quotations"]
    return (f"{row['student']:<18} {row['recipe']:<14} {row['steps']:>5}  {row['samples_per_s']:>9.1f}  "
            f"{h['cosine']:.4f} {h['top10']:.4f}  {h['spearman']:.4f} | {q['cosine']:.4f}     {q['top10']:.4f}  "
            f"{q['spearman']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
