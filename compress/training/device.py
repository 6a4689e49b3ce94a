"""Where and how training runs: the device, the CPU threads, the precision.

GPU first: bf16 autocast on CUDA. On the CPU training runs in fp32 with as many torch threads
as the process has cores.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from export.base.errors import CompressError


def resolve_device(requested: str) -> tuple[str, str | None]:
    """(device, warning): CUDA when asked for or available; ``cuda`` without a GPU is an error.

    ``auto`` falls back to the CPU with a one-line warning. An explicit ``--device cuda`` on a
    machine without CUDA stops with exit 2 instead: a job sized for a GPU should not quietly
    take hours on a CPU.
    """
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda":
        if not available:
            raise CompressError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); "
                                "use --device auto or --device cpu")
        return "cuda", None
    if requested == "cpu":
        return "cpu", None
    if available:
        return "cuda", None
    return "cpu", "no CUDA device: distilling on the CPU, in fp32; a GPU is much faster"


def cpu_threads() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def autocast_context(device: str) -> Any:
    """bf16 autocast on CUDA; nothing on the CPU (fp32)."""
    import torch

    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
