"""Student specs, construction from the teacher's weights, and the saved folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.encoder.student import (StudentSpec, build_student, evenly_spaced_layers, load_student,
                                      parse_student_spec, plan_student, save_student)
from compress.encoder.teacher import TEACHERS, load_teacher, resolve_teacher
from export.base.errors import CompressError
from export.base.tasks import read_pooling


def test_spec_forms_parse() -> None:
    assert parse_student_spec("layers=3") == StudentSpec("layers=3", num_layers=3)
    assert parse_student_spec("layers=0,2,5").teacher_layers == (0, 2, 5)
    narrow = parse_student_spec("layers=4,hidden=256,heads=4,ffn=1024")
    assert (narrow.num_layers, narrow.hidden, narrow.heads, narrow.ffn) == (4, 256, 4, 1024)
    mixed = parse_student_spec("layers=0,3, hidden=16")
    assert mixed.teacher_layers == (0, 3) and mixed.hidden == 16


@pytest.mark.parametrize("bad, message", [
    ("depth=3", "unknown key"), ("layers=three", "whole numbers"), ("hidden=8,8", "cannot read"),
    ("layers=2,layers=3", "given twice"), ("", "empty"),
])
def test_bad_specs_name_the_problem(bad: str, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        parse_student_spec(bad)


def test_evenly_spaced_layers_keep_the_last_one() -> None:
    assert evenly_spaced_layers(6, 3) == (1, 3, 5)
    assert evenly_spaced_layers(12, 4) == (2, 5, 8, 11)
    assert evenly_spaced_layers(4, 1) == (3,)
    assert evenly_spaced_layers(4, 4) == (0, 1, 2, 3)


def test_plan_rejects_impossible_shapes(tiny_encoder: Path) -> None:
    teacher = load_teacher(tiny_encoder)
    config = teacher.model.config
    for spec, message in [("layers=5", "between 1"), ("layers=0,9", "no layer 9"), ("layers=2,1", "increasing"),
                          ("hidden=30,heads=4", "multiple of heads")]:
        with pytest.raises(CompressError, match=message):
            plan_student(parse_student_spec(spec), config)


def test_layer_student_copies_the_chosen_teacher_layers(tiny_encoder: Path) -> None:
    import torch

    teacher = load_teacher(tiny_encoder)
    student = build_student(teacher.model, plan_student(parse_student_spec("layers=0,3"), teacher.model.config))
    assert student.projection is None and student.teacher_layers == (0, 3)
    t, s = teacher.model.encoder.layer, student.model.encoder.layer
    assert len(s) == 2
    assert torch.equal(s[0].attention.self.query.weight, t[0].attention.self.query.weight)
    assert torch.equal(s[1].output.dense.weight, t[3].output.dense.weight)
    assert torch.equal(student.model.embeddings.word_embeddings.weight, teacher.model.embeddings.word_embeddings.weight)


def test_narrower_student_starts_from_the_teacher_s_chosen_units_with_a_projection(tiny_encoder: Path) -> None:
    import torch

    from compress.encoder.width import choose_width

    teacher = load_teacher(tiny_encoder)
    plan = plan_student(parse_student_spec("layers=2,hidden=16,heads=2,ffn=32"), teacher.model.config)
    student = build_student(teacher.model, plan)
    config = student.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (2, 16, 2, 32)
    choice = choose_width(teacher.model, 16, 2, 32)
    layer = plan.teacher_layers[1]
    t_weight = teacher.model.encoder.layer[layer].intermediate.dense.weight
    expected = t_weight[choice.neurons[layer]][:, choice.hidden]
    assert torch.equal(student.model.encoder.layer[1].intermediate.dense.weight, expected)
    assert student.projection.in_features == 16 and student.projection.out_features == 32
    # Starts as the identity onto the teacher units the student kept.
    x = torch.randn(3, 16)
    y = student.projection(x)
    assert torch.allclose(y[:, choice.hidden], x)
    assert torch.all(y[:, [u for u in range(32) if u not in choice.hidden]] == 0)


def test_importance_beats_leading_unit_slicing_on_initial_agreement(tiny_encoder: Path, sentences: list[str]) -> None:
    """A teacher whose leading FFN neurons do almost nothing: a student that keeps the leading half
    starts far from it, one that keeps the neurons of largest activation starts close."""
    import torch

    from compress.encoder.student import copy_teacher_weights, make_projection, student_config
    from export.torch_model import embed

    teacher = load_teacher(tiny_encoder)
    ffn = int(teacher.model.config.intermediate_size)
    with torch.no_grad():
        for layer in teacher.model.encoder.layer:
            layer.output.dense.weight[:, : ffn // 2] *= 0.01  # their output barely reaches the residual stream
            layer.output.dense.weight[:, ffn // 2:] *= 30.0  # and theirs dominates it
            layer.intermediate.dense.weight[: ffn // 2] *= 0.01
    plan = plan_student(parse_student_spec(f"layers=4,hidden=32,ffn={ffn // 2}"), teacher.model.config)
    assert plan.slimmer and not plan.narrower
    calibration = dict(teacher.tokenizer(sentences[16:48], padding=True, truncation=True, max_length=64,
                                         return_tensors="pt"))
    chosen = build_student(teacher.model, plan, calibration)
    leading = type(teacher.model)(student_config(teacher.model.config, plan))
    copy_teacher_weights(leading, teacher.model, plan.teacher_layers, None)

    batch = dict(teacher.tokenizer(sentences[:16], padding=True, truncation=True, max_length=64, return_tensors="pt"))
    with torch.no_grad():
        target = embed(teacher.model, batch, teacher.pooling)

        def agreement(model: torch.nn.Module) -> float:
            return float(torch.nn.functional.cosine_similarity(embed(model.eval(), batch, teacher.pooling), target).mean())

        important, start = agreement(chosen.model), agreement(leading)
    assert important > start + 0.05, (important, start)
    assert make_projection(16, 32, list(range(16, 32))).weight[16:, :].diag().eq(1).all()


def test_student_from_a_config_json_file(tiny_encoder: Path, tmp_path: Path) -> None:
    path = tmp_path / "student.json"
    path.write_text(json.dumps({"num_hidden_layers": 2, "intermediate_size": 48, "hidden_dropout_prob": 0.0,
                                "model_type": "bert"}))
    spec = parse_student_spec(str(path))
    assert spec.num_layers == 2 and spec.ffn == 48 and spec.config_overrides == {"hidden_dropout_prob": 0.0}
    teacher = load_teacher(tiny_encoder)
    student = build_student(teacher.model, plan_student(spec, teacher.model.config))
    assert student.model.config.intermediate_size == 48 and student.model.config.hidden_dropout_prob == 0.0
    with pytest.raises(CompressError, match="not found"):
        parse_student_spec(str(tmp_path / "missing.json"))


def test_saved_student_loads_like_the_teacher_with_sentence_transformers_files(tiny_encoder: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    teacher = load_teacher(tiny_encoder)
    plan = plan_student(parse_student_spec("layers=2,hidden=16,heads=2,ffn=32"), teacher.model.config)
    student = build_student(teacher.model, plan)
    with torch.no_grad():
        student.projection.weight.add_(0.01)
    folder = save_student(student, teacher.tokenizer, tmp_path / "student", task="feature-extraction",
                          teacher_dir=tiny_encoder, pooling=teacher.pooling)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    assert read_pooling(folder) == teacher.pooling
    AutoModel.from_pretrained(folder, use_safetensors=True)
    AutoTokenizer.from_pretrained(folder)
    reloaded = load_student(folder, "feature-extraction", teacher_hidden=32, teacher_num_layers=4)
    assert torch.equal(reloaded.projection.weight, student.projection.weight)


def test_sentence_transformers_loads_the_student(tiny_encoder: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    teacher = load_teacher(tiny_encoder)
    plan = plan_student(parse_student_spec("layers=2,hidden=16,heads=2,ffn=32"), teacher.model.config)
    folder = save_student(build_student(teacher.model, plan), teacher.tokenizer, tmp_path / "student",
                          task="feature-extraction", teacher_dir=tiny_encoder, pooling=teacher.pooling)
    model = st.SentenceTransformer(str(folder), device="cpu")
    embeddings = model.encode(["a short sentence", "another one"])
    assert embeddings.shape == (2, 32)  # the projection keeps the teacher's dimension


def test_teacher_registry_and_errors(tmp_path: Path) -> None:
    assert "all-minilm-l6-v2" in TEACHERS
    name, folder = resolve_teacher(None)
    assert name == "all-minilm-l6-v2" and (folder / "config.json").is_file()
    with pytest.raises(CompressError, match="known"):
        resolve_teacher("no-such-teacher")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CompressError, match="safetensors"):
        load_teacher(tmp_path)


def test_unsupported_teacher_task_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CompressError, match="feature-extraction, text-classification, token-classification"):
        load_teacher(tmp_path)
    with pytest.raises(CompressError, match="unsupported task"):
        load_teacher(tmp_path, "summarization")


def test_a_sentence_transformers_folder_is_an_encoder_whatever_head_its_config_names(tmp_path: Path) -> None:
    from export.base.tasks import detect_task

    # all-mpnet-base-v2's config names MPNetForMaskedLM; sentence-transformers loads the base model.
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MPNetForMaskedLM"], "model_type": "mpnet"}))
    with pytest.raises(CompressError, match="cannot tell the task"):
        detect_task(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]))
    assert detect_task(tmp_path) == "feature-extraction"


def test_a_narrower_mpnet_student_keeps_the_teacher_heads_it_chose() -> None:
    """MPNet names its projections q/k/v/o under attention.attn and ends attention in o: the
    importance hooks and the weight slicing follow those names too."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    from compress.encoder.width import choose_width, roles

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=80)
    teacher = MPNetModel(config).eval()
    assert roles("encoder.layer.0.attention.attn.q.weight") == "ah"
    assert roles("encoder.layer.0.attention.attn.o.weight") == "ha"
    batch = {"input_ids": torch.randint(5, 120, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    choice = choose_width(teacher, 32, 2, 32, batch)
    assert set(choice.heads) == {0, 1} and all(len(h) == 2 for h in choice.heads.values())
    plan = plan_student(parse_student_spec("layers=2,hidden=16,heads=2,ffn=32"), config)
    student = build_student(teacher, plan, batch)
    kept = choice.heads[0]
    rows = [h * 8 + d for h in kept for d in range(8)]
    # The student's first layer queries are the teacher's rows of the kept heads (hidden cut to the leading 16).
    expected = teacher.encoder.layer[0].attention.attn.q.weight[rows][:, :16]
    assert torch.equal(student.model.encoder.layer[0].attention.attn.q.weight, expected)
    out = student.model(**batch).last_hidden_state
    assert out.shape == (4, 12, 16) and student.projection.out_features == 32
