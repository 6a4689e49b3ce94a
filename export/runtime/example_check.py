"""The archive's own example, run on this machine against the build host's reference answer.

``check_forward_pass`` runs export/runtime/example/run_model.py's logic on the reference sentence
(cosine to the recorded answer); ``check_generation`` runs example/generate.py's greedy KV-cache
loop on the reference prompt (leading tokens identical). Code inside an archive is never
executed: these are this tool's own copies of the example programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.base.errors import CompressError
from export.base.quiet import quiet_onnxruntime
from export.runtime.manifest import MANIFEST_FILE, Manifest, signature_of_session

if TYPE_CHECKING:
    from export.runtime.profiles import Profile


class VerificationError(CompressError):
    """The archive is not what its manifest says (or cannot run here)."""


@dataclass
class ExampleCheck:
    """The reference sentence (a language model: the reference prompt) run through the model on this machine."""

    sentence: str
    providers_used: list[str]
    output: str
    shape: list[int]
    head: list[float]  # first values of the answer (a language model: none)
    cosine_to_reference: float | None  # against the build host's answer (a language model: None)
    min_cosine: float | None
    pair_cosine: float | None = None  # embeddings: cosine between the two example sentences
    top_label: str | None = None  # text classifiers: the most probable class
    tokens: list[int] | None = None  # language models: the greedy answer's token ids here
    text: str | None = None  # language models: ``tokens`` decoded
    matching_tokens: int | None = None  # language models: leading tokens identical to the build host's
    reference_tokens: int | None = None  # language models: how many the build host recorded
    min_matching_tokens: int | None = None
    ort_cosine: float | None = None  # the ORT-format copy (mobile) against the .onnx, on this machine


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_signature(manifest: Manifest, session: Any) -> None:
    problems = manifest.model.signature.differences(signature_of_session(session))
    if problems:
        raise VerificationError(f"{manifest.model.path}: signature differs from {MANIFEST_FILE}: {'; '.join(problems)}")


def check_generation(root: Path, manifest: Manifest) -> ExampleCheck:
    """The example's greedy KV-cache loop on the reference prompt; its tokens must match the build host's."""
    import onnxruntime as ort

    from export.runtime.example.generate import Generator

    reference = manifest.reference
    if not reference.tokens:
        raise VerificationError(f"{MANIFEST_FILE}: a text-generation release needs reference.tokens")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: the same summation order as the build host's reference
    options.inter_op_num_threads = 1
    try:
        with quiet_onnxruntime():
            generator = Generator(root, manifest=manifest.to_json(), session_options=options)
    except Exception as exc:  # onnxruntime and tokenizers raise their own types
        raise VerificationError(f"{manifest.model.path}: onnxruntime or tokenizers cannot load it here: "
                                f"{first_line(exc)}") from None
    _check_signature(manifest, generator.session)
    try:
        tokens = generator.generate_ids(generator.encode(reference.sentence), len(reference.tokens), stop_at_eos=False)
    except Exception as exc:
        raise VerificationError(f"{manifest.model.path}: running the example failed: {first_line(exc)}") from None
    matching = next((i for i, (a, b) in enumerate(zip(tokens, reference.tokens)) if a != b),
                    min(len(tokens), len(reference.tokens)))
    required = min(reference.min_matching_tokens or len(reference.tokens), len(reference.tokens))
    if matching < required:
        raise VerificationError(
            f"{manifest.model.path}: greedy answer on this machine differs from the build host's at token "
            f"{matching + 1} ({matching} identical, {required} required) for {reference.sentence!r}"
        )
    return ExampleCheck(
        sentence=reference.sentence, providers_used=list(generator.providers), output=manifest.output.primary,
        shape=[1, len(tokens)], head=[], cosine_to_reference=None, min_cosine=None, tokens=tokens,
        text=generator.decode(generator.until_eos(tokens)), matching_tokens=matching,
        reference_tokens=len(reference.tokens), min_matching_tokens=required,
    )


def check_forward_pass(root: Path, manifest: Manifest) -> ExampleCheck:
    from export.runtime.example.run_model import DEFAULT_SENTENCES, PackagedModel, cosine

    try:
        with quiet_onnxruntime():
            model = PackagedModel(root, manifest=manifest.to_json())
    except Exception as exc:  # onnxruntime and tokenizers raise their own types
        raise VerificationError(f"{manifest.model.path}: onnxruntime or tokenizers cannot load it here: "
                                f"{first_line(exc)}") from None
    _check_signature(manifest, model.session)
    reference = manifest.reference
    try:
        answer = model.answer([reference.sentence])[0]
    except Exception as exc:
        raise VerificationError(f"{manifest.model.path}: running the example failed: {first_line(exc)}") from None
    values = np.asarray(answer, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise VerificationError(f"{manifest.model.path}: the example's output holds NaN or infinity on this machine")
    if values.size != len(reference.values):
        raise VerificationError(f"{manifest.model.path}: the example's output has {values.size} values, the build "
                                f"host's {len(reference.values)}")
    similarity = cosine(values, np.asarray(reference.values))
    if similarity < reference.min_cosine:
        raise VerificationError(
            f"{manifest.model.path}: output on this machine differs from the build host's (cosine {similarity:.4f} "
            f"< {reference.min_cosine}) for {reference.sentence!r}"
        )
    check = ExampleCheck(
        sentence=reference.sentence, providers_used=list(model.providers), output=manifest.output.primary,
        shape=list(np.asarray(answer).shape), head=[round(float(v), 6) for v in values[:8]],
        cosine_to_reference=round(similarity, 6), min_cosine=reference.min_cosine,
    )
    if manifest.model.ort is not None:
        check.ort_cosine = _check_ort_format(root, manifest, values)
    labels = manifest.output.labels
    if manifest.output.primary != "logits":  # an embedding: how close the two example sentences are
        pair = model.embed(list(DEFAULT_SENTENCES))
        check.pair_cosine = round(cosine(pair[0], pair[1]), 6)
    elif labels and values.size == len(labels):  # one text, one score per class
        check.top_label = labels[int(np.argmax(values))]
    return check


# The ORT format holds the same graph, fused and reordered at conversion.
MIN_ORT_COSINE = 0.9999


def _check_ort_format(root: Path, manifest: Manifest, onnx_answer: np.ndarray) -> float:
    """The reference sentence through the archive's .ort (what ONNX Runtime Mobile loads), as the .onnx ran it."""
    from export.runtime.example.run_model import PackagedModel, cosine

    assert manifest.model.ort is not None
    local = manifest.to_json()
    local["model"]["path"] = manifest.model.ort
    try:
        with quiet_onnxruntime():
            model = PackagedModel(root, providers=["CPUExecutionProvider"], manifest=local)
        answer = np.asarray(model.answer([manifest.reference.sentence])[0], dtype=np.float64).ravel()
    except Exception as exc:  # onnxruntime and tokenizers raise their own types
        raise VerificationError(f"{manifest.model.ort}: onnxruntime cannot run it here: {first_line(exc)}") from None
    similarity = cosine(answer, onnx_answer) if answer.size == onnx_answer.size else 0.0
    if similarity < MIN_ORT_COSINE:
        raise VerificationError(f"{manifest.model.ort}: answers differently from {manifest.model.path} on this "
                                f"machine (cosine {similarity:.6f} < {MIN_ORT_COSINE})")
    return round(similarity, 6)


def real_text_inputs(root: Path, manifest: Manifest, profile: Profile) -> tuple[Path, str]:
    """The profile's workload as real text through the archive's own tokenizer, saved as an .npz
    inside the temporary folder: what the device will really be fed, in the model's vocabulary."""
    from export.runtime.example.run_model import TextEncoder

    batch = profile.workload.batch_size
    length = min(profile.workload.sequence_length, manifest.tokenizer.max_length)
    try:
        from pydoc_data.topics import topics  # English prose that ships with Python

        passages = [" ".join(text.split()) for _, text in sorted(topics.items()) if len(text) > 2000]
        source = "passages of Python's documentation"
    except ImportError:
        passages = []
    if len(passages) < batch:
        passages = [" ".join([manifest.reference.sentence] * 64)] * batch
        source = "copies of the reference sentence"
    feeds = TextEncoder(root, manifest.to_json())(passages[:batch], pad_to=length)
    path = root.parent / "bench-inputs.npz"
    np.savez(path, **feeds)
    return path, f"real text: {batch} {source}, tokenized by the archive's tokenizer to {length} tokens"
