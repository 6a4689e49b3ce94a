"""The static-embedding candidate and the teacher quantized, on one table with the students.

The static graph against its PyTorch view; its training; then the encoder chain through the CLI
(tiny BERT, real text): every kind of candidate measured with the same columns, the picture in
the run and the archive, the table whole in a pipe at 80 columns, and a profile's floor deciding
whether the static student may ship.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli, user_profile
from tests.conftest import real_sentences

REPO = Path(__file__).resolve().parent.parent


def test_the_static_graph_computes_what_its_pytorch_view_does(tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from compress.encoder.static_student import folded, static_embed
    from export.static_onnx import write_static_onnx

    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(50, 8, generator=generator)
    weights = torch.randn(50, generator=generator) * 0.5
    ids = [[3, 7, 7, 12], [49], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    expected = static_embed(vectors, weights, ids).numpy()

    model = write_static_onnx(folded(vectors, weights), tmp_path / "model.onnx")
    length = max(len(x) for x in ids)
    batch = np.zeros((len(ids), length + 1), np.int64)  # padded past the longest: the mask must hide it
    mask = np.zeros_like(batch)
    for row, tokens in enumerate(ids):
        batch[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = session.run(["sentence_embedding"], {"input_ids": batch, "attention_mask": mask})[0]
    assert got.shape == (3, 8)
    assert np.allclose(got, expected, atol=1e-5)
    empty = session.run(["sentence_embedding"], {"input_ids": batch[:1], "attention_mask": np.zeros_like(mask[:1])})[0]
    assert np.all(empty == 0.0)  # an empty text: zeros, not NaN


def test_training_brings_the_static_student_towards_the_teacher() -> None:
    """Targets made by a hidden weighting of hidden vectors: training from a blurred start recovers them."""
    import torch

    from compress.encoder.static_student import StaticSettings, static_embed, train_static

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(80, 16)).astype(np.float32)
    ids = [rng.integers(0, 80, size=rng.integers(2, 12)).tolist() for _ in range(600)]
    targets = static_embed(torch.from_numpy(truth), torch.from_numpy(rng.normal(size=80).astype(np.float32)),
                           ids).numpy()
    start = (truth + rng.normal(scale=1.5, size=truth.shape)).astype(np.float32)

    def cosine(vectors: np.ndarray) -> float:
        got = static_embed(torch.from_numpy(vectors), torch.zeros(80), ids).numpy()
        return float(np.mean(np.sum(got * targets, axis=1)))

    trained = train_static(start, ids, targets, StaticSettings(steps=300, batch_size=64, learning_rate=5e-2,
                                                               relation_weight=0.0))
    assert cosine(start) < 0.5 and cosine(trained) > 0.99


# -- through the chain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("static-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(160)) + "\n")
    return path


def _profile(where: Path, **quality: float) -> Path:
    return user_profile(where, "floor-host", **quality)


def _distill_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--max-steps", "3",
            "--threads", "1", "--batch-size", "16", *extra]


@pytest.fixture(scope="module")
def piped_run(tiny_encoder: Path, chain_texts: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, str]:
    """The chain as a CI job runs it: a child process, stdout a pipe, COLUMNS=80."""
    run = tmp_path_factory.mktemp("static-chain") / "run"
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "compress", *_distill_args(tiny_encoder, chain_texts, run)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return run, done.stdout


def test_every_kind_of_candidate_is_on_one_table_with_the_same_columns(piped_run: tuple[Path, str]) -> None:
    run, _ = piped_run
    choice = json.loads((run / "release" / "candidates.json").read_text())
    by_name = {c["name"]: c for c in choice["candidates"]}
    assert {"student fp32", "teacher int8-dynamic", "static fp32"} <= set(by_name)
    assert {c["source"] for c in choice["candidates"]} == {"student", "teacher", "static"}
    keys = {name: set(c["quality"]) for name, c in by_name.items()}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys  # the same measurements for every kind
    assert {"teacher_agreement", "neighbour_agreement", "similarity_spearman"} <= keys["static fp32"]
    static = by_name["static fp32"]
    assert (run / static["model"]).is_file() and (run / static["model"]).parent.joinpath("tokenizer.json").is_file()
    assert static["speedup"] > 1.0  # a lookup and a sum beat even a tiny transformer
    assert (run / "release" / "candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_is_whole_in_a_pipe_at_80_columns(piped_run: tuple[Path, str]) -> None:
    run, stdout = piped_run
    choice = json.loads((run / "release" / "candidates.json").read_text())
    rows = {line.split("│")[1].strip(): line for line in stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip() in {c["name"] for c in choice["candidates"]}}
    assert set(rows) == {c["name"] for c in choice["candidates"]}
    for candidate in choice["candidates"]:
        row = rows[candidate["name"]]
        assert "…" not in row
        assert f"{candidate['speedup']:.2f}x" in row and f"{candidate['quality']['teacher_agreement']:.4f}" in row
        assert f"{candidate['quality']['neighbour_agreement']:.4f}" in row


def test_the_picture_travels_in_the_package(piped_run: tuple[Path, str], tmp_path: Path) -> None:
    import tarfile

    run, _ = piped_run
    packed = run_cli(["package", str(run), "--out", str(tmp_path), "--name", "static", "--version", "1"])
    assert packed.exit_code == 0, packed.stderr
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(next(n for n in names if n.endswith("manifest.json"))).read())
    assert any(n.endswith("reports/candidates.png") for n in names)
    assert "reports/candidates.png" in {f["path"] for f in manifest["files"]}


def test_a_floor_the_static_student_misses_keeps_it_from_release(tiny_encoder: Path, chain_texts: Path,
                                                                 piped_run: tuple[Path, str], tmp_path: Path) -> None:
    """The same run, two profiles: a top-10 floor between the static student's and the students' decides."""
    run, _ = piped_run
    choice = json.loads((run / "release" / "candidates.json").read_text())
    static = next(c for c in choice["candidates"] if c["source"] == "static")
    others = [c["quality"]["neighbour_agreement"] for c in choice["candidates"] if c["source"] != "static"]
    assert static["quality"]["neighbour_agreement"] < min(others), "the tiny static student should keep fewer"
    floor = round((static["quality"]["neighbour_agreement"] + min(others)) / 2, 4)

    strict = tmp_path / "strict"
    strict.mkdir()
    result = run_cli(_distill_args(tiny_encoder, chain_texts, strict / "run", "--profile",
                                   str(_profile(strict, min_neighbour_agreement=floor))))
    assert result.exit_code in (0, 1, 3), result.stderr
    refused = json.loads((strict / "run" / "release" / "candidates.json").read_text())
    assert refused["released"] is not None and refused["released"] != "static fp32"
    assert not next(c for c in refused["candidates"] if c["name"] == "static fp32")["checks"][2]["measured"] >= floor

    loose = tmp_path / "loose"
    loose.mkdir()
    result = run_cli(_distill_args(tiny_encoder, chain_texts, loose / "run", "--profile",
                                   str(_profile(loose, min_neighbour_agreement=0.0, min_teacher_agreement=0.5))))
    allowed = json.loads((loose / "run" / "release" / "candidates.json").read_text())
    fastest = max(allowed["candidates"], key=lambda c: c["speedup"])
    assert fastest["name"] == "static fp32" and allowed["released"] == "static fp32", allowed["why"]
    assert "released: static fp32" in result.stdout


def test_a_classifiers_static_student_carries_a_head_trained_on_its_probabilities(tiny_classifier: Path,
                                                                                  tmp_path: Path) -> None:
    """A tiny text classifier: the static student's graph outputs logits for the same classes, its
    head is the PyTorch view's, and it picks the teacher's class on most texts it learned from."""
    import onnxruntime as ort

    from compress.encoder.static_student import StaticSettings, build_static_student
    from compress.evaluate import model_outputs
    from compress.training.progress import Reporter

    exported = run_cli(["export", str(tiny_classifier), "--out", str(tmp_path / "teacher")])
    assert exported.exit_code == 0, exported.stderr
    teacher = tmp_path / "teacher" / "model.onnx"
    texts = real_sentences(300)
    model = build_static_student(tiny_classifier, teacher, texts, tmp_path / "static",
                                 StaticSettings(steps=300, batch_size=64, learning_rate=2e-2),
                                 Reporter(show_progress=False))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_outputs()[0].shape[-1] == 3

    ours = model_outputs(model, texts, source="train")
    theirs = model_outputs(teacher, texts, source="train")
    agreement = float((ours.rows.argmax(1) == theirs.rows.argmax(1)).mean())
    majority = float(np.bincount(theirs.rows.argmax(1)).max() / len(texts))
    assert agreement >= max(0.8, majority), (agreement, majority)
