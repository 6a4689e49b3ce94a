"""The loss curve: training loss per logged step, and held-out agreement where it was measured."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from export.base.files import atomic_write_bytes


def plot_loss_curve(history: list[dict[str, Any]], path: Path, *, title: str, metric: str) -> Path:
    """Write a PNG (matplotlib, Agg backend) of ``history`` entries to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=110)
    axis = figure.add_subplot(1, 1, 1)
    logged = [entry for entry in history if entry.get("loss") is not None]
    axis.plot([e["step"] for e in logged], [e["loss"] for e in logged], color="tab:blue", label="training loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss", color="tab:blue")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    evaluated = [entry for entry in history if entry.get("teacher_agreement") is not None]
    if evaluated:
        other = axis.twinx()
        other.plot([e["step"] for e in evaluated], [e["teacher_agreement"] for e in evaluated], "o-",
                   color="tab:orange", label=f"held-out {metric}")
        other.set_ylabel(f"held-out {metric}", color="tab:orange")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
