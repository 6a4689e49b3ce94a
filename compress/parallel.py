"""Data-parallel distillation on torch.distributed: who this process is, and the few collectives it needs.

``torchrun`` (or ``accelerate launch``, or ``compress distill --nproc N``) starts one process per
rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment.
:func:`init_world` joins the process group (NCCL when the ranks train on CUDA, gloo on CPUs) and
every rank then trains the same student wrapped in ``DistributedDataParallel`` on a disjoint shard
of each global batch:

* the global batch is what one process would take, in the same order, whatever the world size;
  rank ``r`` trains rows ``r, r + W, r + 2W, ...`` of it, and its loss is weighted by its share so
  the averaged gradient is the global batch's (see :meth:`World.share`);
* teacher outputs are computed once, by the rank whose shard holds the row, and gathered so every
  rank (and rank 0's caches and checkpoints) holds all of them;
* rank 0 alone writes: stage records, checkpoints, the student, reports and the run directory;
* stopping (the time budget, Ctrl-C) is decided together, so no rank waits on one that has left.

One process (no ``WORLD_SIZE``, or 1) is the world of size 1: every collective is a no-op.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError

if TYPE_CHECKING:
    import torch

    from export.base.records import StageRecord
    from export.base.stages import StageOutput, StageRun


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one distillation."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # gloo | nccl; None for one process

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: Sequence[int]) -> list[int]:
        """This rank's rows of a global batch: every ``size``-th, starting at ``rank``."""
        return [int(i) for i in list(rows)[self.rank::self.size]]

    def share(self, mine: float, total: float) -> float:
        """Loss weight that makes DDP's gradient average the global batch's mean: ``size * mine / total``."""
        return self.size * mine / total if total else 0.0

    # -- collectives (no-ops in a world of one) ----------------------------------------------------
    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over ranks (a new tensor)."""
        if not self.distributed:
            return value.clone()
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        import torch

        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather_rows(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``rows`` (first dim may differ, later dims are padded to agree), in rank order."""
        if not self.distributed:
            return [rows]
        import torch
        import torch.distributed as dist

        shape = torch.tensor(list(rows.shape), dtype=torch.int64)
        shapes = [torch.zeros_like(shape) for _ in range(self.size)]
        dist.all_gather(shapes, shape)
        widest = torch.stack(shapes).max(dim=0).values.tolist()
        padded = rows.new_zeros(widest)
        padded[tuple(slice(0, n) for n in rows.shape)] = rows
        gathered = [torch.zeros_like(padded) for _ in range(self.size)]
        dist.all_gather(gathered, padded.contiguous())
        return [g[tuple(slice(0, int(n)) for n in s.tolist())] for g, s in zip(gathered, shapes)]


_WORLD = World()
COLLECTIVE_TIMEOUT_MIN = 120


def world() -> World:
    """The world this process belongs to (size 1 until :func:`init_world` joins a group)."""
    return _WORLD


def launched_world_size() -> int:
    """``WORLD_SIZE`` as the launcher set it (1 when started by hand)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise CompressError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number") from None


def init_world(device: str = "auto") -> World:
    """Join the launcher's process group (once); gloo on CPUs, NCCL when training on CUDA."""
    global _WORLD
    size = launched_world_size()
    if size == 1 or _WORLD.distributed:
        return _WORLD
    import torch
    import torch.distributed as dist

    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise CompressError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: start the ranks with torchrun, "
                            "accelerate launch or compress distill --nproc")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    # Ranks wait on rank 0 while it alone works (teacher answers, held-out scoring): not a hang.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
    _WORLD = World(rank=rank, size=size, local_rank=local_rank, backend=backend)
    _unwind_on_sigterm()
    return _WORLD


class RankStopped(BaseException):
    """The launcher stopped this rank (SIGTERM: another rank failed); raised so that half-written files
    are removed on the way out. The entry point then dies of the same signal, as the launcher expects."""


def _unwind_on_sigterm() -> None:
    """SIGTERM, by default, ends a process where it stands: mid-way through an atomic write, its
    temporary file stays. Turned into an exception, it unwinds through every cleanup first."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise RankStopped

    signal.signal(signal.SIGTERM, stop)


def close_world(*, together: bool = True) -> None:
    """Leave the process group. ``together``: every rank is leaving at this point, so wait for all of
    them first (no rank tears its connections down while another still talks to it); False on the way
    out after an error, when the others may never get here."""
    global _WORLD
    if _WORLD.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            # DDP wrappers left in reference cycles hold the group; freed after it is gone, gloo's
            # threads abort the process at exit ("terminate called without an active exception").
            gc.collect()
            if together:
                dist.barrier()
            dist.destroy_process_group()
    _WORLD = World()


def data_parallel(module: Any, *, find_unused: bool = False) -> Any:
    """``module`` in DistributedDataParallel (itself in a world of one)."""
    w = world()
    if not w.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)
    ddp._set_ddp_runtime_logging_sample_rate(1)  # DDP's own timers: the all-reduce share of a step
    return ddp


def allreduce_share(modules: Sequence[Any]) -> float | None:
    """The share of backward time DDP spent in gradient all-reduce, by DDP's own timers (None: not measured)."""
    comm = compute = 0.0
    for module in modules:
        getter = getattr(module, "_get_ddp_logging_data", None)
        if getter is None:
            continue
        data = getter()
        comm += float(data.get("avg_backward_comm_time", 0) or 0)
        compute += float(data.get("avg_backward_compute_time", 0) or 0) + float(
            data.get("avg_forward_compute_time", 0) or 0)
    return comm / (comm + compute) if comm + compute > 0 else None


def run_stage_on_ranks(stage_dir: Path, planned: StageRecord, work: Callable[[Path], StageOutput], *,
                       atomic: bool = True) -> StageRun | None:
    """:func:`~export.base.stages.run_stage` on rank 0; the other ranks do the same work beside it, writing nothing.

    Rank 0 decides whether the stage is up to date and tells the others, so all of them skip it or
    all of them take part. Returns None on the other ranks.
    """
    from export.base.records import is_up_to_date
    from export.base.stages import run_stage

    ranks = world()
    if not ranks.distributed:
        return run_stage(stage_dir, planned, work, atomic=atomic)
    up_to_date = ranks.agree(is_up_to_date(stage_dir, planned) is not None if ranks.is_main else None)
    if ranks.is_main:
        return run_stage(stage_dir, planned, work, atomic=atomic)
    if not up_to_date:
        work(stage_dir)  # every write in the work is rank 0's
    return None
