"""Releases load where users already are: sentence-transformers' ONNX backend and Optimum.

A tiny sentence encoder goes through our export (pooling, a Dense projection and normalisation
in the graph), is packaged, unpacked and loaded with the libraries themselves; their answers
must be ours. ``compress verify --libraries`` runs the model card's own lines.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_bert, real_sentences
from tests.test_package import minimal_run, read_member


def _add_dense(folder: Path, hidden: int, out: int) -> None:
    """A Dense projection module (linear) between pooling and normalisation, as wide students have."""
    import torch
    from safetensors.torch import save_file

    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    for index, module in enumerate(modules):
        module["idx"], module["name"] = index, str(index)
    modules[-1]["path"] = "3_Normalize"
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": hidden, "out_features": out, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    torch.manual_seed(1)
    save_file({"linear.weight": torch.randn(out, hidden) * 0.2, "linear.bias": torch.randn(out) * 0.1},
              str(folder / "2_Dense" / "model.safetensors"))


@pytest.fixture(scope="module")
def st_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoder with a Dense projection, exported by `compress export`, packaged, unpacked."""
    where = tmp_path_factory.mktemp("st-release")
    encoder = build_tiny_bert(where / "encoder", hidden=32)
    _add_dense(encoder, 32, 24)
    exported = run_cli(["export", str(encoder), "--out", str(where / "onnx")])
    assert exported.exit_code == 0, exported.stderr
    run = minimal_run(where / "run", where / "onnx", "feature-extraction", encoder)
    packed = run_cli(["package", str(run), "--out", str(where / "out"), "--name", "st", "--version", "1"])
    assert packed.exit_code == 0, packed.stderr
    return where / "out" / "st-1-host.tar.gz"


def _unpack(archive: Path, where: Path) -> Path:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(where, filter="data")
    return where / "st-1-host"


def test_the_release_folder_is_a_sentence_transformers_model(st_archive: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from export.runtime.example.run_model import PackagedModel

    root = _unpack(st_archive, tmp_path)
    texts = real_sentences(16)
    ours = PackagedModel(root, providers=["CPUExecutionProvider"]).embed(texts)
    model = SentenceTransformer(str(root / "model"), backend="onnx", device="cpu",
                                model_kwargs={"provider": "CPUExecutionProvider"})
    theirs = model.encode(texts)
    assert theirs.shape == ours.shape == (16, 24)  # the Dense projection ran: 32 -> 24
    cosines = np.sum(theirs * ours, axis=1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
    assert cosines.min() >= 0.9999


def test_optimum_loads_the_release_folder(st_archive: Path, tmp_path: Path) -> None:
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    root = _unpack(st_archive, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    model = ORTModelForFeatureExtraction.from_pretrained(root / "model", provider="CPUExecutionProvider")
    batch = tokenizer(real_sentences(4), padding=True, return_tensors="pt")
    states = model(**batch).last_hidden_state
    assert tuple(states.shape[::2]) == (4, 32)


def test_every_module_file_is_in_the_manifest_and_the_card_shows_the_lines(st_archive: Path) -> None:
    manifest = json.loads(read_member(st_archive, "st-1-host/manifest.json"))
    listed = {record["path"] for record in manifest["files"]}
    assert {"model/modules.json", "model/1_Pooling/config.json", "model/2_Dense/config.json",
            "model/2_Dense/model.safetensors"} <= listed
    assert [load["library"] for load in manifest["loads_with"]] == ["sentence-transformers", "optimum"]
    outputs = [o["name"] for o in manifest["model"]["signature"]["outputs"]]
    assert outputs == ["token_embeddings", "sentence_embedding", "last_hidden_state"]
    card = read_member(st_archive, "st-1-host/MODEL_CARD.md").decode()
    use_it = card.index("## Use it")
    assert use_it < card.index("## What it does")
    assert 'SentenceTransformer("model", backend="onnx")' in card and "ORTModelForFeatureExtraction" in card


def test_verify_runs_the_cards_lines_with_each_library(st_archive: Path) -> None:
    plain = run_cli(["verify", str(st_archive)])
    assert plain.exit_code == 0, plain.stderr
    assert "also loads in: sentence-transformers, optimum (check here with --libraries)" in plain.stdout
    checked = run_cli(["verify", str(st_archive), "--libraries", "--json"])
    assert checked.exit_code == 0, checked.stderr
    report = json.loads(checked.stdout)
    statuses = {c["library"]: c["status"] for c in report["libraries"]}
    assert statuses == {"sentence-transformers": "matches", "optimum": "runs"}, report["libraries"]


def test_verify_reports_a_library_that_gives_another_answer(st_archive: Path, tmp_path: Path) -> None:
    """The Dense weights changed after packaging (manifest re-hashed): the graph still matches, the
    library's vector does not, and verify says so."""
    from export.runtime.library_check import check_library_loads
    from export.runtime.manifest import read_manifest

    root = _unpack(st_archive, tmp_path)
    dense = root / "model" / "2_Dense" / "model.safetensors"
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(dense))
    save_file({k: -v for k, v in weights.items()}, str(dense))
    checks = {c.library: c for c in check_library_loads(root, read_manifest(root / "manifest.json"))}
    assert checks["sentence-transformers"].failed and "cosine -" in checks["sentence-transformers"].detail


def test_a_classifier_release_loads_in_optimum_with_the_same_probabilities(tmp_path: Path) -> None:
    from export.runtime.library_check import check_library_loads
    from export.runtime.manifest import read_manifest

    classifier = build_tiny_bert(tmp_path / "cls", "text-classification")
    assert run_cli(["export", str(classifier), "--out", str(tmp_path / "onnx")]).exit_code == 0
    run = minimal_run(tmp_path / "run", tmp_path / "onnx", "text-classification", classifier)
    assert run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--name", "st", "--version", "1"]).exit_code == 0
    root = _unpack(tmp_path / "out" / "st-1-host.tar.gz", tmp_path / "x")
    manifest = read_manifest(root / "manifest.json")
    assert [load.library for load in manifest.loads_with] == ["optimum"]
    (check,) = check_library_loads(root, manifest)
    assert check.status == "matches", check.detail
    shutil.rmtree(root)
