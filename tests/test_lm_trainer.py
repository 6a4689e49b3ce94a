"""The causal-LM distillation loop and the quality numbers, on tiny real models and real text.

The teacher is the tiny Llama fixture after a few seconds of next-token training on English
sentences, so its predictions depend on the text (a random teacher's near-uniform logits would
make agreement meaningless). Students are 2-layer subsets of it (``compress.lm.student``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from compress.training.progress import Reporter, StepReport
from export.base.errors import CompressError
from compress.lm.data import LMExample, collate_lm, encode_examples
from compress.lm.quality import LMQuality, greedy_continuation, lm_quality
from compress.lm.student import build_lm_student, plan_lm_student
from compress.lm.trainer import DistillInterrupted, LMLoopSettings, teacher_fingerprint, train_lm
from tests.conftest import real_sentences

MAX_LENGTH = 48


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    # Tiny matrices on a loaded 2-core machine: one thread is several times faster than two
    # threads spinning against other processes.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def examples() -> list[LMExample]:
    """Real sentences: half plain text, half a chat turn (the first words) and its completion."""
    out = []
    for i, sentence in enumerate(real_sentences(400)):
        words = sentence.split()
        if i % 2 or len(words) < 8:
            out.append(LMExample("", sentence))
        else:
            prompt = " ".join(words[:4])
            out.append(LMExample(prompt, " ".join(words[4:]), (("user", prompt),)))
    return out


@pytest.fixture(scope="module")
def teacher(tiny_llama: Path, examples: list[LMExample]) -> tuple[Any, Any]:
    """(model, tokenizer): the tiny Llama after 40 steps of next-token training (a few seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    encoded = encode_examples(examples[:300], tokenizer, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        rows = torch.randint(0, len(encoded), (16,), generator=generator).tolist()
        batch = collate_lm([encoded[i] for i in rows], tokenizer.pad_token_id)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def student_of(teacher_model: Any, spec: str = "layers=2") -> Any:
    return build_lm_student(teacher_model, plan_lm_student(teacher_model.config, spec))


def held_out_of(examples: list[LMExample]) -> list[LMExample]:
    return examples[300:340]


def train_set(examples: list[LMExample], tokenizer: Any, n: int = 96) -> list[Any]:
    return encode_examples(examples[:n], tokenizer, MAX_LENGTH)


def settings(**overrides: Any) -> LMLoopSettings:
    base = {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "topk": 32, "eval_every": 10}
    return LMLoopSettings(**{**base, **overrides})


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# -- quality ----------------------------------------------------------------------------------

def test_quality_of_the_teacher_against_itself_is_perfect(teacher: tuple[Any, Any],
                                                          examples: list[LMExample]) -> None:
    model, tokenizer = teacher
    held_out = held_out_of(examples)
    quality = lm_quality(model, model, tokenizer, held_out, max_length=MAX_LENGTH, greedy_prompts=6,
                         greedy_tokens=8)
    assert isinstance(quality, LMQuality)
    assert quality.next_token_agreement == 1.0 and quality.greedy_agreement == 1.0
    assert quality.teacher_perplexity == quality.student_perplexity
    # Trained on this kind of text: well below the 512 of a uniform guess, above the 1 of a perfect one.
    assert 1.0 < quality.teacher_perplexity < 400
    assert quality.samples == len(encode_examples(held_out, tokenizer, MAX_LENGTH)) == len(held_out)
    assert quality.greedy_prompts == 6 and 6 <= quality.greedy_tokens <= 48
    assert set(quality.to_json()) >= {"teacher_perplexity", "student_perplexity", "next_token_agreement",
                                      "greedy_agreement", "samples", "greedy_prompts", "greedy_tokens"}


def test_quality_of_an_untrained_student_is_worse(tiny_llama: Path, teacher: tuple[Any, Any],
                                                  examples: list[LMExample]) -> None:
    from transformers import AutoModelForCausalLM

    model, tokenizer = teacher
    untrained = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()  # the random weights before training
    quality = lm_quality(model, untrained, tokenizer, held_out_of(examples), max_length=MAX_LENGTH,
                         greedy_prompts=4, greedy_tokens=8)
    assert quality.student_perplexity > 1.5 * quality.teacher_perplexity
    assert quality.next_token_agreement < 0.5
    assert 0.0 <= quality.greedy_agreement < 1.0
    with pytest.raises(CompressError, match="held-out"):
        lm_quality(model, untrained, tokenizer, [])


def test_greedy_continuation_equals_transformers_generate(teacher: tuple[Any, Any]) -> None:
    model, tokenizer = teacher
    prompt = tokenizer("The function returns")["input_ids"]
    ours = greedy_continuation(model, prompt, 10)
    theirs = model.generate(torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    # min_new_tokens only changes the result if the model wanted to stop: compare up to any eos.
    expected = theirs[0, len(prompt):].tolist()
    if tokenizer.eos_token_id in ours:
        cut = ours.index(tokenizer.eos_token_id)
        ours, expected = ours[:cut], expected[:cut]
    assert ours == expected


# -- the loop ---------------------------------------------------------------------------------

def test_distillation_lowers_the_loss_and_raises_agreement(teacher: tuple[Any, Any], examples: list[LMExample],
                                                           tmp_path: Path) -> None:
    model, tokenizer = teacher
    student = student_of(model)
    report = train_lm(student, model, tokenizer, train_set(examples, tokenizer, 128), settings(max_steps=30),
                      tmp_path, held_out=held_out_of(examples))
    assert report.steps == 30 and report.stopped_by == "max_steps"
    assert report.precision == "fp32" and report.device == "cpu"
    assert report.samples_per_s > 0 and report.tokens_per_s > report.samples_per_s
    history = report.loss_history
    assert history[0]["step"] == 0 and history[0]["loss"] is None
    losses = [e["loss"] for e in history if e["loss"] is not None]
    assert losses[-1] < 0.7 * losses[0]
    agreements = [e["next_token_agreement"] for e in history if "next_token_agreement" in e]
    assert [e["step"] for e in history if "next_token_agreement" in e] == [0, 10, 20, 30]
    assert agreements[-1] > agreements[0] + 0.03
    perplexities = [e["held_out_perplexity"] for e in history if "held_out_perplexity" in e]
    assert perplexities[-1] < perplexities[0]
    # The warm-up rises and the cosine brings the rate close to zero by the last step.
    assert history[-1]["lr"] < 0.05 * 3e-3
    # The loop's number is the quality module's number.
    quality = lm_quality(model, student, tokenizer, held_out_of(examples), max_length=MAX_LENGTH, greedy_prompts=0)
    assert quality.next_token_agreement == pytest.approx(agreements[-1], abs=1e-6)
    assert (tmp_path / "checkpoint" / "state.json").is_file()
    assert report.to_json()["loss_history"] == history


@pytest.mark.parametrize("topk", [0, 16])
def test_a_student_equal_to_the_teacher_has_zero_loss(teacher: tuple[Any, Any], examples: list[LMExample],
                                                      tmp_path: Path, topk: int) -> None:
    """All layers kept: the same logits, so any misalignment of targets and predictions would show as loss."""
    model, tokenizer = teacher
    student = student_of(model, "layers=4")
    report = train_lm(student, model, tokenizer, train_set(examples, tokenizer, 16), settings(max_steps=1, topk=topk),
                      tmp_path)
    (entry,) = report.loss_history
    assert entry["step"] == 1 and 0.0 <= entry["loss"] < 1e-4  # top-k values pass through fp16


def test_time_budget_stops_the_run_with_jsd_and_cross_entropy(teacher: tuple[Any, Any], examples: list[LMExample],
                                                              tmp_path: Path) -> None:
    model, tokenizer = teacher
    report = train_lm(student_of(model), model, tokenizer, train_set(examples, tokenizer, 64),
                      settings(max_steps=None, time_budget_s=2.5, loss_kind="jsd", ce_weight=0.5), tmp_path)
    assert report.stopped_by == "time_budget"
    assert report.steps >= 3
    assert report.train_time_s <= 2.5 * 1.3
    losses = [e["loss"] for e in report.loss_history]
    assert all(loss > 0 for loss in losses) and losses[-1] < losses[0]
    assert report.loss_history[-1]["lr"] < 0.5 * 3e-3  # the cosine follows the time spent


class InterruptAt(Reporter):
    """Sends this process a SIGINT (a real Ctrl-C) after step ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__(show_progress=False)
        self.at = at
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def step(self, report: StepReport) -> None:
        if report.step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_then_resume_equals_an_unbroken_run(teacher: tuple[Any, Any], examples: list[LMExample],
                                                   tmp_path: Path) -> None:
    model, tokenizer = teacher
    data = train_set(examples, tokenizer, 40)  # 5 batches an epoch: the run crosses into epoch 2
    run = settings(max_steps=10, eval_every=3)
    unbroken = student_of(model)
    train_lm(unbroken, model, tokenizer, data, run, tmp_path / "a", held_out=held_out_of(examples)[:8])

    broken = student_of(model)
    reporter = InterruptAt(4)
    with pytest.raises(DistillInterrupted, match="step 4"):
        train_lm(broken, model, tokenizer, data, run, tmp_path / "b", reporter=reporter,
                 held_out=held_out_of(examples)[:8])
    assert any("checkpoint saved" in m for m in reporter.messages)
    with pytest.raises(CompressError, match="different settings"):
        train_lm(student_of(model), model, tokenizer, data, settings(max_steps=10, eval_every=3, lr=1e-3),
                 tmp_path / "b", resume=True)
    resumed = student_of(model)  # fresh weights: everything comes from the checkpoint
    report = train_lm(resumed, model, tokenizer, data, run, tmp_path / "b", resume=True,
                      held_out=held_out_of(examples)[:8])
    assert report.resumed_from_step == 4 and report.steps == 10 and report.epochs == 2.0
    expected, got = weights(unbroken), weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert not torch.equal(weights(student_of(model))["model.layers.0.mlp.up_proj.weight"],
                           got["model.layers.0.mlp.up_proj.weight"])  # it did train
    with pytest.raises(CompressError, match="no checkpoint"):
        train_lm(student_of(model), model, tokenizer, data, run, tmp_path / "c", resume=True)


def test_the_topk_cache_spares_the_teacher_after_the_first_epoch(teacher: tuple[Any, Any],
                                                                 examples: list[LMExample], tmp_path: Path) -> None:
    model, tokenizer = teacher
    data = train_set(examples, tokenizer, 32)  # 4 batches an epoch
    calls: list[int] = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        report = train_lm(student_of(model), model, tokenizer, data, settings(max_steps=None, epochs=2), tmp_path)
        assert report.stopped_by == "epochs" and report.steps == 8
        assert len(calls) == report.teacher_batches == 4  # epoch 1 only
        assert report.cached_batches == 4
        calls.clear()
        # A new run (a restart) with the same teacher reads everything from disk.
        again = train_lm(student_of(model), model, tokenizer, data, settings(max_steps=None, epochs=1), tmp_path)
        assert calls == [] and again.teacher_batches == 0 and again.cached_batches == 4
    finally:
        hook.remove()
    entries = list((tmp_path / "teacher_topk").rglob("*.npz"))
    assert len(entries) == len({tuple(e.input_ids) for e in data})


def test_teacher_fingerprint_follows_the_weights(teacher: tuple[Any, Any]) -> None:
    model, _ = teacher
    student = student_of(model, "layers=4")
    assert teacher_fingerprint(student) == teacher_fingerprint(model)
    with torch.no_grad():
        student.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert teacher_fingerprint(student) != teacher_fingerprint(model)


def test_gpt2_trains_and_is_scored(tiny_gpt2: Path, examples: list[LMExample], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    student = student_of(model)
    report = train_lm(student, model, tokenizer, train_set(examples, tokenizer, 24),
                      settings(max_steps=3, topk=8), tmp_path, held_out=held_out_of(examples)[:6])
    assert report.steps == 3 and len(report.loss_history) == 2
    quality = lm_quality(model, student, tokenizer, held_out_of(examples)[:6], max_length=MAX_LENGTH,
                         greedy_prompts=2, greedy_tokens=4)
    assert 0.0 <= quality.next_token_agreement <= 1.0 and quality.greedy_prompts == 2
    self_quality = lm_quality(model, model, tokenizer, held_out_of(examples)[:6], max_length=MAX_LENGTH,
                              greedy_prompts=2, greedy_tokens=4)
    assert self_quality.greedy_agreement == 1.0 and self_quality.next_token_agreement == 1.0


def test_bad_input_is_one_clear_error(teacher: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = teacher
    with pytest.raises(CompressError, match="batch_size"):
        train_lm(student_of(model), model, tokenizer, [], settings(batch_size=0), tmp_path)
    with pytest.raises(CompressError, match="completion token"):
        train_lm(student_of(model), model, tokenizer, [], settings(), tmp_path)
    with pytest.raises(CompressError, match="larger than the vocabulary"):
        one = encode_examples([LMExample("", "A short sentence to train on.")], tokenizer, MAX_LENGTH)
        train_lm(student_of(model), model, tokenizer, one, settings(topk=100_000), tmp_path)


# -- healing a pruned student ----------------------------------------------------------------------

def test_frozen_embeddings_stay_the_teachers_while_the_blocks_learn(teacher: tuple[Any, Any],
                                                                    examples: list[LMExample], tmp_path: Path) -> None:
    model, tokenizer = teacher
    student = student_of(model)
    embedding = student.get_input_embeddings().weight.detach().clone()
    before = weights(student)
    report = train_lm(student, model, tokenizer, train_set(examples, tokenizer, 32),
                      settings(max_steps=4, freeze_embeddings=True), tmp_path)
    assert report.embeddings_frozen and report.steps == 4
    assert torch.equal(student.get_input_embeddings().weight, embedding)
    assert torch.equal(student.get_output_embeddings().weight, embedding)  # tied: the head is the same matrix
    after = weights(student)
    moved = [name for name in before if "embed" not in name and "lm_head" not in name
             and not torch.equal(before[name], after[name])]
    assert moved, "the blocks did not train"
    # Frozen for the loop only: the student handed back trains as usual.
    assert all(p.requires_grad for p in student.parameters())


def test_a_pruned_and_healed_student_beats_the_evenly_spaced_one_at_equal_steps(
        teacher: tuple[Any, Any], examples: list[LMExample], tmp_path: Path) -> None:
    import copy

    from compress.lm.block_importance import block_importance
    from compress.lm.quality import agreement, pad_id_of, predictions
    from compress.lm.student import decoder_layers

    model, tokenizer = teacher
    model = copy.deepcopy(model)
    # The tiny teacher leans on its embeddings; give its blocks weight: block 1 writes four times what it
    # learned into the residual stream, block 2 a tenth (it matters least).
    with torch.no_grad():
        for index, scale in ((1, 4.0), (2, 0.1)):
            block = decoder_layers(model)[index]
            block.self_attn.o_proj.weight.mul_(scale)
            block.mlp.down_proj.weight.mul_(scale)
    pad_id = pad_id_of(tokenizer)
    importance = block_importance(model, train_set(examples, tokenizer, 32), pad_id=pad_id)
    assert min(range(4), key=importance.__getitem__) == 2
    pruned = plan_lm_student(model.config, "keep=3", importance=lambda: importance)
    evenly = plan_lm_student(model.config, "layers=3")
    assert pruned.layers == [0, 1, 3] and evenly.layers != pruned.layers

    held_out = encode_examples(held_out_of(examples), tokenizer, MAX_LENGTH)
    reference = predictions(model, held_out, pad_id=pad_id)
    scores = {}
    for name, plan in (("pruned", pruned), ("evenly", evenly)):
        student = build_lm_student(model, plan)
        train_lm(student, model, tokenizer, train_set(examples, tokenizer, 96),
                 settings(max_steps=12, freeze_embeddings=True), tmp_path / name)
        measured = predictions(student, held_out, pad_id=pad_id)
        scores[name] = (agreement(measured, reference), measured.perplexity)
    (pruned_agreement, pruned_ppl), (evenly_agreement, evenly_ppl) = scores["pruned"], scores["evenly"]
    assert pruned_agreement > evenly_agreement + 0.05, scores
    assert abs(pruned_ppl / reference.perplexity - 1) < abs(evenly_ppl / reference.perplexity - 1), scores


def test_the_probe_stops_training_a_student_it_forecasts_below_the_floor(
        teacher: tuple[Any, Any], examples: list[LMExample], tmp_path: Path) -> None:
    from compress.training.projection import ForecastRule

    model, tokenizer = teacher
    budget = 6.0
    rule = ForecastRule(floor=0.999, budget_s=budget, metric="next-token agreement", key="next_token_agreement")
    report = train_lm(student_of(model), model, tokenizer, train_set(examples, tokenizer, 64),
                      settings(max_steps=None, time_budget_s=budget), tmp_path / "stopped",
                      held_out=held_out_of(examples), forecast=rule)
    assert report.stopped_by == "forecast"
    assert rule.decided is not None and not rule.decided.reachable and not rule.decided.trained_on
    # Stopped at the end of the probe (its first fifth), after its measurements (the probe's three and
    # the every-10-steps ones these settings ask for).
    measured = [e for e in report.loss_history if e["step"] > 0 and "next_token_agreement" in e]
    assert len(measured) == rule.decided.points >= 3
    assert budget * ForecastRule.PROBE_SHARE <= report.train_time_s < 0.6 * budget
    assert "--train-anyway" in rule.decided.line and f"floor {0.999}" in rule.decided.line

    forced = ForecastRule(floor=0.999, budget_s=budget, metric="next-token agreement", key="next_token_agreement",
                          forced=True)
    report = train_lm(student_of(model), model, tokenizer, train_set(examples, tokenizer, 64),
                      settings(max_steps=None, time_budget_s=budget), tmp_path / "forced",
                      held_out=held_out_of(examples), forecast=forced)
    assert report.stopped_by == "time_budget"
    assert forced.decided is not None and forced.decided.trained_on and not forced.decided.reachable
