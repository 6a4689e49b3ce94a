"""What a new user meets in the first hour: typos get a suggestion, help lists every exit code,
files come out with the user's own permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli


def _one_line_error(result) -> str:
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("typed, meant", [("distil", "'distill'"), ("bnech", "'bench'"), ("packge", "'package'")])
def test_a_mistyped_command_suggests_the_nearest(typed: str, meant: str) -> None:
    assert f"did you mean {meant}?" in _one_line_error(run_cli([typed]))


@pytest.mark.parametrize("typed, meant", [("jetsn", "'jetson', an alias of jetson-orin-nano"),
                                          ("raspberry-pi5", "'raspberry-pi-5'"), ("rpi", "'rpi5'")])
def test_a_mistyped_profile_suggests_the_nearest_name_or_alias(typed: str, meant: str) -> None:
    line = _one_line_error(run_cli(["profiles", "show", typed]))
    assert f"did you mean {meant}" in line and "jetson-orin-nano (jetson)" in line


def test_usage_errors_are_one_line() -> None:
    assert "--bogus" in _one_line_error(run_cli(["bench", "--bogus"]))
    assert "Missing argument" in _one_line_error(run_cli(["bench"]))


def test_help_lists_every_exit_code() -> None:
    text = " ".join(run_cli(["--help"]).stdout.split())
    for code in ("0 ok", "1 gate failed", "2 bad input", "3 gate unverified", "4 internal error", "130 interrupted"):
        assert code in text


def test_reports_and_archives_get_the_users_umask(tmp_path: Path, tiny_onnx: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "bench.json"
        assert run_cli(["bench", str(tiny_onnx), "--runs", "2", "--warmup", "0", "--output", str(out)]).exit_code == 0
        from export.runtime.archive import ArchiveEntry, write_archive

        archive = write_archive(tmp_path / "a.tar.gz", [ArchiveEntry("top/x.txt", data=b"x")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644
    assert json.loads(out.read_text())["kind"] == "bench"


def test_progress_off_a_terminal_is_plain_lines_with_a_loss_from_the_first_step() -> None:
    import io

    from rich.console import Console

    from compress.training.progress import Reporter, StepReport

    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=False, width=200))
    reporter.start("distill")
    reporter.step(StepReport(step=1, epoch=0.01, loss=0.731, lr=1e-4, samples_per_s=30.0, elapsed_s=1.0, progress=1.0))
    reporter.stop()
    text = buffer.getvalue()
    assert "\x1b[" not in text and "\r" not in text
    assert "distill: step 1, loss 0.7310, 30 samples/s" in text


def test_time_left_follows_the_pace_of_the_steps_not_the_setup_before_them() -> None:
    from compress.training.progress import Reporter, StepReport

    def at(step: int, elapsed_s: float) -> StepReport:
        return StepReport(step=step, epoch=0.0, loss=1.0, lr=1e-4, samples_per_s=1.0, elapsed_s=elapsed_s,
                          progress=step / 100)

    # 60 s of held-out scoring before the first step, then 1 s a step: 90 steps at 1 s are left at step 10.
    reporter = Reporter(show_progress=False)
    reporter.start("distill")
    reporter.time_left(at(1, 61.0))
    assert reporter.time_left(at(10, 70.0)) == pytest.approx(90.0)
    # A new start (a resumed session) measures its own pace.
    reporter.start("distill")
    reporter.time_left(at(50, 500.0))
    assert reporter.time_left(at(60, 520.0)) == pytest.approx(80.0)


def test_the_encoder_trainer_reports_a_loss_before_its_first_log_line(tiny_encoder: Path, tmp_path: Path) -> None:
    import math

    from compress.encoder import DistillConfig, distill
    from compress.training.progress import Reporter

    losses: list[float] = []

    class Watch(Reporter):
        def step(self, report) -> None:
            losses.append(report.loss)

    data = tmp_path / "texts.txt"
    from tests.conftest import real_sentences

    data.write_text("\n".join(real_sentences(60)) + "\n")
    distill(DistillConfig(teacher=str(tiny_encoder), data=data, max_steps=2, batch_size=8, threads=1, eval_points=0,
                          log_every=50), tmp_path / "d", reporter=Watch(show_progress=False))
    assert losses and not any(math.isnan(loss) for loss in losses)


def test_the_lm_held_out_split_is_capped() -> None:
    from compress.lm.data import LMExample, split_lm_examples

    examples = [LMExample("", f"text number {i}") for i in range(2000)]
    train, held_out = split_lm_examples(examples, 0.5, seed=0, max_held_out=10)
    assert len(held_out) == 10 and len(train) == 1990 and not set(train) & set(held_out)


def test_profiles_list_piped_never_cuts_a_name() -> None:
    result = run_cli(["profiles", "list"])  # CliRunner's stdout is no terminal: as piped to grep
    lines = [line for line in result.stdout.splitlines() if line.startswith("jetson-orin-nano ")]
    assert len(lines) == 1 and "…" not in result.stdout
    assert lines[0].split()[:2] == ["jetson-orin-nano", "jetson"]


def test_debug_keeps_the_exit_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from compress.cli import main; main()", "--debug", "bench",
                           str(tmp_path / "absent.onnx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1] == \
        f"error: model not found: {tmp_path / 'absent.onnx'}"


def test_compare_tells_two_files_of_one_name_apart_by_their_folders(tmp_path: Path) -> None:
    from tests.conftest import build_tiny_onnx

    build_tiny_onnx((tmp_path / "student").mkdir() or tmp_path / "student" / "model.onnx")
    build_tiny_onnx((tmp_path / "teacher").mkdir() or tmp_path / "teacher" / "model.onnx", hidden=24)
    result = run_cli(["bench", str(tmp_path / "student" / "model.onnx"), "--compare",
                      str(tmp_path / "teacher" / "model.onnx"), "--runs", "3", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert "student/model.onnx" in summary and "teacher/model.onnx" in summary
