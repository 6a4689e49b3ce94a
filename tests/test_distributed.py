"""Data-parallel distillation with torch.distributed on CPUs: gloo, 2 real processes, no network beyond 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import real_sentences

ROOT = Path(__file__).resolve().parent.parent
AUDIT_HOOK = '''
import os, sys
_log, _watched = os.environ.get("COMPRESS_AUDIT_LOG"), os.environ.get("COMPRESS_AUDIT_DIR")
if _log and _watched and os.environ.get("RANK") not in (None, "0"):
    with open(_log, "a") as _f:
        _f.write("armed rank " + os.environ["RANK"] + "\\n")
    def _writes(path):
        return str(path).startswith(_watched)
    def _hook(event, args):
        hit = None
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)) and _writes(os.fsdecode(args[0])):
            mode, flags = args[1] or "r", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                hit = ("open", args[0])
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree") and args \\
                and _writes(os.fsdecode(args[0])):
            hit = (event, args[0])
        if hit:
            with open(_log, "a") as _f:
                _f.write(f"{hit[0]} {hit[1]}\\n")
    sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(300)) + "\n")
    return path


def compress_run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compress", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


def losses(run: Path, lm: bool) -> list[tuple[int, float]]:
    if lm:
        history = json.loads((run / "distill" / "stage.json").read_text())["metrics"]["training"]["loss_history"]
    else:
        history = json.loads((run / "distill" / "loss_history.json").read_text())
    return [(e["step"], e["loss"]) for e in history if e["loss"] is not None]


def training_metrics(run: Path, lm: bool) -> dict:
    metrics = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    return metrics["training"] if lm else metrics


@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_two_processes_follow_one_at_the_same_global_batch(kind: str, tiny_encoder: Path, tiny_llama: Path,
                                                           texts: Path, tmp_path: Path) -> None:
    lm = kind == "lm"
    teacher = tiny_llama if lm else tiny_encoder
    # A student that has something to learn: near-zero gradients make Adam's first steps follow rounding noise.
    student = "layers=1" if lm else "layers=1,hidden=16,heads=2,ffn=32"
    common = ["distill", "--teacher", str(teacher), "--data", str(texts), "--student", student, "--max-steps", "10",
              "--batch-size", "8", "--threads", "1", "--max-length", "48", "--stop-after", "distill"]
    one = compress_run([*common, "--out", str(tmp_path / "one")], tmp_path)
    two = compress_run([*common, "--out", str(tmp_path / "two"), "--nproc", "2"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = losses(tmp_path / "one", lm), losses(tmp_path / "two", lm)
    assert [step for step, _ in a] == [step for step, _ in b] and a
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-4, abs=1e-6)
    report = training_metrics(tmp_path / "two", lm)
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert len(report["rank_samples_per_s"]) == 2 and all(r > 0 for r in report["rank_samples_per_s"])
    assert 0 < report["allreduce_share"] < 1
    assert training_metrics(tmp_path / "one", lm)["world_size"] == 1
    # One process printed the chain's report: rank 0.
    assert two.stdout.count("stages: distill ran") == 1


@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_only_rank_0_writes(kind: str, tiny_encoder: Path, tiny_llama: Path, texts: Path, tmp_path: Path) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    log = tmp_path / "audit.log"
    run = tmp_path / "run"
    teacher = tiny_llama if kind == "lm" else tiny_encoder
    args = ["distill", "--teacher", str(teacher), "--data", str(texts), "--student", "layers=2", "--max-steps",
            "6", "--batch-size", "8", "--threads", "1", "--max-length", "48", "--out", str(run), "--nproc", "2"]
    result = compress_run(args, tmp_path, env={"PYTHONPATH": f"{hook_dir}{os.pathsep}{ROOT}",
                                               "COMPRESS_AUDIT_LOG": str(log), "COMPRESS_AUDIT_DIR": str(run)})
    assert result.returncode in (0, 1), result.stderr  # the gate's verdict on this host
    assert log.read_text().splitlines() == ["armed rank 1"]  # the hook ran in rank 1 and saw no write
    for stage in ("distill", "export", "teacher", "bench", "gate"):
        assert (run / stage / "stage.json").is_file(), stage
    if kind == "lm":
        assert len(list((run / "distill" / "teacher_topk").rglob("*.npz"))) > 0  # rank 1's rows, by rank 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_part(rank: int, size: int, port: int, teacher_dir: str, data: str, out: str, stop_at: int | None,
                resume: bool) -> None:
    """One rank of a tiny-LM distillation (also the world of one): 6 steps, or Ctrl-C after ``stop_at``."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank)})
    import torch

    from compress.training.progress import QuietReporter
    from compress.training.interrupt import DistillInterrupted
    from compress.lm.data import LMExample, encode_examples
    from compress.lm.student import build_lm_student, plan_lm_student
    from compress.lm.teacher import load_causal_lm
    from compress.lm.trainer import LMLoopSettings, train_lm
    from compress.parallel import close_world, init_world

    torch.set_num_threads(1)
    init_world("cpu")

    class StopAt(QuietReporter):
        def step(self, report: object) -> None:
            if stop_at is not None and report.step == stop_at and rank == size - 1:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C on one rank stops them all

    teacher, tokenizer = load_causal_lm(Path(teacher_dir))
    torch.manual_seed(0)
    student = build_lm_student(teacher, plan_lm_student(teacher.config, "layers=1"))
    examples = [LMExample("", line) for line in Path(data).read_text().splitlines()[:64]]
    settings = LMLoopSettings(max_steps=6, batch_size=8, lr=1e-3, eval_every=0)
    try:
        train_lm(student, teacher, tokenizer, encode_examples(examples, tokenizer, 48), settings, Path(out),
                 reporter=StopAt(), resume=resume)
    except DistillInterrupted:
        pass
    finally:
        close_world()
    if rank == 0:
        torch.save({k: v.clone() for k, v in student.state_dict().items()}, Path(out) / "final.pt")


def _run_world(size: int, *args: object) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_train_part, args=(size, _free_port(), *args), nprocs=size, join=True)


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_with_another_number_of_processes(first: int, second: int, tiny_llama: Path,
                                                                texts: Path, tmp_path: Path) -> None:
    import torch

    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    _run_world(1, str(tiny_llama), str(texts), str(unbroken), None, False)
    _run_world(first, str(tiny_llama), str(texts), str(broken), 3, False)
    state = json.loads((broken / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    _run_world(second, str(tiny_llama), str(texts), str(broken), None, True)
    a = torch.load(unbroken / "final.pt", weights_only=True)
    b = torch.load(broken / "final.pt", weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def _rank_pid(run: Path, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(run).encode() in cmdline and f"\0RANK={rank}\0".encode() in b"\0" + environ:
            return int(proc.name)
    return None


def test_a_killed_rank_ends_the_run_with_one_line(tiny_llama: Path, texts: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["distill", "--teacher", str(tiny_llama), "--data", str(texts), "--student", "layers=2", "--max-steps",
            "100000", "--batch-size", "8", "--threads", "1", "--max-length", "48", "--out", str(run), "--nproc", "2"]
    process = subprocess.Popen([sys.executable, "-m", "compress", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        victim = None
        while time.monotonic() < deadline:
            cache = run / "distill" / "teacher_topk"
            if cache.is_dir() and len(list(cache.rglob("*.npz"))) >= 16:  # training is under way
                victim = _rank_pid(run, 1)
                if victim:
                    break
            time.sleep(0.1)
        assert victim, "rank 1 never started training"
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [stderr.strip().splitlines()[-1]], stderr
    assert "rank 1 of 2 was killed by SIGKILL" in errors[0]
    assert not (run / "distill" / "stage.json").exists()
    assert not [p for p in run.rglob("*") if "tmp" in p.name.lower()]  # only whole files
    for entry in (run / "distill" / "teacher_topk").rglob("*.npz"):
        with __import__("numpy").load(entry) as stored:  # each one readable
            assert stored["values"].shape == stored["indices"].shape


def test_accelerate_launch_starts_the_same_ranks(tiny_encoder: Path, texts: Path, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    run = tmp_path / "run"
    # On a machine without GPUs accelerate starts several processes only when told --multi_gpu (then gloo).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(_free_port()), "-m", "compress", "distill",
               "--teacher", str(tiny_encoder), "--data", str(texts), "--student", "layers=1,hidden=16,heads=2,ffn=32",
               "--max-steps", "4", "--batch-size", "8", "--threads", "1", "--out", str(run), "--stop-after", "distill"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    assert (metrics["world_size"], metrics["backend"]) == (2, "gloo")


def test_bad_input_under_nproc_is_one_line_without_resume_advice(tiny_encoder: Path, texts: Path,
                                                                 tmp_path: Path) -> None:
    few = tmp_path / "few.txt"
    few.write_text("one text\nanother text\n")
    common = ["distill", "--teacher", str(tiny_encoder), "--max-steps", "2", "--threads", "1", "--nproc", "2",
              "--stop-after", "distill"]
    for extra, fragment in ((["--data", str(texts), "--on", "ssh://-oProxyCommand=x"], "ssh://[user@]host[:port]"),
                            (["--data", str(few)], "distinct examples")):  # the first found here, the second by ranks
        run = tmp_path / "run"
        done = compress_run([*common, *extra, "--out", str(run)], tmp_path)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert done.returncode == 2, done.stderr[-800:]
        assert len(errors) == 1 and fragment in errors[0], done.stderr[-800:]
        assert "--resume" not in done.stderr and "Traceback" not in done.stderr
        assert not run.exists()
