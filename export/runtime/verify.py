"""``compress verify``: check a release archive on the device, and optionally gate it there.

1. Extract safely into a fresh temporary folder (export.runtime.archive.safe_extract: no links, devices,
   absolute or ``..`` paths, size and count caps), removed afterwards whatever happens.
2. Check every file against ``manifest.json``: present, same size, same sha256; refuse files the
   manifest does not list.
3. Load the model with onnxruntime (the profile's providers when this machine has them) and
   compare its inputs and outputs with the manifest: names, dtypes, ranks.
4. Run the example's logic (export/example/run_model.py, this tool's own copy: code inside an
   archive is never executed) on the reference sentence with the archive's tokenizer, and
   compare the answer with the one the build host recorded (cosine). A language model
   (task text-generation) runs export/example/generate.py's greedy KV-cache loop on the
   reference prompt instead, and its tokens must match the build host's (at least the first
   ``reference.min_matching_tokens``).
5. With ``gate=True``: benchmark the model here with the archive's profile (or another) and gate
   it, so a verdict that was ``unverified`` on the build host becomes pass or fail on the target
   (a language model: the generation bench, export.runtime.generation_bench).

Device side: onnxruntime, numpy and tokenizers (plus pyyaml and pydantic to read the profile for
``--gate``). Never torch, transformers or onnx.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.base.errors import CompressError
from export.base.files import sha256_file
from export.base.quiet import quiet_onnxruntime
from export.runtime.archive import ExtractedFile, ExtractLimits, safe_extract
from export.runtime.manifest import MANIFEST_FILE, Manifest, read_manifest, signature_of_session

SCHEMA_VERSION = 1
EXIT_CODES = {"pass": 0, "fail": 1, "unverified": 3}
GENERATION = "text-generation"
# Timed and warm-up runs of verify --gate by default: an encoder's run is one batch, a language
# model's a whole generation (a prompt and 64 new tokens), so it gets fewer.
DEFAULT_RUNS = {"encoder": (100, 10), GENERATION: (10, 2)}


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


@dataclass
class VerifyReport:
    """What ``verify`` checked and found."""

    archive: str
    archive_sha256: str
    name: str
    version: str
    profile: str
    task: str
    precision: str
    files_checked: int
    bytes_checked: int
    example: ExampleCheck  # the model loaded, its signature matched the manifest, and it computed this
    gate: dict[str, Any] | None = None  # the GateReport measured here (to_dict), with --gate
    bench: dict[str, Any] | None = None  # the BenchReport measured here (to_dict), with --gate
    verdict: str | None = None  # the gate's verdict here, with --gate
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    kind: str = "verify"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict] if self.verdict else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)


def verify_archive(archive: str | Path, *, gate: bool = False, profile: str | None = None, runs: int | None = None,
                   warmup: int | None = None, limits: ExtractLimits = ExtractLimits(),
                   temp_parent: str | Path | None = None, progress: bool = False) -> VerifyReport:
    """Verify ``archive`` (see the module docstring); raises CompressError naming the first problem found.

    ``profile`` (a name or YAML path) replaces the archive's own profile for ``gate``; ``runs`` and
    ``warmup`` size the benchmark (None: ``DEFAULT_RUNS`` for the archive's task); ``limits`` caps
    extraction; ``temp_parent`` is where the temporary folder is made (the system's temporary
    folder by default).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise CompressError(f"archive not found: {archive}")
    if profile is not None and not gate:
        raise CompressError("--profile only matters with --gate")
    archive_sha256 = sha256_file(archive)
    workdir = Path(tempfile.mkdtemp(prefix="compress-verify-", dir=temp_parent))
    try:
        extracted = safe_extract(archive, workdir, limits)
        root = extracted.root
        manifest = read_manifest(root / MANIFEST_FILE)
        files_checked, bytes_checked = _check_files(manifest, extracted.files)
        example = _check_generation(root, manifest) if manifest.task == GENERATION else _check_model(root, manifest)
        report = VerifyReport(
            archive=str(archive), archive_sha256=archive_sha256, name=manifest.name, version=manifest.version,
            profile=manifest.profile, task=manifest.task, precision=manifest.precision, files_checked=files_checked,
            bytes_checked=bytes_checked, example=example,
        )
        wanted_gpu = [p for p in manifest.providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
        if wanted_gpu and not any(p in wanted_gpu for p in example.providers_used):
            report.notes.append(f"the profile asks for {', '.join(wanted_gpu)}, but this machine ran the model on "
                                f"{', '.join(example.providers_used)}")
        if manifest.released_despite_failed_gate:
            report.notes.append("this release FAILED its gate on the build host and was packaged with --allow-failed")
        if gate:
            default_runs, default_warmup = DEFAULT_RUNS[GENERATION if manifest.task == GENERATION else "encoder"]
            _gate_here(report, root, manifest, archive, profile, runs=default_runs if runs is None else runs,
                       warmup=default_warmup if warmup is None else warmup, progress=progress)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_files(manifest: Manifest, extracted: dict[str, ExtractedFile]) -> tuple[int, int]:
    """Every listed file present with its size and sha256; nothing unlisted (the manifest itself aside)."""
    listed = {record.path: record for record in manifest.files}
    if len(listed) != len(manifest.files):
        raise VerificationError(f"{MANIFEST_FILE}: lists a file twice")
    for path, record in sorted(listed.items()):
        found = extracted.get(path)
        if found is None:
            raise VerificationError(f"{path}: listed in {MANIFEST_FILE} but missing from the archive")
        if found.size != record.size:
            raise VerificationError(f"{path}: {found.size} bytes, but {MANIFEST_FILE} says {record.size}")
        if found.sha256 != record.sha256:
            raise VerificationError(f"{path}: sha256 {found.sha256[:16]}… does not match {MANIFEST_FILE} "
                                    f"({record.sha256[:16]}…): the file was changed after packaging")
    extra = sorted(set(extracted) - set(listed) - {MANIFEST_FILE})
    if extra:
        raise VerificationError(f"{extra[0]}: in the archive but not listed in {MANIFEST_FILE}"
                                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for required in (manifest.model.path, manifest.tokenizer.file, *manifest.model.external_data):
        if required not in listed:
            raise VerificationError(f"{MANIFEST_FILE}: names {required} but does not list it among its files")
    return len(listed), sum(record.size for record in listed.values())


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_signature(manifest: Manifest, session: Any) -> None:
    problems = manifest.model.signature.differences(signature_of_session(session))
    if problems:
        raise VerificationError(f"{manifest.model.path}: signature differs from {MANIFEST_FILE}: {'; '.join(problems)}")


def _check_generation(root: Path, manifest: Manifest) -> ExampleCheck:
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
                                f"{_first_line(exc)}") from None
    _check_signature(manifest, generator.session)
    try:
        tokens = generator.generate_ids(generator.encode(reference.sentence), len(reference.tokens), stop_at_eos=False)
    except Exception as exc:
        raise VerificationError(f"{manifest.model.path}: running the example failed: {_first_line(exc)}") from None
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


def _check_model(root: Path, manifest: Manifest) -> ExampleCheck:
    from export.runtime.example.run_model import DEFAULT_SENTENCES, PackagedModel, cosine

    try:
        with quiet_onnxruntime():
            model = PackagedModel(root, manifest=manifest.to_json())
    except Exception as exc:  # onnxruntime and tokenizers raise their own types
        raise VerificationError(f"{manifest.model.path}: onnxruntime or tokenizers cannot load it here: "
                                f"{_first_line(exc)}") from None
    _check_signature(manifest, model.session)
    reference = manifest.reference
    try:
        answer = model.answer([reference.sentence])[0]
    except Exception as exc:
        raise VerificationError(f"{manifest.model.path}: running the example failed: {_first_line(exc)}") from None
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
    if manifest.task == "feature-extraction":
        pair = model.embed(list(DEFAULT_SENTENCES))
        check.pair_cosine = round(cosine(pair[0], pair[1]), 6)
    elif manifest.task == "text-classification" and manifest.output.labels:
        check.top_label = manifest.output.labels[int(np.argmax(values))]
    return check


def _real_text_inputs(root: Path, manifest: Manifest, profile: Any) -> tuple[Path, str]:
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


def _gate_here(report: VerifyReport, root: Path, manifest: Manifest, archive: Path, profile_name: str | None, *,
               runs: int, warmup: int, progress: bool) -> None:
    """Benchmark and gate on this machine; fills ``report.bench``, ``report.gate`` and ``report.verdict``."""
    from export.runtime.bench import run_bench
    from export.runtime.gate import QualityEvidence, gate
    from export.runtime.profiles import load_profile, load_profile_file

    if profile_name is not None:
        profile = load_profile(profile_name)
    elif (root / "profile.yaml").is_file():
        profile = load_profile_file(root / "profile.yaml")
    else:
        profile = load_profile(manifest.profile)
    if manifest.task == GENERATION:
        from export.runtime.generation_bench import run_generation_bench

        # The prompt is real text through the archive's tokenizer (model/tokenizer.json beside the model).
        bench: Any = run_generation_bench(root / manifest.model.path, profile, runs=runs, warmup=warmup,
                                          progress=progress)
    else:
        inputs, description = _real_text_inputs(root, manifest, profile)
        bench = run_bench(root / manifest.model.path, profile, runs=runs, warmup=warmup, progress=progress,
                          inputs=inputs)
        bench.workload.inputs_source = description
    # The temporary folder is gone after verify: name things by where they live in the archive.
    bench.model.path = f"{archive.name}:{manifest.model.path}"
    quality = None
    if manifest.quality.get("teacher_agreement") is not None:
        # Agreement with the teacher is a property of the model, measured on the build host; it holds here.
        quality = QualityEvidence(
            teacher_agreement=float(manifest.quality["teacher_agreement"]),
            metric=str(manifest.quality.get("metric") or "unspecified"),
            quantization_drop=manifest.quality.get("quantization_drop"),
            source=f"{archive.name}:{MANIFEST_FILE} (measured on the build host)",
        )
    verdict = gate(bench, profile, quality)
    if verdict.verify_command:
        verdict.verify_command = verdict.verify_command.replace("ARCHIVE", str(archive))
        verdict.reasons = [reason.replace("ARCHIVE", str(archive)) for reason in verdict.reasons]
    report.bench = bench.to_dict()
    report.gate = verdict.to_dict()
    report.verdict = verdict.verdict
    if profile.name != manifest.profile:
        report.notes.append(f"gated against {profile.name}; the archive was built for {manifest.profile}")
