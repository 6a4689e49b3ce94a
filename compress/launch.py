"""``compress distill --nproc N``: the same command as N ranks on this machine, through torchrun's own engine.

The ranks are started by ``torch.distributed.launcher`` (what ``torchrun --standalone`` runs), each
with ``RANK``, ``WORLD_SIZE`` and a local rendezvous in its environment; :mod:`compress.parallel`
does the rest. A rank that fails ends every rank (the launcher stops them) and this process with
one line naming it; the run directory then holds only whole files, and ``--resume`` continues
from the last checkpoint, with any number of processes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from export.base.errors import CompressError

# Exit codes rank 0 ends a finished chain with: the gate's verdict, not a failure.
GATE_EXIT_CODES = (1, 3)
INTERRUPTED = 130  # what a rank stopped by Ctrl-C exits with
BAD_INPUT = 2  # a rank's one-line error; rank 0 prints it, the others stay quiet
# The variable naming the file rank 0 touches once it has printed its one-line error (compress.cli).
REPORTED_MARK = "COMPRESS_REPORTED_MARK"


class ReportedByRank(CompressError):
    """Rank 0 stopped on bad input and printed its one line; the launcher adds nothing."""

    def __init__(self) -> None:
        super().__init__("")


class RanksInterrupted(CompressError):
    """Ctrl-C reached the ranks; they stopped together and a checkpoint was saved."""

    exit_code = INTERRUPTED


def launch_local(nproc: int, args: list[str]) -> int:
    """Run ``compress ARGS`` as ``nproc`` ranks here; the exit code of rank 0's chain (the gate's)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher's own log lines (worker start, SIGTERM to the survivors) are not the user's business.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="compress-ranks-") as logs:
        # Ctrl-C reaches every rank from the terminal and they stop together after a step, rank 0 saving a
        # checkpoint; the launcher itself must not answer it by killing them mid-save.
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"compress-{os.getpid()}",
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                              monitor_interval=0.1, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs),
                              signals_to_handle="SIGTERM,SIGHUP,SIGQUIT")
        previous = signal.signal(signal.SIGINT, lambda *_: None)
        # Rank 0 touches this file once it has printed bad input's one line: the launcher may have
        # stopped it (SIGTERM) before it exited, when another rank met the same input first.
        reported = Path(logs) / "reported"
        os.environ[REPORTED_MARK] = str(reported)
        try:
            elastic_launch(config, entrypoint=sys.executable)("-m", "compress", *args)
        except ChildFailedError as exc:
            failures = exc.failures
            if set(failures) == {0} and failures[0].exitcode in GATE_EXIT_CODES:
                return int(failures[0].exitcode)
            if all(f.exitcode == INTERRUPTED for f in failures.values()):
                raise RanksInterrupted("interrupted: every rank stopped after its step and rank 0 saved a "
                                       "checkpoint; run the same command with --resume to continue") from None
            # The launcher stops the survivors with SIGTERM: the rank that failed on its own is the other one.
            own = [r for r, f in sorted(failures.items()) if f.exitcode != -signal.SIGTERM]
            rank = own[0] if own else exc.get_first_failure()[0]
            if failures[rank].exitcode == BAD_INPUT:
                if reported.exists():
                    raise ReportedByRank() from None
                raise CompressError(f"rank {rank} of {nproc} stopped on bad input; run the same command with "
                                    "--nproc 1 to see it") from None
            raise CompressError(f"rank {rank} of {nproc} {_how(failures[rank].exitcode)}; the others were stopped and "
                                "the run directory holds only whole files: run the same command with --resume to "
                                "continue from the last checkpoint") from None
        finally:
            signal.signal(signal.SIGINT, previous)
            os.environ.pop(REPORTED_MARK, None)
    return 0


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode} (its error is above)"
