"""The distillation engine end to end on tiny models: tasks, labels, resume, stage records, bitsandbytes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from compress.encoder import DistillConfig, DistillInterrupted, Reporter, distill, run_distill_stage
from export.base.errors import CompressError
from export.base.records import read_record
from tests.conftest import build_tiny_bert, real_sentences

QUIET = Reporter(show_progress=False)


def _config(teacher: Path, data: Path, **overrides) -> DistillConfig:
    settings = dict(teacher=str(teacher), data=data, max_steps=6, student="layers=2", threads=1, batch_size=16,
                    log_every=2, eval_points=2)
    settings.update(overrides)
    return DistillConfig(**settings)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


@pytest.fixture(scope="module")
def varied_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder whose layers really transform their input (random init at std 0.02 barely does,
    so every sentence gets nearly the same embedding and there is nothing to learn)."""
    import torch
    from transformers import BertModel

    folder = build_tiny_bert(tmp_path_factory.mktemp("varied-encoder"))
    model = BertModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and name.startswith("encoder."):
                parameter.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def labelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "labelled.jsonl"
    rows = [{"text": s, "label": i % 3} for i, s in enumerate(real_sentences(120))]
    rows.append({"text": "an impossible label", "label": "nonsense"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tagged_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tagged.jsonl"
    rows = []
    for s in real_sentences(120):
        words = s.split()
        rows.append({"text": s, "label": [i % 3 for i in range(len(words))]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_embeddings_distill_and_report_cosine_and_neighbours(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    # Without the hidden-state term (the jetson profile turns it on) the teacher's outputs are cached.
    result = distill(_config(tiny_encoder, text_file, hidden_weight=0.0), tmp_path / "distill", reporter=QUIET)
    q = result.quality
    assert q.metric == "mean_cosine" and -1 <= q.teacher_agreement <= 1 and 0 <= q.neighbour_agreement <= 1
    assert result.training.steps == 6 and result.training.stopped_by == "max_steps"
    assert result.training.teacher_cache.startswith("cached")
    history = json.loads(result.history_path.read_text())
    assert history[0]["step"] == 0 and "teacher_agreement" in history[0]
    assert {"step", "loss", "lr", "samples_per_s", "elapsed_s"} <= set(history[-1])
    assert sum("teacher_agreement" in e for e in history) >= 3  # start, during, end
    assert result.curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    held = [json.loads(line) for line in result.held_out_path.read_text().splitlines()]
    assert len(held) == result.held_out_examples
    assert not {h["text"] for h in held} & set(text_file.read_text().splitlines()[:0])
    assert result.student_layers == 2 and (result.student_dir / "modules.json").is_file()
    metrics = result.metrics()
    assert metrics["teacher_agreement"] == q.teacher_agreement and metrics["steps"] == 6


def test_distillation_moves_the_student_towards_the_teacher(varied_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    # A 1-layer student of a 4-layer teacher starts far off (cosine about 0.5); 40 steps bring it close.
    result = distill(_config(varied_encoder, text_file, student="layers=1", max_steps=40, lr=2e-3),
                     tmp_path / "distill", reporter=QUIET)
    assert result.initial_quality is not None and result.initial_quality.teacher_agreement < 0.8
    assert result.quality.teacher_agreement > 0.9
    agreement = [e["teacher_agreement"] for e in json.loads(result.history_path.read_text()) if "teacher_agreement" in e]
    assert agreement[-1] > agreement[0]


def test_classifier_with_labels_reports_argmax_agreement_and_accuracy(tiny_classifier: Path, labelled_file: Path,
                                                                     tmp_path: Path) -> None:
    result = distill(_config(tiny_classifier, labelled_file), tmp_path / "distill", reporter=QUIET)
    q = result.quality
    assert q.metric == "argmax_agreement" and 0 <= q.teacher_agreement <= 1
    assert q.accuracy is not None and q.teacher_accuracy is not None
    assert any("nonsense" in w for w in result.warnings)  # the bad label is named, the text is kept
    assert not (result.student_dir / "modules.json").exists()


def test_token_classifier_distills_per_token(tiny_token_classifier: Path, tagged_file: Path, tmp_path: Path) -> None:
    result = distill(_config(tiny_token_classifier, tagged_file, hidden_weight=0.5, attention_weight=0.5),
                     tmp_path / "distill", reporter=QUIET)
    assert result.quality.metric == "argmax_agreement" and result.quality.accuracy is not None
    assert result.training.teacher_cache.startswith("recomputed")  # internals needed every step


def test_narrower_student_trains_with_its_projection(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    result = distill(_config(tiny_encoder, text_file, student="layers=2,hidden=16,heads=2,ffn=32", hidden_weight=1.0),
                     tmp_path / "distill", reporter=QUIET)
    assert result.student_hidden == 16 and (result.student_dir / "2_Dense" / "model.safetensors").is_file()


def test_init_student_continues_from_an_existing_folder(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    first = distill(_config(tiny_encoder, text_file, max_steps=2), tmp_path / "first", reporter=QUIET)
    second = distill(_config(tiny_encoder, text_file, init_student=first.student_dir, max_steps=2),
                     tmp_path / "second", reporter=QUIET)
    assert second.student_layers == 2 and "existing student" in second.student_description
    assert second.initial_quality.teacher_agreement == pytest.approx(first.quality.teacher_agreement, abs=1e-5)


class _KillAt(Reporter):
    """Stops the run at one step: a hard kill (exception, no checkpoint) or Ctrl-C (SIGINT)."""

    def __init__(self, step: int, how: str) -> None:
        super().__init__(show_progress=False)
        self.at, self.how = step, how

    def step(self, report) -> None:
        if report.step == self.at:
            if self.how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("simulated kill")


@pytest.mark.parametrize("how", ["kill", "sigint"])
def test_resume_after_a_stop_reaches_the_same_weights(tiny_encoder: Path, text_file: Path, tmp_path: Path,
                                                      how: str) -> None:
    import torch

    # Dropout on, so the RNG state has to be restored too; 12 steps span several epochs (cache in use).
    settings = dict(max_steps=12, dropout=True, checkpoint_every_steps=4, batch_size=32)
    unbroken = distill(_config(tiny_encoder, text_file, **settings), tmp_path / "unbroken", reporter=QUIET)
    work = tmp_path / "stopped"
    expected = DistillInterrupted if how == "sigint" else RuntimeError
    with pytest.raises(expected):
        distill(_config(tiny_encoder, text_file, **settings), work, reporter=_KillAt(7, how))
    state = json.loads((work / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == (7 if how == "sigint" else 4)
    assert not (work / "student").exists()
    resumed = distill(_config(tiny_encoder, text_file, resume=True, **settings), work, reporter=QUIET)
    assert resumed.training.resumed_from_step == state["step"] and resumed.training.steps == 12
    a, b = _weights(unbroken.student_dir), _weights(resumed.student_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_from_other_settings(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    distill(_config(tiny_encoder, text_file, max_steps=2), tmp_path / "run", reporter=QUIET)
    with pytest.raises(CompressError, match="different settings"):
        distill(_config(tiny_encoder, text_file, max_steps=2, lr=1e-3, resume=True), tmp_path / "run", reporter=QUIET)
    with pytest.raises(CompressError, match="no checkpoint"):
        distill(_config(tiny_encoder, text_file, resume=True), tmp_path / "empty", reporter=QUIET)


def test_time_budget_stops_the_run(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    result = distill(_config(tiny_encoder, text_file, max_steps=None, time_budget_s=6.0), tmp_path / "d", reporter=QUIET)
    assert result.training.stopped_by == "time_budget" and result.training.steps > 0
    assert result.training.train_time_s < 6.0


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CompressError, match="no CUDA device"):
        distill(_config(tiny_encoder, text_file, device="cuda"), tmp_path / "d", reporter=QUIET)


def test_auto_device_falls_back_to_cpu_with_one_warning(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from compress.training.device import cpu_bf16_flag

    result = distill(_config(tiny_encoder, text_file, max_steps=1), tmp_path / "d", reporter=QUIET)
    expected = "bf16-autocast" if cpu_bf16_flag() else "fp32"  # auto: bf16 where the CPU has it natively
    assert result.device == "cpu" and result.precision == expected and result.threads == 1
    assert [w for w in result.warnings if "CUDA" in w] == [result.warnings[0]]


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_bitsandbytes_teacher_on_cpu(tiny_encoder: Path, text_file: Path, tmp_path: Path, quant: str) -> None:
    pytest.importorskip("bitsandbytes")
    result = distill(_config(tiny_encoder, text_file, max_steps=2, teacher_quant=quant), tmp_path / "d", reporter=QUIET)
    teacher = result.teacher
    assert teacher.quant == quant and teacher.quant_quality is not None
    assert teacher.memory_footprint_bytes < teacher.fp_memory_footprint_bytes
    assert 0.5 < teacher.quant_quality.teacher_agreement <= 1.0
    assert result.metrics()["teacher_quant_agreement"] == teacher.quant_quality.teacher_agreement


def test_stage_writes_its_record_and_skips_when_up_to_date(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    config = _config(tiny_encoder, text_file, max_steps=2)
    run = run_distill_stage(tmp_path, config, None, QUIET)
    assert run.status == "ran"
    record = run.record
    on_disk = read_record(tmp_path / "distill")
    assert on_disk is not None and on_disk.fingerprint == record.fingerprint
    assert set(record.inputs) == {"teacher", "data"}
    assert record.outputs["student"] == "student" and (tmp_path / "distill" / "student" / "config.json").is_file()
    for key in ("teacher_agreement", "teacher_agreement_metric", "neighbour_agreement", "steps", "samples_per_s",
                "student_parameters", "teacher_parameters", "device", "agreement_by_step"):
        assert key in record.metrics
    again = run_distill_stage(tmp_path, config, None, QUIET)
    assert again.status == "skipped" and again.record.started_at == record.started_at
    changed = run_distill_stage(tmp_path, _config(tiny_encoder, text_file, max_steps=3), None, QUIET)
    assert changed.status == "ran" and changed.record.metrics["steps"] == 3


@pytest.mark.slow
def test_real_teacher_three_layer_student_improves(teacher_dir: Path, tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 on the default corpus: 30 steps lift the held-out cosine."""
    result = distill(DistillConfig(max_steps=30, threads=None), tmp_path / "d", reporter=QUIET)
    assert result.student_layers == 3 and result.teacher.layers == 6
    assert result.quality.teacher_agreement > result.initial_quality.teacher_agreement + 0.1
