"""``MODEL_CARD.md``: the release explained to the person who will ship it.

What the model does, how it was made, the numbers with the machine they were measured on, where
the release was and was not verified, and what it cannot do. Every number comes from the
manifest, the stage records or the profile: nothing here is typed in by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from export.base.records import StageRecord
from export.runtime.manifest import Manifest
from export.runtime.profiles import Profile

_TASK_WORDS = {
    "feature-extraction": "sentence encoder",
    "text-classification": "text classifier",
    "token-classification": "token classifier",
    "text-generation": "text generator (causal language model)",
}
_METRIC_WORDS = {
    "mean_cosine": "mean cosine similarity to the teacher's embeddings",
    "argmax_agreement": "share of inputs where the student picks the teacher's class",
    "next_token_agreement": "share of held-out tokens where the student's most likely next token is the teacher's",
}
GENERATION = "text-generation"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _what_it_does(manifest: Manifest) -> list[str]:
    out = manifest.output
    signature = manifest.model.signature
    primary = signature.output(out.primary)
    if manifest.task == GENERATION:
        chat = " wrapped in its chat template" if manifest.prompt and manifest.prompt.chat_template else ""
        limit = manifest.prompt.max_positions if manifest.prompt else manifest.tokenizer.max_length
        return [
            f"Continues a prompt{chat}, one token at a time (greedy: the `{out.primary}` argmax; the KV cache "
            f"carries the past between steps), until an end-of-sequence token or a length limit; prompt and answer "
            f"together fit in {limit:,} positions. `example/generate.py` runs the loop.",
        ]
    if manifest.task == "feature-extraction":
        dim = primary.shape[-1] if primary and primary.shape else "?"
        how = ("pooled and L2-normalised inside the graph" if out.pooling is None
               else f"{out.pooling}-pooled over the attention mask{' and L2-normalised' if out.normalize else ''} by the caller")
        return [
            f"Maps a text (up to {manifest.tokenizer.max_length} tokens) to a {dim}-dimensional vector "
            f"(`{out.primary}`, {how}). Texts with similar meaning get vectors with a high cosine similarity: "
            "use it for semantic search, clustering, deduplication and as features for a small classifier.",
        ]
    labels = ", ".join(f"`{label}`" for label in (out.labels or [])) or "(no label names in the config)"
    if manifest.task == "text-classification":
        return [f"Assigns a text one of these classes: {labels}. The `{out.primary}` output holds one score per class; "
                "a softmax turns them into probabilities."]
    return [f"Labels every token of a text with one of: {labels} (`{out.primary}`, one score per token and class)."]


def _verification(manifest: Manifest, archive_name: str) -> list[str]:
    lines: list[str] = []
    if not manifest.gates:
        lines.append("**No gate ran for this release**: nothing was checked against the profile's budgets. "
                     f"Run `compress verify --gate {archive_name}` on a `{manifest.profile}` device before shipping it.")
        return lines
    for profile, gate in sorted(manifest.gates.items()):
        where = f" (measured on {gate.measured_on})" if gate.measured_on else ""
        if gate.verdict == "pass":
            lines.append(f"- `{profile}`: **pass**{where}: the gate passed on hardware that matches the profile.")
        elif gate.verdict == "fail":
            lines.append(f"- `{profile}`: **FAIL**{where}.")
        else:
            lines.append(
                f"- `{profile}`: **unverified**{where}: that machine is not a `{profile}` device, so its latency "
                f"and memory say little about the target. Run `compress verify --gate {archive_name}` on the "
                "target: it re-runs the benchmark there and gives a pass or fail verdict (exit code 0 or 1)."
            )
        lines.extend(f"  - {reason}" for reason in gate.reasons)
    lines.append("")
    if manifest.task == GENERATION:
        check = (f"regenerates the build host's greedy answer to a reference prompt on the device and checks its "
                 f"tokens (the first {manifest.reference.min_matching_tokens} identical)")
    else:
        check = ("recomputes a reference output on the device and checks it against the build host's (cosine at least "
                 f"{manifest.reference.min_cosine})")
    lines.append("Quality numbers depend on the model, not on the machine: they hold wherever it runs. "
                 f"`compress verify` also {check}.")
    return lines


def _generation_rows(manifest: Manifest, profile: Profile) -> list[str]:
    """Perplexities and the generation bench against ``budgets.generation``."""
    quality, bench, gen = manifest.quality, manifest.bench, profile.budgets.generation
    rows = []
    for key, label in (("teacher_perplexity", "teacher perplexity (held-out, PyTorch fp32)"),
                       ("student_perplexity", "student perplexity (held-out, PyTorch fp32)"),
                       ("fp32_onnx_perplexity", "student perplexity (fp32 ONNX)"),
                       ("released_perplexity", f"released model perplexity ({manifest.precision} ONNX)"),
                       ("greedy_agreement", "greedy completions' token agreement with the teacher")):
        if quality.get(key) is not None:
            rows.append(f"| {label} | {_fmt(quality[key], 2 if 'perplexity' in key else 4)} | - |")
    if bench is None or bench.ttft_ms is None:
        return rows

    def budget(value: float | None, comparison: str = "<=", digits: int = 2) -> str:
        return f"{comparison} {_fmt(value, digits)}" if value is not None else "-"

    size = gen.model_size_mb if gen.model_size_mb is not None else profile.budgets.model_size_mb
    memory = gen.peak_memory_mb if gen.peak_memory_mb is not None else profile.budgets.peak_memory_mb
    rows += [
        f"| tokens/s (end to end) | {_fmt(bench.tokens_per_s, 1)} | {budget(gen.tokens_per_s, '>=', 1)} |",
        f"| time to first token p50 / p95 (ms) | {_fmt(bench.ttft_ms.get('p50'), 2)} / "
        f"{_fmt(bench.ttft_ms.get('p95'), 2)} | {budget(gen.ttft_ms)} (p95) |",
        f"| time per output token p50 / p95 (ms) | {_fmt(bench.tpot_ms.get('p50'), 3)} / "
        f"{_fmt(bench.tpot_ms.get('p95'), 3)} | {budget(gen.tpot_ms, digits=3)} (p95) |",
        f"| model size (MiB) | {_fmt(bench.model_size_mb, 2)} | {budget(size)} |",
        f"| peak memory added by the session (MiB) | {_fmt(bench.peak_memory_mb, 1)} | {budget(memory, digits=1)} |",
    ]
    return rows


def _numbers(manifest: Manifest, profile: Profile) -> list[str]:
    quality, budgets = manifest.quality, profile.budgets
    metric = quality.get("metric") or "teacher agreement"
    rows = [
        "| measure | value | budget |",
        "| --- | --- | --- |",
        f"| teacher agreement ({_METRIC_WORDS.get(metric, metric)}) | {_fmt(quality.get('teacher_agreement'))} | "
        f"{'>= ' + _fmt(budgets.quality.min_teacher_agreement) if budgets.quality.min_teacher_agreement is not None else '-'} |",
    ]
    if quality.get("neighbour_agreement") is not None:
        rows.append(f"| nearest-neighbour agreement (top 10) | {_fmt(quality['neighbour_agreement'])} | - |")
    if quality.get("quantization_drop") is not None:
        rows.append(f"| agreement lost to quantization | {_fmt(quality['quantization_drop'])} | "
                    f"<= {_fmt(budgets.quality.max_quantization_drop)} |")
    bench = manifest.bench
    if manifest.task == GENERATION:
        rows += _generation_rows(manifest, profile)
    elif bench is not None:
        for key in ("p50", "p95", "p99"):
            budget = getattr(budgets.latency_ms, key)
            value = bench.latency_ms.get(key)
            rows.append(f"| latency {key} (ms) | {_fmt(value, 2)} | {'<= ' + _fmt(budget, 2) if budget else '-'} |")
        rows.append(f"| model size (MiB) | {_fmt(bench.model_size_mb, 2)} | "
                    f"{'<= ' + _fmt(budgets.model_size_mb, 2) if budgets.model_size_mb else '-'} |")
        rows.append(f"| peak memory added by the session (MiB) | {_fmt(bench.peak_memory_mb, 1)} | "
                    f"{'<= ' + _fmt(budgets.peak_memory_mb, 1) if budgets.peak_memory_mb else '-'} |")
    lines = rows + [""]
    if quality.get("heldout_samples"):
        lines.append(f"Quality was measured on {quality['heldout_samples']:,} held-out texts the student never trained on.")
    if bench is not None and bench.ttft_ms is not None:
        host = bench.host
        lines.append(
            f"Generation was measured greedily with a {bench.prompt_length}-token prompt and {bench.new_tokens} new "
            f"tokens on {host.get('description') or host.get('cpu_model', 'an unknown host')} with "
            f"{', '.join(bench.providers) or 'unknown providers'} (onnxruntime {host.get('onnxruntime', '?')}). "
            "`reports/bench.json` holds the full report; `reports/ttft.png` the time-to-first-token distribution."
        )
    elif bench is not None:
        host = bench.host
        lines.append(
            f"Latency and memory were measured at batch {bench.batch_size}, sequence length {bench.sequence_length} "
            f"on {host.get('description') or host.get('cpu_model', 'an unknown host')} with "
            f"{', '.join(bench.providers) or 'unknown providers'} (onnxruntime {host.get('onnxruntime', '?')}). "
            "`reports/bench.json` holds the full report; `reports/latency.png` the distribution."
        )
    else:
        lines.append("No benchmark report came with this run: latency and memory were not measured.")
    return lines


def _stages(stages: Mapping[str, StageRecord]) -> list[str]:
    if not stages:
        return []
    lines = ["| stage | took | measured |", "| --- | --- | --- |"]
    for name, record in stages.items():
        scalars = [f"{k} {_fmt(v)}" for k, v in sorted(record.metrics.items()) if isinstance(v, (int, float, str))
                   and not isinstance(v, bool)]
        lines.append(f"| {name} | {record.duration_s:,.0f} s | {'; '.join(scalars) or '-'} |")
    return lines


def render_model_card(manifest: Manifest, *, profile: Profile, stages: Mapping[str, StageRecord],
                      archive_name: str, has_training_curve: bool) -> str:
    """The Markdown text of ``MODEL_CARD.md`` for a release."""
    task_word = _TASK_WORDS.get(manifest.task, manifest.task)
    teacher, student = manifest.teacher, manifest.student
    lines: list[str] = []
    if manifest.released_despite_failed_gate:
        failed = [p for p, g in sorted(manifest.gates.items()) if g.verdict == "fail"]
        lines += [
            "> **WARNING: this release FAILED its gate** "
            f"({', '.join(f'`{p}`' for p in failed)}) and was packaged anyway with `--allow-failed`.",
            "> It misses at least one budget of its target profile; see *Where it was verified* below before using it.",
            "",
        ]
    lines += [
        f"# {manifest.name} {manifest.version}",
        "",
        f"A {task_word} for `{manifest.profile}` ({profile.description}), {manifest.precision} ONNX.",
        "",
        "## What it does",
        "",
        *_what_it_does(manifest),
        "",
        "## How it was made",
        "",
        f"Distilled from the teacher **{teacher.name}** ({_millions(teacher.params)} parameters; weights sha256 "
        f"`{teacher.weights_sha256[:16]}…`) into a student with {student.get('layers')} layers, hidden size "
        f"{student.get('hidden')} and {_millions(student.get('params', 0))} parameters "
        f"({teacher.params / max(student.get('params', 1), 1):.1f}x fewer), then exported to ONNX (opset "
        f"{manifest.model.opset}) and brought to {manifest.precision}. The student learned to reproduce the "
        "teacher's outputs; it saw no labels of its own.",
        "",
        *_stages(stages),
        "",
    ]
    if has_training_curve:
        lines += ["`reports/training_curve.png` shows the distillation loss.", ""]
    lines += [
        "## The numbers",
        "",
        *_numbers(manifest, profile),
        "",
        "## Where it was verified",
        "",
        *_verification(manifest, archive_name),
        "",
        "## Known limits",
        "",
        _length_limit(manifest, profile),
        "- Quality is agreement with the teacher, not accuracy on your data: the student inherits the teacher's "
        "languages, domains and biases, and adds errors of its own. Evaluate it on your own examples.",
        f"- Needs onnxruntime {manifest.model.min_onnxruntime} or newer ({manifest.model.min_onnxruntime_note}).",
    ]
    if manifest.model.other_opsets:
        domains = ", ".join(f"{d} v{v}" for d, v in manifest.model.other_opsets.items())
        lines.append(f"- Uses onnxruntime-specific operators ({domains}): standard onnxruntime builds have them; "
                     "a reduced mobile build must be configured to include them, and other ONNX runtimes may lack them.")
    if manifest.precision.startswith("int8"):
        lines.append("- int8 weights: expect small numeric differences between CPUs (x86 and Arm int8 kernels differ).")
    if manifest.precision == "fp16":
        lines.append("- fp16: runs at full speed only where the execution provider computes in fp16 (GPU); on a CPU "
                     "it may be slower than fp32.")
    lines += [
        "",
        "## Files",
        "",
        "`manifest.json` lists every file with its sha256 and size, the model's inputs and outputs and the "
        f"tokenizer settings. `example/{_program(manifest)}` runs the model with onnxruntime, numpy and tokenizers "
        "only; `example/README.md` describes the inputs and outputs for other languages.",
        "",
        f"Built by compress {manifest.tool_version} from run `{manifest.run.run_id}` ({manifest.run.created_at}).",
        "",
    ]
    return "\n".join(lines)


def _program(manifest: Manifest) -> str:
    return "generate.py" if manifest.task == GENERATION else "run_model.py"


def _length_limit(manifest: Manifest, profile: Profile) -> str:
    """The first known limit: how long an input may be, and the length the budgets were checked at."""
    if manifest.task == GENERATION:
        limit = manifest.prompt.max_positions if manifest.prompt else manifest.tokenizer.max_length
        gen = profile.workload.generation_or_default
        return (f"- Prompt and answer together must fit in {limit:,} positions; the budgets were checked with a "
                f"{gen.prompt_length}-token prompt and {gen.new_tokens} new tokens, and longer prompts take longer "
                "to the first token.")
    length = manifest.bench.sequence_length if manifest.bench else profile.workload.sequence_length
    return (f"- Inputs longer than {manifest.tokenizer.max_length} tokens are truncated; the budgets were checked at "
            f"sequence length {length}, and longer inputs take longer.")
