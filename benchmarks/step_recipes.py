"""Quality per CPU-minute of the cheaper step's settings: batch size and frozen word embeddings, same training time.

The jetson default (all-MiniLM-L6-v2 -> 3 of its 6 layers, layer transfer, the default corpus) trained by
``compress.encoder.distill`` for ``--seconds`` of distillation (the stage's time budget, as the chain gives
it) once per variant, back to back with the 1-minute load average recorded around each run; quality is the
distillation's own, on the 1,000 held-out texts. What the default job trains with is chosen from this table.

    python benchmarks/step_recipes.py --seconds 330                          # ~12 minutes: the two defaults
    python benchmarks/step_recipes.py --seconds 180 --variants b32-frozen b32-trained b64-frozen b64-trained
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ResultRecord, _load_average  # first: puts the checkout on sys.path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `compress distill` sets it, before torch loads

VARIANTS = {
    "b32-frozen": {"batch_size": 32, "embeddings": "frozen"},
    "b32-trained": {"batch_size": 32, "embeddings": "trained"},
    "b64-frozen": {"batch_size": 64, "embeddings": "frozen"},
    "b64-trained": {"batch_size": 64, "embeddings": "trained"},
    "b128-frozen": {"batch_size": 128, "embeddings": "frozen"},
}


def train(variant: dict, seconds: float) -> dict:
    from compress.encoder import DistillConfig, distill
    from compress.training.progress import QuietReporter

    load_before = _load_average()
    with tempfile.TemporaryDirectory() as work:
        result = distill(DistillConfig(student="layers=3", hidden_weight=1.0, time_budget_s=seconds, **variant),
                         Path(work), reporter=QuietReporter())
    t, q = result.training, result.quality
    return {**variant, "precision": result.precision, "steps": t.steps, "epochs": t.epochs,
            "train_s": t.train_time_s, "useful_tokens_per_s": round(t.tokens / t.train_time_s, 1),
            "phase_seconds": t.phase_seconds, "cosine": q.teacher_agreement, "top10": q.neighbour_agreement,
            "spearman": q.similarity_spearman, "load_1m_before_after": [load_before, _load_average()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=330.0, help="the distill stage's time budget per run")
    parser.add_argument("--variants", nargs="+", default=["b32-frozen", "b64-trained"], choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    record = ResultRecord.start("step_recipes")
    rows = []
    for name in args.variants:
        rows.append({"variant": name, **train(VARIANTS[name], args.seconds)})
        row = rows[-1]
        print(f"{name:12} {row['steps']:>6} steps {row['epochs']:>5.2f} epochs {row['useful_tokens_per_s']:>8} tokens/s  "
              f"cosine {row['cosine']:.4f}  top-10 {row['top10']:.4f}  Spearman {row['spearman']:.4f}", flush=True)
    out = args.out or RESULTS_DIR / f"step_recipes-{int(args.seconds)}s.json"
    record.finish(out, seconds=args.seconds, rows=rows)


if __name__ == "__main__":
    main()
