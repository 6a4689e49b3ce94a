"""A changed default corpus re-runs distillation, for every family (it once silently did not for LMs)."""

from __future__ import annotations

from pathlib import Path

import pytest

import export.base.corpus as corpus
from compress.training.progress import Reporter
from compress.lm.data import _default_corpus

QUIET = Reporter(show_progress=False)


@pytest.fixture
def change_the_default_corpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A function that ships a new default corpus (the last 50 texts dropped), as a new version would."""
    import gzip
    import hashlib

    def change() -> None:
        lines = gzip.decompress(corpus.DEFAULT_CORPUS_FILE.read_bytes()).splitlines(keepends=True)[:-50]
        changed = tmp_path / "english-v2.jsonl.gz"
        changed.write_bytes(gzip.compress(b"".join(lines)))
        monkeypatch.setattr(corpus, "DEFAULT_CORPUS_FILE", changed)
        monkeypatch.setattr(corpus, "DEFAULT_CORPUS_SHA256", hashlib.sha256(changed.read_bytes()).hexdigest())
        _default_corpus.cache_clear()

    yield change
    _default_corpus.cache_clear()


def test_a_changed_default_corpus_reruns_lm_distillation(tiny_llama: Path, tmp_path: Path,
                                                         change_the_default_corpus) -> None:
    from compress.lm.config import LMDistillConfig
    from compress.lm.stage import run_lm_distill_stage

    config = LMDistillConfig(teacher=str(tiny_llama), max_steps=1, batch_size=2, student="layers=2", max_length=16,
                             threads=1)
    first = run_lm_distill_stage(tmp_path, config, None, QUIET)
    assert first.status == "ran" and "default_corpus_sha256" in first.record.params
    assert run_lm_distill_stage(tmp_path, config, None, QUIET).status == "skipped"
    change_the_default_corpus()
    again = run_lm_distill_stage(tmp_path, config, None, QUIET)
    assert again.status == "ran"
    assert again.record.params["default_corpus_sha256"] != first.record.params["default_corpus_sha256"]


def test_a_changed_default_corpus_reruns_encoder_distillation(tiny_encoder: Path, tmp_path: Path,
                                                              change_the_default_corpus) -> None:
    from compress.encoder.config import DistillConfig
    from compress.encoder.stage import run_distill_stage

    config = DistillConfig(teacher=str(tiny_encoder), max_steps=1, batch_size=8, threads=1, eval_points=0)
    first = run_distill_stage(tmp_path, config, None, QUIET)
    assert run_distill_stage(tmp_path, config, None, QUIET).status == "skipped"
    change_the_default_corpus()
    again = run_distill_stage(tmp_path, config, None, QUIET)
    assert again.status == "ran"
    assert again.record.params["default_corpus_sha256"] != first.record.params["default_corpus_sha256"]


# The settings each family's distill stage is fingerprinted by, as runs made so far were: a new
# field must join `later_fields` (left out at its default) or every earlier run distils again.
ENCODER_PARAMS = {"alpha", "attention_weight", "batch_size", "data", "dropout", "embedding_loss", "epochs",
                  "eval_points", "hidden_weight", "init_student", "lr", "max_length", "max_steps", "seed",
                  "split_seed", "student", "task", "teacher", "teacher_cache_bytes", "teacher_quant", "temperature",
                  "time_budget_s", "trust_remote_code", "warmup_fraction", "weight_decay"}
LM_PARAMS = {"answer_temperature", "answer_tokens", "batch_size", "beta", "ce_weight", "data", "embeddings", "epochs",
             "loss", "lr", "max_length", "max_steps", "sample", "seed", "student", "teacher", "teacher_answers",
             "teacher_quant", "temperature", "time_budget_s", "top_p", "topk"}


def test_settings_added_later_leave_earlier_fingerprints_alone() -> None:
    from compress.encoder.config import DistillConfig
    from compress.lm.config import LMDistillConfig

    from compress.encoder.engine import resolved_config
    from compress.training.device import cpu_bf16_flag
    from export.runtime.profiles import load_profile

    # What is fingerprinted is the config as it trains: fp32 (a CPU without bf16), no state cache (no layer
    # transfer on the host profile) and trained embeddings are how every run trained before those settings.
    host = resolved_config(DistillConfig(), "feature-extraction", load_profile("host")).params()
    assert set(host) == ENCODER_PARAMS | ({"train_precision"} if cpu_bf16_flag() else set())
    jetson = resolved_config(DistillConfig(), "feature-extraction", load_profile("jetson")).params()
    assert jetson["teacher_state_cache"] is True and jetson["hidden_weight"] == 1.0
    assert set(LMDistillConfig().params()) == LM_PARAMS
    # Set away from its default, a later field is part of the fingerprint like any other.
    assert DistillConfig(relation_weight=0.5).params()["relation_weight"] == 0.5
    assert DistillConfig(neighbour_batches=True).params()["neighbour_batches"] is True


def test_the_layer_transfer_weight_is_fingerprinted_as_trained(tiny_encoder: Path) -> None:
    # The weight a run trains with, not the flag's None: a host run keeps the fingerprint it had when
    # the weight was 0 by default, a jetson run (its profile turns layer transfer on) gets a new one.
    from compress.encoder.config import DistillConfig
    from compress.encoder.stage import planned_record
    from export.runtime.profiles import load_profile

    config = DistillConfig(teacher=str(tiny_encoder), max_steps=1)
    assert planned_record(config, load_profile("host")).params["hidden_weight"] == 0.0
    assert planned_record(config, load_profile("jetson")).params["hidden_weight"] == 1.0
