"""Packaging a causal language model (task ``text-generation``): a prompt format, a greedy reference.

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
from typing import TYPE_CHECKING, Any, ClassVar

from export.base.errors import CompressError
from export.base.files import read_json_dict
from export.package_kind import (EXAMPLE_DIR, PackageKind, budget_text, fmt, host_words, markdown_table,
                                 onnx_runtime_note, reference_setup, shape_text)
from export.genai_config import GENAI_CONFIG
from export.runtime.manifest import LibraryLoad, Manifest, OutputInfo, PromptFormat, ReferenceOutput, TokenizerInfo
from export.runtime.release_kind import GENERATION, ReleaseKind

if TYPE_CHECKING:
    from export.base.records import StageRecord
    from export.runtime.generation_bench import GenerationBenchReport
    from export.runtime.manifest import ModelSignature
    from export.runtime.profiles import Profile

README_TEMPLATE = "README.generate.md"
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


def _output_info(signature: Any, model_dir: Path, tokenizer: TokenizerInfo) -> OutputInfo:
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


def _prompt_format(model_dir: Path, tokenizer: TokenizerInfo) -> PromptFormat:
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


def _genai_knows(model_dir: Path) -> bool:
    """Whether ONNX Runtime GenAI has a model type for the released architecture."""
    from export.genai_config import genai_type

    return genai_type(read_json_dict(model_dir / "config.json")) is not None


def _genai_config(model_dir: Path, manifest: Manifest) -> str | None:
    """The text of ``genai_config.json`` for the released graph, or None when GenAI has no type for it."""
    from export.genai_config import genai_config_text

    if not _genai_knows(model_dir):
        return None
    return genai_config_text(model_dir, file_name="model.onnx",
                             context_length=manifest.prompt.max_positions if manifest.prompt else None)


def _reference_output(model_dir: Path, model_path: Path, manifest: Manifest) -> ReferenceOutput:
    """The greedy answer to the reference prompt on this host (CPU, one thread: reproducible), made by
    the archive's own example program."""
    from export.runtime.example.generate import Generator

    local, options = reference_setup(manifest, model_path)
    generator = Generator(model_dir, providers=["CPUExecutionProvider"], manifest=local, session_options=options)
    try:
        # Past an end-of-sequence token too: a short answer would leave too few tokens to compare.
        tokens = generator.generate_ids(generator.encode(REFERENCE_PROMPT), REFERENCE_TOKENS, stop_at_eos=False)
    except Exception as exc:  # onnxruntime's own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"{model_path}: generating the reference answer failed: {first}") from None
    return ReferenceOutput(sentence=REFERENCE_PROMPT, values=[], tokens=tokens,
                           text=generator.decode(generator.until_eos(tokens)), min_matching_tokens=MIN_MATCHING_TOKENS)


def _quality_extras(stages: dict[str, StageRecord]) -> dict[str, float]:
    """Perplexities and greedy agreement from the distill and quantize stage records, where they are;
    the release stage's own measurements of the released model when it chose one."""
    release = stages.get("release")
    released = release.metrics.get("released_quality") if release is not None else None
    if isinstance(released, dict) and all(isinstance(released.get(k), (int, float)) for k in (
            "perplexity", "perplexity_ratio", "quantization_perplexity_ratio")):
        extras = {"released_perplexity": round(float(released["perplexity"]), 6),
                  "fp32_onnx_perplexity": round(released["perplexity"] / released["quantization_perplexity_ratio"], 6),
                  "teacher_onnx_perplexity": round(released["perplexity"] / released["perplexity_ratio"], 6)}
        if release.metrics.get("released_source") == "teacher":
            return extras  # the distilled student's own figures describe a model that was not released
    else:
        extras = {}
    distill = stages.get("distill")
    quality = distill.metrics.get("quality") if distill is not None else None
    if isinstance(quality, dict):
        for key in ("teacher_perplexity", "student_perplexity", "greedy_agreement"):
            if isinstance(quality.get(key), (int, float)):
                extras[key] = round(float(quality[key]), 6)
    quantize = stages.get("quantize")
    result = quantize.metrics.get("result") if quantize is not None else None
    if isinstance(result, dict) and "released_perplexity" not in extras:
        for key, name in (("perplexity", "released_perplexity"), ("perplexity_fp32", "fp32_onnx_perplexity")):
            if isinstance(result.get(key), (int, float)):
                extras[name] = round(float(result[key]), 6)
    return extras


def _ttft_png(bench: GenerationBenchReport, profile: Profile, title: str) -> bytes:
    """The time-to-first-token distribution with its p95 budget."""
    from export import plots

    budget = profile.budgets.generation.ttft_ms
    return plots.latency_png(samples_ms=bench.ttft_ms.samples, percentiles_ms={"p50": bench.ttft_ms.p50,
                                                                               "p95": bench.ttft_ms.p95},
                             budgets_ms={"p95": budget} if budget is not None else {}, title=title,
                             xlabel=f"time to first token (ms), {bench.prompt_length}-token prompt, "
                                    f"{len(bench.ttft_ms.samples)} runs")


def _chat_template_text(prompt: PromptFormat) -> str:
    if not (prompt.prefix or prompt.suffix):
        return "The model has no chat template: prefix and suffix are empty."
    where = f"`{prompt.chat_template}`" if prompt.chat_template else "the chat template of tokenizer_config.json"
    return (f"Prefix and suffix below are the model's chat template ({where}, Jinja) rendered around one user "
            "message with the assistant's turn opened, so no template engine is needed.")


def _render_readme(manifest: Manifest, profile: Profile) -> str:
    """example/README.md for a language model: the prompt format, the inputs and the KV-cache loop."""
    signature = manifest.model.signature
    past = [s for s in signature.inputs if s.name.startswith("past_key_values.")]
    shown_inputs = [s for s in signature.inputs if not s.name.startswith("past_key_values.")] + past[:2]
    inputs = markdown_table([(f"`{s.name}`", s.dtype, shape_text(s)) for s in shown_inputs], ("name", "dtype", "shape"))
    present = [s for s in signature.outputs if s.name.startswith("present.")]
    outputs = markdown_table([(f"`{s.name}`", s.dtype, shape_text(s)) for s in [signature.output("logits"), *present[:2]] if s],
                    ("name", "dtype", "shape"))
    prompt = manifest.prompt or PromptFormat(prefix="", suffix="", add_special_tokens=True)
    reference = manifest.reference
    gen = profile.workload.generation_or_default
    contrib = onnx_runtime_note(manifest)
    template = string.Template((EXAMPLE_DIR / README_TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(
        name=manifest.name, version=manifest.version, model_path=manifest.model.path, opset=manifest.model.opset,
        ir_version=manifest.model.ir_version, min_ort=manifest.model.min_onnxruntime, contrib_note=contrib,
        profile=manifest.profile, precision=manifest.precision, tokenizer_file=manifest.tokenizer.file,
        tokenizer_kind=manifest.tokenizer.kind,
        chat_template_text=_chat_template_text(prompt),
        prefix=json.dumps(prompt.prefix, ensure_ascii=False), suffix=json.dumps(prompt.suffix, ensure_ascii=False),
        special_tokens="yes" if prompt.add_special_tokens else "no",
        max_positions=prompt.max_positions or manifest.tokenizer.max_length,
        eos_ids=", ".join(str(i) for i in manifest.output.eos_token_ids or []),
        layers=len(past) // 2, inputs_table=inputs, past_count=len(past), outputs_table=outputs,
        prompt_length=gen.prompt_length, new_tokens=gen.new_tokens,
        reference_prompt=reference.sentence, reference_count=len(reference.tokens or []), reference_tokens=", ".join(str(t) for t in reference.tokens or []),
        reference_text=json.dumps(reference.text or "", ensure_ascii=False),
        min_matching=reference.min_matching_tokens or 0,
    )


def _genai_load(text: str, new: int) -> LibraryLoad:
    """ONNX Runtime GenAI's loop on ``text``, ``new`` greedy tokens past end-of-sequence."""
    return LibraryLoad("onnxruntime-genai", (
        "import onnxruntime_genai as og\n\n"
        'model = og.Model("model")\n'
        "tokenizer = og.Tokenizer(model)\n"
        f"prompt = tokenizer.encode({text!r})\n"
        "params = og.GeneratorParams(model)\n"
        f"params.set_search_options(max_length=len(prompt) + {new}, min_length=len(prompt) + {new}, "
        "do_sample=False)\n"
        "generator = og.Generator(model, params)\n"
        "generator.append_tokens(prompt)\n"
        "while not generator.is_done():\n"
        "    generator.generate_next_token()\n"
        "answer = generator.get_sequence(0)[len(prompt):]\n"
        "print(tokenizer.decode(answer))\n"), result="answer")


def _llama_cpp_load(gguf: str, text: str, new: int, context: int) -> LibraryLoad:
    """llama.cpp through llama-cpp-python on the GGUF, greedy. llama.cpp quantizes in its own blocks, so
    its answer is reported, not held to the ONNX graph's tokens."""
    return LibraryLoad("llama-cpp-python", (
        f"# or from a shell: llama-cli -m {gguf} -p \"...\" -n 64 --temp 0\n"
        "from llama_cpp import Llama\n\n"
        f'llm = Llama("{gguf}", n_ctx={context}, verbose=False)\n'
        f"prompt = llm.tokenize({text!r}.encode(), add_bos=False, special=True)\n"
        "answer = []\n"
        "for token in llm.generate(prompt, top_k=1, temp=0.0):\n"
        "    answer.append(token)\n"
        f"    if len(answer) == {new}:\n"
        "        break\n"
        "print(llm.detokenize(answer).decode(errors=\"replace\"))\n"), result="answer", compares=False)


class GenerationPackaging(PackageKind):
    """A causal LM with its KV cache: chat template, end-of-sequence ids, a greedy reference answer."""

    release: ClassVar[ReleaseKind] = GENERATION
    extra_model_files: ClassVar[tuple[str, ...]] = ("chat_template.jinja", "generation_config.json")
    latency_plot: ClassVar[str] = "ttft.png"

    def output_info(self, task: str, signature: ModelSignature, model_dir: Path, tokenizer: TokenizerInfo
                    ) -> OutputInfo:
        return _output_info(signature, model_dir, tokenizer)

    def prompt_format(self, model_dir: Path, tokenizer: TokenizerInfo) -> PromptFormat | None:
        return _prompt_format(model_dir, tokenizer)

    def format_files(self, model_dir: Path, manifest: Manifest) -> dict[str, bytes]:
        """``genai_config.json`` where ONNX Runtime GenAI knows the architecture: ``og.Model("model")`` loads."""
        return {GENAI_CONFIG: config.encode("utf-8")} if (config := _genai_config(model_dir, manifest)) else {}

    def library_loads(self, manifest: Manifest, model_dir: Path) -> list[LibraryLoad]:
        """ONNX Runtime GenAI's own generation loop on the reference prompt, greedy, past end-of-sequence;
        llama.cpp (llama-cpp-python) on the GGUF where the archive carries one."""
        if manifest.reference.tokens is None:
            return []
        fmt = manifest.prompt
        text = (fmt.prefix + manifest.reference.sentence + fmt.suffix) if fmt else manifest.reference.sentence
        new = len(manifest.reference.tokens)
        loads = [_genai_load(text, new)] if _genai_knows(model_dir) else []
        if manifest.model.gguf is not None:
            limit = manifest.prompt.max_positions if manifest.prompt else manifest.tokenizer.max_length
            loads.append(_llama_cpp_load(manifest.model.gguf, text, new, min(2048, limit)))
        return loads

    def reference_output(self, model_dir: Path, model_path: Path, manifest: Manifest) -> ReferenceOutput:
        return _reference_output(model_dir, model_path, manifest)

    def latency_png(self, bench: GenerationBenchReport, profile: Profile, title: str) -> bytes:
        return _ttft_png(bench, profile, title)

    def quality_extras(self, stages: dict[str, StageRecord]) -> dict[str, float]:
        return _quality_extras(stages)

    def readme(self, manifest: Manifest, profile: Profile) -> str:
        return _render_readme(manifest, profile)

    # -- MODEL_CARD.md ---------------------------------------------------------------------------
    def what_it_does(self, manifest: Manifest) -> list[str]:
        out = manifest.output
        chat = " wrapped in its chat template" if manifest.prompt and manifest.prompt.chat_template else ""
        limit = manifest.prompt.max_positions if manifest.prompt else manifest.tokenizer.max_length
        return [
            f"Continues a prompt{chat}, one token at a time (greedy: the `{out.primary}` argmax; the KV cache "
            f"carries the past between steps), until an end-of-sequence token or a length limit; prompt and answer "
            f"together fit in {limit:,} positions. `example/generate.py` runs the loop.",
        ]

    def reference_check(self, manifest: Manifest) -> str:
        return (f"regenerates the build host's greedy answer to a reference prompt on the device and checks its "
                f"tokens (the first {manifest.reference.min_matching_tokens} identical)")

    def numbers_rows(self, manifest: Manifest, profile: Profile) -> list[str]:
        """Perplexities and the generation bench against ``budgets.generation``."""
        quality, bench, gen = manifest.quality, manifest.bench, profile.budgets.generation
        rows = []
        for key, label in (("teacher_perplexity", "teacher perplexity (held-out, PyTorch fp32)"),
                           ("student_perplexity", "student perplexity (held-out, PyTorch fp32)"),
                           ("teacher_onnx_perplexity", "teacher perplexity (held-out, fp32 ONNX)"),
                           ("fp32_onnx_perplexity", "released model perplexity in fp32 (ONNX)"),
                           ("released_perplexity", f"released model perplexity ({manifest.precision} ONNX)"),
                           ("greedy_agreement", "greedy completions' token agreement with the teacher")):
            if quality.get(key) is not None:
                rows.append(f"| {label} | {fmt(quality[key], 2 if 'perplexity' in key else 4)} | - |")
        if bench is None or bench.ttft_ms is None:
            return rows
        size = gen.model_size_mb if gen.model_size_mb is not None else profile.budgets.model_size_mb
        memory = gen.peak_memory_mb if gen.peak_memory_mb is not None else profile.budgets.peak_memory_mb
        return rows + [
            f"| tokens/s (end to end) | {fmt(bench.tokens_per_s, 1)} | {budget_text(gen.tokens_per_s, '>=', 1)} |",
            f"| time to first token p50 / p95 (ms) | {fmt(bench.ttft_ms.get('p50'), 2)} / "
            f"{fmt(bench.ttft_ms.get('p95'), 2)} | {budget_text(gen.ttft_ms)} (p95) |",
            f"| time per output token p50 / p95 (ms) | {fmt(bench.tpot_ms.get('p50'), 3)} / "
            f"{fmt(bench.tpot_ms.get('p95'), 3)} | {budget_text(gen.tpot_ms, digits=3)} (p95) |",
            f"| model size (MiB) | {fmt(bench.model_size_mb, 2)} | {budget_text(size)} |",
            f"| peak memory added by the session (MiB) | {fmt(bench.peak_memory_mb, 1)} | "
            f"{budget_text(memory, digits=1)} |",
        ]

    def measured_on(self, manifest: Manifest) -> str:
        bench = manifest.bench
        return (f"Generation was measured greedily with a {bench.prompt_length}-token prompt and {bench.new_tokens} "
                f"new tokens on {host_words(bench.host)} with {', '.join(bench.providers) or 'unknown providers'} "
                f"(onnxruntime {bench.host.get('onnxruntime', '?')}). `reports/bench.json` holds the full report; "
                "`reports/ttft.png` the time-to-first-token distribution.")

    def length_limit(self, manifest: Manifest, profile: Profile) -> str:
        limit = manifest.prompt.max_positions if manifest.prompt else manifest.tokenizer.max_length
        gen = profile.workload.generation_or_default
        return (f"- Prompt and answer together must fit in {limit:,} positions; the budgets were checked with a "
                f"{gen.prompt_length}-token prompt and {gen.new_tokens} new tokens, and longer prompts take longer "
                "to the first token.")
