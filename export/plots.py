"""The pictures in a release's ``reports/``: latency distribution, training curve, release candidates.

Byte-reproducible PNGs, so that packaging the same run twice gives the same archive: the Agg
canvas is used directly (no pyplot, no global backend switch), PNG metadata carries no
software version, and ``svg.hashsalt`` is fixed for the SVG writer's ids. Imported only by
``package`` and the release stage (matplotlib is a host-side dependency).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.runtime.release_choice import ReleaseChoice

_RC = {"svg.hashsalt": "compress", "font.family": "DejaVu Sans", "font.size": 9, "axes.grid": True,
       "grid.alpha": 0.3, "figure.dpi": 100}
_PNG_METADATA = {"Software": None}
_BUDGET_COLOURS = {"p50": "#2b8a3e", "p95": "#e67700", "p99": "#c92a2a"}


def _render(draw: Any, size: tuple[float, float] = (6.4, 3.6)) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=size)
        FigureCanvasAgg(figure)
        draw(figure)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata=_PNG_METADATA)
    return buffer.getvalue()


def latency_png(*, samples_ms: Sequence[float] | None, percentiles_ms: Mapping[str, float], budgets_ms: Mapping[str, float],
                title: str, xlabel: str | None = None) -> bytes:
    """A histogram of per-run latencies with percentile and budget lines; or, with no samples, the percentiles as bars.

    ``xlabel`` names what was timed (default: latency per batch).
    """

    def draw(figure: Any) -> None:
        axes = figure.add_subplot(1, 1, 1)
        if samples_ms:
            axes.hist(list(samples_ms), bins=min(40, max(5, len(samples_ms) // 5)), color="#4c6ef5", alpha=0.8)
            axes.set_ylabel("runs")
            for key, value in sorted(percentiles_ms.items()):
                axes.axvline(value, color="#343a40", linestyle=":", linewidth=1)
                axes.annotate(f"{key} {value:.2f}", (value, 1), xycoords=("data", "axes fraction"), rotation=90,
                              va="top", ha="right", fontsize=7)
            axes.set_xlabel(xlabel or f"latency per batch (ms), {len(samples_ms)} runs")
        else:
            keys = sorted(percentiles_ms)
            axes.bar(keys, [percentiles_ms[k] for k in keys], color="#4c6ef5", alpha=0.8)
            axes.set_ylabel("latency (ms)")
            axes.set_xlabel("percentile (the report holds no per-run samples)")
        for key, value in sorted(budgets_ms.items()):
            colour = _BUDGET_COLOURS.get(key, "#c92a2a")
            if samples_ms:
                axes.axvline(value, color=colour, linewidth=1.5, label=f"{key} budget {value:g} ms")
            else:
                axes.axhline(value, color=colour, linewidth=1.5, label=f"{key} budget {value:g} ms")
        if budgets_ms:
            axes.legend(loc="upper right", fontsize=7)
        axes.set_title(title)

    return _render(draw)


def training_curve_png(history: Sequence[Mapping[str, Any]], *, title: str) -> bytes:
    """Distillation loss (and held-out cosine to the teacher when recorded) against step."""
    # Step 0 has no loss yet (only the held-out measurement before training).
    trained = [row for row in history if row.get("loss") is not None]
    steps = [int(row["step"]) for row in trained]
    losses = [float(row["loss"]) for row in trained]
    held = [(int(row["step"]), float(row["teacher_agreement"])) for row in history
            if row.get("teacher_agreement") is not None]

    def draw(figure: Any) -> None:
        axes = figure.add_subplot(1, 1, 1)
        axes.plot(steps, losses, color="#4c6ef5", linewidth=1.2, label="distillation loss")
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
            axes.set_yscale("log")
        handles, labels = axes.get_legend_handles_labels()
        if held:
            twin = axes.twinx()
            twin.plot([s for s, _ in held], [c for _, c in held], color="#2b8a3e", marker="o", markersize=3,
                      linewidth=1.2, label="held-out agreement with teacher")
            twin.set_ylabel("agreement")
            twin.grid(False)
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        axes.legend(handles, labels, loc="center right", fontsize=7)
        axes.set_title(title)

    return _render(draw)


_SOURCE_COLOURS = {"teacher": "#1c7ed6", "student": "#2b8a3e", "static": "#e67700"}


def candidates_png(choice: ReleaseChoice, profile: str) -> bytes:
    """Every release candidate as speed (x the fp32 teacher) against quality, the floor as a line, the release marked.

    Quality is agreement with the teacher (the gate's metric); the floor is the profile's
    ``quality.min_teacher_agreement``. A candidate over any budget is drawn hollow.
    """
    floor = next((f.budget for c in choice.candidates for f in c.checks
                  if f.name == "quality.min_teacher_agreement" and f.budget is not None), None)
    metric = next((f.unit for c in choice.candidates for f in c.checks
                   if f.name == "quality.min_teacher_agreement"), "agreement with the teacher")

    def draw(figure: Any) -> None:
        axes = figure.add_subplot(1, 1, 1)
        for candidate in choice.candidates:
            quality = candidate.quality.get("teacher_agreement")
            if quality is None:
                continue
            colour = _SOURCE_COLOURS.get(candidate.source, "#495057")
            axes.scatter([candidate.speedup], [quality], s=90 if candidate.name == choice.released else 40,
                         facecolors=colour if candidate.passes else "none", edgecolors=colour, linewidths=1.5,
                         marker="*" if candidate.name == choice.released else "o", zorder=3)
            label = candidate.name + (" (released)" if candidate.name == choice.released else "")
            axes.annotate(label, (candidate.speedup, quality), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if floor is not None:
            axes.axhline(floor, color="#c92a2a", linestyle="--", linewidth=1)
            axes.annotate(f"floor {floor:g}", (0.01, floor), xycoords=("axes fraction", "data"),
                          textcoords="offset points", xytext=(0, 3), fontsize=8, color="#c92a2a")
        axes.axvline(1.0, color="#868e96", linewidth=0.8)
        axes.set_xscale("log")
        axes.set_xlabel("speed, x the fp32 teacher (log; measured interleaved on the build host)")
        axes.set_ylabel(metric)
        released = choice.released or "none: no candidate meets every budget"
        axes.set_title(f"release candidates for {profile}; released: {released}"[:100])

    return _render(draw, size=(7.2, 4.2))
