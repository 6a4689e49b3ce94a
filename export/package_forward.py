"""Packaging a model that answers with one forward pass: sentence encoders and classifiers."""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from export.base.errors import CompressError
from export.base.files import read_json_dict
from export.base.tasks import read_pooling
from export.package_kind import (EXAMPLE_DIR, PackageKind, budget_text, fmt, host_words, markdown_table,
                                 onnx_runtime_note, reference_setup, shape_text)
from export.runtime.manifest import LibraryLoad, OutputInfo, ReferenceOutput
from export.runtime.release_kind import FORWARD_PASS, ReleaseKind
from export.st_folder import module_files

if TYPE_CHECKING:
    from export.runtime.bench import BenchReport
    from export.runtime.manifest import Manifest, ModelSignature, TokenizerInfo
    from export.runtime.profiles import Profile

REFERENCE_SENTENCE = "Edge devices run this model on text they see for the first time."
# Optimum's class for each task, and the output it returns (token states: pooling is the caller's).
_OPTIMUM_CLASSES = {"feature-extraction": ("ORTModelForFeatureExtraction", "last_hidden_state"),
                    "text-classification": ("ORTModelForSequenceClassification", "logits"),
                    "token-classification": ("ORTModelForTokenClassification", "logits")}


class ForwardPassPackaging(PackageKind):
    """Embeddings (``sentence_embedding`` or pooled token states) and logits, one pass per request."""

    release: ClassVar[ReleaseKind] = FORWARD_PASS
    latency_plot: ClassVar[str] = "latency.png"
    ort_format: ClassVar[bool] = True

    def output_info(self, task: str, signature: ModelSignature, model_dir: Path, tokenizer: TokenizerInfo
                    ) -> OutputInfo:
        names = [spec.name for spec in signature.outputs]
        if task == "feature-extraction":
            if "sentence_embedding" in names:
                return OutputInfo(primary="sentence_embedding")
            for candidate in ("last_hidden_state", "token_embeddings"):
                if candidate in names:
                    pooling = read_pooling(model_dir)
                    return OutputInfo(primary=candidate, pooling=pooling.mode, normalize=pooling.normalize)
            raise CompressError(f"{model_dir}: a sentence encoder needs a sentence_embedding or last_hidden_state "
                                f"output; the model has {', '.join(names)}")
        if task in ("text-classification", "token-classification"):
            if "logits" not in names:
                raise CompressError(f"{model_dir}: a classifier needs a logits output; the model has "
                                    f"{', '.join(names)}")
            id2label = read_json_dict(model_dir / "config.json").get("id2label") or {}
            labels = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if id2label else None
            return OutputInfo(primary="logits", labels=labels)
        raise CompressError(f"run.json: unsupported task {task!r}")

    def reference_output(self, model_dir: Path, model_path: Path, manifest: Manifest) -> ReferenceOutput:
        """The primary output for the reference sentence on this host (one thread, CPU: reproducible)."""
        from export.runtime.example.run_model import PackagedModel

        local, options = reference_setup(manifest, model_path)
        model = PackagedModel(model_dir, providers=["CPUExecutionProvider"], manifest=local, session_options=options)
        values = model.answer([REFERENCE_SENTENCE])[0].ravel()
        return ReferenceOutput(sentence=REFERENCE_SENTENCE, values=[round(float(v), 6) for v in values])

    def latency_png(self, bench: BenchReport, profile: Profile, title: str) -> bytes:
        from export import plots

        budgets = {k: v for k, v in profile.budgets.latency_ms.model_dump().items() if v is not None}
        samples = getattr(bench.latency, "samples_ms", None)  # per-run latencies, when the report carries them
        percentiles = {"p50": bench.latency.p50_ms, "p95": bench.latency.p95_ms, "p99": bench.latency.p99_ms}
        return plots.latency_png(samples_ms=samples, percentiles_ms=percentiles, budgets_ms=budgets, title=title)

    def readme(self, manifest: Manifest, profile: Profile) -> str:
        signature, tokenizer, out = manifest.model.signature, manifest.tokenizer, manifest.output
        inputs = markdown_table([(f"`{s.name}`", s.dtype, shape_text(s)) for s in signature.inputs],
                                ("name", "dtype", "shape"))
        outputs = markdown_table([(f"`{s.name}`", s.dtype, shape_text(s),
                                   "**read this one**" if s.name == out.primary else "") for s in signature.outputs],
                                 ("name", "dtype", "shape", ""))
        names = {s.name for s in signature.inputs}
        token_type = ("`token_type_ids` is 0 for every token of a single text." if "token_type_ids" in names
                      else "The model takes no `token_type_ids`.")
        template = string.Template((EXAMPLE_DIR / "README.md").read_text(encoding="utf-8"))
        return template.substitute(
            name=manifest.name, version=manifest.version, model_path=manifest.model.path, opset=manifest.model.opset,
            ir_version=manifest.model.ir_version, min_ort=manifest.model.min_onnxruntime,
            contrib_note=onnx_runtime_note(manifest), profile=manifest.profile, precision=manifest.precision,
            tokenizer_file=tokenizer.file, tokenizer_kind=tokenizer.kind,
            lowercase_text=("lowercase the text (the tokenizer file's normaliser also strips control characters)."
                            if tokenizer.lowercase else "keep the case; the model is case-sensitive."),
            wrap_text=" + ".join(f"`{piece}`" if piece != "{text}" else "the text's tokens"
                                 for piece in tokenizer.template.split()) + ".",
            max_length=tokenizer.max_length, padding_side=tokenizer.padding_side,
            special_tokens_table="\n".join(f"| {role} | `{t.token}` | {t.id} |"
                                           for role, t in tokenizer.special_tokens.items()),
            batch_size=profile.workload.batch_size, sequence_length=profile.workload.sequence_length,
            inputs_table=inputs, outputs_table=outputs, output_howto=_output_howto(manifest),
            token_type_text=token_type, reference_sentence=manifest.reference.sentence,
            reference_head=", ".join(f"{v:+.6f}" for v in manifest.reference.values[:8]) + ", ...",
            reference_min_cosine=manifest.reference.min_cosine,
        )

    # -- MODEL_CARD.md ---------------------------------------------------------------------------
    def library_loads(self, manifest: Manifest, model_dir: Path) -> list[LibraryLoad]:
        """sentence-transformers for a sentence encoder that carries its modules; Optimum for a transformer
        (its config.json beside the graph, and the output Optimum reads)."""
        loads = []
        task, text = manifest.task, repr([manifest.reference.sentence])
        outputs = [spec.name for spec in manifest.model.signature.outputs]
        if task == "feature-extraction" and module_files(model_dir):
            loads.append(LibraryLoad("sentence-transformers", (
                "from sentence_transformers import SentenceTransformer\n\n"
                'model = SentenceTransformer("model", backend="onnx")\n'
                f"embeddings = model.encode({text})\n"), result="embeddings[0]"))
        optimum_class, output = _OPTIMUM_CLASSES[task]
        if output not in outputs or not (model_dir / "config.json").is_file():
            return loads
        loads.append(LibraryLoad("optimum", (
            f"from optimum.onnxruntime import {optimum_class}\n"
            "from transformers import AutoTokenizer\n\n"
            'tokenizer = AutoTokenizer.from_pretrained("model")\n'
            f'model = {optimum_class}.from_pretrained("model")\n'
            f'{output} = model(**tokenizer({text}, return_tensors="pt")).{output}\n'),
            # The reference is class probabilities: the softmax of the logits.
            result=f"{output}[0].softmax(-1)" if output == "logits" else f"{output}[0]", compares=output == "logits"))
        return loads

    def what_it_does(self, manifest: Manifest) -> list[str]:
        out = manifest.output
        if out.primary != "logits":
            primary = manifest.model.signature.output(out.primary)
            dim = primary.shape[-1] if primary and primary.shape else "?"
            how = ("pooled and L2-normalised inside the graph" if out.pooling is None
                   else f"{out.pooling}-pooled over the attention mask{' and L2-normalised' if out.normalize else ''} "
                        "by the caller")
            return [
                f"Maps a text (up to {manifest.tokenizer.max_length} tokens) to a {dim}-dimensional vector "
                f"(`{out.primary}`, {how}). Texts with similar meaning get vectors with a high cosine similarity: "
                "use it for semantic search, clustering, deduplication and as features for a small classifier.",
            ]
        labels = ", ".join(f"`{label}`" for label in (out.labels or [])) or "(no label names in the config)"
        if manifest.task == "text-classification":
            return [f"Assigns a text one of these classes: {labels}. The `{out.primary}` output holds one score per "
                    "class; a softmax turns them into probabilities."]
        return [f"Labels every token of a text with one of: {labels} (`{out.primary}`, one score per token and "
                "class)."]

    def reference_check(self, manifest: Manifest) -> str:
        return ("recomputes a reference output on the device and checks it against the build host's (cosine at least "
                f"{manifest.reference.min_cosine})")

    def numbers_rows(self, manifest: Manifest, profile: Profile) -> list[str]:
        bench, budgets = manifest.bench, profile.budgets
        if bench is None:
            return []
        rows = [f"| latency {key} (ms) | {fmt(bench.latency_ms.get(key), 2)} | "
                f"{budget_text(getattr(budgets.latency_ms, key) or None)} |" for key in ("p50", "p95", "p99")]
        rows.append(f"| model size (MiB) | {fmt(bench.model_size_mb, 2)} | {budget_text(budgets.model_size_mb or None)} |")
        rows.append(f"| peak memory added by the session (MiB) | {fmt(bench.peak_memory_mb, 1)} | "
                    f"{budget_text(budgets.peak_memory_mb or None, digits=1)} |")
        return rows

    def measured_on(self, manifest: Manifest) -> str:
        bench = manifest.bench
        return (f"Latency and memory were measured at batch {bench.batch_size}, sequence length "
                f"{bench.sequence_length} on {host_words(bench.host)} with "
                f"{', '.join(bench.providers) or 'unknown providers'} (onnxruntime "
                f"{bench.host.get('onnxruntime', '?')}). `reports/bench.json` holds the full report; "
                "`reports/latency.png` the distribution.")

    def length_limit(self, manifest: Manifest, profile: Profile) -> str:
        length = manifest.bench.sequence_length if manifest.bench else profile.workload.sequence_length
        return (f"- Inputs longer than {manifest.tokenizer.max_length} tokens are truncated; the budgets were checked "
                f"at sequence length {length}, and longer inputs take longer.")


def _output_howto(manifest: Manifest) -> str:
    out = manifest.output
    labels = ", ".join(f"{i} = `{label}`" for i, label in enumerate(out.labels or []))
    if manifest.task == "feature-extraction":
        if out.pooling is None:
            return (f"`{out.primary}` is the sentence embedding, already pooled and L2-normalised inside the "
                    "graph: compare two texts with a dot product (= cosine similarity).")
        return (f"`{out.primary}` holds one vector per token. Make the sentence embedding by {out.pooling} "
                "pooling over the tokens whose attention_mask is 1"
                + (", then divide by its L2 norm; compare two texts with a dot product." if out.normalize else "."))
    if manifest.task == "text-classification":
        return (f"`logits` holds one score per class; softmax gives probabilities. Classes: "
                f"{labels or 'see config.json'}.")
    return (f"`logits` holds one score per token and class; take the argmax per token and skip special tokens "
            f"and padding. Classes: {labels or 'see config.json'}.")
