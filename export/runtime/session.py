"""onnxruntime sessions opened the way a target runs them, and the process memory they cost."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError
from export.base.quiet import quiet_onnxruntime
from export.runtime.host import has_nvidia_gpu

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def bench_threads(requested: int | None, profile: Profile, usable_cores: int) -> tuple[int | None, str | None]:
    """The intra-op threads a measurement runs with, and a note when that is not the profile's count.

    One policy for ``bench``, ``verify --gate`` and the chain's bench: a count the caller asks for
    is used as given; otherwise the profile's count, capped at this host's usable cores (more
    threads than cores measure contention, not the model; the gate then says why the host is not
    the target).
    """
    if requested is not None:
        return requested, None
    wanted = profile.runtime.intra_op_threads
    if wanted is not None and wanted > usable_cores:
        return usable_cores, (f"benchmarked with {usable_cores} threads, this host's usable cores "
                              f"({profile.name} runs {wanted})")
    return wanted, None



def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        statm = Path("/proc/self/statm")
        if statm.exists():
            return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return high_water_mark_bytes() is not None
    except OSError:
        return False


def high_water_mark_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the baseline is this process's real floor."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)



_dlls_preloaded = False


def preload_gpu_libraries(requested: list[str]) -> None:
    """With onnxruntime-gpu, load the CUDA/cuDNN libraries from the nvidia-* wheels (without torch)."""
    global _dlls_preloaded
    if _dlls_preloaded or not any(p in GPU_PROVIDERS for p in requested) or not has_nvidia_gpu():
        return
    import onnxruntime as ort

    _dlls_preloaded = True
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()


def open_session(path: Path, providers: list[str], intra: int | None, inter: int | None,
                  spinning: bool = True) -> tuple[Any, float, list[str]]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    unavailable = [p for p in providers if p not in available]
    if not usable:
        usable = ["CPUExecutionProvider"]
    preload_gpu_libraries(usable)
    options = ort.SessionOptions()
    if intra is not None:
        options.intra_op_num_threads = intra
    if inter is not None:
        options.inter_op_num_threads = inter
    if not spinning:
        # Threads still spin inside a run (each of a decoder's few hundred small ops would otherwise wait
        # on a wake-up: 25% slower generation here) but stop when it returns, so a session measured
        # interleaved with others does not steal their cores between its runs.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    start = time.perf_counter()
    try:
        with quiet_onnxruntime():
            session = ort.InferenceSession(str(path), options, providers=usable)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph/... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"onnxruntime cannot load {path}: {first}") from None
    return session, time.perf_counter() - start, unavailable
