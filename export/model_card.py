"""``MODEL_CARD.md``: the release explained to the person who will ship it.

What the model does, how it was made, the numbers with the machine they were measured on, where
the release was and was not verified, and what it cannot do. Every number comes from the
manifest, the stage records or the profile: nothing here is typed in by hand.
"""

from __future__ import annotations

from collections.abc import Mapping

from export.base.records import StageRecord
from export.base.tasks import TEXT_GENERATION
from export.package_kind import PackageKind, fmt
from export.runtime.manifest import Manifest
from export.runtime.profiles import Profile

_TASK_WORDS = {
    "feature-extraction": "sentence encoder",
    "text-classification": "text classifier",
    "token-classification": "token classifier",
    TEXT_GENERATION: "text generator (causal language model)",
}
_METRIC_WORDS = {
    "mean_cosine": "mean cosine similarity to the teacher's embeddings",
    "argmax_agreement": "share of inputs where the student picks the teacher's class",
    "next_token_agreement": "share of held-out tokens where the student's most likely next token is the teacher's",
    "answer_token_agreement": "share of the tokens of the teacher's held-out answers the student predicts first",
}




def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _verification(manifest: Manifest, kind: PackageKind, archive_name: str) -> list[str]:
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
    lines.append("Quality numbers depend on the model, not on the machine: they hold wherever it runs. "
                 f"`compress verify` also {kind.reference_check(manifest)}.")
    return lines


def _numbers(manifest: Manifest, kind: PackageKind, profile: Profile) -> list[str]:
    quality, budgets = manifest.quality, profile.budgets
    metric = quality.get("metric") or "teacher agreement"
    rows = [
        "| measure | value | budget |",
        "| --- | --- | --- |",
        f"| teacher agreement ({_METRIC_WORDS.get(metric, metric)}) | {fmt(quality.get('teacher_agreement'))} | "
        f"{'>= ' + fmt(budgets.quality.min_teacher_agreement) if budgets.quality.min_teacher_agreement is not None else '-'} |",
    ]
    if quality.get("neighbour_agreement") is not None:
        rows.append(f"| nearest-neighbour agreement (top 10) | {fmt(quality['neighbour_agreement'])} | - |")
    if quality.get("similarity_spearman") is not None:
        rows.append(f"| similarity ranking (Spearman of pairwise cosines) | {fmt(quality['similarity_spearman'])} | - |")
    if quality.get("quantization_drop") is not None:
        rows.append(f"| agreement lost to quantization | {fmt(quality['quantization_drop'])} | "
                    f"<= {fmt(budgets.quality.max_quantization_drop)} |")
    bench = manifest.bench
    lines = rows + kind.numbers_rows(manifest, profile) + [""]
    if quality.get("heldout_samples"):
        lines.append(f"Quality was measured on {quality['heldout_samples']:,} held-out texts the student never trained on.")
    if bench is not None:
        lines.append(kind.measured_on(manifest))
    else:
        lines.append("No benchmark report came with this run: latency and memory were not measured.")
    return lines


def _stages(stages: Mapping[str, StageRecord]) -> list[str]:
    if not stages:
        return []
    lines = ["| stage | took | measured |", "| --- | --- | --- |"]
    for name, record in stages.items():
        scalars = [f"{k} {fmt(v)}" for k, v in sorted(record.metrics.items()) if isinstance(v, (int, float, str))
                   and not isinstance(v, bool)]
        lines.append(f"| {name} | {record.duration_s:,.0f} s | {'; '.join(scalars) or '-'} |")
    return lines


def _training(stages: Mapping[str, StageRecord]) -> list[str]:
    """How long distillation trained, and what the curve forecasts for more (the distill stage's own figures)."""
    record = stages.get("distill")
    if record is None or not record.metrics.get("train_time_s"):
        return []
    m = record.metrics
    line = (f"Distillation trained for {float(m['train_time_s']) / 60:.1f} minutes ({m.get('steps', '?')} steps, "
            f"{m.get('precision', 'fp32')} on {m.get('device', 'cpu')}).")
    projection = m.get("quality_projection") or {}
    ahead = projection.get("forecasts") or {}
    if ahead:
        metric = m.get("teacher_agreement_metric", "agreement")
        line += (f" Its quality curve forecasts {metric} " +
                 ", ".join(f"{value:.3f} after {minutes} minutes" for minutes, value in ahead.items()) +
                 " of training on the same machine (an extrapolation, and an upper bound: on the default job it "
                 "overestimated by 0.02 at three times the minutes; `--time-budget` buys the minutes).")
    if projection.get("line"):
        line += f" {projection['line'][0].upper()}{projection['line'][1:]}."
    return [line, ""]


def _provenance(manifest: Manifest) -> list[str]:
    """How the student came from its teacher: distilled from weights, or taught by an endpoint's answers."""
    teacher, student = manifest.teacher, manifest.student
    shape = (f"{student.get('layers')} layers, hidden size {student.get('hidden')} and "
             f"{_millions(student.get('params', 0))} parameters")
    after = (f"then exported to ONNX (opset {manifest.model.opset}) and brought to {manifest.precision}.")
    if student.get("released_from") == "teacher":
        return [f"The teacher **{teacher.name}** itself ({_millions(teacher.params)} parameters; weights sha256 "
                f"`{teacher.weights_sha256[:16]}…`), exported to ONNX (opset {manifest.model.opset}) and brought to "
                f"{manifest.precision}: measured beside the distilled student, it was the fastest model that met "
                "every quality and size budget of the profile, and no student did."]
    if teacher.answers_from:
        return [f"Taught by the answers of **{teacher.name}**, queried at `{teacher.answers_from}` (answers sha256 "
                f"`{(teacher.answers_sha256 or '')[:16]}…`); the student, with {shape}, started from a local model "
                f"of {_millions(teacher.params)} parameters (weights sha256 `{teacher.weights_sha256[:16]}…`), "
                f"{after} The terms of the teacher's licence for its outputs apply to this model."]
    return [f"Distilled from the teacher **{teacher.name}** ({_millions(teacher.params)} parameters; weights sha256 "
            f"`{teacher.weights_sha256[:16]}…`) into a student with {shape} "
            f"({teacher.params / max(student.get('params', 1), 1):.1f}x fewer), {after} The student learned to "
            "reproduce the teacher's outputs; it saw no labels of its own."]


def _use_it(manifest: Manifest) -> list[str]:
    """The lines a user types in the library they already run, each run by ``compress verify``."""
    if not manifest.loads_with:
        return []
    lines = ["## Use it", "", "From the unpacked archive's folder (`model/` is the model):", ""]
    for load in manifest.loads_with:
        lines += [f"With `{load.library}`:", "", "```python", load.code.rstrip("\n"), "```", ""]
    lines += ["`compress verify` runs each of these where its library is installed and checks the answer against "
              "the build host's; `example/` calls the model with onnxruntime alone.", ""]
    return lines


_KOTLIN_ARRAYS = {"int64": ("LongBuffer", "LongArray"), "int32": ("IntBuffer", "IntArray")}


def _kotlin_arrays(dtype: str) -> tuple[str, str]:
    """The java.nio buffer and Kotlin array for an input's dtype (token inputs are int64 unless int32)."""
    return _KOTLIN_ARRAYS.get(dtype, _KOTLIN_ARRAYS["int64"])


def _kotlin_feed(name: str, dtype: str) -> str:
    """One input of the session's map: the token ids, a mask of ones, or zeros (token types)."""
    buffer, array = _kotlin_arrays(dtype)
    if name == "input_ids":
        values = "ids" if array == "LongArray" else "IntArray(ids.size) { ids[it].toInt() }"
    elif name == "attention_mask":
        values = f"{array}(ids.size) {{ 1 }}"
    else:
        values = f"{array}(ids.size)"
    return f'    "{name}" to OnnxTensor.createTensor(env, {buffer}.wrap({values}), shape),'


def _on_android(manifest: Manifest) -> list[str]:
    """Kotlin for ONNX Runtime Mobile, when the archive carries the ORT format (``compress verify`` runs the .ort)."""
    if manifest.model.ort is None:
        return []
    tokenizer, primary = manifest.tokenizer, manifest.output.primary
    inputs = manifest.model.signature.inputs
    feeds = [_kotlin_feed(spec.name, spec.dtype) for spec in inputs]
    buffers = sorted({_kotlin_arrays(spec.dtype)[0] for spec in inputs} | {"LongBuffer"})
    output = next(s for s in manifest.model.signature.outputs if s.name == primary)
    read = ("(result.get(\"%s\").get().value as Array<FloatArray>)[0]" % primary if output.rank == 2
            else "(result.get(\"%s\").get().value as Array<Array<FloatArray>>)[0]  // one row per token" % primary)
    specials = ", ".join(f"{role} {token.token}={token.id}" for role, token in sorted(tokenizer.special_tokens.items()))
    return [
        "## On Android", "",
        f"`{manifest.model.ort}` is the same model in ONNX Runtime's ORT format, for ONNX Runtime Mobile "
        f"(`com.microsoft.onnxruntime:onnxruntime-android`); `{manifest.model.ort_operators}` lists the operators a "
        "reduced build needs (`build.sh --include_ops_by_config`). In Kotlin, with the file in the app's assets:", "",
        "```kotlin",
        "import ai.onnxruntime.OnnxTensor",
        "import ai.onnxruntime.OrtEnvironment",
        *[f"import java.nio.{buffer}" for buffer in buffers],
        "",
        "val env = OrtEnvironment.getEnvironment()",
        "val session = env.createSession(assets.open(\"model.ort\").readBytes())",
        f"val ids: LongArray = tokenize(text)  // {tokenizer.template}, at most {tokenizer.max_length} tokens",
        "val shape = longArrayOf(1, ids.size.toLong())",
        "val inputs = mapOf(",
        *feeds,
        ")",
        f"val answer = session.run(inputs).use {{ result -> {read} }}",
        "```", "",
        f"`tokenize` is the {tokenizer.kind} tokenizer of `{tokenizer.file}` ({'lower-cased' if tokenizer.lowercase else 'cased'}; "
        f"{specials}): the Hugging Face tokenizers format, which DJL's `ai.djl.huggingface:tokenizers` reads on "
        f"Android, or ids computed on a server. {_reading(manifest)} `compress verify` runs the .ort beside the "
        ".onnx and checks they agree.", "",
    ]


def _reading(manifest: Manifest) -> str:
    output = manifest.output
    if output.pooling:
        steps = f"{output.pooling}-pool the token rows over the attention mask" + (", then L2-normalise" if output.normalize else "")
        return f"`{output.primary}` holds token states: {steps}."
    if output.labels:
        return f"`{output.primary}` holds one score per label ({', '.join(output.labels[:4])}{', ...' if len(output.labels) > 4 else ''})."
    return f"`{output.primary}` is the text's vector: pooling (and normalisation, where the model has it) is in the graph."


def render_model_card(manifest: Manifest, kind: PackageKind, *, profile: Profile, stages: Mapping[str, StageRecord],
                      archive_name: str, has_training_curve: bool) -> str:
    """The Markdown text of ``MODEL_CARD.md`` for a release."""
    task_word = _TASK_WORDS.get(manifest.task, manifest.task)
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
        *_use_it(manifest),
        *_on_android(manifest),
        "## What it does",
        "",
        *kind.what_it_does(manifest),
        "",
        "## How it was made",
        "",
        *_provenance(manifest),
        "",
        *_stages(stages),
        "",
        *_training(stages),
    ]
    if has_training_curve:
        lines += ["`reports/training_curve.png` shows the distillation loss.", ""]
    lines += [
        "## The numbers",
        "",
        *_numbers(manifest, kind, profile),
        "",
        "## Where it was verified",
        "",
        *_verification(manifest, kind, archive_name),
        "",
        "## Known limits",
        "",
        kind.length_limit(manifest, profile),
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
        f"tokenizer settings. `example/{kind.release.example_program}` runs the model with onnxruntime, numpy and tokenizers "
        "only; `example/README.md` describes the inputs and outputs for other languages.",
        "",
        f"Built by compress {manifest.tool_version} from run `{manifest.run.run_id}` ({manifest.run.created_at}).",
        "",
    ]
    return "\n".join(lines)


