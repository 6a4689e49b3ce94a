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
from typing import Any, ClassVar

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


@dataclass
class Forecast(JsonRecord):
    """What the probe's line says the whole training budget would reach, and what the stage did about it."""

    metric: str
    floor: float
    budget_s: float  # the training budget the line is read at
    probe_s: float  # training time when the forecast was made
    points: int  # measurements the line went through
    forecast: float  # the metric after budget_s, by the line
    needed_minutes: float | None  # training the line needs to reach the floor (None: it flattens)
    reachable: bool
    trained_on: bool  # training went on: reachable, or forced
    line: str


class ForecastRule:
    """The probe: measure at PROBE_POINTS of the first PROBE_SHARE of the training budget, then decide
    once whether the floor is in reach; ``__call__`` is the training loop's early-stop check.

    ``key`` is the history's agreement figure; ``forced`` (``--train-anyway``) trains on regardless.
    """

    PROBE_SHARE: ClassVar[float] = 0.2
    PROBE_POINTS: ClassVar[tuple[float, ...]] = (0.25, 0.5, 1.0)  # shares of the probe, geometric for the ln fit

    def __init__(self, *, floor: float, budget_s: float, metric: str, key: str, forced: bool = False) -> None:
        self.floor, self.budget_s, self.metric, self.key, self.forced = floor, budget_s, metric, key, forced
        self.probe_s = self.PROBE_SHARE * budget_s
        self.decided: Forecast | None = None
        self._next_point = 0

    def eval_due(self, progress: float) -> bool:
        """Whether the probe wants a measurement now (``progress``: the share of the budget spent)."""
        if self._next_point >= len(self.PROBE_POINTS):
            return False
        if progress >= self.PROBE_SHARE * self.PROBE_POINTS[self._next_point]:
            self._next_point += 1
            return True
        return False

    def __call__(self, history: list[dict[str, Any]]) -> str | None:
        """``"forecast"`` when the probe is over and the line cannot reach the floor (unless forced)."""
        points = _points(history, self.key)
        if self.decided is not None or len(points) < MIN_POINTS or points[-1][0] < self.probe_s:
            return None
        self.decided = self._decide(points)
        return None if self.decided.trained_on else "forecast"

    def _decide(self, points: list[tuple[float, float]]) -> Forecast:
        slope, intercept = _fit([math.log(t) for t, _ in points], [y for _, y in points])
        at_budget = round(min(1.0, intercept + slope * math.log(self.budget_s)), 4)
        needed_s = math.exp((self.floor - intercept) / slope) if slope > 0 else math.inf
        reachable = at_budget >= self.floor
        needed = None if needed_s > MAX_EXTRAPOLATION * self.budget_s else round(needed_s / 60, 1)
        trained_s = points[-1][0]
        said = (f"forecast: {self.metric} {at_budget:.2f} after the whole {self.budget_s / 60:.1f}-minute training "
                f"budget (a line through {len(points)} measurements in the first {trained_s:.0f} s, on this machine)")
        if reachable:
            line = f"{said}: the floor {self.floor} is in reach; training on"
        else:
            need = (f"about {needed:.0f} minutes" if needed is not None
                    else f"more than {MAX_EXTRAPOLATION:.0f}x the budget (the curve flattens)")
            where = ("--time-budget, more ranks (--nproc), or a GPU (--device cuda)")
            then = ("--train-anyway given: training on" if self.forced else
                    "training stops here and its time goes to the candidates that can ship; --train-anyway trains on")
            line = f"{said}; the floor {self.floor} needs {need} ({where}): {then}"
        return Forecast(self.metric, self.floor, round(self.budget_s, 1), round(trained_s, 1), len(points),
                        at_budget, needed, reachable, reachable or self.forced, line)


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0, mean_y
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return slope, mean_y - slope * mean_x
