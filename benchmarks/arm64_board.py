"""An arm64 board on this x86 machine: the device runtime run by an aarch64 Python under QEMU.

Six of the eight profiles are aarch64 boards. This script brings one up from Debian's packages
alone (nothing fetched outside the Debian and PyPI registries) and runs, on real release archives,
what an edge team runs on the board, once with this machine's Python and once with the emulated one:

    python benchmarks/arm64_board.py --archive dist/encoder.tar.gz --archive dist/lm.tar.gz

1. The board (built once into ``--root``, default ~/.cache/compress/arm64-bookworm): Debian
   bookworm's arm64 userland (``debootstrap --foreign``: the packages unpacked, no arm64 code run
   to install them) with its python3, the device runtime's dependencies from their aarch64 wheels
   (``pip install --platform manylinux..._aarch64 --target``), and a ``python3`` that runs it with
   ``qemu-aarch64-static -L``. Each archive runs on its profile's CPU: QEMU's Cortex-A76 (a
   Raspberry Pi 5's core; the default) or, for android-arm64, QEMU's max CPU without SME (a
   flagship phone's Armv9: SVE2, int8 matrix multiply). QEMU 7 passes the x86 kernel's
   /proc/cpuinfo through, on which onnxruntime's CPU detection crashes; the userland supplies an
   Arm one for that CPU.
2. For each archive, with the runtime zipapp ``--on ssh://`` sends (``compress-runtime.pyz``):
   ``check`` (what the board reports about itself), ``verify --libraries`` (verify, then each
   library's load), ``verify --gate`` (it must say unverified on an emulator, with the reason) and ``bench`` of the
   model; then ``verify`` again through an SSH server on 127.0.0.1 whose ``python3`` is the emulated
   one (tests/ssh_server.py), as ``compress verify --on ssh://board`` does.
3. The answers compared: the embedding's cosine to the build host's, the greedy tokens identical.

Prints a table and writes benchmarks/results/arm64_emulated.json. Needs root to install
qemu-user-static and debootstrap when they are missing (``apt-get``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

from export.remote import build_runtime, parse_target, remote_verify
from export.runtime.host import detect_host

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PYTHON = "python3.11"  # bookworm's
# The wheels the device runtime needs on a board (export/runtime/device_main.py: NEEDED...), plus
# ONNX Runtime GenAI, which `verify --libraries` runs a language model's release with.
BOARD_PACKAGES = ("numpy", "pyyaml", "pydantic>=2.6,<3", "tokenizers", "psutil", "cryptography")
AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64",
                     "manylinux_2_17_aarch64")


@dataclass(frozen=True)
class EmulatedCpu:
    """The CPU QEMU emulates for a profile (``QEMU_CPU``) and the /proc/cpuinfo the userland shows for it."""

    qemu: str
    features: str
    part: str | None = None  # Arm's part number, when QEMU emulates a real core

    def cpuinfo(self, cores: int) -> str:
        ident = f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: {self.part}\n" \
            if self.part else "CPU architecture: 8\n"
        return "".join(f"processor\t: {i}\nmodel name\t: QEMU user-mode aarch64 ({self.qemu}, emulated)\n"
                       f"BogoMIPS\t: 108.00\nFeatures\t: {self.features}\n{ident}\n" for i in range(cores))


_ARMV8_2 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
# A Raspberry Pi 5 (and the Jetsons' Armv8.2 cores) as QEMU 7.2 has it: the Cortex-A76 itself.
PI_CPU = EmulatedCpu("cortex-a76", _ARMV8_2, part="0xd0b")
# A Snapdragon 8 Gen 2's Cortex-X3/A715 (Armv9.0: SVE2, int8 matrix multiply, bf16; no SME): QEMU's
# max CPU without SME. With SME on, onnxruntime 1.31's int8 encoder answers wrongly under QEMU 7.2
# (measured: see sme_probe in the results); no board with SME was at hand to say whose bug it is.
PHONE_CPU = EmulatedCpu("max,sme=off", _ARMV8_2 + " sha3 sm3 sm4 sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb "
                        "paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm "
                        "svebf16 i8mm bf16 dgh bti")
CPU_OF_PROFILE = {"android-arm64": PHONE_CPU}


@dataclass(frozen=True)
class Board:
    """The emulated board: its userland, its packages, and the command that runs its Python."""

    root: Path

    @property
    def userland(self) -> Path:
        return self.root / "userland"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        return self.root / "python3"


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def ensure_tools() -> None:
    """qemu-aarch64-static and debootstrap, from Debian's packages when they are missing."""
    if shutil.which("qemu-aarch64-static") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        raise SystemExit("qemu-aarch64-static or debootstrap is missing: apt-get install qemu-user-static debootstrap")
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", "qemu-user-static", "debootstrap", "binfmt-support"],
         stdout=subprocess.DEVNULL)


def enable_binfmt() -> str:
    """Let the kernel hand aarch64 programs to QEMU, so the board's Python can start Python children
    (``verify --libraries`` runs each library in one). Root and binfmt_misc needed; says what it did."""
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if entry.is_file() and entry.read_text().startswith("enabled"):
        return "binfmt_misc: qemu-aarch64 enabled"
    if os.geteuid() != 0:
        return "binfmt_misc: not root, left alone (the board's Python cannot start children)"
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=False)
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    if entry.is_file() and entry.read_text().startswith("enabled"):
        return "binfmt_misc: qemu-aarch64 enabled by this script"
    return "binfmt_misc: unavailable here (the board's Python cannot start children)"


def build_board(root: Path, onnxruntime_version: str) -> Board:
    """The arm64 userland and its wheels under ``root`` (kept: a second call reuses them)."""
    board = Board(root)
    done = root / ".userland-done"
    if not done.is_file():
        shutil.rmtree(board.userland, ignore_errors=True)
        board.userland.parent.mkdir(parents=True, exist_ok=True)
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3",
              SUITE, str(board.userland), MIRROR], stdout=subprocess.DEVNULL)
        for package in sorted((board.userland / "var/cache/apt/archives").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(package), str(board.userland)])
        done.write_text(f"{SUITE} arm64\n")
    emulate(board, PI_CPU)
    wheels = root / f".site-done-{onnxruntime_version}"
    if not wheels.is_file():
        shutil.rmtree(board.site, ignore_errors=True)
        platforms = [flag for platform in AARCH64_PLATFORMS for flag in ("--platform", platform)]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", "--target", str(board.site), *platforms,
              "--implementation", "cp", "--python-version", PYTHON.removeprefix("python"), "--only-binary=:all:",
              f"onnxruntime=={onnxruntime_version}", "onnxruntime-genai", *BOARD_PACKAGES])
        wheels.write_text("ok\n")
    board.python.write_text(
        "#!/bin/sh\n# An aarch64 Python: Debian's, run by QEMU in user mode, with the board's wheels.\n"
        f"export PYTHONPATH='{board.site}' PYTHONNOUSERSITE=1 QEMU_LD_PREFIX='{board.userland}'\n"
        f"exec qemu-aarch64-static -L '{board.userland}' '{board.userland}/usr/bin/{PYTHON}' \"$@\"\n")
    board.python.chmod(0o755)
    return board


def emulate(board: Board, cpu: EmulatedCpu) -> None:
    """The CPU the board's programs (and the SSH board's, started after this) run on, and its /proc/cpuinfo.

    QEMU 7 passes the x86 kernel's /proc/cpuinfo through and onnxruntime's CPU detection crashes on
    it; ``-L`` makes the userland's own file the one the programs read.
    """
    (board.userland / "proc").mkdir(exist_ok=True)
    (board.userland / "proc" / "cpuinfo").write_text(cpu.cpuinfo(os.cpu_count() or 1))
    os.environ["QEMU_CPU"] = cpu.qemu  # qemu-user reads it; children and the SSH server inherit it


def profile_of(archive: Path) -> str:
    """The profile the archive was gated against (its manifest's)."""
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/manifest.json"))
        return json.loads(tar.extractfile(member).read())["profile"]  # type: ignore[union-attr]


def runtime_json(python: str, pyz: Path, *args: str, cwd: Path) -> tuple[dict[str, Any], float]:
    """One command of the device runtime and its JSON answer, with the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run([python, str(pyz), *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        answer = {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return answer, round(seconds, 1)


def extract_model(archive: Path, into: Path) -> tuple[Path, Path]:
    """The archive's model.onnx and profile.yaml, for ``bench`` (verify checks every file first)."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    top = next(into.iterdir())
    return top / "model" / "model.onnx", top / "profile.yaml"


def measure(archive: Path, pythons: dict[str, str], pyz: Path, scratch: Path, runs: int) -> dict[str, Any]:
    """Every runtime command on ``archive`` for each Python; the answers side by side."""
    model, profile = extract_model(archive, scratch / archive.name.removesuffix(".tar.gz"))
    found: dict[str, Any] = {}
    for where, python in pythons.items():
        row: dict[str, Any] = {}
        # One verify: --libraries checks the archive as plain verify does, then loads it in each library.
        row["verify"], row["verify_s"] = runtime_json(python, pyz, "verify", str(archive), "--libraries", cwd=scratch)
        row["gate"], row["gate_s"] = runtime_json(python, pyz, "verify", str(archive), "--gate", "--runs", str(runs),
                                                  "--warmup", "2", cwd=scratch)
        row["bench"], row["bench_s"] = runtime_json(python, pyz, "bench", str(model), "--profile", str(profile),
                                                    "--runs", str(runs), "--warmup", "2", cwd=scratch)
        found[where] = row
        print(f"{archive.name} on {where}: verify {row['verify_s']} s, gate {row['gate_s']} s", file=sys.stderr)
    return found


def over_ssh(board: Board, archive: Path, scratch: Path) -> dict[str, Any]:
    """``verify`` through SSH on 127.0.0.1 to a board whose python3 is the emulated one."""
    from tests import ssh_server

    folder = scratch / f"ssh-{archive.name}"
    (folder / "keys").mkdir(parents=True)
    keys = ssh_server.make_keys(folder / "keys")
    server, port = ssh_server.start(keys, folder / "board", str(board.python))
    try:
        os.environ["COMPRESS_SSH_CONFIG"] = str(ssh_server.ssh_config(keys, folder, {"arm64": port}))
        report, _ = remote_verify(parse_target("ssh://arm64"), archive, gate=False, profile_file=None, runs=None,
                                  warmup=None, trust=[], require_signature=False)
        return report
    finally:
        server.kill()
        server.wait()


def summarise(name: str, found: dict[str, Any], ssh: dict[str, Any]) -> dict[str, Any]:
    """What a reader compares: the answers on each side, the gate's verdicts and reasons, the timings."""
    def example(row: dict[str, Any]) -> dict[str, Any]:
        check = row["verify"].get("example") or {}
        return {key: check.get(key) for key in ("cosine_to_reference", "ort_cosine", "pair_cosine", "tokens",
                                                "matching_tokens", "providers_used")}

    native, emulated = found["native"], found["emulated"]
    gate = emulated["gate"].get("gate") or {}
    host = (emulated["gate"].get("bench") or {}).get("host") or {}
    summary = {
        "archive": name,
        "native": example(native), "emulated": example(emulated), "over_ssh": example({"verify": ssh}),
        "errors": {f"{where} {key}": row[key]["error"] for where, row in found.items()
                   for key in ("verify", "gate", "bench") if "error" in row[key]},
        "tokens_identical": example(native)["tokens"] == example(emulated)["tokens"],
        "gate_native": native["gate"].get("verdict"), "gate_emulated": emulated["gate"].get("verdict"),
        "gate_emulated_reasons": gate.get("reasons"),
        "emulated_host": {key: host.get(key) for key in ("cpu_model", "arch", "board_model", "emulated")},
        "libraries_emulated": [{k: c[k] for k in ("library", "status", "detail")}
                               for c in emulated["verify"].get("libraries", [])],
        "seconds": {where: {k: row[k] for k in ("verify_s", "gate_s", "bench_s")} for where, row in found.items()},
    }
    p50 = {where: _p50(row["bench"]) for where, row in found.items()}
    summary["bench_p50_ms"] = p50
    if all(p50.values()):
        summary["emulated_over_native_p50"] = round(p50["emulated"] / p50["native"], 1)
    return summary


def _p50(bench: dict[str, Any]) -> float | None:
    """The bench's p50: a forward pass's latency, or a language model's time per output token."""
    value = (bench.get("latency") or bench.get("tpot_ms") or {})
    value = value.get("p50_ms", value.get("p50"))
    return round(value, 3) if value else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, action="append", required=True, help="a release archive (repeat)")
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache" / "compress" / "arm64-bookworm")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each bench (emulation is slow)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "arm64_emulated.json")
    args = parser.parse_args()
    missing = [str(path) for path in args.archive if not path.is_file()]
    if missing:
        raise SystemExit(f"archive not found: {', '.join(missing)}")
    import onnxruntime

    record = ResultRecord.start("arm64_emulated")
    ensure_tools()
    binfmt = enable_binfmt()
    started = time.perf_counter()
    board = build_board(args.root, onnxruntime.__version__)
    board_s = round(time.perf_counter() - started, 1)
    pythons = {"native": sys.executable, "emulated": str(board.python)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="arm64-board-") as folder:
        scratch = Path(folder)
        pyz, pyz_sha = build_runtime(scratch)
        check, _ = runtime_json(str(board.python), pyz, "check", cwd=scratch)
        for archive in args.archive:
            cpu = CPU_OF_PROFILE.get(profile_of(archive), PI_CPU)
            emulate(board, cpu)
            found = measure(archive.resolve(), pythons, pyz, scratch, args.runs)
            row = summarise(archive.name, found, over_ssh(board, archive.resolve(), scratch))
            row["qemu_cpu"] = cpu.qemu
            if cpu.qemu.startswith("max"):  # what the same archive gives with SME on
                emulate(board, EmulatedCpu("max", cpu.features + " sme"))
                probe, _ = runtime_json(str(board.python), pyz, "verify", str(archive.resolve()), cwd=scratch)
                row["sme_probe"] = {"qemu_cpu": "max", "answer": probe.get("error") or
                                    (probe.get("example") or {}).get("cosine_to_reference")}
            rows.append(row)
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    record.finish(args.out, detect_host(), board={"qemu": qemu, "userland": f"Debian {SUITE} arm64",
                                                   "python": check.get("python"), "packages": check.get("packages"),
                                                   "host": check.get("host"), "built_s": board_s,
                                                   "binfmt": binfmt},
                  runtime_sha256=pyz_sha, results=rows)
    _print_table(rows)


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"the device runtime on x86 and on emulated arm64 · {detect_host().describe()}",
                  title_justify="left")
    for column in ("archive", "check", "x86", "arm64 (QEMU)", "arm64 over SSH", "gate x86 / arm64",
                   "p50 ms x86 / arm64"):
        table.add_column(column)
    for row in rows:
        for key, label in (("cosine_to_reference", "cosine to build host"), ("ort_cosine", ".ort vs .onnx"),
                           ("tokens", "greedy tokens = build host's")):
            values = [row[side][key] for side in ("native", "emulated", "over_ssh")]
            if all(value is None for value in values):
                continue
            # Tokens: how many lead the build host's answer on each side (verify's own count).
            shown = [f"{row[side]['matching_tokens']} of {len(row[side]['tokens'])}" if key == "tokens" else str(value)
                     for side, value in zip(("native", "emulated", "over_ssh"), values)]
            table.add_row(f"{row['archive'][:28]} ({row['qemu_cpu']})", label, *shown, f"{row['gate_native']} / {row['gate_emulated']}",
                          f"{row['bench_p50_ms']['native']} / {row['bench_p50_ms']['emulated']}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
