"""`--student auto` for encoders: the latency model, the search, and the release measured per precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig

from compress.encoder.student_search import (MARGIN, StudentSearch, calibrate, calibration_shapes, candidate_shapes,
                                             choose, estimate_candidates, host_latency_model)
from export.runtime.host import detect_host
from export.runtime.latency_model import (CalibrationPoint, EncoderShape, Transfer, fit_latency_model, fit_precision,
                                          transfer_to)
from export.runtime.profiles import Profile, load_profile
from export.runtime.release_choice import ReleaseChoice
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences


def _cpu_profile(tmp_path: Path, name: str, p95_ms: float, base: str = "raspberry-pi-5") -> Path:
    """A CPU profile any host can estimate (arch any) with the given p95 budget."""
    raw = yaml.safe_load(load_profile(base).source.read_text())
    raw.update(name=name, aliases=[])
    raw["hardware"]["arch"] = "any"
    raw["budgets"]["latency_ms"] = {"p95": p95_ms}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def teacher_config() -> BertConfig:
    # Wide enough that a forward pass takes milliseconds: its cost, not timer noise, is what is timed.
    return BertConfig(vocab_size=2000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=1024, max_position_embeddings=256)


@pytest.fixture(scope="module")
def latency_model(teacher_config: BertConfig, tmp_path_factory: pytest.TempPathFactory):
    profile = load_profile(_cpu_profile(tmp_path_factory.mktemp("profile"), "box", 10.0))
    model = host_latency_model(teacher_config, profile)
    assert model is not None
    return model


def test_candidate_shapes_cover_depth_and_width_below_the_teacher(teacher_config: BertConfig) -> None:
    shapes = dict(candidate_shapes(teacher_config))
    assert set(shapes) == {"layers=3", "layers=2", "layers=1",
                           *(f"layers={d},hidden=192,heads=3,ffn=768" for d in (1, 2, 3)),
                           *(f"layers={d},hidden=128,heads=2,ffn=512" for d in (1, 2, 3))}
    assert shapes["layers=2"] == EncoderShape(2, 256, 4, 1024, 2000)
    picked = calibration_shapes(list(shapes.values()))
    assert len(picked) == 4 and {s.layers for s in picked} == {1, 3} and {s.hidden for s in picked} == {128, 256}


def test_the_latency_model_orders_candidates_by_cost(latency_model, teacher_config: BertConfig) -> None:
    """Timed graphs on this host: a candidate that does more of every kind of work is estimated slower."""
    candidates = estimate_candidates(teacher_config, latency_model)
    for precision in ("fp32", "int8-dynamic"):
        for a in candidates:
            for b in candidates:
                if a.shape.layers >= b.shape.layers and a.shape.hidden >= b.shape.hidden and a is not b:
                    assert a.p95_ms[precision] > b.p95_ms[precision], (a.spec, b.spec, precision)
    # The fit follows its dearest measurement (loosely: a shared 2-core machine is noisy).
    for precision, fit in latency_model.fits.items():
        point = max((p for p in latency_model.points if p.precision == precision), key=lambda p: p.gflop)
        assert 0.5 < fit.host_p50_ms(point.gflop, point.melements) / point.p50_ms < 2.0, point


def test_a_tighter_budget_picks_a_smaller_student(latency_model, teacher_config: BertConfig) -> None:
    candidates = estimate_candidates(teacher_config, latency_model)
    costs = sorted(min(c.p95_ms.values()) for c in candidates)
    loose, _ = choose(candidates, costs[-1] / MARGIN * 1.01, MARGIN)
    assert loose.spec == "layers=3"  # everything fits: the most capable
    middle, why = choose(candidates, costs[len(costs) // 2] / MARGIN * 1.001, MARGIN)
    assert middle.block_parameters < loose.block_parameters and "largest of" in why
    assert all(not c.fits or c.block_parameters <= middle.block_parameters for c in candidates)
    none, why = choose(candidates, costs[0] / MARGIN * 0.5, MARGIN)
    assert not any(c.fits for c in candidates) and "no candidate fits" in why
    assert min(none.p95_ms.values()) == costs[0]  # the cheapest, named as a miss


def test_the_fit_recovers_a_known_cost_line() -> None:
    shapes = [EncoderShape(layers, hidden, hidden // 32, 4 * hidden) for layers, hidden in
              ((1, 128), (4, 128), (1, 384), (4, 384))]
    points = [CalibrationPoint(s, "fp32", s.gflop(1, 128), s.melements(1, 128),
                               0.3 + 5.0 * s.gflop(1, 128) + 0.2 * s.melements(1, 128),
                               1.1 * (0.3 + 5.0 * s.gflop(1, 128) + 0.2 * s.melements(1, 128))) for s in shapes]
    fit = fit_precision(points)
    assert fit.overhead_ms == pytest.approx(0.3) and fit.ms_per_gflop == pytest.approx(5.0)
    assert fit.ms_per_melement == pytest.approx(0.2) and fit.tail == pytest.approx(1.1)
    half = fit_latency_model(points, Transfer(0.5, False, "estimate"), batch=1, sequence=128)
    shape = shapes[-1]
    assert half.estimate(shape, "fp32").p50_ms == pytest.approx(0.3 + 0.5 * (5.0 * shape.gflop(1, 128)
                                                                          + 0.2 * shape.melements(1, 128)))
    # A target with little bandwidth is bound by reading the weights.
    slow = fit_latency_model(points, Transfer(0.5, False, "estimate"), batch=1, sequence=128, bandwidth_gbs=0.01)
    assert slow.estimate(shape, "fp32").bound == "memory"


def test_what_the_host_can_stand_in_for(tmp_path: Path) -> None:
    host = detect_host()
    assert transfer_to(load_profile("jetson"), host, 2, False, 2600.0) is None  # a GPU: no CPU timing says
    assert transfer_to(load_profile("host"), host, 2, False, 2600.0) is None  # "any" machine: no target
    vnni = load_profile("x86-avx512-vnni")
    same = transfer_to(vnni, host, 4, True, None)
    assert same is not None and same.measured and same.compute_scale == 1.0
    fewer = transfer_to(vnni, host, 2, True, None)
    assert fewer is not None and not fewer.measured and fewer.compute_scale == 0.5 and "estimate" in fewer.basis
    pi = transfer_to(load_profile("rpi5"), host, 2, False, 2600.0)
    if any(flag in host.cpu_flags for flag in ("avx2", "asimd", "avx512f")):
        assert pi is not None and not pi.measured and pi.basis.startswith("estimate")


def test_calibration_times_real_graphs_in_each_precision(teacher_config: BertConfig, tmp_path: Path) -> None:
    profile: Profile = load_profile(_cpu_profile(tmp_path, "box", 10.0))
    shape = EncoderShape(1, 128, 2, 512, 2000)
    points = calibrate(teacher_config, [shape], ["fp32", "int8-dynamic"], profile)
    assert [p.precision for p in points] == ["fp32", "int8-dynamic"]
    assert all(p.p95_ms >= p.p50_ms > 0 and p.gflop == shape.gflop(1, 128) for p in points)


# -- through the CLI -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


def _distill(teacher: Path, data: Path, out: Path, profile: Path, *extra: str):
    return run_cli(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                    "--profile", str(profile), "--max-steps", "2", "--threads", "1", "--batch-size", "8", *extra])


def test_the_profile_budget_picks_the_student_through_the_cli(tiny_encoder: Path, text_file: Path,
                                                              tmp_path: Path) -> None:
    loose = _distill(tiny_encoder, text_file, tmp_path / "loose", _cpu_profile(tmp_path, "loose", 1000.0),
                     "--stop-after", "distill")
    assert loose.exit_code == 0, loose.stderr
    assert "student search" in loose.stderr and "block params" in loose.stderr  # progress goes to stderr
    search = StudentSearch.from_json(tmp_path / "loose" / "distill" / "student_search.json")
    assert search.chosen == "layers=3" and len(search.candidates) == 9 and search.basis.startswith("estimate")
    assert f"student: {search.chosen} ->" in loose.stderr

    tight = _distill(tiny_encoder, text_file, tmp_path / "tight", _cpu_profile(tmp_path, "tight", 0.001),
                     "--stop-after", "distill")
    assert tight.exit_code == 0, tight.stderr
    narrow = StudentSearch.from_json(tmp_path / "tight" / "distill" / "student_search.json")
    assert "no candidate fits" in narrow.why and narrow.chosen != "layers=3"
    chosen = next(c for c in narrow.candidates if c.spec == narrow.chosen)
    assert chosen.block_parameters < next(c for c in search.candidates if c.spec == "layers=3").block_parameters

    explicit = _distill(tiny_encoder, text_file, tmp_path / "explicit", _cpu_profile(tmp_path, "tight", 0.001),
                        "--stop-after", "distill", "--student", "layers=2")
    assert explicit.exit_code == 0 and "student search" not in explicit.stderr
    assert not (tmp_path / "explicit" / "distill" / "student_search.json").exists()


def test_the_release_is_the_fastest_precision_that_keeps_the_quality(tiny_encoder: Path, text_file: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _distill(tiny_encoder, text_file, run, _cpu_profile(tmp_path, "box", 1000.0),
                      )
    assert "release candidates vs the fp32 teacher" in result.stdout, result.stdout + result.stderr
    choice = ReleaseChoice.from_json(run / "release" / "candidates.json")
    students = [c for c in choice.candidates if c.source == "student"]
    assert [c.precision for c in students] == ["fp32", "int8-dynamic"]
    assert {c.source for c in choice.candidates} == {"student", "teacher", "static"}
    for candidate in students:
        # The search's estimate for the trained shape stands beside the measurement (students only).
        assert candidate.speed["estimated_p95_ms"] > 0 and "estimate_error" in candidate.speed
        assert candidate.speed["p95_ms"] >= candidate.speed["p50_ms"] > 0
    passing = [c for c in choice.candidates if c.passes]
    summary = json.loads((run / "run.json").read_text())
    if passing:
        best = max(passing, key=lambda c: c.speedup)
        assert choice.released == best.name and summary["precision"] == best.precision
    else:
        assert choice.released is None and "no candidate meets every budget" in choice.why


def test_the_default_corpus_reports_a_genre_never_trained_on(tiny_encoder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["distill", "--teacher", str(tiny_encoder), "--out", str(run), "--profile", "host",
                      "--max-steps", "2", "--threads", "1", "--batch-size", "8"])
    assert result.exit_code in (0, 1), result.stderr
    assert "quotations (cross-domain)" in result.stderr and "quotations (never trained on)" in result.stdout
    held = {json.loads(line)["text"] for line in (run / "distill" / "held_out.jsonl").read_text().splitlines()}
    cross = [json.loads(line) for line in (run / "distill" / "cross_domain.jsonl").read_text().splitlines()]
    assert len(cross) == 1000 and {row["genre"] for row in cross} == {"quotations"}
    assert not held & {row["text"] for row in cross}
    quality = json.loads((run / "run.json").read_text())["quality"]
    assert quality["cross_domain_genre"] == "quotations" and 0 < quality["cross_domain_agreement"] <= 1
    assert quality["cross_domain_neighbour_agreement"] is not None


def test_a_size_budget_rules_out_students_whose_file_would_miss_it(latency_model, teacher_config: BertConfig) -> None:
    """android-arm64 once chose a 20.9M-parameter student whose int8 file (20.2 MiB) missed its 20 MB budget."""
    from compress.encoder.student_search import SIZE_MARGIN, estimated_size_mb

    candidates = estimate_candidates(teacher_config, latency_model)
    loose_ms = max(max(c.p95_ms.values()) for c in candidates) / MARGIN * 1.01
    free, _ = choose(candidates, loose_ms, MARGIN)
    size_of_free = min(estimated_size_mb(free.shape, p) for p in free.p95_ms)
    capped, why = choose(candidates, loose_ms, MARGIN, size_budget_mb=size_of_free * 0.9 / SIZE_MARGIN)
    assert capped.shape.parameters < free.shape.parameters and "fits the size budget" in why
    assert all(not c.fits or c.size_mb[c.precision] <= size_of_free * 0.9 for c in candidates)
    # The estimate is the measured file: 20.9M parameters in int8-dynamic were 20.16 MiB.
    minilm_5 = EncoderShape(5, 384, 12, 1536, 30522)
    assert minilm_5.parameters == pytest.approx(20.9e6, rel=0.01)
    assert estimated_size_mb(minilm_5, "int8-dynamic") == pytest.approx(20.16, rel=0.02)
