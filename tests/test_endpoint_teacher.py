"""A teacher you can only query: a real chat/completions server on 127.0.0.1 backed by a tiny trained LM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from compress.lm.data import default_prompts
from compress.lm.endpoint import AnswerSettings, ChatEndpoint, EndpointError, clean_base_url
from compress.lm.endpoint_answers import ask_endpoint
from export.base.errors import CompressError
from tests.chat_server import ChatServer, Faults
from tests.cli_helpers import run_cli

API_KEY = "sk-test-4f8c2b9e7d1a"
SERVED = "tiny-teacher"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.lm_models import build_tiny_chat_teacher

    return build_tiny_chat_teacher(tmp_path_factory.mktemp("chat-teacher"))


@pytest.fixture(scope="module")
def server(chat_teacher: Path) -> ChatServer:
    with ChatServer(chat_teacher, name=SERVED, api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def calm(server: ChatServer) -> None:
    server.faults = Faults()


def endpoint(server: ChatServer, **kwargs: object) -> ChatEndpoint:
    os.environ["COMPRESS_TEST_KEY"] = API_KEY
    return ChatEndpoint(server.url, SERVED, api_key_env="COMPRESS_TEST_KEY", backoff_s=0.01, **kwargs)


def distill_args(server: ChatServer, student_from: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher-url", server.url, "--teacher-model", SERVED, "--student-from", str(student_from),
            "--student", "layers=2", "--teacher-answers", "40", "--answer-tokens", "12", "--max-steps", "4",
            "--batch-size", "4", "--threads", "1", "--max-length", "128", "--out", str(out), *extra]


def all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in folder.rglob("*") if path.is_file()]


def test_the_whole_chain_learns_from_a_served_teacher(server: ChatServer, chat_teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = distill_args(server, chat_teacher, run)
    result = run_cli(args, env={"OPENAI_API_KEY": API_KEY, "COLUMNS": "200"})  # table rows on one line each
    assert result.exit_code in (0, 1), result.output
    for stage in ("distill", "export", "teacher", "quantize", "bench", "gate"):
        assert (run / stage / "stage.json").is_file(), stage
    out = " ".join(result.stdout.split())
    assert "starting model (fp32 ONNX) vs released student (int4-weight ONNX), host" in out
    for row in ("tokens/s", "agreement with the teacher's answers", "exact match with the teacher's answers"):
        assert row in out, row

    metrics = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    assert metrics["teacher"] == SERVED and metrics["teacher_url"] == server.url
    assert metrics["token_match"]["token_level"] is True, metrics["token_match"]
    assert metrics["training"]["steps"] == 4 and metrics["training"]["cached_batches"] == 4
    before, after = metrics["quality"]["before"], metrics["quality"]["after"]
    assert 0 <= before["token_agreement"] <= 1 and 0 <= after["token_agreement"] <= 1 and after["tokens"] > 0
    assert metrics["quality"]["base"]["exact_match"] == 1.0  # the served teacher is the starting model itself
    answers = [json.loads(line) for line in (run / "distill" / "teacher_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 40 and metrics["answers"]["sha256"]
    summary = json.loads((run / "run.json").read_text())
    assert summary["teacher"]["answers_from"] == server.url
    assert summary["quality"]["metric"] == "answer_token_agreement"

    # The release says whose answers taught it.
    packaged = run_cli(["package", str(run), "--out", str(tmp_path / "release"), "--name", "taught", "--version", "1",
                        "--allow-failed"])
    assert packaged.exit_code == 0, packaged.output
    archive = next((tmp_path / "release").glob("*.tar.gz"))
    with tarfile.open(archive, "r:gz") as tar:
        card = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("MODEL_CARD.md"))).read().decode()
        manifest = json.loads(tar.extractfile(next(m for m in tar.getmembers()
                                                   if m.name.endswith("manifest.json"))).read())
    assert f"Taught by the answers of **{SERVED}**, queried at `{server.url}`" in " ".join(card.split())
    assert manifest["teacher"]["answers_from"] == server.url
    assert manifest["teacher"]["answers_sha256"] == metrics["answers"]["sha256"]

    # The key is sent (the server demands it) and written nowhere: not in the run, not in the release.
    assert not [path for path, data in all_bytes(run) if API_KEY.encode() in data]
    with tarfile.open(archive, "r:gz") as tar:
        assert not [m.name for m in tar.getmembers() if m.isfile() and API_KEY.encode() in tar.extractfile(m).read()]

    # Again: every stage is up to date, and the endpoint is not asked a thing.
    asked = server.chat_requests
    again = run_cli(args, env={"OPENAI_API_KEY": API_KEY})
    assert again.exit_code == result.exit_code
    assert "stages: distill skipped, export skipped" in " ".join(again.stdout.split())
    # Other training settings: distillation runs again on the cached answers.
    third = run_cli(distill_args(server, chat_teacher, run, "--lr", "1e-3", "--stop-after", "distill"),
                    env={"OPENAI_API_KEY": API_KEY})
    assert third.exit_code == 0, third.output
    assert "40 answers (40 cached, 0 asked)" in " ".join(third.stdout.split())
    assert server.chat_requests == asked


def test_answers_are_cached_and_only_missing_ones_asked(server: ChatServer, tmp_path: Path) -> None:
    cache = tmp_path / "answers.jsonl"
    settings = AnswerSettings(max_tokens=8, top_logprobs=4)
    first = ask_endpoint(endpoint(server), default_prompts(6), settings, cache, concurrency=3)
    assert (first.asked, first.reused, len(first.answered)) == (6, 0, 6)
    asked = server.chat_requests
    second = ask_endpoint(endpoint(server), default_prompts(9), settings, cache, concurrency=3)
    assert (second.asked, second.reused) == (3, 6)
    assert server.chat_requests == asked + 3
    assert [a.row["completion"] for a in second.answered[:6]] == [a.row["completion"] for a in first.answered]
    # Other settings are other answers.
    third = ask_endpoint(endpoint(server), default_prompts(2), AnswerSettings(max_tokens=5, top_logprobs=4), cache)
    assert third.asked == 2


def test_a_run_killed_mid_generation_resumes_without_paying_twice(server: ChatServer, chat_teacher: Path,
                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    answers = run / "distill" / "teacher_answers.jsonl"
    server.faults = Faults(delay_s=0.15)
    args = distill_args(server, chat_teacher, run, "--concurrency", "1", "--stop-after", "distill")
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    before = server.chat_requests
    process = subprocess.Popen([sys.executable, "-m", "compress", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if answers.is_file() and len(answers.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    kept = [json.loads(line) for line in answers.read_text().splitlines()]  # every line whole
    assert 3 <= len(kept) < 40
    asked_before_kill = server.chat_requests - before

    server.faults = Faults()
    result = run_cli(args, env={"OPENAI_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    assert f"({len(kept)} cached, {40 - len(kept)} asked)" in " ".join(result.stdout.split())
    # At most the one request in flight at the kill is paid twice.
    assert server.chat_requests - before <= 40 + 1
    assert asked_before_kill <= len(kept) + 1


def test_tokenizers_that_differ_fall_back_to_the_answers_alone(server: ChatServer, tmp_path: Path) -> None:
    from tests.lm_models import build_tiny_causal_lm

    other = build_tiny_causal_lm(tmp_path / "other-vocab", "llama", vocab_size=384, seed=1)
    run = tmp_path / "run"
    result = run_cli(distill_args(server, other, run, "--stop-after", "distill"), env={"OPENAI_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    match = json.loads((run / "distill" / "stage.json").read_text())["metrics"]["token_match"]
    assert match["token_level"] is False and match["reason"].startswith("tokenizers differ"), match
    assert "sequence-level only" in " ".join(result.stdout.split())


def test_an_endpoint_without_logprobs_is_sequence_level(server: ChatServer, chat_teacher: Path,
                                                        tmp_path: Path) -> None:
    server.faults = Faults(no_logprobs=True)
    run = tmp_path / "run"
    result = run_cli(distill_args(server, chat_teacher, run, "--stop-after", "distill"),
                     env={"OPENAI_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    assert metrics["token_match"]["reason"] == "the endpoint sent no log-probabilities: sequence-level only"
    assert metrics["training"]["cached_batches"] == 0  # cross-entropy on the answers alone


def test_bad_answers_are_counted_and_never_cached(server: ChatServer, tmp_path: Path) -> None:
    prompts = default_prompts(30)
    words = [p.prompt.split()[-1] for p in prompts]
    server.faults = Faults(malformed_when=prompts[0].prompt, truncated_when=prompts[1].prompt,
                           empty_when=prompts[2].prompt, rate_limit_first=3)
    cache = tmp_path / "answers.jsonl"
    got = ask_endpoint(endpoint(server), prompts, AnswerSettings(max_tokens=6, top_logprobs=2), cache, concurrency=2)
    assert got.skipped == {"malformed response": 2, "empty answer": 1}, (got.skipped, words[:3])
    assert got.retried >= 3 and len(got.answered) == 27
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(cached) == 27 and all(row["completion"].strip() for row in cached)
    # Asked again, only the three bad ones are asked (and answered, now that the server behaves).
    server.faults = Faults()
    again = ask_endpoint(endpoint(server), prompts, AnswerSettings(max_tokens=6, top_logprobs=2), cache)
    assert (again.asked, again.reused, again.skipped) == (3, 27, {})


@pytest.mark.parametrize("case", ["unreachable", "wrong-key", "no-key", "unknown-model", "rate-limited",
                                  "credentials-in-url", "two-teachers", "no-model-name", "many-processes"])
def test_bad_endpoints_are_one_line_and_leave_nothing(case: str, server: ChatServer, chat_teacher: Path,
                                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = distill_args(server, chat_teacher, run)
    env: dict[str, str | None] = {"OPENAI_API_KEY": API_KEY}
    expected = {
        "unreachable": "cannot reach http://127.0.0.1:9/v1/models",
        "wrong-key": "the endpoint refused the API key ($OPENAI_API_KEY)",
        "no-key": "the endpoint refused the API key ($OPENAI_API_KEY)",
        "unknown-model": "does not serve model 'nope'",
        "rate-limited": "still rate limited after 6 retries",
        "credentials-in-url": "--teacher-url must not hold credentials",
        "two-teachers": "--teacher and --teacher-url both name a teacher",
        "no-model-name": "--teacher-model is required with --teacher-url",
        "many-processes": "--nproc with --teacher-url: distillation from an endpoint runs in one process",
    }[case]
    if case == "unreachable":
        args[args.index("--teacher-url") + 1] = "http://127.0.0.1:9/v1"
    elif case == "wrong-key":
        env["OPENAI_API_KEY"] = "sk-wrong"
    elif case == "no-key":
        env["OPENAI_API_KEY"] = None
    elif case == "unknown-model":
        args[args.index("--teacher-model") + 1] = "nope"
    elif case == "rate-limited":
        server.faults = Faults(always_rate_limited=True)
    elif case == "credentials-in-url":
        args[args.index("--teacher-url") + 1] = server.url.replace("http://", "http://user:secret@")
    elif case == "two-teachers":
        args += ["--teacher", str(chat_teacher)]
    elif case == "many-processes":
        args += ["--nproc", "2"]
    else:
        at = args.index("--teacher-model")
        del args[at:at + 2]
    result = run_cli(args, env=env)
    assert result.exit_code == 2, result.output
    # Progress lines may come first; the error is one line, the last.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and expected in errors[0], lines
    assert "Traceback" not in result.output and API_KEY not in result.output
    assert not run.exists()


def test_urls_are_cleaned_and_checked() -> None:
    assert clean_base_url("http://h:8000/v1/chat/completions") == "http://h:8000/v1"
    assert clean_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    for bad in ("ftp://h/v1", "h:8000", "http://k:s@h/v1"):
        with pytest.raises(CompressError):
            clean_base_url(bad)
    with pytest.raises(EndpointError, match="cannot reach"):
        ChatEndpoint("http://127.0.0.1:9/v1", "m", retries=0).check()


@pytest.mark.parametrize("send_bytes", [True, False])
def test_the_tokenizers_are_checked_by_bytes_or_by_text(send_bytes: bool, server: ChatServer, chat_teacher: Path,
                                                        tmp_path: Path) -> None:
    from compress.lm.endpoint_tokens import match_tokens
    from compress.lm.teacher import load_causal_lm

    server.send_bytes = send_bytes
    try:
        got = ask_endpoint(endpoint(server), default_prompts(12), AnswerSettings(max_tokens=10, top_logprobs=5),
                           tmp_path / "answers.jsonl")
    finally:
        server.send_bytes = True
    assert all((row["tokens"][0][3] is not None) == send_bytes for row in (a.row for a in got.answered))
    _, tokenizer = load_causal_lm(chat_teacher)
    match = match_tokens([(a.example, a.row) for a in got.answered], tokenizer, 5, 256)
    assert match.used and match.aligned == match.checked == 12, match.reason
    # Every aligned answer is the teacher's own token sequence, spelling its answer.
    for answer in got.answered:
        encoded = match.examples[answer.row["key"]]
        completion = [t for t, m in zip(encoded.input_ids, encoded.completion_mask) if m]
        assert tokenizer.decode(completion, skip_special_tokens=True) == answer.row["completion"]


def test_the_endpoint_recipe_runs(server: ChatServer, chat_teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["distill", "--config", str(ROOT / "recipes" / "endpoint.yaml"), "--teacher-url", server.url,
                      "--teacher-model", SERVED, "--student-from", str(chat_teacher), "--student", "layers=2",
                      "--teacher-answers", "8", "--answer-tokens", "8", "--max-steps", "2", "--batch-size", "4",
                      "--threads", "1", "--out", str(run), "--stop-after", "distill"],
                     env={"OPENAI_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    recipe = (run / "recipe.yaml").read_text()
    assert f"url: {server.url}" in recipe and "api_key_env: OPENAI_API_KEY" in recipe and API_KEY not in recipe
