"""Bench reports for people: rich tables of one measurement or of two side by side.

rich is imported inside the functions, so measuring never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.runtime.bench import BenchReport, ComparisonReport
from export.runtime.generation_bench import GenerationBenchReport, GenerationComparison


def _fmt_mb(value: float) -> str:
    return f"{value:,.1f} MiB"


def _latency_rows(r: BenchReport) -> list[tuple[str, str]]:
    lat = r.latency
    return [
        ("p50 / p90 / p95 / p99", f"{lat.p50_ms:.3f} / {lat.p90_ms:.3f} / {lat.p95_ms:.3f} / {lat.p99_ms:.3f} ms"),
        ("mean ± std", f"{lat.mean_ms:.3f} ± {lat.std_ms:.3f} ms"),
        ("min / max", f"{lat.min_ms:.3f} / {lat.max_ms:.3f} ms"),
        ("throughput", f"{r.throughput.inferences_per_s:,.1f} inferences/s, {r.throughput.samples_per_s:,.1f} samples/s"),
    ]


def _render_one(report: BenchReport | GenerationBenchReport, title: str, rows: list[tuple[str, str]]) -> Any:
    """The table every single report shares: the model, its session, ``rows`` (the kind's own), memory, host."""
    from rich.table import Table

    s, m = report.session, report.model
    table = Table(title=f"{title} {Path(m.path).name} · profile {report.profile}", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    files = f" ({len(m.files)} files)" if len(m.files) > 1 else ""
    table.add_row("model", f"{m.path}{files}")
    table.add_row("size", f"{m.size_mb:,.2f} MiB")
    table.add_row("providers used", ", ".join(s.providers_used) + f"  (requested {', '.join(s.providers_requested)})")
    table.add_row("threads", f"intra {s.intra_op_threads or 'ORT default'}, inter {s.inter_op_threads or 'ORT default'}")
    table.add_row("session load", f"{s.load_s * 1000:.1f} ms")
    for name, value in rows:
        table.add_row(name, value)
    mem = report.memory
    table.add_row("memory", f"session peak {_fmt_mb(mem.session_peak_mb)} (process RSS {_fmt_mb(mem.baseline_rss_mb)} "
                            f"→ peak {_fmt_mb(mem.peak_rss_mb)})")
    table.add_row("host", report.host.describe())
    if report.remote is not None:
        table.add_row("measured on", f"{report.remote.target} over SSH, runtime {report.remote.runtime_sha256[:16]}, "
                                     f"{report.remote.files_checked} files checked on arrival")
    table.add_row("cpu flags", ", ".join(report.host.relevant_flags) or "-")
    for note in report.notes:
        table.add_row("note", note)
    return table


def render_bench(report: BenchReport) -> Any:
    """A rich table for one bench report."""
    s, w = report.session, report.workload
    seq = f" × seq {w.sequence_length}" if w.sequence_length else ""
    return _render_one(report, "bench", [
        ("workload", f"batch {w.batch_size}{seq}, {w.inputs_source}"),
        ("first run", f"{s.first_run_ms:.3f} ms"),
        ("runs", f"{report.latency.runs} timed after {report.warmup} warm-up"),
        *_latency_rows(report),
    ])


def render_comparison(report: ComparisonReport) -> Any:
    """A rich table with both models side by side and the speed ratio."""
    a, b = report.model, report.other
    return report.render("compare", [("p50 ms", a.latency.p50_ms, b.latency.p50_ms, ".3f"),
                                     ("p95 ms", a.latency.p95_ms, b.latency.p95_ms, ".3f"),
                                     ("p99 ms", a.latency.p99_ms, b.latency.p99_ms, ".3f"),
                                     ("mean ms", a.latency.mean_ms, b.latency.mean_ms, ".3f"),
                                     ("size MiB", a.model.size_mb, b.model.size_mb, ".2f"),
                                     ("load + first run MiB", a.memory.session_peak_mb, b.memory.session_peak_mb, ".1f")],
                         f"{a.latency.runs} runs each on {a.host.describe()}")


def render_generation_bench(report: GenerationBenchReport) -> Any:
    """A rich table for one generation bench report."""
    ttft, tpot = report.ttft_ms, report.tpot_ms
    return _render_one(report, "generation bench", [
        ("workload", f"prompt {report.prompt_length} tokens ({report.prompt_source}), {report.new_tokens} new tokens, "
                     "greedy"),
        ("runs", f"{report.runs} timed after {report.warmup} warm-up"),
        ("time to first token", f"p50 {ttft.p50:.2f} / p95 {ttft.p95:.2f} ms (min {ttft.min:.2f}, max {ttft.max:.2f})"),
        ("time per output token", f"p50 {tpot.p50:.3f} / p95 {tpot.p95:.3f} ms (min {tpot.min:.3f}, max {tpot.max:.3f})"),
        ("tokens/s", f"{report.tokens_per_s:,.1f} end to end, {report.decode_tokens_per_s:,.1f} decoding"),
    ])


def render_generation_comparison(report: GenerationComparison) -> Any:
    """A rich table with both models side by side and the ratios."""
    a, b = report.model, report.other
    return report.render("compare generation", [
        ("TTFT p50 ms", a.ttft_ms.p50, b.ttft_ms.p50, ".2f"), ("TTFT p95 ms", a.ttft_ms.p95, b.ttft_ms.p95, ".2f"),
        ("TPOT p50 ms", a.tpot_ms.p50, b.tpot_ms.p50, ".3f"), ("TPOT p95 ms", a.tpot_ms.p95, b.tpot_ms.p95, ".3f"),
        ("tokens/s", a.tokens_per_s, b.tokens_per_s, ",.1f"), ("size MiB", a.model.size_mb, b.model.size_mb, ".2f"),
        ("load + first generation MiB", a.memory.session_peak_mb, b.memory.session_peak_mb, ".1f"),
    ], f"prompt {a.prompt_length}, {a.new_tokens} new tokens, {a.runs} runs each on {a.host.describe()}")


def print_report(report: BenchReport | ComparisonReport | GenerationBenchReport | GenerationComparison) -> None:
    """Print the human table for any bench or comparison report on stdout."""
    from rich.console import Console

    renderers = {BenchReport: render_bench, ComparisonReport: render_comparison,
                 GenerationBenchReport: render_generation_bench, GenerationComparison: render_generation_comparison}
    Console().print(renderers[type(report)](report))  # type: ignore[operator]
