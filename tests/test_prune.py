"""Structured pruning: real shrinking, importance on data, save/load round trip, recovery, magnitude, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.base.errors import CompressError
from tests.cli_helpers import run_cli


def _config(**kwargs):
    from compress.encoder.prune import PruneConfig

    return PruneConfig(compare=False, importance_texts=32, eval_texts=32, **kwargs)


def _reload(folder: Path, task: str = "feature-extraction"):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    cls = {"feature-extraction": AutoModel, "text-classification": AutoModelForSequenceClassification,
           "token-classification": AutoModelForTokenClassification}[task]
    return cls.from_pretrained(folder).eval()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_heads_are_really_removed_and_survive_save_load(tiny_encoder, tmp_path, sentences):
    import torch

    from compress.encoder.prune import prune_model

    out = tmp_path / "heads"
    result = prune_model(tiny_encoder, out, _config(heads=0.5))
    assert result.heads_before == 16 and result.heads_after == 8
    assert all(h >= 1 for h in result.heads_per_layer) and sum(result.heads_per_layer) == 8
    assert result.params_after < result.params_before
    config = json.loads((out / "config.json").read_text())
    assert sum(len(v) for v in config["pruned_heads"].values()) == 8
    model = _reload(out)  # plain from_pretrained rebuilds the pruned shapes
    assert _params(model) == result.params_after
    widths = [layer.attention.self.query.out_features for layer in model.encoder.layer]
    assert widths == [h * 8 for h in result.heads_per_layer]  # 8 = head size of the tiny model
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(out)(sentences[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**tokens).last_hidden_state.shape[-1] == 32
    for name in ("model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json", "stage.json"):
        assert (out / name).is_file(), name


def test_ffn_neurons_sliced_the_same_count_per_layer(tiny_classifier, tmp_path):
    from compress.encoder.prune import prune_model

    out = tmp_path / "ffn"
    result = prune_model(tiny_classifier, out, _config(ffn=0.25))
    assert (result.ffn_before, result.ffn_after) == (64, 48)
    model = _reload(out, "text-classification")
    assert model.config.intermediate_size == 48
    assert {layer.intermediate.dense.out_features for layer in model.bert.encoder.layer} == {48}
    assert {layer.output.dense.in_features for layer in model.bert.encoder.layer} == {48}
    assert _params(model) == result.params_after < result.params_before
    assert result.quality[0].metric == "argmax_agreement" and result.quality[0].value == 1.0


def test_layers_kept_by_importance(tiny_token_classifier, tmp_path):
    from compress.encoder.prune import prune_model

    out = tmp_path / "layers"
    result = prune_model(tiny_token_classifier, out, _config(layers=2))
    assert (result.layers_before, result.layers_after) == (4, 2) and len(result.kept_layers) == 2
    model = _reload(out, "token-classification")
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert _params(model) == result.params_after < result.params_before


def test_importance_beats_its_opposite(tiny_encoder):
    """Removing the heads ranked least important costs less than removing those ranked most important."""
    import copy

    from compress.encoder.prune.importance import head_importance, make_batches, mean_distance
    from compress.encoder.prune.stage import _heads_to_prune, load_task_model
    from compress.encoder.prune.structured import prune_heads
    from export.runtime.samples import training_texts

    model = load_task_model(tiny_encoder, "feature-extraction")
    batches = make_batches(model, model, training_texts(32), 16)
    scores = head_importance(model, batches)
    assert len(scores) == 4 and all(len(s) == 4 for s in scores)

    def cost(ranking) -> float:
        candidate = copy.deepcopy(model)
        prune_heads(candidate.model, _heads_to_prune(ranking, 0.5))
        return mean_distance(candidate, batches)

    assert cost(scores) < cost([-s for s in scores])


def test_teacher_quality_reported(tiny_encoder, tmp_path):
    import shutil

    from compress.encoder.prune import prune_model

    # A copy of the encoder pruned against the original named as the teacher.
    student = tmp_path / "student"
    shutil.copytree(tiny_encoder, student)
    result = prune_model(student, tmp_path / "out", _config(ffn=0.5, teacher=str(tiny_encoder)))
    assert result.teacher == tiny_encoder.resolve().name
    stages = [q.stage for q in result.quality]
    assert stages == ["original", "pruned"]
    assert result.quality[0].value == pytest.approx(1.0)
    assert result.quality[1].value < 1.0 and result.quality[1].neighbour_agreement is not None


def test_recovery_runs_the_distillation_engine(tiny_encoder, tmp_path):
    from compress.encoder.prune import prune_model

    result = prune_model(tiny_encoder, tmp_path / "rec", _config(heads=0.25, recover_steps=2))
    assert result.recovery is not None and result.recovery.steps == 2
    assert [q.stage for q in result.quality] == ["original", "pruned", "recovered"]
    model = _reload(tmp_path / "rec")
    assert sum(layer.attention.self.num_attention_heads for layer in model.encoder.layer) == result.heads_after


def test_magnitude_zeroes_weights_and_says_it_is_size_only(tiny_encoder, tmp_path):
    from compress.encoder.prune import prune_model

    result = prune_model(tiny_encoder, tmp_path / "mag", _config(magnitude=0.5))
    mag = result.magnitude
    assert mag is not None and mag.zeroed_parameters > 0 and mag.matrices == 4 * 6
    assert mag.compressed_bytes_after < mag.compressed_bytes_before
    assert "no speed-up" in mag.note and any("no speed-up" in n for n in result.notes)
    assert result.params_after == result.params_before  # same shapes: nothing structurally removed
    model = _reload(tmp_path / "mag")
    weight = model.encoder.layer[0].intermediate.dense.weight
    assert float((weight == 0).float().mean()) >= 0.5


def test_latency_comparison_exports_both(tiny_encoder, tmp_path):
    from compress.encoder.prune import PruneConfig, prune_model

    result = prune_model(tiny_encoder, tmp_path / "lat",
                         PruneConfig(heads=0.5, ffn=0.5, importance_texts=32, eval_texts=32, compare_runs=5))
    lat = result.latency
    assert lat is not None and lat.runs == 5 and lat.profile == "host"
    assert lat.original_p50_ms > 0 and lat.pruned_p50_ms > 0
    assert lat.pruned_bytes < lat.original_bytes
    assert lat.speedup == pytest.approx(lat.original_p50_ms / lat.pruned_p50_ms, rel=1e-6)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch exports cleaned up


def test_bad_inputs(tiny_encoder, tmp_path, tiny_onnx):
    from compress.encoder.prune import PruneConfig, prune_model

    with pytest.raises(CompressError, match="nothing to prune"):
        prune_model(tiny_encoder, tmp_path / "x", PruneConfig())
    with pytest.raises(CompressError, match="only 4 layers"):
        prune_model(tiny_encoder, tmp_path / "x", _config(layers=9))
    with pytest.raises(CompressError, match="fraction"):
        prune_model(tiny_encoder, tmp_path / "x", _config(heads=1.0))
    with pytest.raises(CompressError, match="replace the model folder"):
        prune_model(tiny_encoder, tiny_encoder, _config(heads=0.5))
    assert not (tmp_path / "x").exists()


def test_cli_prune(tiny_encoder, tmp_path):
    out = tmp_path / "cli"
    result = run_cli(["prune", str(tiny_encoder), "--out", str(out), "--heads", "0.25", "--ffn", "0.5",
                      "--no-compare", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heads_after"] == 12 and report["ffn_after"] == 32 and report["schema_version"] == 1
    assert (out / "stage.json").is_file()

    human = run_cli(["prune", str(tiny_encoder), "--out", str(tmp_path / "cli2"), "--layers", "3", "--no-compare"])
    assert human.exit_code == 0, human.stderr
    assert "layers 4 -> 3" in human.stdout and "quality vs teacher (pruned)" in human.stdout

    bad = run_cli(["prune", str(tiny_encoder), "--out", str(tmp_path / "cli3")])
    assert bad.exit_code == 2 and "nothing to prune" in bad.stderr
    help_text = run_cli(["prune", "--help"]).stdout
    assert "no faster" in " ".join(help_text.split())


def test_non_bert_model_refused(tmp_path):
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from tests.conftest import write_vocab

    folder = tmp_path / "distil"
    folder.mkdir()
    write_vocab(folder)
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=700, dim=32, n_layers=2, n_heads=2, hidden_dim=64)).save_pretrained(folder)
    result = run_cli(["prune", str(folder), "--out", str(tmp_path / "o"), "--heads", "0.5", "--no-compare"])
    assert result.exit_code == 2 and "BERT-style" in result.stderr
