"""Loss terms, the learning-rate schedule and length-bucketed batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.training.batching import batches_per_epoch, epoch_batches
from compress.training.teacher_cache import TeacherCache
from compress.encoder.losses import (IGNORE_LABEL, LossSettings, attention_loss, embedding_loss, hard_label_loss,
                                     hidden_state_loss, relation_loss, soft_label_loss)
from compress.training.schedule import Schedule
from export.base.errors import CompressError


def test_embedding_losses_vanish_on_agreement_and_grow_with_disagreement() -> None:
    import torch

    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    for kind in ("cosine", "mse", "cosine+mse"):
        assert embedding_loss(a, a, kind).item() == pytest.approx(0.0, abs=1e-6)
        assert embedding_loss(a, -a, kind).item() >= 4.0 / 16 - 1e-6  # mse: |2a|^2 / dim
    assert embedding_loss(a, -a, "cosine").item() == pytest.approx(2.0, abs=1e-5)


def test_soft_label_loss_is_kl_times_t_squared_and_masks_tokens() -> None:
    import torch

    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    t = 3.0
    expected = torch.nn.functional.kl_div(torch.log_softmax(student / t, -1), torch.softmax(teacher / t, -1),
                                          reduction="batchmean") * t * t
    assert soft_label_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_label_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    # Token level: a masked-out position changes nothing.
    s_tok, t_tok = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    changed = s_tok.clone()
    changed[0, 2] += 100
    assert soft_label_loss(s_tok, t_tok, 2.0, mask).item() == pytest.approx(
        soft_label_loss(changed, t_tok, 2.0, mask).item())


def test_hard_label_loss_ignores_unlabelled_positions() -> None:
    import torch

    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert hard_label_loss(logits, torch.tensor([0, IGNORE_LABEL])).item() < 1e-3
    assert hard_label_loss(logits, torch.tensor([1, IGNORE_LABEL])).item() > 5


def test_hidden_and_attention_losses() -> None:
    import torch

    states = tuple(torch.randn(2, 4, 8) for _ in range(5))
    mask = torch.ones(2, 4, dtype=torch.long)
    assert hidden_state_loss(states[:3], states, (0, 1), mask).item() == pytest.approx(0.0)
    assert hidden_state_loss(states[:3], states, (2, 3), mask).item() > 0.5
    projection = torch.nn.Linear(8, 8)
    assert hidden_state_loss(states[:3], states, (0, 1), mask, projection).requires_grad
    attn = torch.softmax(torch.randn(2, 4, 4, 4), -1)
    other = torch.softmax(torch.randn(2, 2, 4, 4), -1)  # fewer heads: compared head-averaged
    assert attention_loss(attn, attn, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert attention_loss(other, attn, mask).item() > 0


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_relation_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(kind: str) -> None:
    import torch

    teacher = torch.randn(16, 12)
    assert relation_loss(teacher.clone(), teacher, kind).item() == pytest.approx(0.0, abs=1e-6)
    # Scaled rows have the same cosines: the relations are the same, whatever the lengths.
    assert relation_loss(teacher * torch.rand(16, 1) * 3, teacher, kind).item() == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(16, 12, requires_grad=True)
    loss = relation_loss(student, teacher, kind)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert relation_loss(student[:1], teacher[:1], kind).item() == 0.0  # a batch of one has no relations


def test_the_relational_term_joins_the_embedding_loss_only_when_weighted() -> None:
    import torch

    from compress.encoder.losses import distillation_loss
    from export.torch_model import TaskOutputs

    student, teacher = torch.randn(8, 6), torch.randn(8, 6)
    batch = {"attention_mask": torch.ones(8, 4, dtype=torch.long)}
    plain = distillation_loss(LossSettings(task="feature-extraction"), TaskOutputs(final=student), teacher, None,
                              batch, ())
    weighted = distillation_loss(LossSettings(task="feature-extraction", relation_weight=2.0),
                                 TaskOutputs(final=student), teacher, None, batch, ())
    assert weighted.item() == pytest.approx(plain.item() + 2.0 * relation_loss(student, teacher).item(), rel=1e-5)


def test_layer_transfer_through_a_width_projection_is_zero_when_the_projection_restores_the_teacher() -> None:
    import torch

    teacher_states = tuple(torch.randn(2, 4, 8) for _ in range(4))
    narrow = torch.nn.Linear(8, 4, bias=False)
    wide = torch.nn.Linear(4, 8, bias=False)
    with torch.no_grad():  # a projection that undoes the narrowing exactly, on these states
        basis = torch.linalg.qr(torch.randn(8, 8))[0][:, :4]
        narrow.weight.copy_(basis.T)
        wide.weight.copy_(basis)
        teacher_states = tuple(s @ basis @ basis.T for s in teacher_states)
    student_states = tuple(narrow(s) for s in teacher_states[:3])
    mask = torch.ones(2, 4, dtype=torch.long)
    assert hidden_state_loss(student_states, teacher_states, (0, 1), mask, wide).item() == pytest.approx(0, abs=1e-6)
    assert hidden_state_loss(student_states, teacher_states, (1, 2), mask, wide).item() > 0


def test_loss_settings_validate() -> None:
    with pytest.raises(CompressError, match="alpha"):
        LossSettings(task="text-classification", alpha=1.5)
    with pytest.raises(CompressError, match="embedding loss"):
        LossSettings(task="feature-extraction", embedding_loss="l1")  # type: ignore[arg-type]
    with pytest.raises(CompressError, match="relation loss"):
        LossSettings(task="feature-extraction", relation_loss="cos")  # type: ignore[arg-type]
    with pytest.raises(CompressError, match="negative"):
        LossSettings(task="feature-extraction", relation_weight=-1.0)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    schedule = Schedule(base_lr=1.0, warmup_fraction=0.1, total_steps=100, budget_s=None)
    lrs = [schedule.lr(schedule.progress(step, 0.0)) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert schedule.finished(99, 0.0) is None and schedule.finished(100, 0.0) == "max_steps"


def test_time_schedule_follows_the_clock() -> None:
    schedule = Schedule(base_lr=1.0, warmup_fraction=0.0, total_steps=None, budget_s=100.0)
    assert schedule.progress(10, 50.0) == pytest.approx(0.55)  # 50 s spent + one more 5 s step
    assert schedule.lr(0.5) == pytest.approx(0.5)
    assert schedule.finished(10, 90.0) is None and schedule.finished(10, 96.0) == "time_budget"
    both = Schedule(base_lr=1.0, warmup_fraction=0.0, total_steps=1000, budget_s=10.0)
    assert both.finished(5, 9.9) == "time_budget"
    with pytest.raises(ValueError):
        Schedule(1.0, 0.0, None, None)


def test_epoch_batches_are_deterministic_bucketed_and_cover_every_example() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000)
    batches = epoch_batches(lengths, 16, seed=3, epoch=0)
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(lengths, 16, seed=3, epoch=0)]
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert len(batches) == batches_per_epoch(1000, 16)
    assert [b.tolist() for b in epoch_batches(lengths, 16, seed=3, epoch=1)] != [b.tolist() for b in batches]
    padded = sum(len(b) * lengths[b].max() for b in batches)
    naive = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), math.ceil(1000 / 16)))
    assert padded < 0.75 * naive  # bucketing removes most of the padding


def test_teacher_cache_round_trips_through_fp16() -> None:
    import torch

    cache = TeacherCache(size=10, max_bytes=1 << 20)
    index = torch.tensor([1, 4])
    assert cache.lookup(index) is None
    values = torch.randn(2, 6)
    stored = cache.store(index, values)
    assert torch.equal(stored, values.half().float())
    assert torch.equal(cache.lookup(index), stored)
    assert cache.lookup(torch.tensor([1, 2])) is None
    tiny = TeacherCache(size=10, max_bytes=8)
    tiny.store(index, values)
    assert tiny.disabled_reason and tiny.lookup(index) is None


def test_similarity_spearman_reads_the_order_of_pairwise_cosines() -> None:
    from export.runtime.agreement import similarity_spearman

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(60, 8))
    assert similarity_spearman(rows, rows) == pytest.approx(1.0)
    assert similarity_spearman(rows, rows * 5.0) == pytest.approx(1.0)  # lengths do not matter, directions do
    noisy = similarity_spearman(rows, rows + 0.5 * rng.normal(size=rows.shape))
    unrelated = similarity_spearman(rows, rng.normal(size=rows.shape))
    assert 0.5 < noisy < 1.0 and abs(unrelated) < 0.2
    # Sampled pairs (fewer than all 1,770) give nearly the same figure, the same every time.
    assert similarity_spearman(rows, rows + 0.5, pairs=500) == similarity_spearman(rows, rows + 0.5, pairs=500)
    with pytest.raises(ValueError):
        similarity_spearman(rows[:2], rows[:2])


def test_the_projection_says_when_the_floor_is_reached_how_long_it_would_take_or_that_it_flattens() -> None:
    import math

    from compress.training.projection import project_to_floor

    def history(values: list[float], seconds: list[float]) -> list[dict]:
        return [{"step": 0, "elapsed_s": 0.0, "teacher_agreement": 0.3}] + [
            {"step": i + 1, "elapsed_s": t, "teacher_agreement": v} for i, (v, t) in enumerate(zip(values, seconds))]

    times = [60.0, 120.0, 240.0, 480.0]
    growing = history([0.80 + 0.02 * math.log2(t / 60) for t in times], times)  # +0.02 a doubling: 0.86 at 8 min
    reached = project_to_floor(growing, 0.85, "mean_cosine")
    assert reached is not None and reached.reached and "reaches" in reached.line
    short = project_to_floor(growing, 0.90, "mean_cosine")  # two more doublings: 32 minutes, 24 more
    assert short is not None and not short.reached and short.extra_minutes == pytest.approx(24.0, abs=0.5)
    assert "24 more minutes" in short.line
    flat = project_to_floor(history([0.85, 0.851, 0.851, 0.852], times), 0.95, "mean_cosine")
    assert flat is not None and flat.flattens and flat.extra_minutes is None and "flattens" in flat.line
    assert project_to_floor(growing, None, "mean_cosine") is None
    assert project_to_floor(history([0.5], [60.0]), 0.9, "mean_cosine").extra_minutes is None  # one point: no fit


def test_neighbour_batches_pair_each_seed_with_its_nearest_text() -> None:
    from compress.encoder.neighbours import nearest_neighbours, with_neighbours

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 6))
    embeddings = np.repeat(centres, 2, axis=0) + 0.01 * rng.normal(size=(40, 6))  # twins: 2k and 2k+1
    nearest = nearest_neighbours(embeddings)
    assert list(nearest) == [i ^ 1 for i in range(40)]
    batches = epoch_batches(np.full(40, 5), 8, seed=0, epoch=1)
    mixed = with_neighbours(batches, nearest)
    assert [len(b) for b in mixed] == [len(b) for b in batches]
    for batch, before in zip(mixed, batches):
        assert len(set(batch.tolist())) == len(batch)  # no text twice
        for seed in before[: (len(before) + 1) // 2]:
            assert seed in batch and nearest[seed] in batch


def test_layer_transfer_comes_from_the_flag_else_the_profile_for_embeddings_only() -> None:
    from compress.encoder.config import DistillConfig
    from compress.encoder.engine import hidden_weight
    from export.runtime.profiles import load_profile

    jetson, vnni = load_profile("jetson"), load_profile("x86-avx512-vnni")
    assert hidden_weight(DistillConfig(), "feature-extraction", jetson) == 1.0  # measured best for its student
    assert hidden_weight(DistillConfig(), "feature-extraction", vnni) == 0.0  # its smaller student lost by it
    assert hidden_weight(DistillConfig(), "text-classification", jetson) == 0.0
    assert hidden_weight(DistillConfig(hidden_weight=0.25), "feature-extraction", vnni) == 0.25
    assert hidden_weight(DistillConfig(), "feature-extraction", None) == 0.0


def test_the_forecast_rule_decides_once_at_the_end_of_the_probe() -> None:
    from compress.training.projection import ForecastRule

    def history(points: list[tuple[float, float]]) -> list[dict[str, float]]:
        return [{"step": i + 1, "elapsed_s": t, "agreement": a} for i, (t, a) in enumerate(points)]

    rule = ForecastRule(floor=0.9, budget_s=400.0, metric="agreement", key="agreement")
    # Measurements at a quarter, half and all of the probe (the budget's first fifth).
    assert [rule.eval_due(p) for p in (0.01, 0.02, 0.03, 0.05, 0.09, 0.1, 0.2, 0.5)] == [
        False, False, False, True, False, True, True, False]
    rising = [(20.0, 0.50), (40.0, 0.55), (80.0, 0.60)]  # +0.05 a doubling: 0.716 after 400 s
    assert rule(history(rising[:2])) is None and rule.decided is None  # too few points
    assert rule(history(rising)) == "forecast"
    decided = rule.decided
    assert decided is not None and decided.forecast == pytest.approx(0.716, abs=1e-3)
    assert not decided.reachable and not decided.trained_on
    assert decided.needed_minutes == pytest.approx(80 * 2**6 / 60, abs=0.1)  # six more doublings
    assert "about 85 minutes" in decided.line
    assert rule(history(rising + [(160.0, 0.99)])) is None  # decided once
    steep = ForecastRule(floor=0.9, budget_s=400.0, metric="agreement", key="agreement")
    assert steep(history([(20.0, 0.5), (40.0, 0.6), (80.0, 0.7)])) is None  # 0.93 after 400 s
    assert steep.decided is not None and steep.decided.reachable and "in reach" in steep.decided.line
    far = ForecastRule(floor=0.99, budget_s=400.0, metric="agreement", key="agreement")
    assert far(history(rising)) == "forecast"  # 7.8 more doublings: beyond 20x the budget
    assert far.decided is not None and far.decided.needed_minutes is None and "flattens" in far.decided.line
