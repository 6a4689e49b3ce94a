"""Where and how training runs: the device, the CPU threads, the precision.

GPU first: bf16 autocast on CUDA. On the CPU, bf16 autocast where the CPU computes in bf16 natively
(AMX or AVX-512 BF16: its bf16 matmuls ran 7-8x its fp32 ones on a 2-core Xeon, see
benchmarks/results/train_throughput.json), else fp32; with as many torch threads as the process
has cores. Master weights and the optimizer stay fp32 either way.
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
    return "cpu", "no CUDA device: distilling on the CPU; a GPU is much faster"


def cpu_threads() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic; without them bf16 is emulated and slower.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flag() -> str | None:
    """The flag by which this CPU computes bf16 natively (AMX first), or None."""
    from export.runtime.host import detect_host

    flags = set(detect_host().cpu_flags)
    return next((flag for flag in CPU_BF16_FLAGS if flag in flags), None)


def resolve_train_precision(requested: str, device: str) -> str:
    """``fp32`` or ``bf16`` (autocast) for ``requested`` on ``device``.

    ``auto``: bf16 on CUDA and on a CPU with native bf16, else fp32. ``bf16`` on a CPU without it
    is refused (emulated bf16 trains slower than fp32): a CompressError naming the option.
    """
    if requested not in TRAIN_PRECISIONS:
        raise CompressError(f"--train-precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {requested!r}")
    if requested == "fp32" or device.startswith("cuda"):
        return "fp32" if requested == "fp32" else "bf16"
    native = cpu_bf16_flag()
    if requested == "bf16" and native is None:
        raise CompressError("--train-precision bf16: this CPU has no native bf16 (neither AMX nor AVX-512 BF16), "
                            "where it trains slower than fp32; use --train-precision auto or fp32")
    return "bf16" if native else "fp32"


def precision_label(precision: str) -> str:
    """How a run trained, for messages and records: ``bf16-autocast`` or ``fp32``."""
    return "bf16-autocast" if precision == "bf16" else "fp32"


def autocast_context(device: str, precision: str | None = None) -> Any:
    """bf16 autocast when ``precision`` is bf16 (None: on CUDA only, as before it could be chosen); else nothing."""
    import torch

    if precision is None:
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def training_attention(device: str) -> Any:
    """The attention kernels a student trains with: on the CPU, SDPA's math backend.

    PyTorch's CPU flash-attention backward has a large fixed cost per call: with the default corpus's
    short texts it was the largest item of the jetson student's backward in torch's profiler (2-core
    Xeon, 2026-12-04), and the math backend's matmuls and softmax do not pay it. Forward-only passes
    (the teacher, evaluation) keep flash attention, which is faster there.
    """
    if device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
