"""What `compress distill` prints at the end of a chain: the distillation, then teacher vs student."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.chain import ChainResult
    from compress.stages.family import TaskFamily

# Columns of a log (stdout not a terminal): wide enough for the release-candidate table, whatever COLUMNS
# says (a CI runner or a pipe often sets 80, and rich then cut every cell to `stu…`).
LOG_WIDTH = 160
_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "unverified": "bold yellow"}


def print_chain(family: TaskFamily, result: ChainResult) -> None:
    """Print the chain's stages, the distillation summary, the teacher-vs-student table and the verdict."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log: a line stays a line and a table gets its width (rich assumes 80 columns)
        console = Console(highlight=False, soft_wrap=True, width=LOG_WIDTH)
    console.print("stages: " + ", ".join(f"{name} {status}" for name, status in result.stages.items()))
    if result.distill is not None:
        title, rows, lines = family.distill_summary(result.distill.metrics, result.run_dir)
        if rows:
            console.print(_table(title, ("", "teacher", "student"), [(r.label, r.teacher, r.student) for r in rows]))
        for line in lines:
            console.print(line, markup=False)
    if result.release is not None:
        print_candidates(console, family, result)
    if result.rows:
        baseline = family.baseline_label
        chosen = result.release.chosen if result.release is not None else None
        released = {"teacher": "teacher, quantized", "static": "static student"}.get(
            chosen.source if chosen is not None else "student", "student")
        title = f"{baseline} (fp32 ONNX) vs released {released} ({result.precision} ONNX), {result.profile}"
        console.print(_table(title, ("", baseline, "released", "ratio"),
                             [(r.label, r.teacher, r.student, r.ratio) for r in result.rows]))
        if result.measured:
            console.print(result.measured, markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    print_verdict(console, result.profile, result.verdict, result.gate_reasons)
    if (result.run_dir / "run.json").is_file():
        console.print(f"run: {result.run_dir / 'run.json'}", markup=False)
        if result.verdict in ("pass", "unverified"):
            console.print(f"next: compress package {result.run_dir}", markup=False)


def print_candidates(console: Any, family: TaskFamily, result: ChainResult) -> None:
    """Every model that could ship, measured side by side, and which one was released and why."""
    assert result.release is not None
    rows, misses = [], []
    for c in result.release.candidates:
        rows.append((c.name, f"{c.parameters / 1e6:.1f}M", f"{c.size_mb:.1f}", *family.candidate_cells(c),
                     "yes" if c.passes else "no"))
        if not c.passes:
            misses.append(f"  {c.name} misses {'; '.join(c.misses())}")
    console.print(_table(f"release candidates vs the fp32 teacher, {result.profile}",
                         ("candidate", "params", "MiB", *family.candidate_columns, "ok"), rows))
    for line in [result.release.measured_on, *misses]:
        console.print(line, markup=False)
    released = result.release.released or "none"
    console.print(f"released: {released}: {result.release.why}", markup=False)


def print_verdict(console: Any, profile: str, verdict: str | None, reasons: list[str]) -> None:
    """The gate's verdict for the profile and its reasons (nothing when no gate ran)."""
    if verdict is None:
        return
    console.print(f"gate ({profile}): [{_VERDICT_STYLE[verdict]}]{verdict}[/]")
    for reason in reasons:
        console.print(f"  {reason}", markup=False)


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        # A terminal narrower than the table folds a value onto two lines rather than cutting it.
        table.add_column(column, justify="left" if index == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table
