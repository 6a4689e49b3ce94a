"""What more training time would buy: the quality-by-time curve projected to the profile's floor.

Distillation measures held-out agreement at a few points of the run. Past the first minutes the
curve grows about linearly in the logarithm of training time (each doubling of the minutes adds
a roughly constant amount), so a least-squares line through ``agreement ~ a + b * ln(seconds)``
over the measured points after the start says when the floor would be reached at this rate. It
is an extrapolation from one run on one machine, labelled as such: ``--time-budget`` stays the
user's choice; the line tells them what to choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from export.base.report_json import JsonRecord

# Beyond this many times the run's own training time, a projection says "flattens", not a number.
MAX_EXTRAPOLATION = 20.0
MIN_POINTS = 3
# Training times (minutes) the projection forecasts quality at, for the model card and run.json.
FORECAST_MINUTES = (30, 60)


@dataclass
class Projection(JsonRecord):
    """Whether the floor was reached and, if not, the extra training time the curve asks for."""

    floor: float
    reached: bool
    final: float  # the last measured agreement
    trained_s: float
    extra_minutes: float | None  # None: reached, flattening, or too few points to say
    flattens: bool  # the curve's rate does not reach the floor within MAX_EXTRAPOLATION x the run
    line: str  # one line for the terminal and run.json
    # The fitted line's agreement after this many minutes of training (str keys: JSON), beyond the run's own.
    forecasts: dict[str, float] = field(default_factory=dict)


def _points(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(e["elapsed_s"]), float(e[key])) for e in history if e.get(key) is not None and e.get("elapsed_s")]


def forecast(history: list[dict[str, Any]], seconds: float, key: str = "teacher_agreement") -> float | None:
    """``key`` after ``seconds`` of training by the line through ``history``'s measurements (None: too few)."""
    points = _points(history, key)
    if len(points) < MIN_POINTS:
        return None
    slope, intercept = _fit([math.log(t) for t, _ in points], [y for _, y in points])
    return round(min(1.0, intercept + slope * math.log(seconds)), 4)


def forecasts(history: list[dict[str, Any]], key: str = "teacher_agreement") -> dict[str, float]:
    """The forecasts at FORECAST_MINUTES beyond the run's own training time, by minutes."""
    points = _points(history, key)
    trained = points[-1][0] if points else 0.0
    out = {str(m): forecast(history, m * 60.0, key) for m in FORECAST_MINUTES if m * 60.0 > trained}
    return {m: value for m, value in out.items() if value is not None}


def project_to_floor(history: list[dict[str, Any]], floor: float | None, metric: str) -> Projection | None:
    """The projection of ``history``'s agreement-by-time to ``floor`` (None without a floor or a curve)."""
    points = _points(history, "teacher_agreement")
    if floor is None or not points:
        return None
    trained_s, final = points[-1]
    ahead = forecasts(history)
    if final >= floor:
        return Projection(floor, True, final, trained_s, None, False,
                          f"quality: {metric} {final:.4f} reaches the profile's floor {floor} (held-out, PyTorch)", ahead)
    if len(points) < MIN_POINTS:
        return Projection(floor, False, final, trained_s, None, False,
                          f"quality: {metric} {final:.4f} is below the profile's floor {floor}; too few measurements "
                          "to say what more time would buy")
    slope, intercept = _fit([math.log(t) for t, _ in points], [y for _, y in points])
    needed_s = math.exp((floor - intercept) / slope) if slope > 0 else math.inf
    if needed_s > MAX_EXTRAPOLATION * trained_s:
        return Projection(floor, False, final, trained_s, None, True,
                          f"quality: {metric} {final:.4f} is below the profile's floor {floor}, and the curve "
                          f"flattens: more than {MAX_EXTRAPOLATION:.0f}x this run's {trained_s / 60:.1f} minutes of "
                          "training at this rate; a larger student, or text from your own domain, will do more", ahead)
    extra = max(needed_s - trained_s, 0.0) / 60
    return Projection(floor, False, final, trained_s, round(extra, 1), False,
                      f"quality: {metric} {final:.4f} is below the profile's floor {floor}; at this run's rate about "
                      f"{extra:.0f} more minutes of training would reach it (--time-budget; an extrapolation of "
                      f"{len(points)} measurements on this machine)", ahead)


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0, mean_y
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return slope, mean_y - slope * mean_x
