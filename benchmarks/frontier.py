"""What an hour buys: the jetson student's quality after 10, 30 and 60 minutes of distillation, each beside what
the shortest run's curve forecast for it.

Each point is its own run of ``compress.encoder.distill`` at the jetson defaults (3 of all-MiniLM-L6-v2's 6
layers, layer transfer, the default corpus) with the distill stage's time budget set to that many minutes
(the schedule's warm-up and decay follow the budget, so a longer run is not a continuation of a shorter one).
Quality is the distillation's own on the 1,000 held-out texts: cosine, top-10 neighbours and Spearman. The
forecast is :func:`compress.training.projection.forecast`: the least-squares line of agreement on ln(seconds)
through the first run's evaluations, evaluated at the longer run's training time; forecast error is the
forecast minus the measurement. Runs go back to back, with the 1-minute load average recorded around each.

    python benchmarks/frontier.py                      # 10, 30 and 60 minutes: ~105 minutes on 2 cores
    python benchmarks/frontier.py --minutes 10 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ResultRecord, _load_average  # first: puts the checkout on sys.path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `compress distill` sets it, before torch loads

KEYS = {"cosine": "teacher_agreement", "top10": "neighbour_agreement"}


def train(minutes: float) -> dict:
    from compress.encoder import DistillConfig, distill
    from compress.training.progress import QuietReporter

    load_before = _load_average()
    with tempfile.TemporaryDirectory() as work:
        result = distill(DistillConfig(student="layers=3", hidden_weight=1.0, time_budget_s=minutes * 60),
                         Path(work), reporter=QuietReporter())
    t, q = result.training, result.quality
    return {"minutes": minutes, "precision": result.precision, "steps": t.steps, "epochs": t.epochs,
            "train_s": t.train_time_s, "useful_tokens_per_s": round(t.tokens / t.train_time_s, 1),
            "cosine": q.teacher_agreement, "top10": q.neighbour_agreement, "spearman": q.similarity_spearman,
            "history": t.history, "load_1m_before_after": [load_before, _load_average()]}


def main() -> None:
    from compress.training.projection import forecast

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", nargs="+", type=float, default=[10, 30, 60])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "frontier.json")
    args = parser.parse_args()
    record = ResultRecord.start("frontier")
    rows = []
    for minutes in sorted(args.minutes):
        row = train(minutes)
        first = rows[0] if rows else row
        for name, key in KEYS.items():
            predicted = forecast(first["history"], row["train_s"], key)
            row[f"{name}_forecast"] = predicted
            row[f"{name}_forecast_error"] = None if predicted is None or row is first else round(predicted - row[name], 4)
        rows.append(row)
        print(f"{minutes:>5g} min: {row['steps']:>6} steps, {row['epochs']:.2f} epochs, cosine {row['cosine']:.4f} "
              f"(forecast {row['cosine_forecast']}), top-10 {row['top10']:.4f} (forecast {row['top10_forecast']}), "
              f"Spearman {row['spearman']:.4f}", flush=True)
    record.finish(args.out, rows=rows)


if __name__ == "__main__":
    main()
