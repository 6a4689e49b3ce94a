"""What machine a measurement was taken on: CPU, board, GPU, OS and library versions.

A latency number means nothing without the machine behind it, and ``gate`` refuses to pass a
release measured on hardware that is not the profile's. This module collects the facts it needs
to decide that (CPU model and ISA flags, architecture, board model on Jetson/Raspberry Pi, GPU
name) and the versions that make a report reproducible.

Standard library only, plus psutil when it is installed: it runs on the device.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

# Flags worth showing a person; the report keeps every flag for matching profiles.
RELEVANT_FLAGS = (
    # x86-64: vector width and the int8 / bf16 dot-product and matrix extensions ORT kernels use
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    # aarch64: NEON, dot product (SDOT/UDOT), fp16 arithmetic, int8 matrix multiply, SVE
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",
)

# Arm's part numbers (implementer 0x41) for the cores edge boards carry: /proc/cpuinfo on a
# Raspberry Pi or a Jetson names no model, only "CPU part".
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
    "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


@dataclass
class HostInfo:
    """The machine a bench report was measured on."""

    cpu_model: str
    arch: str  # normalised: x86_64 | aarch64 | whatever platform.machine() says otherwise
    os: str
    logical_cores: int
    physical_cores: int | None
    usable_cores: int  # CPUs this process may run on (affinity / container limits)
    cpu_flags: list[str] = field(default_factory=list)  # every flag the OS reports, sorted
    board_model: str | None = None  # /proc/device-tree/model: "Raspberry Pi 5 Model B ...", "NVIDIA Jetson ..."
    emulated: str | None = None  # why this looks like another architecture's CPU running this one's code
    gpus: list[str] = field(default_factory=list)  # names from nvidia-smi; empty when none or no driver
    memory_total_mb: float | None = None  # MiB
    python: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # onnxruntime, onnx, numpy (what is installed)

    @property
    def relevant_flags(self) -> list[str]:
        """The ISA flags that matter for inference kernels, in a stable order."""
        present = set(self.cpu_flags)
        return [flag for flag in RELEVANT_FLAGS if flag in present]

    def describe(self) -> str:
        """One line for tables: CPU (board), cores, GPU."""
        parts = [self.cpu_model]
        if self.board_model:
            parts.append(f"on {self.board_model}")
        parts.append(f"{self.usable_cores} cores {self.arch}" + (" (emulated)" if self.emulated else ""))
        if self.gpus:
            parts.append("GPU " + ", ".join(self.gpus))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_arch(machine: str) -> str:
    """``x86_64`` or ``aarch64`` for the spellings different OSes use; anything else unchanged."""
    lowered = machine.lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first value of each ``key : value`` line (Arm repeats them per core, x86 too)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def parse_cpuinfo(text: str | None) -> tuple[str | None, list[str]]:
    """CPU model name and flags from the text of /proc/cpuinfo (Linux, x86 and Arm)."""
    if not text:
        return None, []
    fields = _cpuinfo_fields(text)
    flags = (fields.get("flags") or fields.get("features") or "").split()
    # Arm boards name no model ("ARMv8 Processor rev 1 (v8l)" on a Jetson, nothing on a Pi): the part says it.
    arm_part = _ARM_PARTS.get(fields.get("cpu part", "").lower()) if fields.get("cpu implementer") == "0x41" else None
    model = arm_part or fields.get("model name") or fields.get("cpu model") or fields.get("hardware")
    return model, sorted(set(flags))


def _cpuinfo_arch(text: str | None) -> str | None:
    """The architecture /proc/cpuinfo describes: x86 names a vendor_id, Arm a CPU implementer."""
    fields = _cpuinfo_fields(text or "")
    if "vendor_id" in fields:
        return "x86_64"
    if "cpu implementer" in fields or "features" in fields:
        return "aarch64"
    return None


# An aarch64 kernel shows each core's identification register here (Linux 4.11+); an x86 kernel has no such file.
MIDR_FILE = Path("sys/devices/system/cpu/cpu0/regs/identification/midr_el1")


def emulation_reason(arch: str, cpuinfo_text: str | None, root: Path = Path("/")) -> str | None:
    """Why this process runs under another CPU's emulation (QEMU user mode), or None.

    The kernel describes the real CPU: an emulator that passes /proc/cpuinfo through leaves an x86
    CPU under an aarch64 Python (QEMU 7 does); one that shows an Arm /proc/cpuinfo (QEMU 8, or a
    root that supplies the file) still runs on a kernel without the Arm identification registers
    in /sys. Latency measured there says nothing about a board, so the gate must not count it.
    """
    described = _cpuinfo_arch(cpuinfo_text)
    if described is not None and described != arch:
        model, _ = parse_cpuinfo(cpuinfo_text)
        return (f"this Python runs {arch} code but the kernel reports a {described} CPU ({model or 'unnamed'}): "
                "user-mode emulation, whose timings say nothing about a board")
    if arch == "aarch64" and sys.platform.startswith("linux") and (root / "sys").is_dir() \
            and not (root / MIDR_FILE).is_file():
        return (f"this Python runs aarch64 code but the kernel shows no Arm CPU registers (/{MIDR_FILE}): "
                "user-mode emulation, whose timings say nothing about a board")
    return None


def cpu_mhz() -> float | None:
    """This CPU's clock as the OS reports it (the highest ``cpu MHz`` of /proc/cpuinfo), or None."""
    text = _read_text("/proc/cpuinfo")
    found = re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text or "", flags=re.MULTILINE)
    return max(float(value) for value in found) if found else None


def _mac_cpu() -> tuple[str | None, list[str]]:
    try:
        brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                               timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, []
    return brand or None, []


def board_model(proc: Path = Path("/proc")) -> str | None:
    """The board's name from the device tree (Raspberry Pi, Jetson; absent on PCs and under emulation)."""
    text = _read_text(proc / "device-tree" / "model")
    return text.strip("\x00 \n") or None if text else None


@functools.lru_cache(maxsize=1)
def gpu_names(timeout_s: float = 5.0) -> list[str]:
    """GPU names from ``nvidia-smi`` when it is on PATH; never raises, never hangs past the timeout."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        result = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _usable_cores(logical: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return logical


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    """Versions of the runtime libraries, read from package metadata (nothing is imported)."""
    versions: dict[str, str] = {}
    for label, candidates in {
        "onnxruntime": ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-openvino"),
        "onnx": ("onnx",),
        "numpy": ("numpy",),
    }.items():
        for name in candidates:
            found = _version(name)
            if found:
                versions[label] = f"{found} ({name})" if label == "onnxruntime" else found
                break
    return versions


@functools.lru_cache(maxsize=4)
def detect_host(root: Path = Path("/"), machine: str | None = None) -> HostInfo:
    """Facts about this machine (cached: nvidia-smi is slow and the machine does not change).

    ``root`` and ``machine`` stand in for / (its proc and sys) and ``platform.machine()``: a board's
    files read elsewhere.
    """
    on_mac = sys.platform == "darwin" and root == Path("/")
    cpuinfo = None if on_mac else _read_text(root / "proc" / "cpuinfo")
    arch = normalise_arch(machine or platform.machine())
    model, flags = _mac_cpu() if on_mac else parse_cpuinfo(cpuinfo)
    logical = os.cpu_count() or 1
    physical: int | None = None
    memory_mb: float | None = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory_mb = round(psutil.virtual_memory().total / 2**20, 1)
    except ImportError:
        pass
    return HostInfo(
        cpu_model=model or platform.processor() or "unknown",
        arch=arch,
        os=f"{platform.system()} {platform.release()}",
        logical_cores=logical,
        physical_cores=physical,
        usable_cores=_usable_cores(logical),
        cpu_flags=flags,
        board_model=board_model(root / "proc"),
        emulated=emulation_reason(arch, cpuinfo, root),
        gpus=list(gpu_names()),
        memory_total_mb=memory_mb,
        python=platform.python_version(),
        versions=library_versions(),
    )


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA GPU looks present (driver device nodes or nvidia-smi), without importing anything."""
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu")) or bool(gpu_names())


def matches_pattern(pattern: str, *candidates: str | None) -> bool:
    """Whether the regex ``pattern`` is found (case-insensitively) in any non-empty candidate."""
    regex = re.compile(pattern, re.IGNORECASE)
    return any(candidate and regex.search(candidate) for candidate in candidates)
