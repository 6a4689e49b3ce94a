"""``compress verify``: check a release archive on the device, and optionally gate it there.

1. Extract safely into a fresh temporary folder (export.runtime.archive.safe_extract: no links, devices,
   absolute or ``..`` paths, size and count caps), removed afterwards whatever happens.
2. Check every file against ``manifest.json``: present, same size, same sha256; refuse files the
   manifest does not list.
3. Load the model with onnxruntime (the profile's providers when this machine has them) and
   compare its inputs and outputs with the manifest: names, dtypes, ranks.
4. Run the example's logic (export/runtime/example/run_model.py, this tool's own copy: code inside an
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


from export.base.errors import CompressError
from export.base.files import sha256_file
from export.base.report_json import dataclass_from_dict
from export.runtime.archive import ArchiveIndex, ArchiveSeal, ExtractedFile, ExtractLimits, safe_extract
from export.runtime.example_check import ExampleCheck, VerificationError
from export.runtime.library_check import LibraryCheck, check_library_loads
from export.runtime.manifest import MANIFEST_FILE, Manifest, read_manifest
from export.runtime.release_kind import kind_of_task
from export.runtime.signing import SIGNATURE_FILE, check_signature, read_public_key

SCHEMA_VERSION = 1
EXIT_CODES = {"pass": 0, "fail": 1, "unverified": 3}


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
    signature: str = "unsigned"  # unsigned | signed by KEY_ID, trusted | signed by KEY_ID, not checked
    gate: dict[str, Any] | None = None  # the GateReport measured here (to_dict), with --gate
    bench: dict[str, Any] | None = None  # the BenchReport measured here (to_dict), with --gate
    verdict: str | None = None  # the gate's verdict here, with --gate
    notes: list[str] = field(default_factory=list)
    loads_with: list[str] = field(default_factory=list)  # the libraries the model card shows, by pip name
    libraries: list[LibraryCheck] = field(default_factory=list)  # with libraries=True: each one's load here
    schema_version: int = SCHEMA_VERSION
    kind: str = "verify"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict] if self.verdict else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        """A report read back (from a board, as JSON)."""
        return dataclass_from_dict(cls, data, "verify report")


def verify_archive(archive: str | Path, *, gate: bool = False, profile: str | None = None, runs: int | None = None,
                   warmup: int | None = None, limits: ExtractLimits = ExtractLimits(),
                   temp_parent: str | Path | None = None, progress: bool = False, trust: list[Path] | None = None,
                   require_signature: bool = False, sha256: str | None = None,
                   libraries: bool = False) -> VerifyReport:
    """Verify ``archive`` (see the module docstring); raises CompressError naming the first problem found.

    ``profile`` (a name or YAML path) replaces the archive's own profile for ``gate``; ``runs`` and
    ``warmup`` size the benchmark (None: the default of the archive's kind of model); ``limits`` caps
    extraction; ``temp_parent`` is where the temporary folder is made (the system's temporary
    folder by default). ``trust``: public keys (``.pub``) one of which must have signed the
    manifest; ``require_signature`` refuses an unsigned archive; ``sha256`` is the archive's digest
    as published elsewhere, which must match. ``libraries``: also load the release with each
    library the manifest names (:mod:`export.runtime.library_check`).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise CompressError(f"archive not found: {archive}")
    if profile is not None and not gate:
        raise CompressError("--profile only matters with --gate")
    if require_signature and not trust:
        raise CompressError("--require-signature needs --trust KEY.pub: a signature by an unknown key proves nothing")
    trusted = [read_public_key(key) for key in trust or []]
    archive_sha256 = sha256_file(archive)
    if sha256 is not None and sha256.strip().lower() != archive_sha256:
        raise VerificationError(f"{archive}: sha256 {archive_sha256} is not the published {sha256.strip().lower()}")
    workdir = Path(tempfile.mkdtemp(prefix="compress-verify-", dir=temp_parent))
    try:
        # A required signature is checked as the archive is read, right after the manifest: an
        # archive that would be refused writes nothing but its manifest first.
        seal = ArchiveSeal(SIGNATURE_FILE, lambda manifest, sig: _check_signature(manifest, sig, trusted, True)) \
            if require_signature else None
        extracted = safe_extract(archive, workdir, limits, ArchiveIndex(
            MANIFEST_FILE, _declared_files, undeclared=((SIGNATURE_FILE, 64 << 10),), seal=seal))
        root = extracted.root
        manifest = read_manifest(root / MANIFEST_FILE)
        signature_path = root / SIGNATURE_FILE
        signature = _check_signature(root / MANIFEST_FILE, signature_path if signature_path.is_file() else None,
                                     trusted, require_signature or bool(trusted))
        files_checked, bytes_checked = _check_files(manifest, extracted.files)
        kind = kind_of_task(manifest.task)
        example = kind.check_example(root, manifest)
        report = VerifyReport(
            archive=str(archive), archive_sha256=archive_sha256, name=manifest.name, version=manifest.version,
            profile=manifest.profile, task=manifest.task, precision=manifest.precision, files_checked=files_checked,
            bytes_checked=bytes_checked, example=example, signature=signature,
            loads_with=[load.library for load in manifest.loads_with],
        )
        if libraries:
            report.libraries = check_library_loads(root, manifest)
            report.notes += [f"{c.library} loads this release but does not give the build host's answer: {c.detail}"
                             for c in report.libraries if c.failed]
        wanted_gpu = [p for p in manifest.providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
        if wanted_gpu and not any(p in wanted_gpu for p in example.providers_used):
            report.notes.append(f"the profile asks for {', '.join(wanted_gpu)}, but this machine ran the model on "
                                f"{', '.join(example.providers_used)}")
        if manifest.released_despite_failed_gate:
            report.notes.append("this release FAILED its gate on the build host and was packaged with --allow-failed")
        if gate:
            default_runs, default_warmup = kind.default_runs
            _gate_here(report, root, manifest, archive, profile, runs=default_runs if runs is None else runs,
                       warmup=default_warmup if warmup is None else warmup, progress=progress)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _declared_files(path: Path) -> dict[str, int]:
    return {record.path: record.size for record in read_manifest(path).files}


def _check_signature(manifest: Path, signature: Path | None, trusted: list[bytes], required: bool) -> str:
    """What the archive's signature says (checked before anything else in the archive is read)."""
    if signature is None:
        if required:
            raise VerificationError("the archive is unsigned, and a signature by a trusted key is required")
        return "unsigned"
    signed = check_signature(manifest.read_bytes(), signature.read_bytes(), trusted)
    if trusted:
        return f"signed by {signed.key_id}, a trusted key"
    return f"signed by {signed.key_id}, not checked against a trusted key (pass --trust KEY.pub)"


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
    extra = sorted(set(extracted) - set(listed) - {MANIFEST_FILE, SIGNATURE_FILE})
    if extra:
        raise VerificationError(f"{extra[0]}: in the archive but not listed in {MANIFEST_FILE}"
                                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for required in (manifest.model.path, manifest.tokenizer.file, *manifest.model.external_data):
        if required not in listed:
            raise VerificationError(f"{MANIFEST_FILE}: names {required} but does not list it among its files")
    return len(listed), sum(record.size for record in listed.values())


def _gate_here(report: VerifyReport, root: Path, manifest: Manifest, archive: Path, profile_name: str | None, *,
               runs: int, warmup: int, progress: bool) -> None:
    """Benchmark and gate on this machine; fills ``report.bench``, ``report.gate`` and ``report.verdict``."""
    from export.runtime.gate import QualityEvidence, gate
    from export.runtime.profiles import carried_profile_drift, load_carried_profile, load_profile

    if profile_name is not None:
        profile = load_profile(profile_name)
    elif (root / "profile.yaml").is_file():
        profile = load_carried_profile(root / "profile.yaml")
        drift = carried_profile_drift(root / "profile.yaml")
        if drift:
            report.notes.append(drift)
    else:
        profile = load_profile(manifest.profile)
    bench = kind_of_task(manifest.task).bench_archive(root, manifest, profile, runs=runs, warmup=warmup,
                                                      progress=progress)
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
