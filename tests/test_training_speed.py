"""The cheaper training step: the teacher runs once per text with layer transfer, bf16 where the CPU has it,
phases timed, and bad settings refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.encoder import DistillConfig, Reporter, distill
from compress.training.device import cpu_bf16_flag
from compress.training.teacher_states import STATES_FILE, TeacherStatesCache
from export.base.errors import CompressError
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

QUIET = Reporter(show_progress=False)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


def _config(teacher: Path, data: Path, **overrides) -> DistillConfig:
    settings = dict(teacher=str(teacher), data=data, student="layers=2", threads=1, batch_size=16, eval_points=0,
                    hidden_weight=1.0, train_precision="fp32", epochs=3.0)
    settings.update(overrides)
    return DistillConfig(**settings)


def test_with_layer_transfer_the_teacher_runs_once_per_text(tiny_encoder: Path, text_file: Path,
                                                            tmp_path: Path) -> None:
    result = distill(_config(tiny_encoder, text_file), tmp_path / "cached", reporter=QUIET)
    training = result.training
    assert training.epochs == pytest.approx(3.0)
    # Three epochs over the same texts: the teacher's tokens are the first epoch's alone.
    assert training.teacher_tokens * 3 == training.tokens
    assert "hidden states" in training.teacher_cache
    assert not (tmp_path / "cached" / "checkpoints" / STATES_FILE).exists()  # removed once training is over
    assert set(training.phase_seconds) >= {"data", "teacher", "forward", "backward", "optimizer"}
    assert 0 < sum(training.phase_seconds.values()) <= training.train_time_s + 1.0

    recomputed = distill(_config(tiny_encoder, text_file, teacher_state_cache=False), tmp_path / "every-step",
                         reporter=QUIET)
    assert recomputed.training.teacher_tokens == recomputed.training.tokens == training.tokens
    assert "every step" in recomputed.training.teacher_cache
    # The cached states differ from the fresh ones by fp16 rounding only.
    assert result.quality.teacher_agreement == pytest.approx(recomputed.quality.teacher_agreement, abs=0.01)


def test_a_cache_over_its_limit_says_so_once_and_the_teacher_runs_every_step(tiny_encoder: Path, text_file: Path,
                                                                           tmp_path: Path) -> None:
    warnings: list[str] = []

    class Recording(Reporter):
        def warning(self, text: str) -> None:
            warnings.append(text)

    result = distill(_config(tiny_encoder, text_file, teacher_cache_bytes=1024, epochs=2.0), tmp_path / "d",
                     reporter=Recording(show_progress=False))
    assert [w for w in warnings if "teacher states not cached" in w] == [warnings[-1]]
    assert "over the 0.0 GiB cache limit" in warnings[-1]
    assert result.training.teacher_tokens == result.training.tokens


def test_a_states_file_that_does_not_match_its_checkpoint_is_not_trusted(tmp_path: Path) -> None:
    import torch

    lengths = np.array([3, 5, 2])
    path = tmp_path / STATES_FILE
    cache = TeacherStatesCache(lengths, states=2, width=4, path=path, max_bytes=1 << 20)
    states = (torch.randn(3, 5, 4), torch.randn(3, 5, 4))
    kept = cache.store(np.array([0, 1, 2]), states)
    assert torch.equal(kept[0], states[0].half().float())
    assert torch.equal(cache.lookup(np.array([1, 0]), 5)[1][1, :3], kept[1][0, :3])
    saved = cache.state()

    resumed = TeacherStatesCache(lengths, states=2, width=4, path=path, max_bytes=1 << 20)
    resumed.load_state(saved)
    assert torch.equal(resumed.lookup(np.array([2]), 2)[0], kept[0][2:, :2])

    with path.open("r+b") as handle:  # a file cut short (a full disk, a copy interrupted)
        handle.truncate(10)
    cut = TeacherStatesCache(lengths, states=2, width=4, path=path, max_bytes=1 << 20)
    cut.load_state(saved)
    assert cut.lookup(np.array([0]), 3) is None and not cut.filled.any()


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_a_killed_run_resumes_with_its_states_and_reaches_the_same_weights(tiny_encoder: Path, text_file: Path,
                                                                           tmp_path: Path, hidden_weight: float) -> None:
    import torch
    from safetensors.torch import load_file

    settings = dict(epochs=None, max_steps=18, checkpoint_every_steps=4, hidden_weight=hidden_weight)
    unbroken = distill(_config(tiny_encoder, text_file, **settings), tmp_path / "unbroken", reporter=QUIET)
    work = tmp_path / "stopped"

    def kill_at_step_10(report) -> None:
        if report.step == 10:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(_config(tiny_encoder, text_file, **settings), work, reporter=QUIET, on_step=kill_at_step_10)
    # Killed after the checkpoint of step 8: the states file stays beside it for the resumed run.
    assert (work / "checkpoints" / STATES_FILE).is_file() == (hidden_weight > 0)
    resumed = distill(_config(tiny_encoder, text_file, resume=True, **settings), work, reporter=QUIET)
    assert resumed.training.resumed_from_step == 8
    if hidden_weight > 0:  # the first epoch (6 steps) was over before the kill: no text needed the teacher again
        assert resumed.training.teacher_tokens == 0
    a = load_file(Path(unbroken.student_dir) / "model.safetensors")
    b = load_file(Path(resumed.student_dir) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_on_a_cpu_without_it_is_one_line_and_exit_2(tiny_encoder: Path, text_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.training.device as device

    monkeypatch.setattr(device, "cpu_bf16_flag", lambda: None)
    with pytest.raises(CompressError, match="no native bf16"):
        _config(tiny_encoder, text_file, train_precision="bf16", device="cpu").validate()
    run_dir = tmp_path / "run"
    result = run_cli(["distill", "--teacher", str(tiny_encoder), "--data", str(text_file), "--max-steps", "1",
                     "--train-precision", "bf16", "--device", "cpu", "--out", str(run_dir)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "--train-precision bf16" in result.output
    assert not run_dir.exists()


@pytest.mark.skipif(cpu_bf16_flag() is None, reason="this CPU has no native bf16")
def test_auto_trains_in_bf16_where_the_cpu_has_it(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    result = distill(_config(tiny_encoder, text_file, train_precision="auto", epochs=2.0), tmp_path / "d",
                     reporter=QUIET)
    assert result.precision == "bf16-autocast" and result.training.precision == "bf16-autocast"
    assert result.metrics()["precision"] == "bf16-autocast"
    assert result.quality.teacher_agreement > result.initial_quality.teacher_agreement


def test_frozen_word_embeddings_stay_the_teachers(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    result = distill(_config(tiny_encoder, text_file, embeddings="frozen", epochs=1.0), tmp_path / "d",
                     reporter=QUIET)
    student = load_file(Path(result.student_dir) / "model.safetensors")
    teacher = load_file(tiny_encoder / "model.safetensors")
    key = next(k for k in student if k.endswith("word_embeddings.weight"))
    teacher_key = next(k for k in teacher if k.endswith("word_embeddings.weight"))
    assert torch.equal(student[key], teacher[teacher_key])
    changed = next(k for k in student if k.endswith("attention.self.query.weight"))
    assert not torch.equal(student[changed], teacher[next(k for k in teacher if k.endswith(changed.split(".", 1)[1]))])
