"""The parts of ``compress package`` that differ for a causal language model (task ``text-generation``).

- The model folder's chat template and generation config travel with the model.
- ``manifest.json`` says how a prompt becomes token ids (:class:`PromptFormat`: the chat template
  rendered around one user message, so callers need no Jinja), which tokens end an answer
  (``output.eos_token_ids``), and the greedy answer the build host generated for a fixed prompt
  (``reference.tokens``), made with the archive's own example program (example/generate.py).
- The bench headline is the generation bench's: time to first token, time per output token, tokens/s.

Host side, torch-free: jinja2 renders the chat template (only here; the example never needs it),
onnxruntime and tokenizers generate the reference.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from export.base.errors import CompressError
from export.base.files import read_json_dict
from export.runtime.manifest import BenchSummary, Manifest, OutputInfo, PromptFormat, ReferenceOutput, TokenizerInfo

TASK = "text-generation"
EXAMPLE_DIR = Path(__file__).resolve().parent / "runtime" / "example"
EXAMPLE_PROGRAM = "generate.py"
README_TEMPLATE = "README.generate.md"
# Beside the model, a language model also needs these at run time.
GENERATION_FILES = ("chat_template.jinja", "generation_config.json")
REFERENCE_PROMPT = "Explain in one sentence why a small model is useful on a phone."
REFERENCE_TOKENS = 16  # greedy tokens recorded for the reference prompt (end-of-sequence does not stop them)
MIN_MATCHING_TOKENS = 8  # verify wants at least these leading tokens identical (kernels differ across CPUs)
_SENTINEL = "\x00PROMPT\x00"


def _ids(value: Any) -> list[int]:
    """An ``eos_token_id`` setting (an int, a list of ints, or null) as a list."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def eos_token_ids(model_dir: Path, tokenizer: TokenizerInfo) -> list[int]:
    """The end-of-sequence ids: generation_config.json's, else config.json's, else the tokenizer's eos token."""
    for name in ("generation_config.json", "config.json"):
        found = _ids(read_json_dict(model_dir / name).get("eos_token_id"))
        if found:
            return list(dict.fromkeys(found))
    eos = tokenizer.special_tokens.get("eos")
    if eos is None:
        raise CompressError(f"{model_dir}: no eos_token_id in generation_config.json or config.json and no eos token "
                            "in the tokenizer; a generation would never end")
    return [eos.id]


def output_info(signature: Any, model_dir: Path, tokenizer: TokenizerInfo) -> OutputInfo:
    """``logits`` is what a generator reads; the model must carry a KV cache (``past_key_values.*`` inputs)."""
    outputs = [spec.name for spec in signature.outputs]
    inputs = [spec.name for spec in signature.inputs]
    if "logits" not in outputs or "input_ids" not in inputs:
        raise CompressError(f"{model_dir}: a language model needs an input_ids input and a logits output; the model "
                            f"has {', '.join(inputs)} -> {', '.join(outputs)}")
    if not any(name.startswith("past_key_values.") for name in inputs):
        raise CompressError(f"{model_dir}: the model has no KV cache (no past_key_values.* inputs); export it with "
                            "task text-generation-with-past")
    return OutputInfo(primary="logits", eos_token_ids=eos_token_ids(model_dir, tokenizer))


def _special_token_text(value: Any) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def render_chat_template(template: str, settings: dict[str, Any], source: Path) -> tuple[str, str]:
    """The template rendered for one user message with the assistant's turn opened, split around the message."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise CompressError("packaging a model with a chat template needs jinja2 (pip install jinja2)") from None

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    # The environment transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    tokens = {f"{role}_token": _special_token_text(settings.get(f"{role}_token"))
              for role in ("bos", "eos", "pad", "unk")}
    try:
        text = env.from_string(template).render(messages=[{"role": "user", "content": _SENTINEL}],
                                                add_generation_prompt=True, **tokens)
    except TemplateError as exc:
        raise CompressError(f"{source}: the chat template does not render one user message ({exc})") from None
    if text.count(_SENTINEL) != 1:
        raise CompressError(f"{source}: the chat template does not place the user's message exactly once")
    prefix, suffix = text.split(_SENTINEL)
    return prefix, suffix


def prompt_format(model_dir: Path, tokenizer: TokenizerInfo) -> PromptFormat:
    """How the example and integrators turn a user's text into token ids (see :class:`PromptFormat`)."""
    settings = read_json_dict(model_dir / "tokenizer_config.json")
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else settings.get("chat_template")
    positions = read_json_dict(model_dir / "config.json").get("max_position_embeddings")
    limit = positions if isinstance(positions, int) and positions > 0 else tokenizer.max_length
    if not isinstance(template, str) or not template.strip():
        return PromptFormat(prefix="", suffix="", add_special_tokens=True, max_positions=limit)
    source = template_file if template_file.is_file() else model_dir / "tokenizer_config.json"
    prefix, suffix = render_chat_template(template, settings, source)
    # Like transformers' apply_chat_template: the template writes every special token itself.
    return PromptFormat(prefix=prefix, suffix=suffix, add_special_tokens=False,
                        chat_template="model/chat_template.jinja" if template_file.is_file() else None,
                        max_positions=limit)


def reference_output(model_dir: Path, model_path: Path, manifest: Manifest) -> ReferenceOutput:
    """The greedy answer to the reference prompt on this host (CPU, one thread: reproducible), made by
    the archive's own example program."""
    import onnxruntime as ort

    from export.runtime.example.generate import Generator

    local = manifest.to_json()  # paths as they are in the run directory
    local["model"]["path"] = model_path.name
    local["tokenizer"]["file"] = "tokenizer.json"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    generator = Generator(model_dir, providers=["CPUExecutionProvider"], manifest=local, session_options=options)
    try:
        # Past an end-of-sequence token too: a short answer would leave too few tokens to compare.
        tokens = generator.generate_ids(generator.encode(REFERENCE_PROMPT), REFERENCE_TOKENS, stop_at_eos=False)
    except Exception as exc:  # onnxruntime's own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"{model_path}: generating the reference answer failed: {first}") from None
    return ReferenceOutput(sentence=REFERENCE_PROMPT, values=[], tokens=tokens,
                           text=generator.decode(generator.until_eos(tokens)), min_matching_tokens=MIN_MATCHING_TOKENS)


def quality_extras(stages: dict[str, Any]) -> dict[str, float]:
    """Perplexities and greedy agreement from the distill and quantize stage records, where they are."""
    extras: dict[str, float] = {}
    distill = stages.get("distill")
    quality = distill.metrics.get("quality") if distill is not None else None
    if isinstance(quality, dict):
        for key in ("teacher_perplexity", "student_perplexity", "greedy_agreement"):
            if isinstance(quality.get(key), (int, float)):
                extras[key] = round(float(quality[key]), 6)
    quantize = stages.get("quantize")
    result = quantize.metrics.get("result") if quantize is not None else None
    if isinstance(result, dict):
        for key, name in (("perplexity", "released_perplexity"), ("perplexity_fp32", "fp32_onnx_perplexity")):
            if isinstance(result.get(key), (int, float)):
                extras[name] = round(float(result[key]), 6)
    return extras


def bench_summary(bench: Any, host: dict[str, Any]) -> BenchSummary:  # bench: GenerationBenchReport
    """The generation bench's headline."""

    def stats(timing: Any) -> dict[str, float]:
        return {"p50": timing.p50, "p95": timing.p95, "mean": timing.mean}

    return BenchSummary(
        profile=bench.profile, host=host, providers=list(bench.session.providers_used), batch_size=1,
        sequence_length=None, latency_ms={}, model_size_mb=bench.model.size_mb,
        peak_memory_mb=bench.memory.session_peak_mb, ttft_ms=stats(bench.ttft_ms), tpot_ms=stats(bench.tpot_ms),
        tokens_per_s=bench.tokens_per_s, prompt_length=bench.prompt_length, new_tokens=bench.new_tokens,
    )


def ttft_png(bench: Any, profile: Any, title: str) -> bytes:  # bench: GenerationBenchReport
    """The time-to-first-token distribution with its p95 budget."""
    from export import plots

    budget = profile.budgets.generation.ttft_ms
    return plots.latency_png(samples_ms=bench.ttft_ms.samples, percentiles_ms={"p50": bench.ttft_ms.p50,
                                                                               "p95": bench.ttft_ms.p95},
                             budgets_ms={"p95": budget} if budget is not None else {}, title=title,
                             xlabel=f"time to first token (ms), {bench.prompt_length}-token prompt, "
                                    f"{len(bench.ttft_ms.samples)} runs")


def _chat_template_text(fmt: PromptFormat) -> str:
    if not (fmt.prefix or fmt.suffix):
        return "The model has no chat template: prefix and suffix are empty."
    where = f"`{fmt.chat_template}`" if fmt.chat_template else "the chat template of tokenizer_config.json"
    return (f"Prefix and suffix below are the model's chat template ({where}, Jinja) rendered around one user "
            "message with the assistant's turn opened, so no template engine is needed.")


def render_readme(manifest: Manifest, profile: Any, table: Any) -> str:
    """example/README.md for a language model: the prompt format, the inputs and the KV-cache loop."""
    signature = manifest.model.signature
    shape = lambda spec: "[" + ", ".join(str(d) for d in spec.shape) + "]"  # noqa: E731
    past = [s for s in signature.inputs if s.name.startswith("past_key_values.")]
    shown_inputs = [s for s in signature.inputs if not s.name.startswith("past_key_values.")] + past[:2]
    inputs = table([(f"`{s.name}`", s.dtype, shape(s)) for s in shown_inputs], ("name", "dtype", "shape"))
    present = [s for s in signature.outputs if s.name.startswith("present.")]
    outputs = table([(f"`{s.name}`", s.dtype, shape(s)) for s in [signature.output("logits"), *present[:2]] if s],
                    ("name", "dtype", "shape"))
    fmt = manifest.prompt or PromptFormat(prefix="", suffix="", add_special_tokens=True)
    reference = manifest.reference
    gen = profile.workload.generation_or_default
    contrib = ""
    if manifest.model.other_opsets:
        contrib = (f"\nIt uses onnxruntime's own operators ({', '.join(manifest.model.other_opsets)}): a reduced "
                   "(mobile) onnxruntime build must include them.")
    template = string.Template((EXAMPLE_DIR / README_TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(
        name=manifest.name, version=manifest.version, model_path=manifest.model.path, opset=manifest.model.opset,
        ir_version=manifest.model.ir_version, min_ort=manifest.model.min_onnxruntime, contrib_note=contrib,
        profile=manifest.profile, precision=manifest.precision, tokenizer_file=manifest.tokenizer.file,
        tokenizer_kind=manifest.tokenizer.kind,
        chat_template_text=_chat_template_text(fmt),
        prefix=json.dumps(fmt.prefix, ensure_ascii=False), suffix=json.dumps(fmt.suffix, ensure_ascii=False),
        special_tokens="yes" if fmt.add_special_tokens else "no",
        max_positions=fmt.max_positions or manifest.tokenizer.max_length,
        eos_ids=", ".join(str(i) for i in manifest.output.eos_token_ids or []),
        layers=len(past) // 2, inputs_table=inputs, past_count=len(past), outputs_table=outputs,
        prompt_length=gen.prompt_length, new_tokens=gen.new_tokens,
        reference_prompt=reference.sentence, reference_count=len(reference.tokens or []), reference_tokens=", ".join(str(t) for t in reference.tokens or []),
        reference_text=json.dumps(reference.text or "", ensure_ascii=False),
        min_matching=reference.min_matching_tokens or 0,
    )
