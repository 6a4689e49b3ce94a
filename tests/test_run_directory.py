"""A run directory holds one chain at a time, and what killed runs leave behind is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.run_directory import LOCK_FILE, claimed
from export.base.errors import CompressError
from export.base.files import atomic_directory, atomic_write_text, remove_stale_temporaries


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


_HOLD = """
import sys, time
from pathlib import Path
from compress.run_directory import claimed
with claimed(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_chain_on_the_same_run_directory_is_refused_with_the_first_one_s_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CompressError, match=f"in use by another compress run \\(PID {holder.pid}\\)"):
            with claimed(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock went with it, whatever PID the file still names.
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
    with claimed(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (run / LOCK_FILE).exists()


def test_a_lock_file_naming_a_live_but_unrelated_process_does_not_block(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(f"{os.getppid()}\n")  # alive, and not a compress run holding the folder
    with claimed(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


_RACE = """
import sys, time
from pathlib import Path
from compress.run_directory import claimed
from export.base.errors import CompressError
run, start = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < start:
    pass
took = 0
for _ in range(300):
    try:
        with claimed(run):
            (run / "inside").mkdir()  # FileExistsError if the other process is inside too
            (run / "inside").rmdir()
        took += 1
    except CompressError:
        pass
print(took)
"""


def test_two_runs_racing_for_one_folder_never_both_hold_it(tmp_path: Path) -> None:
    import time

    run = tmp_path / "run"
    run.mkdir()
    start = time.time() + 1.0
    racers = [subprocess.Popen([sys.executable, "-c", _RACE, str(run), str(start)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err[-500:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0  # attempts that held the folder, each alone


def test_bad_input_leaves_no_run_directory_but_keeps_finished_work(tmp_path: Path) -> None:
    with pytest.raises(CompressError):
        with claimed(tmp_path / "new" / "run"):
            raise CompressError("bad input")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    with pytest.raises(CompressError):
        with claimed(kept):
            (kept / "distill").mkdir()
            (kept / "distill" / "stage.json").write_text("{}")
            raise CompressError("bad input in a later stage")
    assert (kept / "distill" / "stage.json").is_file()


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "export"
    dead = tmp_path / f".export.{_dead_pid()}.abc.tmp"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"x" * 1000)
    live = tmp_path / f".export.{os.getpid()}.def.tmp"
    live.mkdir()
    assert remove_stale_temporaries(target) == [dead]
    assert not dead.exists() and live.exists()
    stale_file = tmp_path / f".report.json.{_dead_pid()}.x.tmp"
    stale_file.write_text("half")
    atomic_write_text(tmp_path / "report.json", "{}")
    assert not stale_file.exists()


def test_replacing_a_directory_never_leaves_none(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    seen = []
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
        seen.append(target.is_dir())
    assert seen == [True] and sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no .old or .tmp left beside it
