"""Causal-LM distillation losses, the teacher top-k cache, and teacher answers for sequence-level data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.base.errors import CompressError
from compress.lm.data import LMExample, collate_lm, default_prompts, encode_examples, prompt_ids
from compress.lm.losses import LOSS_KINDS, TopK, lm_distillation_loss, next_token_loss
from compress.lm.sequence import GenerationSettings, teacher_answers
from compress.lm.topk_cache import TopKCache, model_fingerprint, teacher_topk

# ---------------------------------------------------------------------------------------------
# Helpers


def _logits_of(probs: list[float]) -> torch.Tensor:
    """(1, 1, vocab) logits whose softmax is ``probs``."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float().view(1, 1, -1)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _scrambled(folder: Path, seed: int = 0) -> tuple[Any, Any]:
    """A tiny model whose matrices are re-drawn with a large spread.

    Freshly initialised tiny models answer every prompt with the same token (a newline, which
    decodes to an empty answer after stripping); large random weights make greedy answers differ
    from prompt to prompt, so batching and caching mistakes would show.
    """
    model, tokenizer = _load(folder)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return model, tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One intra-op thread for this module: with 64-wide matrices thread hand-offs cost more than the
    arithmetic (8x slower generation with two threads on a busy two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama(tiny_llama: Path) -> tuple[Any, Any]:
    return _load(tiny_llama)


@pytest.fixture(scope="module")
def chatty_llama(tiny_llama: Path) -> tuple[Any, Any]:
    return _scrambled(tiny_llama)


@pytest.fixture(scope="module")
def chatty_gpt2(tiny_gpt2: Path) -> tuple[Any, Any]:
    return _scrambled(tiny_gpt2)


def _batch(tokenizer: Any, n: int = 4, max_length: int = 48) -> dict[str, torch.Tensor]:
    from tests.conftest import real_sentences

    sentences = real_sentences(40)
    examples = [LMExample(sentences[i], sentences[i + 20]) for i in range(n)]
    encoded = encode_examples(examples, tokenizer, max_length)
    return collate_lm(encoded, tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------
# Losses: known values


P_TEACHER = [0.5, 0.3, 0.2]
Q_STUDENT = [0.2, 0.2, 0.6]


def test_forward_and_reverse_kl_match_hand_computed_values() -> None:
    student, teacher, mask = _logits_of(Q_STUDENT), _logits_of(P_TEACHER), torch.ones(1, 1)
    forward = lm_distillation_loss(student, teacher, mask, kind="forward_kl")
    reverse = lm_distillation_loss(student, teacher, mask, kind="reverse_kl")
    assert forward.item() == pytest.approx(_kl(P_TEACHER, Q_STUDENT), rel=1e-5)
    assert reverse.item() == pytest.approx(_kl(Q_STUDENT, P_TEACHER), rel=1e-5)
    assert forward.item() != pytest.approx(reverse.item(), rel=1e-2)  # the two directions really differ


def test_jsd_matches_the_gkd_formula_and_its_end_points() -> None:
    student, teacher, mask = _logits_of(Q_STUDENT), _logits_of(P_TEACHER), torch.ones(1, 1)
    for beta in (0.1, 0.5, 0.9):
        mixture = [beta * p + (1 - beta) * q for p, q in zip(P_TEACHER, Q_STUDENT)]
        expected = beta * _kl(P_TEACHER, mixture) + (1 - beta) * _kl(Q_STUDENT, mixture)
        got = lm_distillation_loss(student, teacher, mask, kind="jsd", beta=beta)
        assert got.item() == pytest.approx(expected, rel=1e-5)
    # The symmetric JSD is bounded by ln 2.
    assert lm_distillation_loss(student, teacher, mask, kind="jsd").item() < math.log(2)
    assert lm_distillation_loss(student, teacher, mask, kind="jsd", beta=0.0).item() == pytest.approx(
        _kl(P_TEACHER, Q_STUDENT), rel=1e-5)
    assert lm_distillation_loss(student, teacher, mask, kind="jsd", beta=1.0).item() == pytest.approx(
        _kl(Q_STUDENT, P_TEACHER), rel=1e-5)


def test_temperature_softens_both_sides_and_scales_by_t_squared() -> None:
    torch.manual_seed(0)
    student, teacher, mask = torch.randn(2, 3, 7), torch.randn(2, 3, 7), torch.ones(2, 3)
    for kind in LOSS_KINDS:
        hot = lm_distillation_loss(student, teacher, mask, kind=kind, temperature=2.0)
        softened = lm_distillation_loss(student / 2.0, teacher / 2.0, mask, kind=kind)
        assert hot.item() == pytest.approx(4.0 * softened.item(), rel=1e-5)


def test_loss_is_the_mean_over_masked_positions_only() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    for kind in LOSS_KINDS:
        whole = lm_distillation_loss(student, teacher, mask, kind=kind)
        singles = [lm_distillation_loss(student[b:b + 1, t:t + 1], teacher[b:b + 1, t:t + 1], torch.ones(1, 1),
                                        kind=kind).item() for b, t in ((0, 1), (0, 2), (1, 0))]
        assert whole.item() == pytest.approx(sum(singles) / 3, rel=1e-5)
        # Whatever sits at unmasked positions (padding, prompt) is never looked at, not even inf / nan.
        noisy_student, noisy_teacher = student.clone(), teacher.clone()
        noisy_student[mask == 0] = float("nan")
        noisy_teacher[mask == 0] = float("inf")
        assert lm_distillation_loss(noisy_student, noisy_teacher, mask, kind=kind).item() == pytest.approx(
            whole.item(), rel=1e-6)


def test_zero_loss_and_zero_gradient_when_student_equals_teacher() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 11) * 3
    mask = torch.ones(2, 5)
    for kind in LOSS_KINDS:
        student = logits.clone().requires_grad_(True)
        loss = lm_distillation_loss(student, logits, mask, kind=kind, temperature=2.0)
        loss.backward()
        assert abs(loss.item()) < 1e-6
        assert student.grad is not None and student.grad.abs().max().item() < 1e-6


def test_losses_are_positive_and_gradient_descent_reduces_them() -> None:
    torch.manual_seed(3)
    teacher = torch.randn(1, 6, 13) * 2
    mask = torch.ones(1, 6)
    for kind in LOSS_KINDS:
        student = torch.zeros(1, 6, 13, requires_grad=True)
        first = None
        for _ in range(100):
            loss = lm_distillation_loss(student, teacher, mask, kind=kind)
            first = loss.item() if first is None else first
            (gradient,) = torch.autograd.grad(loss, student)
            with torch.no_grad():
                student -= 20.0 * gradient  # plain gradient descent (the mean over 6 positions makes steps small)
        assert first > 0.1
        assert loss.item() < 0.1 * first, kind


def test_no_masked_position_gives_a_zero_that_backpropagates() -> None:
    student = torch.randn(1, 3, 5, requires_grad=True)
    for loss in (lm_distillation_loss(student, torch.randn(1, 3, 5), torch.zeros(1, 3)),
                 next_token_loss(student, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))):
        loss.backward()
        assert loss.item() == 0.0


def test_bad_inputs_raise_one_line_errors() -> None:
    student, mask = torch.randn(1, 3, 5), torch.ones(1, 3)
    cases = [
        lambda: lm_distillation_loss(student, torch.randn(1, 3, 6), mask),  # vocab mismatch
        lambda: lm_distillation_loss(student, torch.randn(1, 3, 5), torch.ones(1, 4)),  # unaligned mask
        lambda: lm_distillation_loss(student, torch.randn(1, 3, 5), mask, kind="kl"),  # type: ignore[arg-type]
        lambda: lm_distillation_loss(student, torch.randn(1, 3, 5), mask, temperature=0.0),
        lambda: lm_distillation_loss(student, torch.randn(1, 3, 5), mask, kind="jsd", beta=1.5),
        lambda: lm_distillation_loss(student, TopK(torch.randn(1, 2, 2), torch.zeros(1, 2, 2).long()), mask),
        lambda: TopK(torch.randn(1, 3, 2), torch.zeros(1, 3, 3).long()),
        lambda: next_token_loss(student, torch.zeros(1, 2, dtype=torch.long), mask),
    ]
    for case in cases:
        with pytest.raises(CompressError) as info:
            case()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Losses: top-k


def test_topk_with_the_whole_vocabulary_equals_the_full_loss() -> None:
    torch.manual_seed(4)
    student, teacher = torch.randn(2, 5, 17) * 2, torch.randn(2, 5, 17) * 2
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    values, indices = teacher.log_softmax(-1).topk(17, dim=-1)
    for kind in LOSS_KINDS:
        for temperature in (1.0, 2.0):
            full = lm_distillation_loss(student, teacher, mask, kind=kind, temperature=temperature)
            top = lm_distillation_loss(student, TopK(values, indices), mask, kind=kind, temperature=temperature)
            assert top.item() == pytest.approx(full.item(), rel=1e-5)


def _buckets(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Probabilities of the k tokens and of "any other token", computed by hand in float64."""
    picked = log_probs.double().exp()[indices]
    return torch.cat([picked, (1 - picked.sum()).reshape(1)])


def test_topk_losses_are_exact_over_the_k_tokens_and_the_rest() -> None:
    torch.manual_seed(5)
    student, teacher = torch.randn(1, 1, 10), torch.randn(1, 1, 10)
    values, indices = teacher.log_softmax(-1).topk(3, dim=-1)
    p = _buckets(teacher[0, 0].log_softmax(-1), indices[0, 0])
    q = _buckets(student[0, 0].log_softmax(-1), indices[0, 0])
    expected = {"forward_kl": float((p * (p / q).log()).sum()), "reverse_kl": float((q * (q / p).log()).sum())}
    for kind, value in expected.items():
        got = lm_distillation_loss(student, TopK(values, indices), torch.ones(1, 1), kind=kind).item()
        assert got == pytest.approx(value, rel=1e-4)


def test_topk_sees_student_mass_moved_outside_the_teachers_tokens() -> None:
    torch.manual_seed(5)
    student, teacher = torch.randn(1, 1, 10), torch.randn(1, 1, 10)
    values, indices = teacher.log_softmax(-1).topk(3, dim=-1)
    moved = student.clone()
    moved[0, 0, [i for i in range(10) if i not in indices[0, 0].tolist()]] += 5.0
    for kind in LOSS_KINDS:
        before = lm_distillation_loss(student, TopK(values, indices), torch.ones(1, 1), kind=kind).item()
        after = lm_distillation_loss(moved, TopK(values, indices), torch.ones(1, 1), kind=kind).item()
        assert after > before + 0.1, kind


def test_topk_at_other_temperatures_renormalises_over_the_k_tokens() -> None:
    torch.manual_seed(5)
    student, teacher = torch.randn(1, 1, 10), torch.randn(1, 1, 10)
    values, indices = teacher.log_softmax(-1).topk(3, dim=-1)
    p = torch.softmax(values[0, 0].double() / 2, -1)
    q = torch.softmax(student[0, 0, indices[0, 0]].double() / 2, -1)
    got = lm_distillation_loss(student, TopK(values, indices), torch.ones(1, 1), temperature=2.0).item()
    assert got == pytest.approx(4 * float((p * (p / q).log()).sum()), rel=1e-4)


def test_topk_approaches_the_full_loss_once_both_sides_are_peaked() -> None:
    torch.manual_seed(6)
    teacher = torch.randn(1, 8, 200)
    teacher[..., :5] += 12.0  # nearly all teacher mass on five tokens, as with a confident LM
    student = 0.8 * teacher + 0.5 * torch.randn(1, 8, 200)  # a student that has learnt roughly the same
    mask = torch.ones(1, 8)
    values, indices = teacher.log_softmax(-1).topk(16, dim=-1)
    for kind in LOSS_KINDS:
        full = lm_distillation_loss(student, teacher, mask, kind=kind).item()
        assert lm_distillation_loss(student, TopK(values, indices), mask, kind=kind).item() == pytest.approx(
            full, rel=0.05)
    # A student spreading its mass over the whole vocabulary is seen as it is, through the rest bucket.
    spread = torch.zeros(1, 8, 200)
    for kind in LOSS_KINDS:
        assert lm_distillation_loss(spread, TopK(values, indices), mask, kind=kind).item() == pytest.approx(
            lm_distillation_loss(spread, teacher, mask, kind=kind).item(), rel=0.25), kind


def test_next_token_loss_is_cross_entropy_on_masked_positions() -> None:
    torch.manual_seed(7)
    logits, targets = torch.randn(2, 4, 6), torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1]])
    keep = mask.bool()
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert next_token_loss(logits, targets, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert next_token_loss(torch.zeros(1, 2, 6), targets[:1, :2], torch.ones(1, 2)).item() == pytest.approx(
        math.log(6), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Top-k cache


def _entry(seq: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((seq, k)).astype(np.float32) * 10, rng.integers(0, 500, (seq, k)).astype(np.int64)


def test_topk_cache_round_trip_survives_a_restart(tmp_path: Path) -> None:
    ids = [5, 9, 2, 33, 7]
    values, indices = _entry(len(ids), 4)
    cache = TopKCache(tmp_path, 4, "teacher-a")
    assert cache.get(ids) is None and cache.misses == 1
    cache.put(ids, torch.from_numpy(values), torch.from_numpy(indices))
    got = cache.get(ids)
    assert got is not None and cache.hits == 1
    assert got[0].dtype == np.float16 and got[1].dtype == np.int32
    np.testing.assert_array_equal(got[0], values.astype(np.float16))
    np.testing.assert_array_equal(got[1], indices)

    restarted = TopKCache(tmp_path, 4, "teacher-a")  # a new process reads what the last one wrote
    again = restarted.get(np.array(ids))
    assert again is not None
    np.testing.assert_array_equal(again[0], got[0])
    # Another teacher, another k, other tokens: all misses, never stale entries.
    assert TopKCache(tmp_path, 4, "teacher-b").get(ids) is None
    assert TopKCache(tmp_path, 3, "teacher-a").get(ids) is None
    assert restarted.get(ids[:-1]) is None
    # Atomic writes leave no temporary files behind.
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npz"] == []


def test_topk_cache_rejects_wrong_shapes_and_treats_damaged_entries_as_misses(tmp_path: Path) -> None:
    cache = TopKCache(tmp_path, 4, "t")
    with pytest.raises(CompressError, match=r"\(3, 4\)"):
        cache.put([1, 2, 3], *_entry(2, 4))
    with pytest.raises(CompressError):
        TopKCache(tmp_path, 0, "t")
    path = cache.put([1, 2, 3], *_entry(3, 4))
    path.write_bytes(b"not a numpy archive")
    assert cache.get([1, 2, 3]) is None
    cache.put([1, 2, 3], *_entry(3, 4))  # a damaged entry is simply written again
    assert cache.get([1, 2, 3]) is not None


def test_teacher_topk_returns_the_teachers_most_likely_tokens_as_log_probabilities(llama: tuple[Any, Any]) -> None:
    model, tokenizer = llama
    batch = _batch(tokenizer)
    top = teacher_topk(model, batch, 8)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert top.values.shape == top.indices.shape == (*batch["input_ids"].shape, 8)
    assert not top.values.requires_grad
    torch.testing.assert_close(top.values, logits.log_softmax(-1).topk(8, dim=-1).values)
    torch.testing.assert_close(top.values, logits.log_softmax(-1).gather(-1, top.indices))
    assert bool((top.values.exp().sum(-1) <= 1 + 1e-5).all())  # the rest of the mass is what is left
    with pytest.raises(CompressError, match="vocabulary"):
        teacher_topk(model, batch, 10_000)


def test_cached_teacher_topk_gives_the_same_loss_as_a_fresh_forward(llama: tuple[Any, Any],
                                                                    chatty_llama: tuple[Any, Any],
                                                                    tmp_path: Path) -> None:
    teacher, tokenizer = llama
    student, _ = chatty_llama
    batch = _batch(tokenizer)
    fresh = teacher_topk(teacher, batch, 8)
    cache = TopKCache(tmp_path, 8, model_fingerprint(teacher))
    lengths = batch["attention_mask"].sum(-1).tolist()
    for row, n in enumerate(lengths):  # one entry per unpadded sequence, as a trainer stores them
        cache.put(batch["input_ids"][row, :n].tolist(), fresh.values[row, :n], fresh.indices[row, :n])
    values, indices = torch.zeros_like(fresh.values), torch.zeros_like(fresh.indices)
    for row, n in enumerate(lengths):
        got = cache.get(batch["input_ids"][row, :n].tolist())
        assert got is not None
        values[row, :n] = torch.from_numpy(got[0].astype(np.float32))
        indices[row, :n] = torch.from_numpy(got[1].astype(np.int64))
    torch.testing.assert_close(indices, fresh.indices)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["completion_mask"][:, 1:]
    for kind in LOSS_KINDS:
        expected = lm_distillation_loss(logits, TopK(fresh.values[:, :-1], fresh.indices[:, :-1]), mask, kind=kind)
        cached = lm_distillation_loss(logits, TopK(values[:, :-1], indices[:, :-1]), mask, kind=kind)
        assert cached.item() == pytest.approx(expected.item(), rel=1e-3)  # fp16 storage: rounding only


def test_real_model_losses_zero_for_the_teacher_itself_and_topk_matches_full(llama: tuple[Any, Any],
                                                                             chatty_llama: tuple[Any, Any]) -> None:
    teacher, tokenizer = llama
    student, _ = chatty_llama  # another model with the same vocabulary
    batch = _batch(tokenizer)
    mask = batch["completion_mask"][:, 1:]
    vocab = int(teacher.config.vocab_size)
    full_top = teacher_topk(teacher, batch, vocab)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    aligned = TopK(full_top.values[:, :-1], full_top.indices[:, :-1])
    for kind in LOSS_KINDS:
        assert lm_distillation_loss(teacher_logits, aligned, mask, kind=kind).item() == pytest.approx(0.0, abs=1e-5)
        full = lm_distillation_loss(student_logits, teacher_logits, mask, kind=kind)
        assert full.item() > 0.1
        assert lm_distillation_loss(student_logits, aligned, mask, kind=kind).item() == pytest.approx(full.item(),
                                                                                                      rel=1e-4)
    top16 = teacher_topk(teacher, batch, 16)
    loss = lm_distillation_loss(student_logits, TopK(top16.values[:, :-1], top16.indices[:, :-1]), mask)
    loss.backward()  # the teacher's targets carry no graph; the student's do
    assert student.model.embed_tokens.weight.grad is not None
    student.zero_grad(set_to_none=True)


def test_model_fingerprint_follows_the_weights(tiny_llama: Path) -> None:
    first, _ = _load(tiny_llama)
    second, _ = _load(tiny_llama)
    assert model_fingerprint(first) == model_fingerprint(second)
    with torch.no_grad():
        second.model.norm.weight[0] += 1.0
    assert model_fingerprint(first) != model_fingerprint(second)


# ---------------------------------------------------------------------------------------------
# Teacher answers


def _single_greedy(model: Any, tokenizer: Any, example: LMExample, new_tokens: int) -> str:
    ids = prompt_ids(example, tokenizer)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["chatty_llama", "chatty_gpt2"])
def test_batched_answers_equal_one_prompt_at_a_time_greedy(family: str, request: pytest.FixtureRequest,
                                                           tmp_path: Path) -> None:
    model, tokenizer = request.getfixturevalue(family)
    prompts = default_prompts(3) + [LMExample("The print function writes", "")]  # chat and plain prompts
    answered = teacher_answers(model, tokenizer, prompts, GenerationSettings(max_new_tokens=6, batch_size=3),
                               tmp_path / "answers.jsonl")
    assert [a.prompt for a in answered] == [p.prompt for p in prompts]
    assert [a.messages for a in answered] == [p.messages for p in prompts]
    expected = [_single_greedy(model, tokenizer, p, 6) for p in prompts]
    assert [a.completion for a in answered] == expected
    assert len(set(expected)) == len(expected) and all(expected)  # distinct, real answers: the check has teeth


def test_answers_are_cached_and_only_new_prompts_are_generated(chatty_llama: tuple[Any, Any],
                                                               tmp_path: Path) -> None:
    model, tokenizer = chatty_llama
    cache = tmp_path / "answers.jsonl"
    generated: list[int] = []
    original = model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        generated.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    model.generate = counting_generate
    try:
        settings = GenerationSettings(max_new_tokens=4, batch_size=2)
        prompts = default_prompts(3, seed=1)
        calls: list[tuple[int, int]] = []
        first = teacher_answers(model, tokenizer, prompts, settings, cache, progress=lambda d, t: calls.append((d, t)))
        assert sum(generated) == 3 and calls[0] == (0, 3) and calls[-1] == (3, 3)
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        assert [r["completion"] for r in rows] != [] and sorted(r["completion"] for r in rows) == sorted(
            a.completion for a in first)

        # A re-run (a restart) generates nothing; a new prompt and a repeated one cost one answer.
        generated.clear()
        assert teacher_answers(model, tokenizer, prompts, settings, cache) == first
        assert generated == []
        more = prompts + default_prompts(4, seed=1)[3:] + prompts[:1]
        again = teacher_answers(model, tokenizer, more, settings, cache)
        assert sum(generated) == 1 and again[:3] == first and again[4] == first[0]
        assert len(cache.read_text().splitlines()) == 4

        # Other settings are other answers; a damaged line is answered again, the rest kept.
        generated.clear()
        teacher_answers(model, tokenizer, prompts, GenerationSettings(max_new_tokens=3, batch_size=2), cache)
        assert sum(generated) == 3
        lines = cache.read_text().splitlines()
        cache.write_text("\n".join(["{broken"] + lines[1:]) + "\n")
        generated.clear()
        assert teacher_answers(model, tokenizer, prompts, settings, cache) == first
        assert sum(generated) == 1
    finally:
        del model.generate


def test_sampled_answers_follow_the_seed(chatty_llama: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = chatty_llama
    prompts = default_prompts(2, seed=2)

    def sample(seed: int, cache: str) -> list[str]:
        settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.0, seed=seed)
        return [a.completion for a in teacher_answers(model, tokenizer, prompts, settings, tmp_path / cache)]

    assert sample(0, "a.jsonl") == sample(0, "b.jsonl")  # reproducible without the cache's help
    assert sample(0, "a.jsonl") != sample(1, "a.jsonl")
    with pytest.raises(CompressError):
        teacher_answers(model, tokenizer, prompts, GenerationSettings(max_new_tokens=0), tmp_path / "c.jsonl")
