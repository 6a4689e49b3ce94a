"""The timed-run loop both benches share: warm-up, then timed runs interleaved across models.

Between timed runs nothing touches the kernel: even one /proc read between two runs made the next
run of a small model ~20 us slower here (ORT's spinning worker threads cool down). So RSS is
sampled after every warm-up run and after the last timed run, and the kernel's high-water mark
(reset before the first run) catches any peak in between. The garbage collector is off meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from export.runtime.progress import RunProgress
from export.runtime.session import high_water_mark_bytes, reset_high_water_mark, rss_bytes

Model = TypeVar("Model")


@dataclass
class RunMemory:
    """The process's peak resident memory over the runs, and how it was seen."""

    peak_rss: int
    high_water_mark_used: bool

    @property
    def method(self) -> str:
        sampled = "RSS sampled after load, each warm-up run and the last timed run"
        return sampled + " + kernel high-water mark (VmHWM)" if self.high_water_mark_used else sampled


def interleaved_runs(models: Sequence[Model], *, warmup: int, runs: int, warm: Callable[[Model], object],
                     timed: Callable[[int, Model], None], progress: bool, label: str) -> RunMemory:
    """``warm(model)`` ``warmup`` times, then ``timed(index, model)`` ``runs`` times, models in turn
    (A, B, A, B, ...); ``timed`` records what it measures itself."""
    peak = rss_bytes()
    hwm_ok = reset_high_water_mark()
    display = RunProgress((warmup + runs) * len(models), label) if progress else None
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            for model in models:
                warm(model)
                peak = max(peak, rss_bytes())
                if display:
                    display.advance()
        for _ in range(runs):
            for index, model in enumerate(models):
                timed(index, model)
                if display:
                    display.advance()
        peak = max(peak, rss_bytes())
    finally:
        if gc_was_enabled:
            gc.enable()
        if display:
            display.close()
    if hwm_ok:
        peak = max(peak, high_water_mark_bytes() or 0)
    return RunMemory(peak, hwm_ok)
