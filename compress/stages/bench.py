"""The bench stage: the release timed against the teacher, runs interleaved, the profile's way.

On this host, or on the board of ``--on`` over SSH. ``bench.json`` is the release's report (the
gate reads it), ``compare.json`` both sides of the comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.chain_state import profile_input
from compress.stages.outputs import Benched
from export.base.records import FileRef, StageRecord
from export.base.stages import run_stage

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily


def run_bench(ctx: ChainContext, family: TaskFamily, model: Path, teacher: Path, threads: int | None) -> Benched:
    """Bench ``model`` against ``teacher`` into ``RUN_DIR/bench``.

    ``threads`` is what the runtime's thread policy gives on this host: a setting of the stage,
    so a run on a host with other cores measures again.
    """
    runs, warmup = ctx.options.bench_runs or family.bench_runs, ctx.options.bench_warmup
    warmup = family.bench_warmup if warmup is None else warmup
    planned = StageRecord(stage="bench", inputs={"model": FileRef.of(model), "teacher": FileRef.of(teacher),
                                                 **profile_input(ctx.profile)},
                          params={"profile": ctx.profile.name, "runs": runs, "warmup": warmup, "threads": threads,
                                  "on": ctx.options.on})
    run = run_stage(ctx.run_dir / "bench", planned,
                    lambda tmp: family.measure(ctx, model, teacher, runs, warmup, tmp))
    if run.status == "skipped":
        ctx.reporter.message(f"bench: up to date in {run.folder}; skipped")
    speed, speedup, host = family.speed(run.folder)
    return Benched(run.status, speed, speedup, host)
