"""Where a narrower student starts: the teacher's important units against its leading ones.

For each narrower shape, the student is built from all-MiniLM-L6-v2 three ways: keeping the heads
and FFN neurons of largest activation on 64 training texts (compress.encoder.width, what
`--student layers=...,hidden=...` does in a run), of largest weight mass, and the leading ones; each
is scored before any training:
mean cosine to the teacher's sentence embeddings on the default corpus's held-out split (through
the student's projection into the teacher's space, then normalised, as distillation compares them).

    python benchmarks/width_init.py

Prints a table and writes benchmarks/results/width_init.json.
"""

from __future__ import annotations

import dataclasses
import sys

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

import torch

from compress.encoder.student import (build_student, copy_teacher_weights, make_projection, parse_student_spec,
                                      plan_student, student_config)
from compress.encoder.teacher import load_teacher
from export.base.corpus import default_split
from export.runtime.host import detect_host
from export.torch_model import embed

CALIBRATION_TEXTS = 64  # from the training split, never the held-out texts scored here
SHAPES = ("layers=3,hidden=256,heads=4,ffn=1024", "layers=4,hidden=192,heads=3,ffn=768",
          "layers=6,hidden=384,heads=6,ffn=768")


def main() -> None:
    record = ResultRecord.start("width_init")
    torch.set_num_threads(2)
    teacher = load_teacher(None)
    texts = [e.text for e in default_split().held_out]
    batch = dict(teacher.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    flat = dataclasses.replace(teacher.pooling, normalize=False)
    rows = []
    with torch.no_grad():
        target = embed(teacher.model, batch, teacher.pooling)

        def agreement(model: torch.nn.Module, projection: torch.nn.Module | None) -> float:
            pooled = embed(model.eval(), batch, flat)
            out = torch.nn.functional.normalize(projection(pooled) if projection is not None else pooled, dim=-1)
            return round(float(torch.nn.functional.cosine_similarity(out, target).mean()), 4)

        train = [e.text for e in default_split().train[:CALIBRATION_TEXTS]]
        calibration = dict(teacher.tokenizer(train, padding=True, truncation=True, max_length=128, return_tensors="pt"))
        for shape in SHAPES:
            plan = plan_student(parse_student_spec(shape), teacher.model.config)
            chosen = build_student(teacher.model, plan, calibration)
            by_weights = build_student(teacher.model, plan)
            leading = type(teacher.model)(student_config(teacher.model.config, plan))
            copy_teacher_weights(leading, teacher.model, plan.teacher_layers, None)
            projection = make_projection(plan.hidden, plan.teacher_hidden) if plan.narrower else None
            rows.append({"student": shape, "important_units": agreement(chosen.model, chosen.projection),
                         "weight_magnitude": agreement(by_weights.model, by_weights.projection),
                         "leading_units": agreement(leading, projection)})
            print(rows[-1], file=sys.stderr)

    record.finish(RESULTS_DIR / "width_init.json", detect_host(), teacher="all-minilm-l6-v2",
                  held_out_texts=len(texts), results=rows)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"initial held-out cosine to the teacher, before training · {len(texts)} texts",
                  title_justify="left")
    for column in ("student", "important units", "leading units"):
        table.add_column(column, justify="left" if column == "student" else "right")
    for row in rows:
        table.add_row(row["student"], f"{row['important_units']:.4f}", f"{row['leading_units']:.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
