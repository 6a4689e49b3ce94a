"""What `compress distill` prints at the end of a chain: the distillation, then teacher vs student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.pipeline import ChainResult

_METRIC_LABEL = {"mean_cosine": "cosine", "argmax_agreement": "same label"}
_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "unverified": "bold yellow"}


def print_chain(result: ChainResult) -> None:
    """Print the chain's stages, the distillation summary and the teacher-vs-student table."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print("stages: " + ", ".join(f"{name} {status}" for name, status in result.stages.items()))
    if result.distill is not None:
        print_distill(console, result.distill.metrics, result.run_dir)
    if result.teacher is not None and result.student is not None:
        console.print(_comparison_table(result))
        if result.speedup is not None:
            workload = f"batch {result.workload[0]}, {result.workload[1]} tokens" if result.workload else "the profile's workload"
            console.print(f"latency: {workload}, runs interleaved on {result.host}; quality on "
                          f"{result.quality_texts} held-out texts", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    print_verdict(console, result.profile, result.verdict, result.gate_reasons)
    if (result.run_dir / "run.json").is_file():
        console.print(f"run: {result.run_dir / 'run.json'}", markup=False)
        if result.verdict in ("pass", "unverified"):
            console.print(f"next: compress package {result.run_dir}", markup=False)


def print_verdict(console: Any, profile: str, verdict: str | None, reasons: list[str]) -> None:
    """The gate's verdict for the profile and its reasons (nothing when no gate ran)."""
    if verdict is None:
        return
    console.print(f"gate ({profile}): [{_VERDICT_STYLE[verdict]}]{verdict}[/]")
    for reason in reasons:
        console.print(f"  {reason}", markup=False)


def print_distill(console: Any, m: dict[str, Any], run_dir: Path) -> None:
    """The distillation's own table: sizes and held-out agreement with the teacher as it trained."""
    from rich.table import Table

    table = Table(title=f"distill: {m.get('student', '')}", title_justify="left")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_row("parameters", f"{m['teacher_parameters'] / 1e6:.1f}M", f"{m['student_parameters'] / 1e6:.1f}M")
    table.add_row("layers / hidden", f"{m.get('teacher_layers', '')} / {m.get('teacher_hidden', '')}",
                  f"{m['student_layers']} / {m['student_hidden']}")
    metric = m["teacher_agreement_metric"]
    start = m.get("initial_teacher_agreement")
    table.add_row(f"held-out {metric} to teacher (PyTorch)", "1.0000",
                  f"{m['teacher_agreement']:.4f}" + (f" (start {start:.4f})" if start is not None else ""))
    if m.get("accuracy") is not None:
        table.add_row("accuracy on labels", f"{m['teacher_accuracy']:.4f}", f"{m['accuracy']:.4f}")
    if m.get("teacher_quant"):
        table.add_row(f"teacher {m['teacher_quant']} vs full precision", f"{m['teacher_quant_agreement']:.4f}", "")
    console.print(table)
    by_step = ", ".join(f"{e['step']}: {e['teacher_agreement']:.3f}" for e in m.get("agreement_by_step", []))
    if by_step:
        console.print(f"{metric} by step: {by_step}", markup=False)
    console.print(f"{m['steps']} steps ({m['epochs']:.2f} epochs, {m['samples_seen']} samples) in "
                  f"{m['train_time_s']:.0f} s on {m['device']} ({m['precision']}), {m['samples_per_s']:.1f} samples/s; "
                  f"stopped by {m['stopped_by']}; {m['held_out_examples']} held-out examples", markup=False)
    console.print(f"student: {Path(run_dir) / 'distill' / 'student'}", markup=False)


def _comparison_table(result: ChainResult) -> Any:
    from rich.table import Table

    teacher, student = result.teacher, result.student
    table = Table(title=f"teacher (fp32 ONNX) vs released student ({result.precision} ONNX), {result.profile}",
                  title_justify="left")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("parameters", f"{teacher.parameters / 1e6:.1f}M", f"{student.parameters / 1e6:.1f}M",
                  f"{teacher.parameters / student.parameters:.1f}x fewer")
    table.add_row("file size", _mb(teacher.size_bytes), _mb(student.size_bytes),
                  f"{teacher.size_bytes / student.size_bytes:.1f}x smaller")
    if teacher.p50_ms is not None and student.p50_ms is not None:
        table.add_row("latency p50", f"{teacher.p50_ms:.2f} ms", f"{student.p50_ms:.2f} ms",
                      f"{teacher.p50_ms / student.p50_ms:.2f}x faster")
        table.add_row("latency p95", f"{teacher.p95_ms:.2f} ms", f"{student.p95_ms:.2f} ms",
                      f"{teacher.p95_ms / student.p95_ms:.2f}x faster")
    if student.teacher_agreement is not None:
        table.add_row(f"{_METRIC_LABEL.get(result.metric, result.metric)} to teacher", "1.0000", f"{student.teacher_agreement:.4f}",
                      f"{100 * student.teacher_agreement:.1f}%")
    if student.neighbour_agreement is not None:
        table.add_row("top-10 neighbours", "1.0000", f"{student.neighbour_agreement:.4f}", "")
    return table


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
