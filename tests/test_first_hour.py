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
