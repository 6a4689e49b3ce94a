"""``manifest.json``: what a release archive holds, how to call its model, and why to trust it.

The manifest is the contract with the edge team: every file with its sha256 and size, the
model's inputs and outputs, the tokenizer settings, the ONNX opset and the oldest onnxruntime
that can load it, the teacher and the quality measured against it, where the benchmark ran and
the gate's verdict. ``compress verify`` checks an archive against it on the device.

Standard library at import time; onnxruntime (signatures) and onnx (opset, IR version) are
imported inside the functions that need them, so ``verify`` never needs onnx.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.base.errors import CompressError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

# onnxruntime type strings -> numpy dtype names (what a C/Kotlin/Swift integrator maps to).
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
    "tensor(string)": "string",
}

# The newest ai.onnx opset and ONNX IR version each onnxruntime release implements, from
# onnxruntime's compatibility table ("ONNX opset support",
# https://onnxruntime.ai/docs/reference/compatibility.html, source docs/reference/compatibility.md).
# The oldest release that covers both of a model's numbers is the minimum that can load it.
_ORT_SUPPORT: tuple[tuple[str, int, int], ...] = (
    ("1.0", 11, 6), ("1.1", 11, 6), ("1.2", 11, 6), ("1.3", 12, 7), ("1.4", 12, 7), ("1.5", 12, 7),
    ("1.6", 13, 7), ("1.7", 13, 7), ("1.8", 14, 7), ("1.9", 15, 8), ("1.10", 15, 8), ("1.11", 16, 8),
    ("1.12", 17, 8), ("1.13", 17, 8), ("1.14", 18, 8), ("1.15", 19, 8), ("1.16", 19, 9), ("1.17", 20, 9),
    ("1.18", 21, 10), ("1.19", 21, 10), ("1.20", 21, 10),
)
ORT_TABLE_SOURCE = "onnxruntime compatibility table (onnxruntime.ai/docs/reference/compatibility.html), ORT 1.0-1.20"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` holds ints for fixed axes, names for dynamic ones."""

    name: str
    dtype: str
    shape: list[int | str]

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class ModelSignature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    def differences(self, other: ModelSignature) -> list[str]:
        """What ``other`` (e.g. the model as loaded on the device) gets wrong against this one: names, dtypes, ranks."""
        problems: list[str] = []
        for kind, mine, theirs in (("input", self.inputs, other.inputs), ("output", self.outputs, other.outputs)):
            expected = {spec.name: spec for spec in mine}
            found = {spec.name: spec for spec in theirs}
            if set(expected) != set(found):
                problems.append(f"{kind} names {sorted(found)} != manifest {sorted(expected)}")
                continue
            for name, spec in expected.items():
                if found[name].dtype != spec.dtype:
                    problems.append(f"{kind} {name!r} dtype {found[name].dtype} != manifest {spec.dtype}")
                if found[name].rank != spec.rank:
                    problems.append(f"{kind} {name!r} rank {found[name].rank} != manifest {spec.rank}")
        return problems


@dataclass(frozen=True)
class FileRecord:
    """A file of the archive, by path relative to the archive's top-level folder."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelInfo:
    path: str  # the .onnx file, relative to the archive root
    opset: int  # ai.onnx opset
    ir_version: int
    other_opsets: dict[str, int]  # e.g. {"com.microsoft": 1}: onnxruntime contrib operators
    min_onnxruntime: str
    min_onnxruntime_note: str
    external_data: list[str]  # weight files the .onnx references, relative to the archive root
    signature: ModelSignature
    gguf: str | None = None  # the same model for llama.cpp (a language model's GGUF), relative to the root
    ort: str | None = None  # the same model in ONNX Runtime's ORT format (mobile), relative to the root
    ort_operators: str | None = None  # the operators a reduced ONNX Runtime build needs for it


@dataclass(frozen=True)
class SpecialToken:
    token: str
    id: int


@dataclass(frozen=True)
class TokenizerInfo:
    file: str  # tokenizer.json (HF tokenizers format), relative to the archive root
    kind: str  # WordPiece, BPE, Unigram ...
    max_length: int  # truncate to this many tokens, special tokens included
    lowercase: bool
    template: str  # how one text is wrapped in special tokens, e.g. "[CLS] {text} [SEP]"
    special_tokens: dict[str, SpecialToken]  # role (cls, sep, pad, unk, mask) -> token and id
    padding_side: str = "right"


@dataclass(frozen=True)
class OutputInfo:
    """How to turn the raw outputs into the task's answer."""

    primary: str  # the output an application reads (sentence_embedding, last_hidden_state, logits)
    pooling: str | None = None  # embeddings from token states: mean | cls | max (None: pooled in the graph)
    normalize: bool = False  # L2-normalise after pooling
    labels: list[str] | None = None  # classifiers: index -> label
    eos_token_ids: list[int] | None = None  # text generation: generating one of these ends the answer


@dataclass(frozen=True)
class ReferenceOutput:
    """The primary output for one sentence as computed on the build host; verify recomputes and compares."""

    sentence: str  # text generation: the prompt
    values: list[float]  # text generation: empty (the answer is ``tokens``)
    min_cosine: float = 0.99
    tokens: list[int] | None = None  # text generation: the greedy answer's token ids (eos included when it ended)
    text: str | None = None  # text generation: ``tokens`` decoded
    min_matching_tokens: int | None = None  # text generation: how many leading tokens must be identical


@dataclass(frozen=True)
class LibraryLoad:
    """A library users already run that loads this release, and the lines they type.

    ``code`` runs from the unpacked archive's top folder (the model is ``"model"``) and binds
    ``result``; where ``compares`` is set, ``result`` is the reference sentence's output and
    ``verify`` checks it against ``reference.values``.
    """

    library: str  # the pip name: sentence-transformers, optimum
    code: str
    result: str  # the expression verify reads after running ``code``
    compares: bool = True


@dataclass(frozen=True)
class PromptFormat:
    """How a causal LM's caller turns a user's text into token ids (text generation only).

    ``prefix + text + suffix`` is the chat template rendered for one user message with the
    assistant's turn opened; both are empty without a template. Encode that string with the
    tokenizer, adding its own special tokens only when ``add_special_tokens``.
    """

    prefix: str
    suffix: str
    add_special_tokens: bool
    chat_template: str | None = None  # the template file in the archive (Jinja), when the model has one
    max_positions: int | None = None  # prompt + answer tokens the model can see at most


@dataclass(frozen=True)
class TeacherRef:
    name: str
    weights_sha256: str
    params: int
    answers_from: str | None = None  # a teacher known only by its answers: the endpoint (see TeacherInfo)
    answers_sha256: str | None = None


@dataclass(frozen=True)
class BenchSummary:
    """The headline of the bench report (the full report is reports/bench.json)."""

    profile: str
    host: dict[str, Any]  # where it was measured: CPU, GPU, OS, library versions
    providers: list[str]  # execution providers that really ran
    batch_size: int | None
    sequence_length: int | None
    latency_ms: dict[str, float]  # p50, p95, p99 (and mean when reported)
    model_size_mb: float | None = None
    peak_memory_mb: float | None = None
    throughput_per_s: float | None = None
    # Text generation (a generation bench): distributions in ms (p50, p95, mean), rates in tokens/s.
    ttft_ms: dict[str, float] | None = None
    tpot_ms: dict[str, float] | None = None
    tokens_per_s: float | None = None
    prompt_length: int | None = None
    new_tokens: int | None = None


@dataclass(frozen=True)
class GateSummary:
    profile: str
    verdict: str  # pass | fail | unverified
    reasons: list[str] = field(default_factory=list)
    measured_on: str | None = None


@dataclass(frozen=True)
class RunRef:
    run_id: str
    created_at: str


# Keys that only a text-generation manifest carries, by section ("" is the top level).
_GENERATION_ONLY: dict[str, tuple[str, ...]] = {
    "": ("prompt",),
    "model": ("gguf",),
    "output": ("eos_token_ids",),
    "reference": ("tokens", "text", "min_matching_tokens"),
    "bench": ("ttft_ms", "tpot_ms", "tokens_per_s", "prompt_length", "new_tokens"),
}


@dataclass
class Manifest:
    """The contents of ``manifest.json``."""

    name: str
    version: str
    profile: str
    task: str
    precision: str
    model: ModelInfo
    tokenizer: TokenizerInfo
    output: OutputInfo
    reference: ReferenceOutput
    teacher: TeacherRef
    student: dict[str, int | str]  # params, layers, hidden, released_from
    quality: dict[str, Any]  # teacher_agreement, metric, neighbour_agreement, quantization_drop, heldout_samples
    bench: BenchSummary | None
    gates: dict[str, GateSummary]  # profile name -> verdict measured for it
    providers: list[str]  # the profile's execution providers, in preference order
    tool_version: str
    run: RunRef
    files: list[FileRecord]
    released_despite_failed_gate: bool = False
    prompt: PromptFormat | None = None  # text generation: how a prompt becomes token ids
    loads_with: list[LibraryLoad] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the text-generation fields are left out where they are unset, so an
        encoder's manifest reads exactly as it did before language models existed."""
        data = dataclasses.asdict(self)
        for section, keys in _GENERATION_ONLY.items():
            block = data if section == "" else data.get(section)
            for key in keys if isinstance(block, dict) else ():
                if block.get(key, 0) is None:
                    del block[key]
        return data

    def dumps(self) -> str:
        """Canonical text (sorted keys, fixed indentation): the same manifest always gives the same bytes."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, payload: Any, *, source: str = MANIFEST_FILE) -> Manifest:
        """Parse a manifest; anything malformed is a CompressError naming the key."""
        if not isinstance(payload, dict):
            raise CompressError(f"{source}: expected a JSON object")
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise CompressError(
                f"{source}: schema_version {payload.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})"
            )
        try:
            data = dict(payload)
            model = dict(data["model"])
            signature = model["signature"]
            model["signature"] = ModelSignature(
                inputs=[TensorSpec(**spec) for spec in signature["inputs"]],
                outputs=[TensorSpec(**spec) for spec in signature["outputs"]],
            )
            data["model"] = ModelInfo(**model)
            tokenizer = dict(data["tokenizer"])
            tokenizer["special_tokens"] = {k: SpecialToken(**v) for k, v in tokenizer["special_tokens"].items()}
            data["tokenizer"] = TokenizerInfo(**tokenizer)
            data["output"] = OutputInfo(**data["output"])
            data["reference"] = ReferenceOutput(**data["reference"])
            data["prompt"] = PromptFormat(**data["prompt"]) if data.get("prompt") else None
            data["teacher"] = TeacherRef(**data["teacher"])
            data["bench"] = BenchSummary(**data["bench"]) if data.get("bench") else None
            data["gates"] = {k: GateSummary(**v) for k, v in data["gates"].items()}
            data["run"] = RunRef(**data["run"])
            data["files"] = [FileRecord(**f) for f in data["files"]]
            data["loads_with"] = [LibraryLoad(**entry) for entry in data.get("loads_with") or []]
            return cls(**data)
        except KeyError as exc:
            raise CompressError(f"{source}: missing key {exc.args[0]!r}") from None
        except (TypeError, AttributeError, ValueError) as exc:
            raise CompressError(f"{source}: malformed ({exc})") from None


def read_manifest(path: str | Path) -> Manifest:
    """Read and parse a ``manifest.json``."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressError(f"{path.name}: missing from the archive") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path.name}: not valid JSON ({exc})") from None
    return Manifest.from_json(payload, source=path.name)


def signature_of_session(session: Any) -> ModelSignature:
    """Inputs and outputs of an onnxruntime InferenceSession."""

    def spec(arg: Any) -> TensorSpec:
        dtype = _ORT_DTYPES.get(arg.type, arg.type)
        shape = [dim if isinstance(dim, int) else (dim or "?") for dim in (arg.shape or [])]
        return TensorSpec(name=arg.name, dtype=dtype, shape=shape)

    return ModelSignature(inputs=[spec(a) for a in session.get_inputs()], outputs=[spec(a) for a in session.get_outputs()])


def read_signature(model_path: str | Path) -> ModelSignature:
    """Load the model with onnxruntime on the CPU and read its inputs and outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return signature_of_session(session)


@dataclass(frozen=True)
class OnnxVersions:
    opset: int
    ir_version: int
    other_opsets: dict[str, int]
    external_data: list[str]  # file names relative to the model's folder


def read_onnx_versions(model_path: str | Path) -> OnnxVersions:
    """Opsets, IR version and external-data files of an ONNX model (weights are not loaded)."""
    import onnx

    model_path = Path(model_path)
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CompressError(f"{model_path}: not a readable ONNX model ({exc})") from None
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    locations: set[str] = set()
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        tensors.extend(attr.t for attr in node.attribute if attr.HasField("t"))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
            if location:
                locations.add(location)
    for location in locations:
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise CompressError(f"{model_path}: external data location {location!r} is outside the model's folder")
        if not (model_path.parent / location).is_file():
            raise CompressError(f"{model_path}: external data file {location!r} is missing")
    return OnnxVersions(
        opset=opsets.pop("ai.onnx", 0),
        ir_version=int(proto.ir_version),
        other_opsets=dict(sorted(opsets.items())),
        external_data=sorted(locations),
    )


def minimum_onnxruntime(opset: int, ir_version: int, *, known_good: str | None = None) -> tuple[str, str]:
    """The oldest onnxruntime release that implements ``opset`` and ``ir_version``, with how it was derived.

    Beyond the table, ``known_good`` (the version that loaded the model on the build host) is
    the best honest answer.
    """
    for release, max_opset, max_ir in _ORT_SUPPORT:
        if opset <= max_opset and ir_version <= max_ir:
            return release, f"opset {opset}, IR version {ir_version}: from the {ORT_TABLE_SOURCE}"
    if known_good:
        return known_good, (
            f"opset {opset}, IR version {ir_version} are newer than the {ORT_TABLE_SOURCE}; "
            f"{known_good} is the version that loaded it on the build host"
        )
    raise CompressError(f"opset {opset} / IR version {ir_version} are newer than any onnxruntime release known here")
