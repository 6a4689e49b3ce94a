"""``compress distill`` as one function: pick the family, check the options, build its config, run the chain."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError
from export.runtime import DEFAULT_PROFILE

if TYPE_CHECKING:
    from compress.chain import ChainOptions, ChainResult
    from compress.training.progress import Reporter
    from compress.stages.family import TaskFamily
    from compress.settings import DistillSettings
    from export.runtime.profiles import Profile

# Options of the chain itself (the rest configure distillation).
CHAIN_OPTIONS = ("stop_after", "precision", "block_size", "prune_heads", "prune_ffn", "recover_steps", "on")


@dataclass
class DistillJob:
    """What a user asked ``compress distill`` for, as option name -> value."""

    profile: str = DEFAULT_PROFILE
    teacher: str | None = None
    run_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)  # options the user named (not left at their defaults)
    flags: dict[str, str] = field(default_factory=dict)  # option name -> how the command line spells it
    nproc: int = 1  # processes distilling (a recipe records it; the command line launches them)
    source: str = "compress distill"  # how the job was asked for, for the recipe's header

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))


@dataclass
class PlannedJob:
    """A job with every option checked: what the chain runs."""

    family: TaskFamily
    config: DistillSettings
    profile: Profile
    options: ChainOptions
    run_dir: Path


def plan_distill_job(job: DistillJob) -> PlannedJob:
    """Check every option of ``job`` and build what the chain needs; writes nothing, starts nothing.

    An option the teacher's family cannot use, or any other bad input, is a CompressError here.
    """
    from compress.chain import ChainOptions, PruneOptions, checked_chain
    from compress.families import family_for
    from export.runtime.profiles import load_profile

    profile = load_profile(job.profile)
    family = family_for(job.teacher, teacher_url=job.settings.get("teacher_url"))
    foreign = sorted(name for name in job.given if name in family.foreign_options)
    if foreign:
        names = ", ".join(sorted(job.flag(name) for name in foreign))
        raise CompressError(f"{names}: not used when the teacher is {family.teacher_words}; drop {'it' if len(foreign) == 1 else 'them'}")
    settings = {k: v for k, v in job.settings.items() if k not in family.foreign_options}
    chain = {name: settings.pop(name) for name in CHAIN_OPTIONS if name in settings}
    config = family.make_config({**settings, "teacher": job.teacher} if job.teacher else settings)
    prune = None
    if "prune_heads" in chain:
        defaults = profile.distill.prune
        prune = PruneOptions(
            heads=defaults.heads if chain["prune_heads"] is None else chain["prune_heads"],
            ffn=defaults.ffn if chain["prune_ffn"] is None else chain["prune_ffn"],
            recover_steps=defaults.recover_steps if chain["recover_steps"] is None else chain["recover_steps"])
    options = ChainOptions(stop_after=chain.get("stop_after", "gate"), prune=prune, precision=chain.get("precision"),
                           block_size=chain.get("block_size", 32), on=chain.get("on"))
    checked_chain(family, config, profile, options)
    return PlannedJob(family, config, profile, options, job.run_dir or Path("runs") / profile.name)


def run_distill_job(job: DistillJob, reporter: Reporter | None = None) -> tuple[TaskFamily, ChainResult]:
    """Run the whole chain for ``job``; an option the teacher's family cannot use is a CompressError."""
    from compress.chain import run_chain
    from compress.parallel import init_world, close_world

    planned = plan_distill_job(job)
    init_world(planned.config.device)  # under torchrun: join the ranks (a world of one otherwise)
    try:
        result = run_chain(planned.run_dir, planned.family, planned.config, planned.profile, planned.options,
                           reporter)
    finally:
        close_world(together=False)  # the chain left the group after distillation; this is for errors
    if not result.helper:
        write_job_recipe(job, planned)
    return planned.family, result


def write_job_recipe(job: DistillJob, planned: PlannedJob) -> Path:
    """``RUN_DIR/recipe.yaml``: every option of ``job`` its family uses, so ``--config`` repeats the run."""
    from compress.recipe import SECTIONS, write_recipe

    settings = {name: value for name, value in job.settings.items() if name not in planned.family.foreign_options}
    settings["time_budget"] = settings.pop("time_budget_s", None)
    settings.update(profile_name=job.profile, teacher=job.teacher, run_dir=str(planned.run_dir), nproc=job.nproc)
    known = {name for section in SECTIONS for name in section.keys.values()}
    return write_recipe(planned.run_dir / "recipe.yaml", {k: v for k, v in settings.items() if k in known},
                        source=job.source)
