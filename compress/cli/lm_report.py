"""What `compress distill` prints at the end of a causal-LM chain: the distillation, then teacher vs student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.cli.chain_report import print_verdict
from compress.lm.chain import LMChainResult


def print_lm_chain(result: LMChainResult) -> None:
    """Print the chain's stages, the distillation summary and the teacher-vs-student table."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print("stages: " + ", ".join(f"{name} {status}" for name, status in result.stages.items()))
    if result.distill is not None:
        _print_distill(console, result.distill.metrics, result.run_dir)
    if result.teacher is not None and result.student is not None:
        console.print(_comparison_table(result))
        if result.workload is not None:
            console.print(f"generation: {result.workload[0]}-token prompt, {result.workload[1]} new tokens, greedy, "
                          f"runs interleaved on {result.host}; perplexity on the held-out split", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    print_verdict(console, result.profile, result.verdict, result.gate_reasons)


def _print_distill(console: Any, m: dict[str, Any], run_dir: Path) -> None:
    t, q = m["training"], m["quality"]
    console.print(f"distill: {m['student']} -> teacher layers {','.join(map(str, m['student_layers']))}; "
                  f"{m['teacher_parameters'] / 1e6:.1f}M -> {m['student_parameters'] / 1e6:.1f}M parameters",
                  markup=False)
    console.print(f"{t['steps']} steps ({t['epochs']:.2f} epochs) in {t['train_time_s']:.0f} s on {t['device']} "
                  f"({t['precision']}), {t['tokens_per_s']:.0f} tokens/s; stopped by {t['stopped_by']}; "
                  f"{m['train_examples']} training texts ({m['teacher_answers']} answered by the teacher), "
                  f"{m['held_out_examples']} held out", markup=False)
    console.print(f"held-out (PyTorch): perplexity teacher {q['teacher_perplexity']:.2f}, student "
                  f"{q['student_perplexity']:.2f}; next-token agreement {q['next_token_agreement']:.4f}; greedy "
                  f"agreement {q['greedy_agreement']:.4f} ({q['greedy_tokens']} tokens over "
                  f"{q['greedy_prompts']} prompts)", markup=False)
    console.print(f"student: {Path(run_dir) / 'distill' / 'student'}", markup=False)


def _comparison_table(result: LMChainResult) -> Any:
    from rich.table import Table

    teacher, student = result.teacher, result.student
    table = Table(title=f"teacher (fp32 ONNX) vs released student ({result.precision} ONNX), {result.profile}",
                  title_justify="left")
    for column, justify in (("", "left"), ("teacher", "right"), ("student", "right"), ("ratio", "right")):
        table.add_column(column, justify=justify)
    table.add_row("parameters", f"{teacher.parameters / 1e6:.1f}M", f"{student.parameters / 1e6:.1f}M",
                  f"{teacher.parameters / student.parameters:.1f}x fewer")
    table.add_row("file size", _mb(teacher.size_bytes), _mb(student.size_bytes),
                  f"{teacher.size_bytes / student.size_bytes:.1f}x smaller")
    if teacher.tokens_per_s and student.tokens_per_s:
        table.add_row("tokens/s", f"{teacher.tokens_per_s:.1f}", f"{student.tokens_per_s:.1f}",
                      f"{student.tokens_per_s / teacher.tokens_per_s:.2f}x faster")
        table.add_row("time to first token p50", f"{teacher.ttft_ms:.1f} ms", f"{student.ttft_ms:.1f} ms",
                      f"{teacher.ttft_ms / student.ttft_ms:.2f}x faster")
        table.add_row("time per token p50", f"{teacher.tpot_ms:.1f} ms", f"{student.tpot_ms:.1f} ms",
                      f"{teacher.tpot_ms / student.tpot_ms:.2f}x faster")
    q = result.quality or {}
    if q:
        table.add_row("perplexity (held-out, PyTorch fp32)", f"{q['teacher_perplexity']:.2f}",
                      f"{q['student_perplexity']:.2f}", f"{q['student_perplexity'] / q['teacher_perplexity']:.2f}x")
        table.add_row("next-token agreement", "1.0000", f"{q['next_token_agreement']:.4f}", "")
    return table


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
