"""`compress bench`: real ONNX Runtime sessions on a hand-built graph and on the real teacher exported by optimum."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from export.base.errors import CompressError
from export.base.files import sha256_file
from export.runtime.bench import BenchReport, ComparisonReport, compare_bench, run_bench
from export.runtime.release_kind import read_any_report
from export.runtime.inputs import id_vocab_sizes, synthesize_inputs
from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_onnx, real_sentences

FAST = ["--runs", "12", "--warmup", "2"]


@pytest.fixture(scope="module")
def teacher_onnx(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 exported by optimum: an ONNX file this project did not write."""
    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("teacher-onnx")
    main_export(model_name_or_path=str(teacher_dir), output=out, task="feature-extraction", library_name="transformers")
    return out / "model.onnx"


@pytest.fixture(scope="module")
def host() -> object:
    return load_profile("host")


def assert_sane(report: BenchReport) -> None:
    lat = report.latency
    assert lat.runs == len(lat.samples_ms) > 0
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert lat.min_ms <= lat.mean_ms <= lat.max_ms and lat.std_ms >= 0
    assert report.session.load_s > 0 and report.session.first_run_ms > 0
    assert report.throughput.inferences_per_s > 0
    assert report.throughput.samples_per_s == pytest.approx(report.throughput.inferences_per_s * report.workload.batch_size)
    assert report.session.providers_used and report.session.providers_requested
    assert set(report.session.providers_used) <= {"CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"}
    mem = report.memory
    assert mem.baseline_rss_mb > 0 and mem.peak_rss_mb >= mem.after_load_rss_mb >= mem.baseline_rss_mb
    if mem.shared_process:  # a comparison: this model's own load + first run
        assert mem.session_peak_mb == pytest.approx(mem.after_load_rss_mb - mem.baseline_rss_mb)
    else:
        assert mem.session_peak_mb == pytest.approx(mem.peak_rss_mb - mem.baseline_rss_mb)
    assert report.host.logical_cores >= 1 and report.host.arch and report.host.versions.get("onnxruntime")
    assert report.schema_version >= 1 and report.kind == "bench"


def test_bench_tiny_graph_records_numbers_providers_and_size(tiny_onnx: Path, host) -> None:
    report = run_bench(tiny_onnx, host, runs=20, warmup=2, progress=False)
    assert_sane(report)
    assert report.model.total_bytes == report.model.file_bytes == tiny_onnx.stat().st_size
    assert report.model.sha256 == sha256_file(tiny_onnx)
    assert report.model.inputs[0].name == "x" and report.model.inputs[0].shape == [1, 16]
    assert report.workload.batch_size == 1 and report.workload.sequence_length is None  # no sequence axis
    assert report.session.providers_requested == list(host.runtime.providers)
    if "CUDAExecutionProvider" not in report.session.providers_used:
        # STACK trap 2: the CUDA request fell back to CPU silently; the report must say so.
        assert any("fell back" in note and "CUDAExecutionProvider" in note for note in report.notes)
    assert BenchReport.from_json(report.to_json()) == report


def test_bench_real_teacher_export(teacher_onnx: Path, host, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli(["bench", str(teacher_onnx), "--profile", "host", "--sequence-length", "64", "--threads", "2",
                      *FAST, "--json", "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)  # --json: the report and nothing else on stdout
    report = BenchReport.from_json(out)
    assert printed["model"]["sha256"] == report.model.sha256
    assert_sane(report)
    assert report.model.size_mb == pytest.approx(teacher_onnx.stat().st_size / 2**20)
    assert report.model.opset and report.model.producer == "pytorch"
    assert report.workload.sequence_length == 64 and report.session.intra_op_threads == 2
    fills = {spec.name: spec.fill for spec in report.model.inputs}
    assert fills["input_ids"] == "token ids in [0, 30522)"  # read from the word-embedding table
    assert fills["attention_mask"] == "ones" and fills["token_type_ids"] == "zeros"
    assert all(spec.shape == [1, 64] for spec in report.model.inputs)


def test_vocabulary_is_read_from_the_embedding_gather(teacher_onnx: Path) -> None:
    import onnx

    from export.runtime.onnx_file import inspect_model_file as _inspect_model_file

    model = onnx.load(str(teacher_onnx), load_external_data=False)
    sizes = id_vocab_sizes(model.graph, ["input_ids", "token_type_ids", "attention_mask"])
    assert sizes == {"input_ids": 30522, "token_type_ids": 2}
    # bench's own wire-format reader (no onnx on the device) finds the same facts
    facts = _inspect_model_file(teacher_onnx)
    assert facts.vocab_sizes == sizes
    assert facts.opset == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert facts.producer == model.producer_name


def test_real_samples_from_npz(teacher_onnx: Path, teacher_dir: Path, host, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    feeds = tokenizer(real_sentences(4), padding="max_length", truncation=True, max_length=48, return_tensors="np")
    path = tmp_path / "samples.npz"
    np.savez(path, **{k: v.astype(np.int64) for k, v in feeds.items()})
    report = run_bench(teacher_onnx, host, runs=5, warmup=1, inputs=path, threads=2, progress=False)
    assert_sane(report)
    assert report.workload.batch_size == 4 and report.workload.sequence_length == 48
    assert report.workload.inputs_source == f"npz: {path}"
    assert {spec.fill for spec in report.model.inputs} == {"npz"}


def test_npz_through_the_cli_and_bad_npz_is_exit_2(tiny_onnx: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    result = run_cli(["bench", str(tiny_onnx), "--inputs", str(good), *FAST, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["workload"]["batch_size"] == 3

    misnamed = tmp_path / "misnamed.npz"
    np.savez(misnamed, inputs=np.zeros((1, 16), np.float32))
    not_npz = tmp_path / "not.npz"
    not_npz.write_bytes(b"these are not arrays")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    wrong_rank = tmp_path / "rank.npz"
    np.savez(wrong_rank, x=np.zeros((16,), np.float32))
    for bad, words in ((misnamed, "lacks x"), (not_npz, "cannot read inputs"), (pickled, "cannot read inputs"),
                       (wrong_rank, "dimensions"), (tmp_path / "absent.npz", "not found")):
        result = run_cli(["bench", str(tiny_onnx), "--inputs", str(bad), *FAST])
        assert result.exit_code == 2, (bad, result.stderr)
        assert_one_line_error(result, words)


def test_external_data_counts_toward_model_size(tmp_path: Path, host) -> None:
    import onnx

    model = onnx.load(str(build_tiny_onnx(tmp_path / "src.onnx", hidden=64)))
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    data = path.parent / "model.onnx.data"
    report = run_bench(path, host, runs=3, warmup=0, progress=False)
    assert report.model.total_bytes == path.stat().st_size + data.stat().st_size
    assert report.model.total_bytes > report.model.file_bytes + 64 * 64 * 4 - 1
    assert [Path(f.path).name for f in report.model.files] == ["model.onnx", "model.onnx.data"]
    data.unlink()
    result = run_cli(["bench", str(path), *FAST])
    assert result.exit_code == 2
    assert_one_line_error(result, "model.onnx.data")


def test_compare_interleaves_and_reports_the_ratio(tiny_onnx: Path, tmp_path: Path, host) -> None:
    bigger = build_tiny_onnx(tmp_path / "bigger.onnx", hidden=256)
    report = compare_bench(tiny_onnx, bigger, host, runs=15, warmup=2, progress=False)
    assert_sane(report.model)
    assert_sane(report.other)
    assert report.model.latency.runs == report.other.latency.runs == 15
    assert report.p50_ratio == pytest.approx(report.other.latency.p50_ms / report.model.latency.p50_ms)
    assert report.model.memory.shared_process and report.other.memory.shared_process
    assert ("faster than" in report.summary) == (report.p50_ratio >= 1)

    out = tmp_path / "compare.json"
    result = run_cli(["bench", str(tiny_onnx), "--compare", str(bigger), *FAST, "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "x faster than" in result.stdout or "x slower than" in result.stdout
    again = read_any_report(out)
    assert isinstance(again, ComparisonReport) and again.p50_ratio > 0


def assert_one_line_error(result, words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_inputs_are_one_line_exit_2(tmp_path: Path, tiny_onnx: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07\xff\xff this is not a protobuf \x00" * 10)
    refused = tmp_path / "refused.onnx"
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "refused",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(refused))
    source = {**yaml.safe_load(load_profile("host").source.read_text()), "name": "mine", "aliases": []}
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text(yaml.safe_dump({**source, "turbo": True}))
    negative = tmp_path / "negative.yaml"
    negative.write_text(yaml.safe_dump({**source, "budgets": {**source["budgets"], "model_size_mb": -3}}))
    cases = [
        ([str(tmp_path / "missing.onnx")], "model not found"),
        ([str(garbage)], "not an ONNX model"),
        ([str(refused)], "onnxruntime cannot load"),
        ([str(tiny_onnx), "--profile", "no-such-board"], "unknown profile"),
        ([str(tiny_onnx), "--profile", str(unknown_key)], "turbo: unknown key"),
        ([str(tiny_onnx), "--profile", str(negative)], "budgets.model_size_mb"),
    ]
    for args, words in cases:
        result = run_cli(["bench", *args, *FAST])
        assert result.exit_code == 2, (args, result.stderr)
        assert_one_line_error(result, words)


def test_synthetic_inputs_follow_the_signature() -> None:
    signature = [
        SimpleNamespace(name="input_ids", type="tensor(int64)", shape=["batch_size", "sequence_length"]),
        SimpleNamespace(name="attention_mask", type="tensor(int64)", shape=[None, None]),
        SimpleNamespace(name="position_ids", type="tensor(int64)", shape=["batch", "seq"]),
        SimpleNamespace(name="pixel_values", type="tensor(float)", shape=["batch", 3, "height", "width"]),
    ]
    feeds, specs, used = synthesize_inputs(signature, batch_size=2, sequence_length=7, vocab_sizes={"input_ids": 50})
    assert feeds["input_ids"].shape == (2, 7) and feeds["input_ids"].dtype == np.int64
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 50
    assert (feeds["attention_mask"] == 1).all() and feeds["attention_mask"].shape == (2, 7)
    assert (feeds["position_ids"] == np.arange(7)).all()
    assert feeds["pixel_values"].shape == (2, 3, 224, 224) and feeds["pixel_values"].dtype == np.float32
    assert used == {"batch": True, "sequence": True, "image": True}
    assert specs[0].fill == "token ids in [0, 50)"
    with pytest.raises(CompressError, match="--inputs"):
        synthesize_inputs([SimpleNamespace(name="x", type="tensor(float)", shape=[1, 2, 3, "mystery"])],
                          batch_size=1, sequence_length=8)


def test_report_reader_rejects_what_is_not_a_bench_report(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    for text, words in (("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
                        ('{"kind": "bench", "schema_version": 1}', "missing key"),
                        ('{"kind": "gate", "schema_version": 1}', "expected a bench report")):
        path.write_text(text)
        with pytest.raises(CompressError, match=words):
            BenchReport.from_json(path)
