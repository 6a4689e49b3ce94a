"""Turn a bench report into a release verdict for a target profile.

One check per budget the profile declares (latency p50/p95/p99, model size, peak memory, teacher
agreement, quantization drop), each ``pass``, ``fail`` or ``not_checked``. A causal LM's
generation bench report (export/generation_bench.py) is gated on ``budgets.generation`` instead of
the latency budgets: ``generation.ttft_ms.p95`` and ``generation.tpot_ms.p95`` (p95 over the timed
runs: a budget a user should almost never see exceeded), ``generation.tokens_per_s`` (a floor),
and model size / peak memory against ``budgets.generation``'s own values when it sets them (an LM
is several times an encoder's size), else the top-level ones; quality works the same (e.g. next-
token agreement as ``teacher_agreement``). A budget the evidence
cannot speak to is ``not_checked``, never ``pass``: quality without a quality file, a budget the
profile leaves empty, and latency or memory measured on hardware that is not the profile's.

The verdict, and the CLI's exit code:
- ``fail`` (1): a hardware-independent check failed (model size, quality); no hardware can fix it.
- ``unverified`` (3): the measurement was taken on hardware that does not match the profile (a GPU
  profile measured on a CPU, an Orin profile on an x86 server), or with another workload; the
  latency and memory numbers are shown, marked as measured elsewhere, and the report says where
  to verify: ``compress verify --gate ARCHIVE`` on the target.
- ``fail`` (1): any check failed on matching hardware.
- ``pass`` (0): otherwise.

No torch, no transformers: this runs on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from export.base.files import atomic_write_bytes
from export.runtime.bench import MeasuredRelease
from export.runtime.quality_evidence import QualityEvidence
from export.runtime.host import HostInfo, matches_pattern, normalise_arch
from export.runtime.profiles import Profile
from export.base.report_json import SCHEMA_VERSION, JsonReport

Status = Literal["pass", "fail", "not_checked"]
Verdict = Literal["pass", "fail", "unverified"]
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 1, "unverified": 3}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass
class HardwareMatch:
    """Whether a measurement's machine is the profile's target, and why not."""

    matched: bool
    reasons: list[str] = field(default_factory=list)  # each a mismatch that makes the measurement off-target
    notes: list[str] = field(default_factory=list)  # differences that do not (fewer cores, less memory)
    fewer_cores: str | None = None  # set when the host has fewer usable cores than the target: a speed miss
    #                                 here says nothing about the target, a pass still stands


@dataclass
class GateCheck:
    """One budget against one measured number."""

    name: str  # "latency_ms.p95", "model_size_mb", "quality.min_teacher_agreement", ...
    budget: float | None
    measured: float | None
    unit: str
    comparison: str  # "<=" or ">="
    status: Status
    hardware_dependent: bool
    off_target_status: str | None = None  # what the number would say, when measured on other hardware
    note: str = ""


@dataclass
class BenchSummary:
    """Which measurement the verdict rests on."""

    model: str
    sha256: str
    size_mb: float
    host: str
    providers_used: list[str]
    profile: str  # the profile the bench ran with (its providers and threads)
    workload: str
    created_at: str


@dataclass
class GateReport(JsonReport):
    """The release verdict for one model on one profile."""

    profile: str
    verdict: Verdict
    exit_code: int
    reasons: list[str]
    checks: list[GateCheck]
    hardware: HardwareMatch
    bench: BenchSummary
    quality: QualityEvidence | None = None
    verify_command: str | None = None  # where to run it when the verdict is unverified
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    kind: str = "gate"

    def check(self, name: str) -> GateCheck:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)


def _normalise_flag(flag: str, arch: str) -> str:
    flag = flag.lower()
    # 32-bit Arm and some documents say "neon"; aarch64 Linux reports the same unit as "asimd".
    return "asimd" if flag == "neon" and arch == "aarch64" else flag


def match_hardware(profile: Profile, host: HostInfo, providers_used: list[str]) -> HardwareMatch:
    """Whether ``host`` running on ``providers_used`` is the hardware ``profile`` describes.

    - device gpu: a GPU provider (CUDA/TensorRT) must really have run, and a GPU name (or, on a
      Jetson, the board name) must match ``gpu.name_pattern``; device cpu: no GPU provider ran.
    - arch must match unless the profile says ``any``.
    - every ISA flag in ``cpu.isa`` must be among the host's CPU flags.
    - ``cpu.model_pattern`` (regex) must match the host's CPU model or board model.
    - the host must not be emulated (QEMU user mode: the right arch, but no board's timings).
    Fewer host cores or less memory than the profile's are notes, not mismatches; fewer cores are
    also recorded in ``fewer_cores``, since a speed miss on them is no evidence about the target.
    """
    hw = profile.hardware
    reasons: list[str] = []
    notes: list[str] = []
    fewer_cores: str | None = None
    gpu_ran = [p for p in providers_used if p in GPU_PROVIDERS]
    if host.emulated:
        reasons.append(host.emulated)
    if hw.device == "gpu":
        if not gpu_ran:
            reasons.append(f"the profile runs on a GPU but the session ran on {', '.join(providers_used) or 'nothing'}")
        if hw.gpu is not None:
            candidates = host.gpus or ([host.board_model] if host.board_model else [])
            if not candidates:
                reasons.append(f"no GPU found (the profile wants one matching {hw.gpu.name_pattern!r})")
            elif not matches_pattern(hw.gpu.name_pattern, *candidates):
                reasons.append(f"GPU {', '.join(candidates)} does not match the profile's {hw.gpu.name_pattern!r}")
    elif hw.device == "cpu" and gpu_ran:
        reasons.append(f"the profile runs on the CPU but the session ran on {', '.join(gpu_ran)}")
    host_arch = normalise_arch(host.arch)
    if hw.arch != "any" and host_arch != hw.arch:
        reasons.append(f"arch {host_arch} is not the profile's {hw.arch}")
    if hw.cpu is not None:
        flags = {f.lower() for f in host.cpu_flags}
        missing = [f for f in hw.cpu.isa if _normalise_flag(f, host_arch) not in flags]
        if missing:
            reasons.append(f"host CPU ({host.cpu_model}) lacks {', '.join(missing)}")
        if hw.cpu.model_pattern and not matches_pattern(hw.cpu.model_pattern, host.cpu_model, host.board_model):
            who = host.cpu_model + (f" / {host.board_model}" if host.board_model else "")
            reasons.append(f"CPU/board {who} does not match the profile's {hw.cpu.model_pattern!r}")
        if host.usable_cores < hw.cpu.cores:
            fewer_cores = f"host has {host.usable_cores} usable cores, the profile's target {hw.cpu.cores}"
            notes.append(fewer_cores)
    if hw.memory_gb and host.memory_total_mb and host.memory_total_mb < hw.memory_gb * 1024 * 0.9:
        notes.append(f"host has {host.memory_total_mb / 1024:.1f} GiB of memory, the target {hw.memory_gb:g} GB")
    return HardwareMatch(matched=not reasons, reasons=reasons, notes=notes, fewer_cores=fewer_cores)


def _compare(name: str, budget: float | None, measured: float | None, unit: str, comparison: str, *,
             hardware_dependent: bool, on_target: bool, missing_note: str) -> GateCheck:
    if budget is None:
        return GateCheck(name, None, measured, unit, comparison, "not_checked", hardware_dependent,
                         note="the profile sets no budget")
    if measured is None:
        return GateCheck(name, budget, None, unit, comparison, "not_checked", hardware_dependent, note=missing_note)
    ok = measured <= budget if comparison == "<=" else measured >= budget
    status: Status = "pass" if ok else "fail"
    if hardware_dependent and not on_target:
        return GateCheck(name, budget, measured, unit, comparison, "not_checked", hardware_dependent,
                         off_target_status=status, note="measured on other hardware")
    return GateCheck(name, budget, measured, unit, comparison, status, hardware_dependent)


def read_gate_input(path_or_text: str | os.PathLike[str]) -> MeasuredRelease:
    """The report ``gate`` takes from a bench JSON of any kind: an encoder's or a causal LM's bench,
    or the first model of either kind of comparison."""
    from export.runtime.release_kind import read_any_report

    report = read_any_report(path_or_text)
    return report.measured


def gate(report: MeasuredRelease, profile: Profile, quality: QualityEvidence | None = None, *,
         model: Path | None = None) -> GateReport:
    """The release verdict for ``report`` (an encoder's or a causal LM's bench) against ``profile``'s
    budgets (see the module docstring).

    The report's numbers are checked before they are believed: a negative or non-finite one is
    bad input (CompressError). ``model``, when given, must be the file the report measured (its
    sha256 and size); without it, the report's own model path is checked when that file exists.
    """
    from datetime import datetime, timezone

    report.check_figures()
    at_hand = model if model is not None else Path(report.model.path)
    if model is not None or at_hand.is_file():
        report.check_model(at_hand)

    hardware = match_hardware(profile, report.host, report.session.providers_used)
    workload_reasons = report.workload_mismatches(profile)
    on_target = hardware.matched and not workload_reasons
    budgets = profile.budgets
    no_quality = "no --quality evidence given"
    figures = report.speed_figures(profile)
    speed_names = {f.name for f in figures}
    checks = [_compare(f.name, f.budget, f.measured, f.unit, f.comparison, hardware_dependent=True,
                       on_target=on_target, missing_note="") for f in figures]
    (size_budget, size_note), (memory_budget, memory_note) = report.size_budget(profile), report.memory_budget(profile)
    checks.append(_compare("model_size_mb", size_budget, report.model.size_mb, "MiB", "<=",
                           hardware_dependent=False, on_target=True, missing_note=""))
    checks.append(_compare("peak_memory_mb", memory_budget, report.memory.session_peak_mb, "MiB", "<=",
                           hardware_dependent=True, on_target=on_target, missing_note=""))
    for check, note in ((checks[-2], size_note), (checks[-1], memory_note)):
        if note:
            check.note = (check.note + "; " if check.note else "") + note
    checks.append(_compare("quality.min_teacher_agreement", budgets.quality.min_teacher_agreement,
                           quality.teacher_agreement if quality else None, quality.metric if quality else "agreement",
                           ">=", hardware_dependent=False, on_target=True, missing_note=no_quality))
    for figure in report.quality_figures(profile, quality):
        missing = no_quality if quality is None else f"no {figure.name.split('.', 1)[-1][4:]} in the evidence"
        checks.append(_compare(figure.name, figure.budget, figure.measured, figure.unit, figure.comparison,
                               hardware_dependent=False, on_target=True, missing_note=missing))
    if report.memory.shared_process:
        memory = next(c for c in checks if c.name == "peak_memory_mb")
        memory.note = (memory.note + "; " if memory.note else "") + "from a comparison: this model's load + first run"

    independent_fails = [c for c in checks if not c.hardware_dependent and c.status == "fail"]
    fails = [c for c in checks if c.status == "fail"]
    not_checked = [c for c in checks if c.status == "not_checked"]
    reasons: list[str] = []
    verify_command = None
    if independent_fails:
        verdict: Verdict = "fail"
        reasons += [_fail_reason(c) for c in independent_fails]
        if not on_target:
            reasons.append("latency and memory were measured on other hardware: " + "; ".join(hardware.reasons + workload_reasons))
    elif not on_target:
        verdict = "unverified"
        reasons += hardware.reasons + workload_reasons
        verify_command = _verify_command(profile)
        reasons.append(f"verify on the target: {verify_command}")
    elif fails and hardware.fewer_cores and all(c.name in speed_names for c in fails):
        verdict = "unverified"
        reasons += [_fail_reason(c) for c in fails]
        reasons.append(f"{hardware.fewer_cores}: a speed miss on fewer cores is not evidence about the target")
        verify_command = _verify_command(profile)
        reasons.append(f"verify on the target: {verify_command}")
    elif fails:
        verdict = "fail"
        reasons += [_fail_reason(c) for c in fails]
    elif quality is None and (unproven := [c for c in checks if c.name.startswith("quality.")
                                           and c.budget is not None]):
        # Every measured budget is met, but the profile budgets quality and nothing shows it.
        verdict = "unverified"
        reasons.append(f"quality not shown: the profile budgets {', '.join(c.name for c in unproven)} and no "
                       "quality evidence was given (--quality QUALITY.json); a release is not passed on speed alone")
    else:
        verdict = "pass"
        reasons.append(f"{sum(c.status == 'pass' for c in checks)} budgets met on matching hardware")
        if hardware.fewer_cores:
            reasons.append(f"passed on fewer cores than the target has ({hardware.fewer_cores})")
    if not_checked and verdict != "unverified":
        names = ", ".join(c.name for c in not_checked)
        reasons.append(f"not checked: {names}")
    if report.profile != profile.name:
        hardware.notes.append(f"benchmarked with profile {report.profile}'s runtime settings, gated against {profile.name}")
    workload = report.workload_text()
    summary = BenchSummary(
        model=report.model.path, sha256=report.model.sha256, size_mb=report.model.size_mb,
        host=report.host.describe(), providers_used=list(report.session.providers_used), profile=report.profile,
        workload=workload, created_at=report.created_at,
    )
    return GateReport(
        profile=profile.name, verdict=verdict, exit_code=EXIT_CODES[verdict], reasons=reasons, checks=checks,
        hardware=hardware, bench=summary, quality=quality, verify_command=verify_command,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _verify_command(profile: Profile) -> str:
    return (f"compress verify --gate ARCHIVE  (on a {profile.name} device), or "
            f"compress bench MODEL.onnx --profile {profile.name} there")


def _fail_reason(check: GateCheck) -> str:
    return f"{check.name}: {_fmt(check.measured)} {check.unit} is not {check.comparison} {_fmt(check.budget)} {check.unit}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"


def write_junit(report: GateReport, path: str | os.PathLike[str]) -> Path:
    """JUnit XML for CI: one testcase per budget; ``failure`` for fail, ``skipped`` for not_checked
    (and for latency/memory measured on other hardware). Written atomically."""
    suite_name = f"compress.gate.{report.profile}"
    failures = sum(c.status == "fail" for c in report.checks)
    skipped = sum(c.status == "not_checked" for c in report.checks)
    root = ElementTree.Element("testsuites", name="compress gate", tests=str(len(report.checks)),
                               failures=str(failures), errors="0", skipped=str(skipped))
    suite = ElementTree.SubElement(root, "testsuite", name=suite_name, tests=str(len(report.checks)),
                                   failures=str(failures), errors="0", skipped=str(skipped), time="0",
                                   timestamp=report.created_at)
    properties = ElementTree.SubElement(suite, "properties")
    for key, value in (("verdict", report.verdict), ("model", report.bench.model), ("sha256", report.bench.sha256),
                       ("host", report.bench.host), ("providers_used", ", ".join(report.bench.providers_used)),
                       ("hardware_matched", str(report.hardware.matched).lower())):
        ElementTree.SubElement(properties, "property", name=key, value=value)
    for check in report.checks:
        case = ElementTree.SubElement(suite, "testcase", classname=suite_name, name=check.name, time="0")
        detail = (f"measured {_fmt(check.measured)} {check.unit}, budget {check.comparison} "
                  f"{_fmt(check.budget)} {check.unit}")
        if check.status == "fail":
            failure = ElementTree.SubElement(case, "failure", message=_fail_reason(check), type="BudgetMissed")
            failure.text = detail
        elif check.status == "not_checked":
            ElementTree.SubElement(case, "skipped", message=check.note or "not checked")
    ElementTree.indent(root)
    data = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return atomic_write_bytes(path, data + b"\n")


# ---------------------------------------------------------------------------------------------
# Display (rich is imported here only)
# ---------------------------------------------------------------------------------------------

_STYLE = {"pass": "green", "fail": "red", "unverified": "yellow", "not_checked": "dim"}


def render_gate(report: GateReport) -> Any:
    """A rich table: budget, measured and status per check, then the verdict and its reasons."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"gate · profile {report.profile} · {Path(report.bench.model).name}", title_justify="left")
    for column, justify in (("check", "left"), ("budget", "right"), ("measured", "right"), ("status", "left"),
                            ("note", "left")):
        table.add_column(column, justify=justify)
    for check in report.checks:
        budget = f"{check.comparison} {_fmt(check.budget)} {check.unit}" if check.budget is not None else "-"
        measured = f"{_fmt(check.measured)} {check.unit}" if check.measured is not None else "-"
        if check.off_target_status:
            status = Text(f"other hw: {check.off_target_status}", style="yellow")
        else:
            status = Text(check.status.replace("_", " "), style=_STYLE[check.status])
        note = "" if check.off_target_status else check.note  # the status already says it
        table.add_row(check.name, budget, measured, status, note)
    verdict = Text(f"verdict: {report.verdict.upper()} (exit {report.exit_code})", style=f"bold {_STYLE[report.verdict]}")
    lines: list[Any] = [table, verdict]
    lines += [Text(f"  - {reason}") for reason in report.reasons]
    lines.append(Text(f"measured on {report.bench.host}; providers {', '.join(report.bench.providers_used)}", style="dim"))
    lines += [Text(f"  note: {note}", style="dim") for note in report.hardware.notes]
    return Group(*lines)


def print_gate(report: GateReport) -> None:
    """Print the gate table and verdict on stdout."""
    from rich.console import Console

    Console().print(render_gate(report))
