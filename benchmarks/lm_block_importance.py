"""Which of SmolLM2's blocks a student keeps: chosen by block importance against spread evenly.

For each depth, the student is built from SmolLM2-135M-Instruct two ways: keeping the blocks that
change their input most on 64 training texts (``--student keep=N``, compress.lm.block_importance)
and keeping blocks spread evenly through the depth (``--student layers=N``). Each is scored before
any training on the default corpus's held-out split, as the LM distill stage splits it: perplexity
and teacher-forced next-token agreement with the fp32 teacher.

    python benchmarks/lm_block_importance.py

Prints a table and writes benchmarks/results/lm_block_importance.json.
"""

from __future__ import annotations

import sys

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

import torch

from compress.lm.block_importance import IMPORTANCE_EXAMPLES, block_importance
from compress.lm.config import LMDistillConfig
from compress.lm.data import encode_examples, load_lm_examples, split_lm_examples
from compress.lm.quality import agreement, pad_id_of, predictions
from compress.lm.stage import HELD_OUT_FRACTION, HELD_OUT_MAX
from compress.lm.student import build_lm_student, plan_lm_student
from compress.lm.teacher import load_causal_lm, resolve_lm_teacher
from export.runtime.host import detect_host

DEPTHS = (6, 15, 24)
HELD_OUT_SCORED = 128


def main() -> None:
    record = ResultRecord.start("lm_block_importance")
    torch.set_num_threads(2)
    defaults = LMDistillConfig(teacher="smollm2")
    teacher, tokenizer = load_causal_lm(resolve_lm_teacher("smollm2"))
    pad_id = pad_id_of(tokenizer)
    examples, _ = load_lm_examples(None)
    train, held_out = split_lm_examples(examples, HELD_OUT_FRACTION, seed=defaults.seed, max_held_out=HELD_OUT_MAX)
    scored = encode_examples(held_out[:HELD_OUT_SCORED], tokenizer, defaults.max_length)
    reference = predictions(teacher, scored, pad_id=pad_id)
    importance = block_importance(teacher, encode_examples(train[:IMPORTANCE_EXAMPLES], tokenizer,
                                                           defaults.max_length), pad_id=pad_id)
    print("importance by block:", [round(v, 4) for v in importance], file=sys.stderr)

    def score(spec: str) -> dict[str, object]:
        plan = plan_lm_student(teacher.config, spec, importance=lambda: importance)
        student = build_lm_student(teacher, plan)
        measured = predictions(student, scored, pad_id=pad_id)
        return {"layers": plan.layers, "perplexity": round(measured.perplexity, 2),
                "agreement": round(agreement(measured, reference), 4)}

    rows = []
    for depth in DEPTHS:
        rows.append({"depth": depth, "importance": score(f"keep={depth}"), "evenly_spread": score(f"layers={depth}")})
        print(rows[-1], file=sys.stderr)

    record.finish(RESULTS_DIR / "lm_block_importance.json", detect_host(), teacher="smollm2-135m-instruct",
                  held_out_texts=len(scored), teacher_perplexity=round(reference.perplexity, 2),
                  block_importance=[round(v, 6) for v in importance], results=rows)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"before training · {len(scored)} held-out texts · teacher perplexity "
                        f"{reference.perplexity:.1f}", title_justify="left")
    for column in ("blocks kept", "perplexity: by importance", "evenly spread", "agreement: by importance",
                   "evenly spread "):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['depth']} of {len(importance)}", f"{row['importance']['perplexity']:.1f}",
                      f"{row['evenly_spread']['perplexity']:.1f}", f"{row['importance']['agreement']:.3f}",
                      f"{row['evenly_spread']['agreement']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
