"""``compress package``: one reproducible, self-describing archive from a finished run directory.

``NAME-VERSION-PROFILE.tar.gz`` holds one folder of the same name::

    manifest.json        every file's sha256 and size, the model's signature, tokenizer settings,
                         teacher, quality, bench headline, gate verdicts, tool version, run id
    MODEL_CARD.md        the release explained to a person
    profile.yaml         the target profile the release was gated against (verify --gate uses it)
    model/               model.onnx (+ external data), tokenizer files, config.json (a language model:
                         also chat_template.jinja and generation_config.json)
    reports/             bench.json, gate.json, junit.xml, latency.png (ttft.png), training_curve.png
    example/             run_model.py (generate.py for a language model: onnxruntime + numpy +
                         tokenizers) and README.md

Packaging the same run twice gives byte-identical archives (see export.runtime.archive and export.plots).
What differs between kinds of release (one forward pass, or a generation loop) is asked of a
:class:`~export.package_kind.PackageKind` (export.package_forward, export.package_generation).
A run whose gate failed is refused unless ``allow_failed``; then the manifest and the model card
say so. Host side: reads the model with onnx and onnxruntime; never imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError
from export.base.files import read_json_dict, sha256_file
from export.base.records import StageRecord
from export.runtime.archive import ArchiveEntry, write_archive
from export.runtime.manifest import (MANIFEST_FILE, FileRecord, GateSummary, Manifest, ModelInfo, ReferenceOutput,
                                     RunRef, SpecialToken, TeacherRef, TokenizerInfo, minimum_onnxruntime,
                                     read_onnx_versions, read_signature)
from export.package_forward import REFERENCE_SENTENCE, ForwardPassPackaging
from export.package_generation import GenerationPackaging
from export.ort_format import ORT_MODEL, ORT_OPERATORS, OrtFormatModel, cached_ort_format
from export.package_kind import EXAMPLE_DIR, PackageKind
from export.run_summary import RunSummary, read_run_summary
from export.st_folder import module_files
from export.runtime.release_kind import GENERATION, kind_of_task
from export.runtime.signing import SIGNATURE_FILE, sign_manifest

if TYPE_CHECKING:
    from export.runtime.bench import MeasuredRelease
    from export.runtime.gate import GateReport
    from export.runtime.host import HostInfo
    from export.runtime.profiles import Profile
# Files beside the model that a caller needs at run time (tokenizer formats of the common families).
RUNTIME_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "sentencepiece.bpe.model", "spiece.model", "config.json", "sentence_bert_config.json",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
# Position-embedding tables of these families start with padding_idx + 1 = 2 offset rows.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
_SPECIAL_ROLES = ("cls", "sep", "pad", "unk", "mask", "bos", "eos")


@dataclass(frozen=True)
class PackageResult:
    """What ``package_run`` wrote."""

    path: Path
    size: int
    sha256: str
    manifest: Manifest
    signed_by: str | None = None  # the signing key's id

    def to_json(self) -> dict[str, Any]:
        verdicts = {profile: gate.verdict for profile, gate in self.manifest.gates.items()}
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256, "name": self.manifest.name,
                "version": self.manifest.version, "profile": self.manifest.profile, "gates": verdicts,
                "released_despite_failed_gate": self.manifest.released_despite_failed_gate,
                "signed_by": self.signed_by}


def package_run(run_dir: str | Path, out_dir: str | Path, *, name: str | None = None, version: str | None = None,
                allow_failed: bool = False, sign: str | Path | None = None) -> PackageResult:
    """Pack ``run_dir`` into ``out_dir/NAME-VERSION-PROFILE.tar.gz`` (atomically) and return its path, size and sha256.

    ``name`` defaults to the teacher's name with ``-distilled``; ``version`` to the run's date
    (``YYYY.MM.DD``). ``sign``: a private key (``compress keys new``) that signs manifest.json into
    ``manifest.sig``. Raises CompressError for a run directory that is incomplete or whose gate
    failed (unless ``allow_failed``).
    """
    run_dir = Path(run_dir)
    if sign is not None and not Path(sign).is_file():
        raise CompressError(f"signing key not found: {sign} (make one with `compress keys new NAME`)")
    _refuse_links(run_dir)
    summary = read_run_summary(run_dir)
    profile = _load_profile(run_dir, summary)
    model_path = _existing(run_dir, summary.final_model, "final_model")
    if model_path.suffix != ".onnx":
        raise CompressError(f"run.json: final_model {summary.final_model!r} is not an .onnx file")
    gate_report = _read_gate(run_dir, summary)
    kind = packaging_for(summary.task)
    bench = _read_bench(run_dir, summary, kind)
    _cross_check(run_dir, summary, model_path, gate_report, bench)
    verdict = gate_report.verdict if gate_report else summary.verdict
    if verdict == "fail" and not allow_failed:
        reasons = "; ".join(gate_report.reasons) if gate_report else "see run.json"
        raise CompressError(f"{run_dir}: the gate verdict is fail ({reasons}); not packaging a failed release "
                            "(pass --allow-failed to package it anyway, marked as failed)")
    name = _check_name("name", name or _default_name(summary))
    version = _check_name("version", version or _default_version(summary))
    top = f"{name}-{version}-{summary.profile}"
    _check_name("archive name", top)

    archive_name = f"{top}.tar.gz"
    model_dir = model_path.parent
    versions = read_onnx_versions(model_path)
    if gate_report is not None and bench is not None:
        _check_verdict(run_dir, summary, profile, model_path, gate_report, bench)
    min_ort, min_ort_note = minimum_onnxruntime(versions.opset, versions.ir_version, known_good=_ort_version())
    signature = read_signature(model_path)
    tokenizer = _tokenizer_info(model_dir)
    output = kind.output_info(summary.task, signature, model_dir, tokenizer)
    stages = _read_stages(run_dir, summary)

    entries: dict[str, ArchiveEntry] = {}

    def add(relative: str, *, source: Path | None = None, data: bytes | None = None, executable: bool = False) -> None:
        entries[relative] = ArchiveEntry(f"{top}/{relative}", source=source, data=data, executable=executable)

    add("model/model.onnx", source=model_path)
    for location in versions.external_data:
        add(f"model/{location}", source=model_dir / location)
    for file_name in RUNTIME_FILES + kind.extra_model_files:
        if (model_dir / file_name).is_file():
            add(f"model/{file_name}", source=model_dir / file_name)
    for relative in module_files(model_dir):  # sentence-transformers' modules: the folder loads there too
        add(f"model/{relative}", source=model_dir / relative)
    if profile.source is not None:
        add("profile.yaml", source=Path(profile.source))

    reports = summary.reports
    for key, file_name in (("bench", "bench.json"), ("gate", "gate.json"), ("junit", "junit.xml")):
        relative = getattr(reports, key)
        if relative is not None:
            add(f"reports/{file_name}", source=_existing(run_dir, relative, f"reports.{key}"))
    from export import plots  # matplotlib: only packaging draws

    if bench is not None:
        add(f"reports/{kind.latency_plot}",
            data=kind.latency_png(bench, profile, f"{name} {version} on {bench.host.describe()}"[:90]))
    release = stages.get("release")
    if release is not None and release.outputs.get("plot"):  # every candidate, speed against quality
        add("reports/candidates.png", source=_existing(run_dir, f"release/{release.outputs['plot']}", "release plot"))
    gguf = None
    if release is not None and release.outputs.get("gguf"):  # the released weights for llama.cpp
        gguf = "model/model.gguf"
        add(gguf, source=_existing(run_dir, f"release/{release.outputs['gguf']}", "release GGUF"))
    history = _read_loss_history(run_dir, summary)
    if history:
        add("reports/training_curve.png", data=plots.training_curve_png(history, title=f"distillation of {name}"))

    manifest = Manifest(
        name=name, version=version, profile=summary.profile, task=summary.task, precision=summary.precision,
        model=ModelInfo(
            path="model/model.onnx", opset=versions.opset, ir_version=versions.ir_version,
            other_opsets=versions.other_opsets, min_onnxruntime=min_ort, min_onnxruntime_note=min_ort_note,
            external_data=[f"model/{location}" for location in versions.external_data], signature=signature,
            gguf=gguf,
        ),
        tokenizer=tokenizer, output=output,
        reference=ReferenceOutput(sentence=REFERENCE_SENTENCE, values=[]),
        teacher=TeacherRef(name=summary.teacher.name, weights_sha256=summary.teacher.weights_sha256,
                           params=summary.teacher.params, answers_from=summary.teacher.answers_from,
                           answers_sha256=summary.teacher.answers_sha256),
        student=asdict(summary.student),
        quality={**asdict(summary.quality), **kind.quality_extras(stages)},
        bench=kind.release.bench_summary(bench, _host_summary(bench.host)) if bench is not None else None,
        gates=_gates(gate_report, summary, archive_name),
        providers=list(profile.runtime.providers), tool_version=summary.tool_version,
        run=RunRef(run_id=summary.run_id, created_at=summary.created_at), files=[],
        released_despite_failed_gate=verdict == "fail",
        prompt=kind.prompt_format(model_dir, tokenizer),
    )
    manifest.reference = kind.reference_output(model_dir, model_path, manifest)
    mobile = _ort_format(run_dir, model_path, profile, kind, manifest)
    if mobile is not None:
        add(f"model/{ORT_MODEL}", source=mobile.model)
        add(f"model/{ORT_OPERATORS}", source=mobile.operators)
        manifest.model = dataclasses.replace(manifest.model, ort=f"model/{ORT_MODEL}",
                                             ort_operators=f"model/{ORT_OPERATORS}")
    manifest.loads_with = kind.library_loads(manifest, model_dir)
    for file_name, data in kind.format_files(model_dir, manifest).items():  # e.g. ONNX Runtime GenAI's config
        add(f"model/{file_name}", data=data)
    program = kind.release.example_program
    add("example/README.md", data=kind.readme(manifest, profile).encode("utf-8"))
    add(f"example/{program}", source=EXAMPLE_DIR / program, executable=True)
    from export.model_card import render_model_card

    card = render_model_card(manifest, kind, profile=profile, stages=stages, archive_name=archive_name,
                             has_training_curve=bool(history))
    add("MODEL_CARD.md", data=card.encode("utf-8"))

    manifest.files = [_file_record(relative, entry) for relative, entry in sorted(entries.items())]
    manifest_bytes = manifest.dumps().encode("utf-8")
    add(MANIFEST_FILE, data=manifest_bytes)
    signature = sign_manifest(manifest_bytes, sign) if sign is not None else None
    if signature is not None:
        add(SIGNATURE_FILE, data=signature.dumps())

    out_path = Path(out_dir) / archive_name
    write_archive(out_path, entries.values(), mtime=summary.created_timestamp(), first=(f"{top}/{MANIFEST_FILE}", f"{top}/{SIGNATURE_FILE}"))
    return PackageResult(path=out_path, size=out_path.stat().st_size, sha256=sha256_file(out_path), manifest=manifest,
                         signed_by=signature.key_id if signature is not None else None)


# The ORT format's conversion, kept with the run (see export.ort_format.cached_ort_format).
ORT_DIR = "package/ort"


def _ort_format(run_dir: Path, model_path: Path, profile: Profile, kind: PackageKind,
                manifest: Manifest) -> OrtFormatModel | None:
    """The release in ONNX Runtime's ORT format when the profile asks for it, loaded and checked here.

    Checked as ``verify`` checks the archive: the reference sentence through the example's code, on
    the .ort, against the .onnx's answer (cosine >= MIN_ORT_COSINE); raises CompressError otherwise.
    """
    import shutil
    import tempfile

    from export.runtime.example.run_model import cosine
    from export.runtime.example_check import MIN_ORT_COSINE

    if not profile.runtime.ort_format or not kind.ort_format:
        return None
    mobile = cached_ort_format(model_path, run_dir / ORT_DIR, arch=profile.hardware.arch)
    with tempfile.TemporaryDirectory(prefix="compress-ort-") as scratch:
        folder = Path(scratch)
        for file in model_path.parent.iterdir():  # the tokenizer and config files, as the archive lays them out
            if file.is_file() and file.suffix != ".onnx":
                (folder / file.name).symlink_to(file.resolve())
        shutil.copyfile(mobile.model, folder / ORT_MODEL)
        answer = kind.reference_output(folder, folder / ORT_MODEL, manifest).values
    similarity = cosine(answer, manifest.reference.values)
    if similarity < MIN_ORT_COSINE:
        raise CompressError(f"{mobile.model}: the ORT format answers differently from {model_path.name} "
                            f"(cosine {similarity:.6f} < {MIN_ORT_COSINE}); not packaging it")
    return mobile


# -- reading the run directory ------------------------------------------------------------------

def _existing(run_dir: Path, relative: str, key: str) -> Path:
    path = run_dir / relative
    if not path.is_file():
        raise CompressError(f"{run_dir / 'run.json'}: {key} names {relative!r}, which is missing from the run directory")
    return path


def _refuse_links(run_dir: Path) -> None:
    """A run directory is packaged as it is: a symbolic link in it could pull in any file of this machine."""
    if not run_dir.is_dir():
        raise CompressError(f"run directory not found: {run_dir}")
    for path in [run_dir, *run_dir.rglob("*")]:
        if path.is_symlink():
            raise CompressError(f"{path} is a symbolic link; a run directory to package holds plain files only")


def _cross_check(run_dir: Path, summary: RunSummary, model: Path, gate_report: GateReport | None,
                 bench: MeasuredRelease | None) -> None:
    """run.json, the bench report, gate.json and quality.json must speak of the same model and numbers."""
    where = f"{run_dir}: the run's files disagree"
    model_sha = sha256_file(model)
    if bench is not None and bench.model.sha256 != model_sha:
        raise CompressError(f"{where}: {summary.reports.bench} measured another model than {summary.final_model}")
    if gate_report is not None:
        if gate_report.bench.sha256 != model_sha:
            raise CompressError(f"{where}: {summary.reports.gate} judged another model than {summary.final_model}")
        if gate_report.profile != summary.profile:
            raise CompressError(f"{where}: {summary.reports.gate} is for profile {gate_report.profile!r}, run.json "
                                f"for {summary.profile!r}")
    quality_file = run_dir / "gate" / "quality.json"
    if quality_file.is_file() and summary.quality.teacher_agreement is not None:
        recorded = read_json_dict(quality_file).get("teacher_agreement")
        if not isinstance(recorded, (int, float)) or abs(recorded - summary.quality.teacher_agreement) > 1e-9:
            raise CompressError(f"{where}: run.json says teacher agreement {summary.quality.teacher_agreement}, "
                                f"gate/quality.json {recorded}")
    evidence = gate_report.quality if gate_report is not None else None
    if evidence is not None and summary.quality.teacher_agreement is not None \
            and abs(evidence.teacher_agreement - summary.quality.teacher_agreement) > 1e-9:
        raise CompressError(f"{where}: run.json says teacher agreement {summary.quality.teacher_agreement}, the gate "
                            f"judged {evidence.teacher_agreement}")


def _check_verdict(run_dir: Path, summary: RunSummary, profile: Profile, model: Path, gate_report: GateReport,
                   bench: MeasuredRelease) -> None:
    """gate.json's verdict, judged again from the numbers beside it: an edited "pass" is refused.

    The bench report, the quality evidence and the profile give every budget that no host changes
    (quality, size) again; one that fails there must fail in gate.json too.
    """
    from export.runtime.gate import gate
    from export.runtime.quality_evidence import QualityEvidence

    quality_file = run_dir / "gate" / "quality.json"
    evidence = QualityEvidence.from_json(quality_file) if quality_file.is_file() else gate_report.quality
    again = gate(bench, profile, evidence, model=model)
    recorded = {check.name: check.status for check in gate_report.checks}
    for check in again.checks:
        if check.status == "fail" and not check.hardware_dependent and recorded.get(check.name) != "fail":
            raise CompressError(f"{run_dir}: {summary.reports.gate} says {check.name} is "
                                f"{recorded.get(check.name, 'not checked')}, but its numbers say fail "
                                f"({check.measured} against {check.comparison} {check.budget}); re-run the gate")


def _load_profile(run_dir: Path, summary: RunSummary) -> Profile:
    from export.runtime.profiles import load_profile, load_profile_file

    if summary.profile_file:
        return load_profile_file(_existing(run_dir, summary.profile_file, "profile_file"))
    return load_profile(summary.profile)


def _read_gate(run_dir: Path, summary: RunSummary) -> GateReport | None:
    from export.runtime.gate import GateReport

    if summary.reports.gate is None:
        return None
    report = GateReport.from_json(_existing(run_dir, summary.reports.gate, "reports.gate"))
    if summary.verdict is not None and summary.verdict != report.verdict:
        raise CompressError(f"{run_dir}: run.json says the verdict is {summary.verdict!r} but "
                            f"{summary.reports.gate} says {report.verdict!r}; re-run the gate")
    return report


def _read_bench(run_dir: Path, summary: RunSummary, kind: PackageKind) -> MeasuredRelease | None:
    if summary.reports.bench is None:
        return None
    return kind.release.read_bench(_existing(run_dir, summary.reports.bench, "reports.bench"))


def _read_loss_history(run_dir: Path, summary: RunSummary) -> list[dict[str, Any]]:
    if summary.reports.loss_history is None:
        return []
    path = _existing(run_dir, summary.reports.loss_history, "reports.loss_history")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(rows, dict) and isinstance(rows.get("history"), list):  # the language-model trainer's layout
        rows = [_as_agreement(row) for row in rows["history"]]
        if not any(isinstance(r, dict) and r.get("loss") is not None for r in rows):
            return []  # nothing trained yet: no curve to draw
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "step" in r and "loss" in r for r in rows):
        raise CompressError(f"{path}: expected a list of objects with step and loss")
    return rows


def _as_agreement(row: Any) -> Any:
    """A language-model history row with its next-token agreement under the name the plot reads."""
    if isinstance(row, dict) and row.get("next_token_agreement") is not None and "teacher_agreement" not in row:
        return {**row, "teacher_agreement": row["next_token_agreement"]}
    return row


def _read_stages(run_dir: Path, summary: RunSummary) -> dict[str, StageRecord]:
    stages: dict[str, StageRecord] = {}
    for stage, relative in summary.stages.items():
        path = _existing(run_dir, relative, f"stages.{stage}")
        try:
            stages[stage] = StageRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            raise CompressError(f"{path}: not a readable stage record ({exc})") from None
    return stages


def _default_name(summary: RunSummary) -> str:
    base = summary.teacher.name.rstrip("/").split("/")[-1]
    slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "model"
    return f"{slug}-distilled"


def _default_version(summary: RunSummary) -> str:
    return datetime.fromisoformat(summary.created_at).strftime("%Y.%m.%d")


def _check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise CompressError(f"{what} {value!r} must be letters, digits, '.', '_', '+' or '-' (at most 100, no '/')")
    return value


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# -- describing the model ------------------------------------------------------------------------

def _lowercases(normalizer: dict[str, Any] | None) -> bool:
    if not normalizer:
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase") is True:
        return True
    return any(_lowercases(n) for n in normalizer.get("normalizers", []) or [])


def _tokenizer_info(model_dir: Path) -> TokenizerInfo:
    """Tokenizer settings an integrator needs, read from the files beside the model."""
    from tokenizers import Tokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CompressError(f"{model_dir}: no tokenizer.json beside the model (the example and verify need it; "
                            "save the tokenizer with a fast tokenizer)")
    raw = read_json_dict(tokenizer_file)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    settings = read_json_dict(model_dir / "tokenizer_config.json")
    config = read_json_dict(model_dir / "config.json")
    limits = []
    model_max = settings.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max <= 1_000_000:  # transformers writes 1e30 for "no limit"
        limits.append(model_max)
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        limits.append(positions - _POSITION_OFFSET.get(config.get("model_type", ""), 0))
    sentence_config = read_json_dict(model_dir / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(sentence_config, int) and sentence_config > 0:
        limits.append(sentence_config)
    if not limits:
        raise CompressError(f"{model_dir}: cannot tell the model's maximum sequence length (no model_max_length "
                            "in tokenizer_config.json, no max_position_embeddings in config.json)")
    special: dict[str, SpecialToken] = {}
    token_map = read_json_dict(model_dir / "special_tokens_map.json")
    for role in _SPECIAL_ROLES:
        value = token_map.get(f"{role}_token", settings.get(f"{role}_token"))
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and tokenizer.token_to_id(text) is not None:
            special[role] = SpecialToken(token=text, id=int(tokenizer.token_to_id(text)))
    return TokenizerInfo(
        file="model/tokenizer.json", kind=str((raw.get("model") or {}).get("type") or "unknown"),
        max_length=min(limits), lowercase=_lowercases(raw.get("normalizer")), template=_wrap_template(raw),
        special_tokens=special,
        padding_side=str(settings.get("padding_side") or "right"),
    )


def _gates(gate_report: GateReport | None, summary: RunSummary, archive_name: str) -> dict[str, GateSummary]:
    """The verdict per profile; the gate's "verify on the target" advice names this archive."""
    if gate_report is None:
        return {summary.profile: GateSummary(summary.profile, summary.verdict)} if summary.verdict else {}
    reasons = [reason.replace("ARCHIVE", archive_name) for reason in gate_report.reasons]
    return {gate_report.profile: GateSummary(profile=gate_report.profile, verdict=gate_report.verdict, reasons=reasons,
                                             measured_on=gate_report.bench.host)}


def _host_summary(host: HostInfo) -> dict[str, Any]:
    return {"description": host.describe(), "cpu_model": host.cpu_model, "arch": host.arch, "os": host.os,
            "board_model": host.board_model, "gpus": list(host.gpus), "onnxruntime": host.versions.get("onnxruntime")}


def _file_record(relative: str, entry: ArchiveEntry) -> FileRecord:
    if entry.data is not None:
        return FileRecord(path=relative, sha256=hashlib.sha256(entry.data).hexdigest(), size=len(entry.data))
    return FileRecord(path=relative, sha256=sha256_file(entry.source), size=entry.size())  # type: ignore[arg-type]


# -- the tokenizer's template -------------------------------------------------------------------

def _wrap_template(raw_tokenizer: dict[str, Any]) -> str:
    """How the tokenizer wraps a single text, e.g. ``[CLS] {text} [SEP]`` (from its post-processor)."""
    processor = raw_tokenizer.get("post_processor") or {}
    if processor.get("type") == "Sequence":  # e.g. ByteLevel + TemplateProcessing
        processor = next((p for p in processor.get("processors", []) if p.get("type") != "ByteLevel"), {})
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        pieces = [item["SpecialToken"]["id"] if "SpecialToken" in item else "{text}"
                  for item in processor.get("single", []) if "SpecialToken" in item or "Sequence" in item]
        return " ".join(pieces) or "{text}"
    if kind in ("BertProcessing", "RobertaProcessing"):
        return f"{processor['cls'][0]} {{text}} {processor['sep'][0]}"
    return "{text}"


def packaging_for(task: str) -> PackageKind:
    """The packaging of a release of ``task``."""
    return GenerationPackaging() if kind_of_task(task) is GENERATION else ForwardPassPackaging()
