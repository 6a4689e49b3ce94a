"""Export a Hugging Face model folder to ONNX, and prove the export computes what PyTorch does.

The exporter is optimum's ``main_export`` (TorchScript-based; its graphs quantize cleanly, unlike
torch's dynamo exporter, STACK.md trap 3), with dynamic batch and sequence axes.

Sentence encoders: a folder with sentence-transformers files (``modules.json``) is exported with
``library_name="sentence_transformers"``, so the graph runs the whole sentence-transformers
pipeline (transformer, pooling, the optional Dense projection, normalisation). Its outputs are
``token_embeddings`` and ``sentence_embedding``; ``sentence_embedding`` is the vector a user
needs, pooled and normalised inside the graph, and is what examples and packaging read. This
path works offline with local folders (the default teacher and the test fixtures). Its inputs
are ``input_ids`` and ``attention_mask`` (no ``token_type_ids``). A plain encoder folder
without those files exports ``last_hidden_state``; classifiers export ``logits``.

Parity is checked on real held-out text (the default corpus's held-out split, or ``--samples
FILE``), batched with padding so the dynamic axes and masks are exercised, against the PyTorch
model computing the project's own definition of the output (``export.torch_model``:
pool, project, normalise). The exported ``tokenizer.json`` must also tokenize those texts to the
same ids as the source folder's tokenizer. Outside tolerance (:class:`ParityTolerance`) the
export fails with a CompressError and nothing is left at the output path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.base.errors import CompressError
from export.base.quiet import quiet_libraries
from export.base.records import FileRef, StageRecord, read_stage_result
from export.base.stages import StageOutput, run_stage
from export.base.tasks import Task, detect_task, is_sentence_transformer, read_config, read_pooling
from export.st_folder import copy_module_files, expose_hidden_states
from export.runtime.agreement import argmax_agreement, max_abs_diff, mean_cosine
from export.runtime.samples import DEFAULT_MAX_LENGTH, Signature, TextEncoder, held_out_texts, signature
from export.base.report_json import JsonRecord

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
SENTENCE_EMBEDDING = "sentence_embedding"
PARITY_SAMPLES = 48
PARITY_BATCH = 8


@dataclass(frozen=True)
class ParityTolerance:
    """How close the fp32 ONNX model must follow PyTorch for the export to count."""

    max_abs_diff: float = 1e-3  # on the compared output, valid (unpadded) positions only
    min_cosine: float = 0.9999  # embeddings and hidden states: mean cosine
    min_argmax_agreement: float = 0.99  # classifiers: near-tied logits may flip within max_abs_diff


@dataclass
class ParityReport:
    """The export's parity with PyTorch on real text."""

    output: str  # the compared output: sentence_embedding, logits or last_hidden_state
    metric: str  # mean_cosine | argmax_agreement
    agreement: float
    max_abs_diff: float
    samples: int
    sample_source: str
    tokenizer_matches: bool
    tolerance: ParityTolerance
    passed: bool


@dataclass
class ExportResult(JsonRecord):
    """What ``export_model`` wrote and how it checked it."""

    onnx_path: Path
    task: Task
    library: str  # sentence_transformers | transformers
    opset: int
    inputs: list[Signature]
    outputs: list[Signature]
    parity: ParityReport
    size_bytes: int
    model_dir: Path
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    @property
    def primary_output(self) -> str:
        return self.parity.output


# ---------------------------------------------------------------------------------------------
# Checks before exporting


def check_not_bitsandbytes(model_dir: Path) -> None:
    """A bitsandbytes-quantized folder holds packed int8/nf4 weights no ONNX exporter can trace."""
    quant = read_config(model_dir).get("quantization_config") or {}
    if quant.get("quant_method") == "bitsandbytes" or quant.get("load_in_8bit") or quant.get("load_in_4bit"):
        raise CompressError(
            f"{model_dir} is a bitsandbytes-quantized model (for PyTorch on a GPU); it cannot be exported to "
            "ONNX. Export the fp32 folder it came from, then `compress quantize` the ONNX file."
        )


def check_exportable(model_dir: Path, task: Task) -> str:
    """The optimum library name to export with; CompressError for an architecture the exporter lacks."""
    from optimum.exporters.onnx import main_export  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    config = read_config(model_dir)
    model_type = str(config.get("model_type", "")).replace("_", "-")
    try:
        supported = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="onnx",
                                                                     library_name="transformers")
    except KeyError:
        raise CompressError(
            f"{model_dir}: architecture {', '.join(config.get('architectures') or ['?'])} "
            f"(model_type {model_type or '?'!r}) is not supported by the ONNX exporter"
        ) from None
    if task not in supported:
        raise CompressError(f"{model_dir}: the ONNX exporter supports {model_type} for "
                            f"{', '.join(sorted(supported))}, not {task}")
    if task == "feature-extraction" and is_sentence_transformer(model_dir):
        _check_sentence_transformer_modules(model_dir)
        return "sentence_transformers"
    return "transformers"


# The sentence-transformers modules whose computation the parity reference reproduces.
_ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


def _check_sentence_transformer_modules(model_dir: Path) -> None:
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except ValueError:
        raise CompressError(f"{model_dir / 'modules.json'} is not valid JSON") from None
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.rsplit(".", 1)[-1] not in _ST_MODULES:
            raise CompressError(f"{model_dir}: sentence-transformers module {kind!r} is not supported "
                                f"(supported: {', '.join(_ST_MODULES)})")


# ---------------------------------------------------------------------------------------------
# Export


def export_model(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, task: str = "auto",
                 opset: int | None = None, samples: str | os.PathLike[str] | None = None,
                 tolerance: ParityTolerance = ParityTolerance(), resume: bool = False) -> ExportResult:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (+ tokenizer, config, ``stage.json``) and check parity.

    ``task``: ``auto`` (from the config's architecture) or one of the supported tasks. ``samples``:
    a text file (.txt/.jsonl/.csv/.tsv) for the parity check; default: the held-out split of
    the default corpus. ``resume=True`` returns the previous result when ``out_dir`` holds a
    complete export of the same inputs and parameters. The folder is built under a temporary
    name and renamed into place only when parity holds.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise CompressError(f"model folder not found: {model_dir}")
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve().is_relative_to(out_dir.resolve()):
        raise CompressError(f"--out {out_dir} would replace the model folder {model_dir}; choose another folder")
    check_not_bitsandbytes(model_dir)
    resolved_task = detect_task(model_dir, task)
    if opset is not None and not 11 <= opset <= 21:
        raise CompressError(f"--opset {opset} is outside the range the exporter and onnxruntime share (11-21)")
    texts = held_out_texts(PARITY_SAMPLES, samples)
    sample_source = str(samples) if samples else "default corpus, held-out split"

    inputs = {"model": FileRef.of(model_dir)}
    if samples:
        inputs["samples"] = FileRef.of(samples)
    planned = StageRecord(stage="export", inputs=inputs, params={
        "task": resolved_task, "opset": opset, "tolerance": dataclasses.asdict(tolerance),
        "parity_samples": PARITY_SAMPLES,
        # 2: sentence encoders also output last_hidden_state and carry their module files, so the
        # folder loads in sentence-transformers' ONNX backend (export.st_folder).
        "layout": 2,
    })
    def work(tmp: Path) -> StageOutput:
        library = check_exportable(model_dir, resolved_task)
        _run_main_export(model_dir, tmp, resolved_task, library, opset)
        _ensure_tokenizer(model_dir, tmp)
        if library == "sentence_transformers":
            expose_hidden_states(tmp / MODEL_FILE)
            copy_module_files(model_dir, tmp)
        onnx_path = tmp / MODEL_FILE
        parity, inputs_sig, outputs_sig = check_parity(model_dir, onnx_path, resolved_task, texts, sample_source,
                                                       tolerance)
        if not parity.passed:
            raise CompressError(
                f"ONNX export of {model_dir} does not match PyTorch on {parity.samples} held-out texts: "
                f"{parity.metric} {parity.agreement:.6f}, max abs diff {parity.max_abs_diff:.2e} on "
                f"{parity.output} (tolerance: {_describe_tolerance(parity.metric, tolerance)}"
                f"{'' if parity.tokenizer_matches else '; the exported tokenizer gives different ids'}); "
                "nothing was written"
            )
        result = ExportResult(
            onnx_path=out_dir / MODEL_FILE, task=resolved_task, library=library, opset=_opset_of(onnx_path),
            inputs=inputs_sig, outputs=outputs_sig, parity=parity, size_bytes=onnx_path.stat().st_size,
            model_dir=model_dir,
        )
        return StageOutput({"model": MODEL_FILE, "tokenizer": "tokenizer.json"},
                           {"result": result.to_json(), "parity": dataclasses.asdict(parity)})

    return ExportResult.from_json(run_stage(out_dir, planned, work, resume=resume).result)


def _describe_tolerance(metric: str, tolerance: ParityTolerance) -> str:
    floor = tolerance.min_argmax_agreement if metric == "argmax_agreement" else tolerance.min_cosine
    return f"{metric} >= {floor}, max abs diff <= {tolerance.max_abs_diff:g}"


def _quiet_export():
    """Keep the exporter's tracer warnings and info logs off the user's terminal."""
    return quiet_libraries("optimum", "transformers", "sentence_transformers")


def _run_main_export(model_dir: Path, out: Path, task: Task, library: str, opset: int | None) -> None:
    from optimum.exporters.onnx import main_export

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with _quiet_export():
            main_export(
                str(model_dir), output=str(out), task=task, opset=opset, library_name=library, device="cpu",
                do_validation=False, trust_remote_code=False, local_files_only=True,
            )
    except (ValueError, KeyError, OSError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompressError(f"cannot export {model_dir} to ONNX: {first_line}") from None
    if not (out / MODEL_FILE).is_file():
        raise CompressError(f"the exporter wrote no {MODEL_FILE} for {model_dir}")


def _ensure_tokenizer(model_dir: Path, out: Path) -> None:
    """The ONNX side tokenizes with ``tokenizer.json`` alone: make sure it is there."""
    # sentence-transformers' own settings (max_seq_length) tell a caller where to truncate.
    if (model_dir / "sentence_bert_config.json").is_file() and not (out / "sentence_bert_config.json").exists():
        shutil.copy2(model_dir / "sentence_bert_config.json", out / "sentence_bert_config.json")
    if (out / "tokenizer.json").is_file():
        return
    from export.torch_model import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise CompressError(f"{model_dir}: its tokenizer has no fast (tokenizer.json) form; "
                            "the ONNX model could not be used without Python tokenization code")
    tokenizer.save_pretrained(out)
    if not (out / "tokenizer.json").is_file():
        raise CompressError(f"{model_dir}: could not write tokenizer.json next to the ONNX model")


def _opset_of(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------------------------
# Parity


def _reference_outputs(model_dir: Path, task: Task, batches: list[dict[str, np.ndarray]],
                       primary: str) -> list[np.ndarray]:
    """PyTorch's view of the primary output for each batch, by the project's own definitions."""
    import torch

    from export.torch_model import embed
    from export.torch_model import read_dense
    from export.torch_model import load_model

    model = load_model(model_dir, task)
    pooling = read_pooling(model_dir)
    projection = read_dense(model_dir) if primary == SENTENCE_EMBEDDING else None
    results = []
    with torch.inference_mode():
        for batch in batches:
            tensors = {name: torch.from_numpy(array) for name, array in batch.items()}
            if primary == SENTENCE_EMBEDDING:
                out = embed(model, tensors, pooling, projection)
            elif primary == "last_hidden_state":
                out = model(**tensors).last_hidden_state
            else:
                out = model(**tensors).logits
            results.append(out.float().numpy())
    return results


def _primary_output(task: Task, output_names: list[str]) -> str:
    if task == "feature-extraction":
        return SENTENCE_EMBEDDING if SENTENCE_EMBEDDING in output_names else "last_hidden_state"
    return "logits"


def _valid_rows(arrays: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Stack outputs of batches, keeping only unpadded token positions for token-level outputs."""
    rows = []
    for array, mask in zip(arrays, masks):
        rows.append(array[mask.astype(bool)] if array.ndim == 3 else array)
    return np.concatenate(rows, axis=0)


def check_parity(model_dir: Path, onnx_path: Path, task: Task, texts: list[str], sample_source: str,
                 tolerance: ParityTolerance = ParityTolerance()
                 ) -> tuple[ParityReport, list[Signature], list[Signature]]:
    """Compare the ONNX model at ``onnx_path`` with the PyTorch folder on ``texts`` (batched, padded)."""
    import onnxruntime as ort

    from export.torch_model import load_tokenizer

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    inputs_sig, outputs_sig = signature(session.get_inputs()), signature(session.get_outputs())
    primary = _primary_output(task, [o.name for o in outputs_sig])

    encoder = TextEncoder(onnx_path.parent / "tokenizer.json", DEFAULT_MAX_LENGTH)
    source_tokenizer = load_tokenizer(model_dir)
    batches, feeds, masks = [], [], []
    tokenizer_matches = True
    for start in range(0, len(texts), PARITY_BATCH):
        chunk = texts[start:start + PARITY_BATCH]
        encoded = encoder.encode(chunk)
        expected = source_tokenizer(chunk, padding=True, truncation=True, max_length=DEFAULT_MAX_LENGTH,
                                    return_tensors="np")
        if expected["input_ids"].shape != encoded["input_ids"].shape or \
                not np.array_equal(expected["input_ids"], encoded["input_ids"]):
            tokenizer_matches = False
        wanted = [arg.name for arg in inputs_sig]
        batches.append(encoded)  # PyTorch takes all three; token type ids are zeros for single texts
        feeds.append({name: encoded[name] for name in wanted})
        masks.append(encoded["attention_mask"])

    onnx_out = [session.run([primary], feed)[0] for feed in feeds]
    torch_out = _reference_outputs(model_dir, task, batches, primary)
    reference, candidate = _valid_rows(torch_out, masks), _valid_rows(onnx_out, masks)
    diff = max_abs_diff(reference, candidate)
    if primary == "logits":
        metric, agreement = "argmax_agreement", argmax_agreement(reference, candidate)
        floor = tolerance.min_argmax_agreement
    else:
        metric, agreement = "mean_cosine", mean_cosine(reference, candidate)
        floor = tolerance.min_cosine
    passed = tokenizer_matches and diff <= tolerance.max_abs_diff and agreement >= floor
    report = ParityReport(output=primary, metric=metric, agreement=agreement, max_abs_diff=diff, samples=len(texts),
                          sample_source=sample_source, tokenizer_matches=tokenizer_matches, tolerance=tolerance,
                          passed=passed)
    return report, inputs_sig, outputs_sig


def read_export(out_dir: str | os.PathLike[str]) -> ExportResult:
    """The result recorded in an export folder's ``stage.json``."""
    return ExportResult.from_json(read_stage_result(out_dir, "export"))
