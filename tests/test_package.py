"""`compress package`: a real run directory (tiny encoder exported with optimum, quantized with
onnxruntime, benchmarked and gated for real) packed into a reproducible, self-describing archive.

The run directory is built once per session (export ~ a few seconds) under pytest's base temp
folder; every test copies it before changing anything. ``tests/test_verify.py`` reuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from export.base.errors import CompressError
from export.base.records import FileRef, StageRecord, write_record
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

RUNTIME_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
CREATED_AT = "2025-03-14T09:26:53+00:00"


# ---------------------------------------------------------------------------------------------
# The run directory fixture (shared with test_verify.py)
# ---------------------------------------------------------------------------------------------

def _embed(model_path: Path, tokenizer_dir: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
    return session.run(["sentence_embedding"], feed)[0]


def _build_base_run(run: Path, encoder: Path) -> None:
    """export (optimum) -> quantize (onnxruntime, dynamic int8) -> bench -> gate, as the chain lays it out."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    from export.runtime.agreement import mean_cosine, neighbour_agreement
    from export.runtime.bench import run_bench
    from export.runtime.gate import QualityEvidence, gate, write_junit
    from export.runtime.profiles import load_profile
    from export.run_summary import QualitySummary, ReportPaths, RunSummary, StudentInfo, TeacherInfo, write_run_summary

    onnx_dir = run / "export" / "onnx"
    main_export(str(encoder), output=str(onnx_dir), task="feature-extraction", library_name="sentence_transformers")
    quant_dir = run / "quantize"
    quant_dir.mkdir(parents=True)
    quantize_dynamic(str(onnx_dir / "model.onnx"), str(quant_dir / "model.int8-dynamic.onnx"), weight_type=QuantType.QInt8)
    for name in RUNTIME_FILES:
        shutil.copy2(onnx_dir / name, quant_dir / name)

    # Quality: the fp32 export plays the teacher, the quantized model the release (real numbers, real text).
    held_out = real_sentences(64)
    reference = _embed(onnx_dir / "model.onnx", onnx_dir, held_out)
    released = _embed(quant_dir / "model.int8-dynamic.onnx", quant_dir, held_out)
    agreement = mean_cosine(reference, released)
    quality = QualitySummary(teacher_agreement=agreement, metric="mean_cosine",
                             neighbour_agreement=neighbour_agreement(reference, released),
                             quantization_drop=1.0 - agreement, heldout_samples=len(held_out))

    history = [{"step": s, "loss": 2.0 / (1 + s / 10), "lr": 5e-4, "samples_per_s": 180.0, "elapsed_s": s * 0.1,
                **({"teacher_agreement": 0.6 + s / 250} if s % 20 == 0 else {})} for s in range(0, 81, 4)]
    (run / "distill").mkdir()
    (run / "distill" / "loss_history.json").write_text(json.dumps(history))
    record = StageRecord(stage="distill", inputs={"teacher": FileRef.of(encoder / "model.safetensors")},
                         params={"steps": 80}, outputs={"student": "student"},
                         metrics={"teacher_agreement": round(agreement, 4), "metric": "mean_cosine", "steps": 80},
                         started_at=CREATED_AT, finished_at=CREATED_AT, duration_s=12.5)
    write_record(run / "distill", record)

    profile = load_profile("host")
    bench = run_bench(quant_dir / "model.int8-dynamic.onnx", profile, runs=30, warmup=3, progress=False)
    (run / "bench").mkdir()
    bench.to_json(run / "bench" / "bench.json")
    evidence = QualityEvidence(teacher_agreement=agreement, metric="mean_cosine", quantization_drop=1.0 - agreement)
    verdict = gate(bench, profile, evidence)
    (run / "gate").mkdir()
    verdict.to_json(run / "gate" / "gate.json")
    write_junit(verdict, run / "gate" / "junit.xml")

    from compress import __version__
    from export.base.files import sha256_file

    summary = RunSummary(
        run_id="20250314-092653-host", created_at=CREATED_AT, profile="host", task="feature-extraction",
        precision="int8-dynamic",
        teacher=TeacherInfo(name="tests/tiny-encoder", path=str(encoder),
                            weights_sha256=sha256_file(encoder / "model.safetensors"), params=60_000),
        student=StudentInfo(params=45_000, layers=4, hidden=32),
        final_model="quantize/model.int8-dynamic.onnx", quality=quality, tool_version=__version__,
        stages={"distill": "distill/stage.json"},
        reports=ReportPaths(bench="bench/bench.json", gate="gate/gate.json", junit="gate/junit.xml",
                            loss_history="distill/loss_history.json"),
        verdict=verdict.verdict,
    )
    write_run_summary(run, summary)


def base_run(tmp_path_factory: pytest.TempPathFactory, encoder: Path) -> Path:
    """The session's run directory, built on first use (both test modules share it through the base temp)."""
    target = tmp_path_factory.getbasetemp() / "release-run"
    if not (target / "run.json").is_file():
        building = tmp_path_factory.getbasetemp() / "release-run.building"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        _build_base_run(building, encoder)
        building.rename(target)
    return target


def copy_run(base: Path, where: Path) -> Path:
    """A private copy of the run directory that a test may change."""
    return Path(shutil.copytree(base, where / "run"))


def regate(run: Path, profile_name_or_file: str, *, profile_file: str | None = None) -> str:
    """Gate the run's bench report against another profile and rewrite gate.json, junit.xml and run.json."""
    import dataclasses

    from export.runtime.bench import BenchReport
    from export.runtime.gate import QualityEvidence, gate, write_junit
    from export.runtime.profiles import load_profile
    from export.run_summary import read_run_summary, write_run_summary

    summary = read_run_summary(run)
    profile = load_profile(profile_name_or_file)
    bench = BenchReport.from_json(run / "bench" / "bench.json")
    evidence = QualityEvidence(teacher_agreement=summary.quality.teacher_agreement, metric="mean_cosine",
                               quantization_drop=summary.quality.quantization_drop)
    verdict = gate(bench, profile, evidence)
    verdict.to_json(run / "gate" / "gate.json")
    write_junit(verdict, run / "gate" / "junit.xml")
    write_run_summary(run, dataclasses.replace(summary, profile=profile.name, verdict=verdict.verdict,
                                               profile_file=profile_file))
    return verdict.verdict


@pytest.fixture(scope="session")
def release_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    return base_run(tmp_path_factory, tiny_encoder)


def archive_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        return tar.extractfile(name).read()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_run_fixture_is_a_real_passing_run(release_run: Path) -> None:
    run = json.loads((release_run / "run.json").read_text())
    gate = json.loads((release_run / "gate" / "gate.json").read_text())
    assert run["verdict"] == gate["verdict"] == "pass", gate["reasons"]
    assert 0.9 < run["quality"]["teacher_agreement"] <= 1.0


def test_package_writes_a_complete_archive(release_run: Path, tmp_path: Path) -> None:
    from export.package import package_run

    result = package_run(release_run, tmp_path / "out", name="tiny-encoder", version="1.0.0")
    assert result.path == tmp_path / "out" / "tiny-encoder-1.0.0-host.tar.gz"
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    members = archive_members(result.path)
    top = "tiny-encoder-1.0.0-host"
    expected = {
        "manifest.json", "MODEL_CARD.md", "profile.yaml", "model/model.onnx", *(f"model/{n}" for n in RUNTIME_FILES),
        "reports/bench.json", "reports/gate.json", "reports/junit.xml", "reports/latency.png",
        "reports/training_curve.png", "example/run_model.py", "example/README.md",
    }
    files = {name[len(top) + 1:] for name, m in members.items() if m.isfile()}
    assert files == expected
    for member in members.values():
        assert member.name.startswith(top)
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mode in (0o644, 0o755)
        assert member.mtime == 1741944413  # run.json's created_at
    assert members[f"{top}/example/run_model.py"].mode == 0o755

    manifest = json.loads(read_member(result.path, f"{top}/manifest.json"))
    assert manifest["schema_version"] == 1
    assert (manifest["name"], manifest["version"], manifest["profile"]) == ("tiny-encoder", "1.0.0", "host")
    assert manifest["task"] == "feature-extraction" and manifest["precision"] == "int8-dynamic"
    assert manifest["model"]["opset"] == 18 and manifest["model"]["ir_version"] == 8
    assert manifest["model"]["min_onnxruntime"] == "1.14"  # opset 18 / IR 8 in onnxruntime's table
    outputs = {o["name"]: o for o in manifest["model"]["signature"]["outputs"]}
    assert outputs["sentence_embedding"] == {"name": "sentence_embedding", "dtype": "float32", "shape": ["batch_size", 32]}
    inputs = {i["name"]: i for i in manifest["model"]["signature"]["inputs"]}
    assert inputs["input_ids"]["dtype"] == "int64" and inputs["input_ids"]["shape"] == ["batch_size", "sequence_length"]
    assert manifest["tokenizer"]["lowercase"] is True and manifest["tokenizer"]["max_length"] == 256
    assert manifest["tokenizer"]["template"] == "[CLS] {text} [SEP]"
    assert manifest["tokenizer"]["special_tokens"]["pad"] == {"token": "[PAD]", "id": 0}
    assert manifest["output"] == {"primary": "sentence_embedding", "pooling": None, "normalize": False, "labels": None}
    assert len(manifest["reference"]["values"]) == 32
    assert manifest["gates"]["host"]["verdict"] == "pass"
    assert manifest["released_despite_failed_gate"] is False
    assert manifest["bench"]["providers"] == ["CPUExecutionProvider"]
    assert manifest["bench"]["latency_ms"]["p50"] > 0
    assert manifest["teacher"]["name"] == "tests/tiny-encoder"
    assert manifest["run"] == {"run_id": "20250314-092653-host", "created_at": CREATED_AT}
    # Every file but the manifest is listed with its real sha256 and size.
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == expected - {"manifest.json"}
    for path, record in listed.items():
        data = read_member(result.path, f"{top}/{path}")
        assert record == {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    model_bytes = (release_run / "quantize" / "model.int8-dynamic.onnx").read_bytes()
    assert read_member(result.path, f"{top}/model/model.onnx") == model_bytes

    card = read_member(result.path, f"{top}/MODEL_CARD.md").decode()
    assert card.startswith("# tiny-encoder 1.0.0")
    assert "**pass**" in card and "WARNING" not in card
    assert f"{manifest['quality']['teacher_agreement']:.4f}" in card
    readme = read_member(result.path, f"{top}/example/README.md").decode()
    assert "`input_ids` | int64 | [batch_size, sequence_length]" in readme
    assert "**256 tokens**" in readme and "$" not in readme.replace("$ ", "")
    # The gzip header carries no time and no file name.
    raw = result.path.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0"


def test_packaging_twice_gives_identical_bytes(release_run: Path, tmp_path: Path) -> None:
    from export.package import package_run

    first = package_run(release_run, tmp_path / "a")
    second = package_run(release_run, tmp_path / "b")
    assert first.path.name == second.path.name == "tiny-encoder-distilled-2025.03.14-host.tar.gz"
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()


def test_plots_are_deterministic_pngs() -> None:
    from export.plots import latency_png, training_curve_png

    kwargs = dict(samples_ms=None, percentiles_ms={"p50": 1.5, "p95": 2.0, "p99": 2.5}, budgets_ms={"p95": 3.0}, title="x")
    assert latency_png(**kwargs) == latency_png(**kwargs)
    history = [{"step": i, "loss": 1.0 / (i + 1), "teacher_agreement": 0.5 + i / 20} for i in range(10)]
    png = training_curve_png(history, title="t")
    assert png == training_curve_png(history, title="t")
    assert png.startswith(b"\x89PNG") and b"Software" not in png and b"matplotlib" not in png


def test_package_through_the_cli_prints_path_size_and_sha(release_run: Path, tmp_path: Path) -> None:
    result = run_cli(["package", str(release_run), "--out", str(tmp_path), "--name", "enc", "--version", "2"])
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "enc-2-host.tar.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.stdout.splitlines()[0] == f"{path}  {path.stat().st_size:,} bytes  sha256 {digest}"
    assert "gate host: pass" in result.stdout


def test_failed_gate_is_refused_without_allow_failed(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    strict = (Path(__file__).resolve().parents[1] / "profiles" / "host.yaml").read_text()
    strict = strict.replace("name: host", "name: host-strict").replace("aliases: [local]", "aliases: []")
    strict = strict.replace("model_size_mb: 500", "model_size_mb: 0.001")  # no model is that small
    (run / "profile.yaml").write_text(strict)
    assert regate(run, str(run / "profile.yaml"), profile_file="profile.yaml") == "fail"
    out = tmp_path / "out"

    refused = run_cli(["package", str(run), "--out", str(out)])
    assert refused.exit_code == 2
    assert "gate verdict is fail" in refused.stderr and "--allow-failed" in refused.stderr
    assert "model_size_mb" in refused.stderr
    assert not out.exists() or not any(out.iterdir())

    loud = run_cli(["package", str(run), "--out", str(out), "--allow-failed", "--name", "m", "--version", "1"])
    assert loud.exit_code == 0, loud.stderr
    assert "FAILED its gate" in loud.stderr
    archive = out / "m-1-host-strict.tar.gz"
    manifest = json.loads(read_member(archive, "m-1-host-strict/manifest.json"))
    assert manifest["released_despite_failed_gate"] is True
    assert manifest["gates"]["host-strict"]["verdict"] == "fail"
    card = read_member(archive, "m-1-host-strict/MODEL_CARD.md").decode()
    assert card.startswith("> **WARNING: this release FAILED its gate**")
    # The profile the release was gated against travels with it.
    assert read_member(archive, "m-1-host-strict/profile.yaml").decode() == strict


def test_unverified_release_says_where_to_verify(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    assert regate(run, "raspberry-pi-5") == "unverified"  # measured on this x86 machine, not a Pi
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--name", "m", "--version", "1"])
    assert result.exit_code == 0, result.stderr
    card = read_member(tmp_path / "out" / "m-1-raspberry-pi-5.tar.gz", "m-1-raspberry-pi-5/MODEL_CARD.md").decode()
    assert "**unverified**" in card
    assert "compress verify --gate m-1-raspberry-pi-5.tar.gz" in card


def test_package_refuses_an_incomplete_run(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    (run / "quantize" / "model.int8-dynamic.onnx").unlink()
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "final_model" in result.stderr and "missing" in result.stderr
    assert run_cli(["package", str(tmp_path / "nowhere"), "--out", str(tmp_path)]).exit_code == 2
    bad_name = run_cli(["package", str(release_run), "--out", str(tmp_path / "out"), "--name", "../evil"])
    assert bad_name.exit_code == 2 and "name" in bad_name.stderr


def test_run_summary_round_trips_and_names_bad_keys(release_run: Path) -> None:
    from export.run_summary import RunSummary, read_run_summary

    summary = read_run_summary(release_run)
    assert RunSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
    payload = summary.to_json()
    payload["verdict"] = "maybe"
    with pytest.raises(CompressError, match="verdict 'maybe'"):
        RunSummary.from_json(payload)
    payload = summary.to_json()
    del payload["teacher"]["weights_sha256"]
    with pytest.raises(CompressError, match="weights_sha256"):
        RunSummary.from_json(payload)
    payload = summary.to_json()
    payload["final_model"] = "../elsewhere/model.onnx"
    with pytest.raises(CompressError, match="final_model"):
        RunSummary.from_json(payload)


def test_minimum_onnxruntime_follows_the_table() -> None:
    from export.runtime.manifest import minimum_onnxruntime

    assert minimum_onnxruntime(17, 8)[0] == "1.12"
    assert minimum_onnxruntime(14, 7)[0] == "1.8"
    assert minimum_onnxruntime(17, 9)[0] == "1.16"  # the IR version, not the opset, decides here
    assert minimum_onnxruntime(23, 11, known_good="1.31.1")[0] == "1.31.1"
    with pytest.raises(CompressError):
        minimum_onnxruntime(30, 12)


def test_write_archive_is_reproducible_and_atomic(tmp_path: Path) -> None:
    from export.runtime.archive import ArchiveEntry, write_archive

    entries = [ArchiveEntry("pkg/b.txt", data=b"b"), ArchiveEntry("pkg/a/x.txt", data=b"x")]
    first = write_archive(tmp_path / "one.tar.gz", entries, mtime=5).read_bytes()
    second = write_archive(tmp_path / "two.tar.gz", list(reversed(entries)), mtime=5).read_bytes()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        assert tar.getnames() == ["pkg", "pkg/a", "pkg/a/x.txt", "pkg/b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.tar.gz", "two.tar.gz"]  # no temp files left


def minimal_run(run: Path, model_dir: Path, task: str, encoder: Path) -> Path:
    """A run with only an fp32 export: no bench, no gate (verdict null), quality not measured."""
    from compress import __version__
    from export.base.files import sha256_file
    from export.run_summary import QualitySummary, RunSummary, StudentInfo, TeacherInfo, write_run_summary

    shutil.copytree(model_dir, run / "export" / "onnx")
    write_run_summary(run, RunSummary(
        run_id="fp32-only", created_at=CREATED_AT, profile="host", task=task, precision="fp32",
        teacher=TeacherInfo(name="tests/tiny", path=str(encoder), weights_sha256=sha256_file(encoder / "model.safetensors"),
                            params=60_000),
        student=StudentInfo(params=60_000, layers=4, hidden=32), final_model="export/onnx/model.onnx",
        quality=QualitySummary(teacher_agreement=None, metric="argmax_agreement" if "class" in task else "mean_cosine"),
        tool_version=__version__,
    ))
    return run


def test_classifier_release_without_a_gate(tiny_classifier: Path, tmp_path: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(tiny_classifier), output=str(tmp_path / "onnx"), task="text-classification")
    run = minimal_run(tmp_path / "run", tmp_path / "onnx", "text-classification", tiny_classifier)
    packed = run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--name", "cls", "--version", "1", "--json"])
    assert packed.exit_code == 0, packed.stderr
    result = json.loads(packed.stdout)
    assert result["gates"] == {} and result["released_despite_failed_gate"] is False
    archive = Path(result["path"])
    manifest = json.loads(read_member(archive, "cls-1-host/manifest.json"))
    assert manifest["output"] == {"primary": "logits", "pooling": None, "normalize": False,
                                  "labels": ["LABEL_0", "LABEL_1", "LABEL_2"]}
    assert manifest["bench"] is None
    assert abs(sum(manifest["reference"]["values"]) - 1.0) < 1e-4  # class probabilities
    card = read_member(archive, "cls-1-host/MODEL_CARD.md").decode()
    assert "**No gate ran for this release**" in card and "not measured" in card
    names = archive_members(archive)
    assert "cls-1-host/reports/latency.png" not in names and "cls-1-host/model/model.onnx" in names

    verified = run_cli(["verify", str(archive), "--json"])
    assert verified.exit_code == 0, verified.stderr
    assert json.loads(verified.stdout)["example"]["top_label"] in {"LABEL_0", "LABEL_1", "LABEL_2"}


def test_token_states_are_pooled_like_the_sentence_transformers_graph(release_run: Path, tiny_encoder: Path,
                                                                      tmp_path: Path) -> None:
    """A plain export (last_hidden_state only): the example pools and normalises itself, and gets
    what the sentence-transformers export computes inside its graph."""
    from optimum.exporters.onnx import main_export

    from export.runtime.example.run_model import PackagedModel

    main_export(str(tiny_encoder), output=str(tmp_path / "onnx"), task="feature-extraction", library_name="transformers")
    run = minimal_run(tmp_path / "run", tmp_path / "onnx", "feature-extraction", tiny_encoder)
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--name", "plain", "--version", "1"])
    assert result.exit_code == 0, result.stderr
    with tarfile.open(tmp_path / "out" / "plain-1-host.tar.gz", "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    model = PackagedModel(tmp_path / "x" / "plain-1-host", providers=["CPUExecutionProvider"])
    assert model.output == {"primary": "last_hidden_state", "pooling": "mean", "normalize": True, "labels": None}
    texts = real_sentences(8)
    pooled_here = model.embed(texts)
    in_graph = _embed(release_run / "export" / "onnx" / "model.onnx", release_run / "export" / "onnx", texts)
    assert np.allclose(pooled_here, in_graph, atol=1e-5)
    assert np.allclose(np.linalg.norm(pooled_here, axis=1), 1.0, atol=1e-5)


EXAMPLE_SCRIPT = """
import json, runpy, sys
for name in ("torch", "transformers", "onnx", "optimum", "compress", "export", "click", "yaml", "pydantic"):
    sys.modules[name] = None
sys.argv = ["run_model.py", "Edge devices are small.", "Small devices sit at the edge."]
try:
    runpy.run_path("example/run_model.py", run_name="__main__")
finally:
    print(json.dumps(sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})), file=sys.stderr)
"""


def test_example_program_needs_only_onnxruntime_numpy_and_tokenizers(release_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from export.package import package_run

    archive = package_run(release_run, tmp_path, name="enc", version="1").path
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    done = subprocess.run([sys.executable, "-c", EXAMPLE_SCRIPT], cwd=tmp_path / "x" / "enc-1-host",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("enc 1 (feature-extraction, int8-dynamic) on ")
    assert "embedding[32] = [" in done.stdout
    cosine = float(lines[-1].rsplit("=", 1)[1])
    assert lines[-1].startswith("cosine(sentence 1, sentence 2) = ") and -1.0 <= cosine <= 1.0
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert {"onnxruntime", "numpy", "tokenizers"} <= loaded
    assert not loaded & {"torch", "transformers", "onnx", "compress", "export", "click"}


def test_external_data_travels_with_the_model(release_run: Path, tmp_path: Path) -> None:
    import onnx

    run = copy_run(release_run, tmp_path)
    model_path = run / "quantize" / "model.int8-dynamic.onnx"
    proto = onnx.load(str(model_path))
    onnx.save_model(proto, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.int8-dynamic.onnx.data", size_threshold=0)
    # As if the run had measured and gated the model in this form (package checks they speak of one file).
    from export.base.files import sha256_file
    from export.runtime.onnx_file import onnx_size_bytes

    for report, key in ((run / "bench" / "bench.json", "model"), (run / "gate" / "gate.json", "bench")):
        data = json.loads(report.read_text())
        data[key]["sha256"] = sha256_file(model_path)
        if "total_bytes" in data[key]:
            data[key]["total_bytes"] = onnx_size_bytes(model_path)
        report.write_text(json.dumps(data))
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--name", "ext", "--version", "1"])
    assert result.exit_code == 0, result.stderr
    archive = tmp_path / "out" / "ext-1-host.tar.gz"
    manifest = json.loads(read_member(archive, "ext-1-host/manifest.json"))
    assert manifest["model"]["external_data"] == ["model/model.int8-dynamic.onnx.data"]
    data = read_member(archive, "ext-1-host/model/model.int8-dynamic.onnx.data")
    assert data == (run / "quantize" / "model.int8-dynamic.onnx.data").read_bytes() and len(data) > 10_000
    verified = run_cli(["verify", str(archive)])
    assert verified.exit_code == 0, verified.stderr

    (run / "quantize" / "model.int8-dynamic.onnx.data").unlink()
    missing = run_cli(["package", str(run), "--out", str(tmp_path / "out2")])
    assert missing.exit_code == 2 and "external data file 'model.int8-dynamic.onnx.data' is missing" in missing.stderr


def test_package_refuses_a_run_whose_files_disagree(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    summary = json.loads((run / "run.json").read_text())
    summary["quality"]["teacher_agreement"] = 0.999  # raised by hand in run.json, gate.json left as it was
    (run / "run.json").write_text(json.dumps(summary))
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "the run's files disagree" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_package_refuses_a_symbolic_link_in_the_run(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    (run / "reports-link").symlink_to("/etc")
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "symbolic link" in result.stderr


def test_a_pass_edited_into_gate_json_is_refused_when_the_numbers_say_fail(release_run: Path, tmp_path: Path) -> None:
    run = copy_run(release_run, tmp_path)
    agreement = json.loads((run / "run.json").read_text())["quality"]["teacher_agreement"]
    strict = (Path(__file__).resolve().parents[1] / "profiles" / "host.yaml").read_text()
    strict = strict.replace("name: host", "name: host-strict").replace("aliases: [local]", "aliases: []")
    strict += f"\n# a floor just above what the run reached\n"
    (run / "profile.yaml").write_text(strict)
    data = yaml.safe_load(strict)
    data["budgets"]["quality"] = {"min_teacher_agreement": round(min(1.0, agreement + 0.01), 4)}
    (run / "profile.yaml").write_text(yaml.safe_dump(data))
    assert regate(run, str(run / "profile.yaml"), profile_file="profile.yaml") == "fail"
    (run / "gate" / "quality.json").write_text(json.dumps({"teacher_agreement": agreement, "metric": "mean_cosine"}))
    for name in ("gate/gate.json", "run.json"):  # the edit: both verdicts say pass
        report = json.loads((run / name).read_text())
        report["verdict"] = "pass"
        for check in report.get("checks", []):
            check["status"] = "pass"
        report["reasons"] = [] if "reasons" in report else report.get("reasons")
        report = {k: v for k, v in report.items() if v is not None or k != "reasons"}
        (run / name).write_text(json.dumps(report))
    refused = run_cli(["package", str(run), "--out", str(tmp_path / "out")])
    assert refused.exit_code == 2, refused.stdout + refused.stderr
    assert "quality.min_teacher_agreement" in refused.stderr and "numbers say fail" in refused.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_android_archive_carries_the_ort_format_that_verify_runs(release_run: Path, tmp_path: Path) -> None:
    """android-arm64 asks for ONNX Runtime Mobile's format: converted once, checked, listed, explained."""
    from export.package import package_run
    from export.runtime.verify import verify_archive

    run = copy_run(release_run, tmp_path)
    regate(run, "android-arm64")
    first = package_run(run, tmp_path / "a", name="m", version="1")
    top = "m-1-android-arm64"
    members = archive_members(first.path)
    assert {f"{top}/model/model.ort", f"{top}/model/required_operators.config"} <= set(members)
    model = first.manifest.model
    assert (model.ort, model.ort_operators) == ("model/model.ort", "model/required_operators.config")
    listed = {record.path for record in first.manifest.files}
    assert {"model/model.ort", "model/required_operators.config"} <= listed
    operators = read_member(first.path, f"{top}/model/required_operators.config").decode()
    assert "ai.onnx;" in operators and str(tmp_path) not in operators
    card = read_member(first.path, f"{top}/MODEL_CARD.md").decode()
    assert "## On Android" in card and 'env.createSession(assets.open("model.ort")' in card
    assert '"input_ids" to OnnxTensor.createTensor(env, LongBuffer.wrap(ids), shape)' in card
    # onnxruntime writes a different flatbuffer each time it converts: the run keeps its first conversion.
    again = package_run(run, tmp_path / "b", name="m", version="1")
    assert again.sha256 == first.sha256
    report = verify_archive(first.path)
    assert report.example.ort_cosine >= 0.9999


def test_an_ort_file_that_answers_otherwise_is_not_packaged(release_run: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from export.ort_format import convert_to_ort
    from export.package import package_run

    run = copy_run(release_run, tmp_path)
    regate(run, "android-arm64")
    package_run(run, tmp_path / "a", name="m", version="1")
    # Another model where the release's conversion was (its stamp kept): the release's weights, one table noised.
    graph = onnx.load(run / "quantize" / "model.int8-dynamic.onnx")
    table = max((t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT), key=lambda t: len(t.raw_data))
    noised = numpy_helper.to_array(table) + np.random.default_rng(0).normal(0, 1, numpy_helper.to_array(table).shape)
    table.CopyFrom(numpy_helper.from_array(noised.astype(np.float32), table.name))
    other = tmp_path / "other" / "model.onnx"
    other.parent.mkdir()
    onnx.save(graph, other)
    convert_to_ort(other, run / "package" / "ort", arch="aarch64")
    with pytest.raises(CompressError, match="the ORT format answers differently"):
        package_run(run, tmp_path / "b", name="m", version="1")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
