"""`compress gate`: verdicts, exit codes, hardware matching, quality evidence and JUnit output."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from export.runtime.bench import BenchReport, run_bench
from export.runtime.gate import GateReport, QualityEvidence, gate, match_hardware
from export.runtime.host import HostInfo, detect_host
from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_onnx
from tests.test_bench import assert_one_line_error

BUDGETS = ["latency_ms.p50", "latency_ms.p95", "latency_ms.p99", "model_size_mb", "peak_memory_mb",
           "quality.min_teacher_agreement", "quality.max_quantization_drop", "quality.min_neighbour_agreement",
           "quality.min_similarity_spearman"]


@pytest.fixture(scope="module")
def bench_report(tiny_onnx: Path) -> BenchReport:
    """A real measurement of the tiny graph on this machine, with the host profile's settings."""
    return run_bench(tiny_onnx, load_profile("host"), runs=20, warmup=2, progress=False)


@pytest.fixture()
def report_file(bench_report: BenchReport, tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    bench_report.to_json(path)
    return path


def user_profile(tmp_path: Path, edit, base: str = "host") -> Path:
    data = yaml.safe_load(load_profile(base).source.read_text())
    data.update(name=f"mine-{base}", aliases=[])  # shipped names are reserved
    edit(data)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def host_like(**changes) -> HostInfo:
    """An AMD EPYC x86-64 box with AVX2 and FMA, no AVX-512 (what this project's CI runs on)."""
    facts = dict(cpu_model="AMD EPYC", arch="x86_64", os="Linux", logical_cores=2, physical_cores=2, usable_cores=2,
                 cpu_flags=["avx", "avx2", "fma", "sse4_2"], gpus=[])
    return HostInfo(**{**facts, **changes})


CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(("profile", "host", "providers", "matched"), [
    ("host", host_like(), CPU, True),
    ("x86-avx2", host_like(), CPU, True),
    ("x86-avx512-vnni", host_like(), CPU, False),
    ("raspberry-pi-5", host_like(), CPU, False),
    ("jetson", host_like(), CPU, False),
    ("nvidia-gpu", host_like(), CPU, False),
    ("raspberry-pi-5", host_like(cpu_model="Cortex-A76", arch="aarch64", cpu_flags=["fp", "asimd", "asimddp"],
                                 board_model="Raspberry Pi 5 Model B Rev 1.0"), CPU, True),
    ("raspberry-pi-5", host_like(cpu_model="Cortex-A72", arch="aarch64", cpu_flags=["fp", "asimd"],
                                 board_model="Raspberry Pi 4 Model B Rev 1.4"), CPU, False),
    ("jetson", host_like(cpu_model="Cortex-A78AE", arch="aarch64", cpu_flags=["asimd", "asimddp"], gpus=["Orin (nvgpu)"],
                         board_model="NVIDIA Jetson Orin Nano Developer Kit"), CUDA, True),
    ("jetson", host_like(cpu_model="Cortex-A78AE", arch="aarch64", cpu_flags=["asimd", "asimddp"], gpus=["Orin (nvgpu)"],
                         board_model="NVIDIA Jetson Orin Nano Developer Kit"), CPU, False),  # CUDA fell back to CPU
    ("nvidia-gpu", host_like(gpus=["NVIDIA H100 80GB HBM3"]), CUDA, True),
    ("nvidia-gpu", host_like(gpus=["NVIDIA H100 80GB HBM3"]), CPU, False),
    ("x86-avx512-vnni", host_like(cpu_flags=["avx2", "fma", "avx512f", "avx512_vnni"]), CPU, True),
    ("x86-avx2", host_like(gpus=["NVIDIA H100 80GB HBM3"]), CUDA, False),  # a CPU profile measured on a GPU
])
def test_match_hardware(profile: str, host: HostInfo, providers: list[str], matched: bool) -> None:
    match = match_hardware(load_profile(profile), host, providers)
    assert match.matched is matched, match.reasons
    assert bool(match.reasons) is not matched


def test_fewer_cores_is_a_note_not_a_mismatch() -> None:
    match = match_hardware(load_profile("x86-avx2"), host_like(usable_cores=2), CPU)
    assert match.matched and any("cores" in note for note in match.notes)


def test_without_quality_evidence_a_profile_that_budgets_quality_is_unverified(report_file: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "gate.json"
    result = run_cli(["gate", str(report_file), "--profile", "host", "--output", str(out)])
    assert result.exit_code == 3, result.stdout + result.stderr
    report = GateReport.from_json(out)
    assert report.verdict == "unverified" and any("quality not shown" in r for r in report.reasons)
    for name in ("quality.min_teacher_agreement", "quality.max_quantization_drop"):
        assert report.check(name).status == "not_checked"  # never "pass" without evidence
    assert {report.check(n).status for n in BUDGETS[:5]} == {"pass"}


def test_with_quality_evidence_the_host_profile_passes(report_file: Path, tmp_path: Path) -> None:
    evidence = tmp_path / "quality.json"
    evidence.write_text(json.dumps({"teacher_agreement": 0.97, "metric": "mean_cosine", "quantization_drop": 0.01}))
    result = run_cli(["gate", str(report_file), "--profile", "host", "--quality", str(evidence)])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_one_missed_budget_fails_with_exit_1(report_file: Path, tmp_path: Path) -> None:
    profile = user_profile(tmp_path, lambda d: d["budgets"].update(model_size_mb=0.0001))
    junit = tmp_path / "junit.xml"
    result = run_cli(["gate", str(report_file), "--profile", str(profile), "--junit", str(junit), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["verdict"] == "fail" and statuses["model_size_mb"] == "fail"
    assert statuses["latency_ms.p95"] == statuses["peak_memory_mb"] == "pass"

    suite = ElementTree.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == BUDGETS  # one testcase per budget
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert failed == ["model_size_mb"] and skipped == BUDGETS[5:]
    assert suite.get("failures") == "1" and suite.get("skipped") == "4" and suite.get("tests") == "9"


def test_a_neighbour_and_a_ranking_floor_are_judged_from_the_quality_evidence(report_file: Path,
                                                                              tmp_path: Path) -> None:
    profile = user_profile(tmp_path, lambda d: d["budgets"]["quality"].update(
        min_teacher_agreement=0.8, min_neighbour_agreement=0.7, min_similarity_spearman=0.9))
    evidence = tmp_path / "quality.json"
    evidence.write_text(json.dumps({"teacher_agreement": 0.93, "metric": "mean_cosine", "quantization_drop": 0.001,
                                    "neighbour_agreement": 0.62, "similarity_spearman": 0.95}))
    result = run_cli(["gate", str(report_file), "--profile", str(profile), "--quality", str(evidence), "--json"])
    statuses = {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}
    assert result.exit_code == 1 and statuses["quality.min_neighbour_agreement"] == "fail"
    assert statuses["quality.min_similarity_spearman"] == "pass" and statuses["quality.min_teacher_agreement"] == "pass"
    evidence.write_text(json.dumps({"teacher_agreement": 0.93, "metric": "mean_cosine", "quantization_drop": 0.001}))
    result = run_cli(["gate", str(report_file), "--profile", str(profile), "--quality", str(evidence), "--json"])
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["quality.min_neighbour_agreement"]["status"] == "not_checked"
    assert "no neighbour_agreement in the evidence" in checks["quality.min_neighbour_agreement"]["note"]


@pytest.mark.parametrize("profile", ["jetson", "nvidia-gpu"])
def test_gpu_profile_measured_on_this_cpu_is_unverified_exit_3(report_file: Path, bench_report: BenchReport,
                                                               tmp_path: Path, profile: str) -> None:
    if bench_report.session.gpu_used:
        pytest.skip("this machine really ran a GPU provider")
    junit = tmp_path / "junit.xml"
    result = run_cli(["gate", str(report_file), "--profile", profile, "--junit", str(junit), "--json"])
    assert result.exit_code == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "unverified" and not report["hardware"]["matched"]
    assert "compress verify --gate ARCHIVE" in report["verify_command"]
    assert load_profile(profile).name in report["verify_command"]
    latency = next(c for c in report["checks"] if c["name"] == "latency_ms.p50")
    assert latency["status"] == "not_checked" and latency["off_target_status"] in ("pass", "fail")
    assert all(c["status"] != "pass" for c in report["checks"] if c["hardware_dependent"])
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    assert all(c.find("skipped") is not None for c in cases if c.get("name").startswith(("latency", "peak")))


def test_a_gpu_profile_never_passes_on_cpu_even_with_generous_budgets(bench_report: BenchReport) -> None:
    profile = load_profile("nvidia-gpu").model_copy(update={"budgets": load_profile("host").budgets})
    verdict = gate(bench_report, profile, QualityEvidence(0.99, "mean_cosine", 0.0))
    if not bench_report.session.gpu_used:
        assert verdict.verdict == "unverified" and verdict.exit_code == 3


def test_hardware_independent_failure_fails_on_any_hardware(bench_report: BenchReport) -> None:
    verdict = gate(bench_report, load_profile("jetson"), QualityEvidence(0.5, "mean_cosine"))
    assert verdict.verdict == "fail" and verdict.exit_code == 1
    assert verdict.check("quality.min_teacher_agreement").status == "fail"


def test_quality_evidence_from_top_level_and_from_a_stage_record(report_file: Path, tmp_path: Path) -> None:
    top = tmp_path / "quality.json"
    top.write_text(json.dumps({"teacher_agreement": 0.97, "metric": "mean_cosine", "quantization_drop": 0.004}))
    stage = tmp_path / "stage.json"
    stage.write_text(json.dumps({"stage": "quantize", "metrics": {"teacher_agreement": 0.97, "metric": "mean_cosine",
                                                                  "quantization_drop": 0.004}}))
    for path in (top, stage):
        result = run_cli(["gate", str(report_file), "--profile", "host", "--quality", str(path), "--json"])
        assert result.exit_code == 0, result.stderr
        checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        assert checks["quality.min_teacher_agreement"]["status"] == "pass"
        assert checks["quality.min_teacher_agreement"]["measured"] == 0.97
        assert checks["quality.max_quantization_drop"]["status"] == "pass"
    no_drop = QualityEvidence.from_dict({"teacher_agreement": 0.97, "metric": "argmax_agreement"})
    assert no_drop.quantization_drop is None
    bench = BenchReport.from_json(report_file)
    assert gate(bench, load_profile("host"), no_drop).check("quality.max_quantization_drop").status == "not_checked"
    too_much = QualityEvidence(0.97, "mean_cosine", quantization_drop=0.05)
    assert gate(bench, load_profile("host"), too_much).verdict == "fail"


def test_another_workload_is_not_evidence_for_the_profile(bench_report: BenchReport) -> None:
    shorter = dataclasses.replace(bench_report, workload=dataclasses.replace(bench_report.workload, sequence_length=32))
    verdict = gate(shorter, load_profile("host"))
    assert verdict.verdict == "unverified"
    assert any("sequence length 32" in reason for reason in verdict.reasons)


def test_bad_inputs_are_one_line_exit_2(report_file: Path, tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"kind": "bench", "schema_version": 1, "model": ')
    bad_quality = tmp_path / "quality.json"
    bad_quality.write_text(json.dumps({"metric": "mean_cosine"}))
    unknown_key = user_profile(tmp_path, lambda d: d.update(turbo=True))
    cases = [
        ([str(tmp_path / "missing.json"), "--profile", "host"], "not found"),
        ([str(garbled), "--profile", "host"], "not valid JSON"),
        ([str(report_file), "--profile", "no-such-board"], "unknown profile"),
        ([str(report_file), "--profile", str(unknown_key)], "turbo: unknown key"),
        ([str(report_file), "--profile", "host", "--quality", str(bad_quality)], "teacher_agreement"),
        ([str(report_file), "--profile", "host", "--quality", str(tmp_path / "nope.json")], "not found"),
    ]
    for args, words in cases:
        result = run_cli(["gate", *args])
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert_one_line_error(result, words)
    negative = user_profile(tmp_path, lambda d: d["budgets"]["latency_ms"].update(p95=-1))
    result = run_cli(["gate", str(report_file), "--profile", str(negative)])
    assert result.exit_code == 2
    assert_one_line_error(result, "budgets.latency_ms.p95")


def test_a_comparison_report_gates_its_first_model(tiny_onnx: Path, tmp_path: Path) -> None:
    from export.runtime.bench import compare_bench

    comparison = compare_bench(tiny_onnx, tiny_onnx, load_profile("host"), runs=5, warmup=1, progress=False)
    path = tmp_path / "compare.json"
    comparison.to_json(path)
    result = run_cli(["gate", str(path), "--profile", "host", "--json"])
    assert result.exit_code == 3, result.stderr  # no quality evidence: speed alone passes nothing
    assert "first model of the comparison" in result.stderr
    memory = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "peak_memory_mb")
    assert "comparison" in memory["note"]


def _on_a_host_with(bench_report: BenchReport, cores: int) -> BenchReport:
    return dataclasses.replace(bench_report, host=dataclasses.replace(bench_report.host, usable_cores=cores))


def test_a_speed_miss_on_fewer_cores_than_the_target_is_unverified(bench_report: BenchReport, tmp_path: Path) -> None:
    # A target with more cores than this measurement had, and a latency budget it misses here.
    profile = load_profile(user_profile(tmp_path, lambda d: (d["hardware"].update(cpu={"cores": 64}),
                                                             d["budgets"]["latency_ms"].update(p95=1e-6))))
    report = gate(_on_a_host_with(bench_report, 2), profile)
    assert report.verdict == "unverified" and report.exit_code == 3
    assert any("not evidence about the target" in reason for reason in report.reasons)
    assert report.check("latency_ms.p95").status == "fail"
    # On as many cores as the target, the same miss is a failure.
    assert gate(_on_a_host_with(bench_report, 64), profile).verdict == "fail"


def test_a_pass_on_fewer_cores_stands_and_says_so(bench_report: BenchReport, tmp_path: Path) -> None:
    profile = load_profile(user_profile(tmp_path, lambda d: d["hardware"].update(cpu={"cores": 64})))
    report = gate(_on_a_host_with(bench_report, 2), profile, QualityEvidence(0.99, "mean_cosine", 0.0))
    assert report.verdict == "pass"
    assert any("passed on fewer cores" in reason for reason in report.reasons)


def test_a_size_miss_on_fewer_cores_still_fails(bench_report: BenchReport, tmp_path: Path) -> None:
    profile = load_profile(user_profile(tmp_path, lambda d: (d["hardware"].update(cpu={"cores": 64}),
                                                             d["budgets"].update(model_size_mb=1e-6))))
    assert gate(_on_a_host_with(bench_report, 2), profile).verdict == "fail"


@pytest.mark.parametrize("field, value", [
    (("latency", "p95_ms"), -1.0), (("latency", "p50_ms"), float("nan")), (("model", "size_mb"), -0.5),
    (("memory", "session_peak_mb"), float("inf")),
])
def test_an_impossible_number_in_a_report_is_bad_input(report_file: Path, tmp_path: Path, field: tuple[str, str],
                                                        value: float) -> None:
    data = json.loads(report_file.read_text())
    data[field[0]][field[1]] = value
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    result = run_cli(["gate", str(forged), "--profile", "host"])
    assert_one_line_error(result, field[1])


def test_the_gate_checks_the_report_against_the_model_at_hand(report_file: Path, tiny_onnx: Path,
                                                             tmp_path: Path) -> None:
    other = build_tiny_onnx(tmp_path / "other.onnx", hidden=24)
    result = run_cli(["gate", str(report_file), "--profile", "host", "--model", str(other)])
    assert_one_line_error(result, "is not the model this report measured")
    # The report's own path is checked when the file is there: swap the file under it.
    data = json.loads(report_file.read_text())
    data["model"]["path"] = str(other)
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    assert_one_line_error(run_cli(["gate", str(moved), "--profile", "host"]), "sha256 differs")
    assert run_cli(["gate", str(report_file), "--profile", "host", "--model", str(tiny_onnx)]).exit_code == 3


BOARDS = Path(__file__).parent / "data" / "boards"


@pytest.mark.parametrize(("board", "profile", "providers", "cpu", "model"), [
    ("raspberry-pi-5", "raspberry-pi-5", CPU, "Cortex-A76", "Raspberry Pi 5 Model B Rev 1.0"),
    ("jetson-orin-nano", "jetson-orin-nano", CUDA, "Cortex-A78AE", "NVIDIA Jetson Orin Nano Developer Kit"),
])
def test_a_boards_own_files_are_detected_as_that_board(board, profile, providers, cpu, model):
    """/proc/cpuinfo and /proc/device-tree/model as a Pi 5 and a Jetson Orin Nano present them."""
    host = detect_host(BOARDS / board, "aarch64")
    assert (host.cpu_model, host.board_model, host.arch, host.emulated) == (cpu, model, "aarch64", None)
    assert {"asimd", "asimddp"} <= set(host.relevant_flags)
    match = match_hardware(load_profile(profile), host, providers)
    assert match.matched, match.reasons


@pytest.mark.parametrize("emulation", ["qemu-aarch64-on-xeon", "qemu-aarch64-arm-cpuinfo"])
@pytest.mark.parametrize("profile", ["raspberry-pi-5", "android-arm64", "jetson-orin-nano"])
def test_an_emulated_aarch64_is_never_taken_for_a_board(profile, emulation):
    """QEMU user mode: an aarch64 Python over an x86 kernel, whether /proc/cpuinfo is passed through
    (QEMU 7: an x86 CPU) or shows an Arm one (as benchmarks/arm64_board.py's root does)."""
    host = detect_host(BOARDS / emulation, "aarch64")
    assert host.arch == "aarch64" and host.board_model is None
    assert host.emulated and "user-mode emulation" in host.emulated
    assert "(emulated)" in host.describe()
    match = match_hardware(load_profile(profile), host, CPU)
    assert not match.matched and match.reasons[0] == host.emulated


def test_a_native_host_is_not_emulated():
    assert detect_host().emulated is None
    assert detect_host(BOARDS / "raspberry-pi-5", "arm64").emulated is None  # macOS spells it arm64
