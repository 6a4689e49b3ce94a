"""compress.lm data, teacher and student: tokenization masks, data files, splits, layer-subset students."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.base.errors import CompressError
from compress.lm.data import (EncodedLM, LMExample, collate_lm, default_prompts, encode_examples, load_lm_examples,
                              render_prompt, split_lm_examples)
from compress.lm.student import build_lm_student, plan_lm_student, save_lm_student, spread_layers
from compress.lm.teacher import (REGISTERED_TEACHERS, is_causal_lm, load_causal_lm, load_lm_tokenizer,
                                 resolve_lm_teacher)


@pytest.fixture(scope="module")
def llama(tiny_llama: Path):
    return load_causal_lm(tiny_llama)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2: Path):
    return load_causal_lm(tiny_gpt2)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# data.py


def test_encode_masks_prompt_and_completion_with_eos(llama) -> None:
    _, tok = llama
    example = LMExample("The keyword def introduces", " a function definition.")
    [enc] = encode_examples([example], tok, max_length=128)
    assert len(enc.input_ids) == len(enc.completion_mask)
    start = enc.completion_mask.index(1)
    assert set(enc.completion_mask[:start]) == {0} and set(enc.completion_mask[start:]) == {1}
    assert _decode(tok, enc.input_ids[:start]) == "The keyword def introduces"
    assert enc.input_ids[-1] == tok.eos_token_id
    assert _decode(tok, enc.input_ids[start:-1]) == " a function definition."


def test_chat_messages_use_the_template_with_generation_prompt(llama) -> None:
    _, tok = llama
    example = LMExample("What is a list?", "A mutable sequence.", (("system", "Be brief."), ("user", "What is a list?")))
    rendered = render_prompt(example, tok)
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a list?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    [enc] = encode_examples([example], tok, max_length=256)
    start = enc.completion_mask.index(1)
    assert _decode(tok, enc.input_ids[:start]) == rendered
    assert _decode(tok, enc.input_ids[start:]) == "A mutable sequence.<|im_end|>"


def test_plain_prompt_without_chat_template_falls_back_to_a_transcript(gpt2) -> None:
    _, tok = gpt2
    saved = tok.chat_template
    tok.chat_template = None
    try:
        example = LMExample("hi", "hello", (("user", "hi"),))
        assert render_prompt(example, tok) == "user: hi\nassistant:"
    finally:
        tok.chat_template = saved


def test_truncation_keeps_prompt_start_and_drops_examples_without_completion(llama) -> None:
    _, tok = llama
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    head = len(tok(prompt)["input_ids"])
    kept, = encode_examples([LMExample(prompt, " Then it sleeps for a long while.")], tok, max_length=head + 3)
    assert len(kept.input_ids) == head + 3
    assert sum(kept.completion_mask) == 3
    assert _decode(tok, kept.input_ids[:head]) == prompt
    assert kept.input_ids[-1] != tok.eos_token_id  # cut inside the completion
    # The prompt alone fills max_length, or the completion is empty: nothing to learn, dropped.
    assert encode_examples([LMExample(prompt, " tail")], tok, max_length=head) == []
    assert encode_examples([LMExample("prompt", "")], tok, max_length=64) == []
    with pytest.raises(CompressError, match="max_length"):
        encode_examples([LMExample("a", "b")], tok, max_length=1)


def test_collate_right_pads_with_int64_masks() -> None:
    batch = collate_lm([EncodedLM([5, 6, 7], [0, 1, 1]), EncodedLM([8], [1])], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    assert all(t.dtype == torch.int64 and t.shape == (2, 3) for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(CompressError):
        collate_lm([], pad_id=0)


def test_load_txt_and_jsonl_formats(tmp_path: Path) -> None:
    txt = tmp_path / "lines.txt"
    txt.write_text("first line of text\n\n  second line  \n", encoding="utf-8")
    examples, description = load_lm_examples(txt)
    assert examples == [LMExample("", "first line of text"), LMExample("", "second line")]
    assert "2 examples" in description

    rows = [
        {"prompt": "Q: 2+2?", "completion": " 4"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                      {"role": "assistant", "content": "Goodbye."}]},
        {"text": "just some text"},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"other": 1},
    ]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")
    examples, description = load_lm_examples(jsonl)
    assert examples[0] == LMExample("Q: 2+2?", " 4")
    chat = examples[1]
    assert chat.completion == "Goodbye." and chat.prompt == "Bye"
    assert chat.messages == (("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye"))
    assert examples[2] == LMExample("", "just some text")
    assert len(examples) == 3
    assert "skipped 3 malformed rows" in description and "line 4" in description


def test_bad_data_files_raise_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(CompressError, match="empty.txt"):
        load_lm_examples(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": "x"}\n', encoding="utf-8")
    with pytest.raises(CompressError, match=r"broken.jsonl.*line 1"):
        load_lm_examples(broken)
    with pytest.raises(CompressError, match="does not exist"):
        load_lm_examples(tmp_path / "missing.jsonl")
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(CompressError, match="unsupported"):
        load_lm_examples(csv)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CompressError, match="binary.txt") as caught:
        load_lm_examples(binary)
    assert "\n" not in str(caught.value)


def test_default_corpus_and_prompts_are_real_and_deterministic() -> None:
    examples, description = load_lm_examples(None)
    assert len(examples) > 500 and "plain text" in description
    assert all(e.prompt == "" and e.completion and e.messages is None for e in examples[:50])
    prompts = default_prompts(20, seed=3)
    assert prompts == default_prompts(20, seed=3)
    assert prompts != default_prompts(20, seed=4)
    assert len(set(prompts)) == 20
    for prompt in prompts:
        assert prompt.completion == "" and prompt.messages == (("user", prompt.prompt),)
        assert len(prompt.prompt.split()) >= 6
    assert default_prompts(0) == []


def test_split_is_seeded_disjoint_and_deduplicated() -> None:
    examples = [LMExample("", f"text {i}") for i in range(100)] + [LMExample("", "text 1")]
    train, held = split_lm_examples(examples, held_out_fraction=0.1, seed=0)
    assert len(held) == 10 and len(train) == 90
    assert not set(train) & set(held)
    assert split_lm_examples(examples, 0.1, seed=0) == (train, held)
    assert split_lm_examples(examples, 0.1, seed=1)[1] != held
    small_train, small_held = split_lm_examples(examples[:2], 0.05)  # 5 % of 2 still holds one out
    assert len(small_train) == len(small_held) == 1 and set(small_train + small_held) == set(examples[:2])
    with pytest.raises(CompressError):
        split_lm_examples([LMExample("", "same")] * 3)
    with pytest.raises(CompressError):
        split_lm_examples(examples, held_out_fraction=1.0)


# ---------------------------------------------------------------------------------------------
# teacher.py


def test_resolve_a_local_folder_and_reject_others(tiny_llama: Path, tmp_path: Path) -> None:
    assert is_causal_lm(tiny_llama)
    assert resolve_lm_teacher(str(tiny_llama)) == tiny_llama.resolve()
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}), encoding="utf-8")
    assert not is_causal_lm(encoder) and not is_causal_lm(tmp_path / "nowhere")
    with pytest.raises(CompressError, match="not a causal language model"):
        resolve_lm_teacher(str(encoder))
    with pytest.raises(CompressError, match="known: .*smollm2"):
        resolve_lm_teacher("no-such-teacher")
    assert "smollm2" in REGISTERED_TEACHERS and "smollm2-135m-instruct" in REGISTERED_TEACHERS


def test_registered_teacher_is_reused_from_the_cache(tmp_path: Path, tiny_llama: Path) -> None:
    # A finished conversion (marker present) is reused as is, without touching the GGUF.
    import shutil

    from compress.lm.teacher import CONVERSION_FORMAT, CONVERTED_MARKER

    target = tmp_path / "teachers" / "smollm2"
    shutil.copytree(tiny_llama, target)
    (target / CONVERTED_MARKER).write_text(json.dumps({"format": CONVERSION_FORMAT}), encoding="utf-8")
    assert resolve_lm_teacher("SmolLM2-135M-Instruct", cache_dir=tmp_path) == target


def test_a_gguf_converted_tokenizer_is_written_as_the_byte_level_bpe_it_is(tmp_path: Path, tiny_llama: Path) -> None:
    """transformers' GGUF converter marks a GPT-2-style vocabulary byte_fallback and decodes it
    SentencePiece-style (ONNX Runtime GenAI's tokenizer then maps text to unknown ids) and drops the
    digit split SmolLM2 was trained with: the conversion writes it back as byte-level BPE."""
    from tokenizers import Tokenizer

    from compress.lm.teacher import write_byte_level_tokenizer

    path = tmp_path / "tokenizer.json"
    data = json.loads((tiny_llama / "tokenizer.json").read_text())
    original = Tokenizer.from_str(json.dumps(data))
    data["model"]["byte_fallback"] = True
    data["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                                        {"type": "Replace", "pattern": {"String": "\u2581"},
                                                         "content": " "}, data["decoder"]]}
    path.write_text(json.dumps(data))
    write_byte_level_tokenizer(path, "smollm")
    fixed = json.loads(path.read_text())
    assert fixed["model"]["byte_fallback"] is False and fixed["decoder"]["type"] == "ByteLevel"
    assert fixed["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    tokenizer = Tokenizer.from_file(str(path))
    text = "Edge devices ran 2026 tests, naïve café."
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == original.decode(original.encode(text).ids) == text
    digits = [tokenizer.id_to_token(i) for i in ids if tokenizer.id_to_token(i).strip("Ġ").isdigit()]
    assert "".join(d.strip("Ġ") for d in digits) == "2026" and all(len(d.strip("Ġ")) == 1 for d in digits)
    write_byte_level_tokenizer(path, "default")
    assert json.loads(path.read_text())["pre_tokenizer"]["type"] == "ByteLevel"


def test_load_causal_lm_errors(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(CompressError, match="does not exist"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(CompressError, match="CUDA|unknown"):
        load_causal_lm(tiny_llama, quant="8bit", device="cpu")
    with pytest.raises(CompressError, match="unknown --teacher-quant"):
        load_causal_lm(tiny_llama, quant="3bit", device="cuda")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CompressError, match="safetensors"):
        load_causal_lm(pickled)


def test_loaded_model_is_eval_float32_with_pad_token(llama) -> None:
    model, tok = llama
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token_id is not None and tok.chat_template


# ---------------------------------------------------------------------------------------------
# student.py


def test_plans_spread_layers_keeping_first_and_last(llama) -> None:
    model, _ = llama
    assert spread_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert spread_layers(4, 2) == [0, 3] and spread_layers(4, 1) == [0] and spread_layers(4, 4) == [0, 1, 2, 3]
    plan = plan_lm_student(model.config, "layers=2")
    assert (plan.family, plan.teacher_layers, plan.layers) == ("llama", 4, [0, 3])
    assert plan_lm_student(model.config, "layers=0,2").layers == [0, 2]
    with pytest.raises(CompressError, match="not measured"):  # auto keeps the most important blocks
        plan_lm_student(model.config, "auto")
    assert plan_lm_student(model.config, "auto", importance=lambda: [0.5, 0.1, 0.3, 0.9]).layers == [0, 2, 3]
    for bad in ("layers=5", "layers=0", "layers=0,4", "layers=2,1", "layers=1,1", "depth=2", ""):
        with pytest.raises(CompressError):
            plan_lm_student(model.config, bad)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_student_with_all_layers_matches_the_teacher(family: str, llama, gpt2) -> None:
    teacher, tok = llama if family == "llama" else gpt2
    ids = torch.tensor([tok("Every object has an identity, a type and a value.")["input_ids"]])
    student = build_lm_student(teacher, plan_lm_student(teacher.config, "layers=4"))
    assert type(student) is type(teacher) and student is not teacher
    assert torch.equal(_logits(student, ids), _logits(teacher, ids))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_student_copies_the_chosen_layers(family: str, llama, gpt2) -> None:
    teacher, tok = llama if family == "llama" else gpt2
    plan = plan_lm_student(teacher.config, "layers=1,3")
    student = build_lm_student(teacher, plan)
    layers = (lambda m: m.model.layers) if family == "llama" else (lambda m: m.transformer.h)
    assert len(layers(student)) == 2 and student.config.num_hidden_layers == 2
    for new, old in enumerate(plan.layers):
        for (name, a), (_, b) in zip(layers(student)[new].state_dict().items(), layers(teacher)[old].state_dict().items()):
            assert torch.equal(a, b), name
    assert student.num_parameters() < teacher.num_parameters()
    if family == "llama":  # tied embeddings stay tied in the student
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    # The student is a working model in its own right: cached greedy decoding equals uncached.
    ids = torch.tensor([tok("The value of an object")["input_ids"]])
    with torch.no_grad():
        cached = student.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        plain = student.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                 use_cache=False)
    assert torch.equal(cached, plain)
    # Its logits differ from the teacher's: two layers were dropped.
    assert not torch.allclose(_logits(student, ids), _logits(teacher, ids))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_importance_ranks_an_identity_block_least_and_keep_drops_it(family: str, tiny_llama: Path,
                                                                         tiny_gpt2: Path) -> None:
    import copy

    from compress.lm.block_importance import block_importance
    from compress.lm.quality import pad_id_of
    from compress.lm.student import decoder_layers

    loaded, tok = load_causal_lm(tiny_llama if family == "llama" else tiny_gpt2)
    teacher = copy.deepcopy(loaded)
    # Block 1 made an identity: its attention and MLP write nothing into the residual stream.
    block = decoder_layers(teacher)[1]
    writers = ((block.self_attn.o_proj, block.mlp.down_proj) if family == "llama" else
               (block.attn.c_proj, block.mlp.c_proj))
    with torch.no_grad():
        for linear in writers:
            linear.weight.zero_()
            if getattr(linear, "bias", None) is not None:
                linear.bias.zero_()
    texts = encode_examples(load_lm_examples(None)[0][:16], tok, 64)
    importance = block_importance(teacher, texts, pad_id=pad_id_of(tok))
    assert len(importance) == 4 and importance[1] == pytest.approx(0.0, abs=1e-6)
    assert min(range(4), key=importance.__getitem__) == 1 and all(v > 1e-4 for i, v in enumerate(importance) if i != 1)
    plan = plan_lm_student(teacher.config, "keep=3", importance=lambda: importance)
    assert plan.layers == [0, 2, 3]
    # Dropping the identity block changes nothing the model computes.
    ids = torch.tensor([tok("Every object has an identity, a type and a value.")["input_ids"]])
    assert torch.allclose(_logits(build_lm_student(teacher, plan), ids), _logits(teacher, ids), atol=1e-5)
    for bad in ("keep=0", "keep=5"):
        with pytest.raises(CompressError):
            plan_lm_student(teacher.config, bad, importance=lambda: importance)
    with pytest.raises(CompressError, match="not measured"):
        plan_lm_student(teacher.config, "keep=2")


def test_student_rejects_a_plan_for_another_teacher(llama) -> None:
    teacher, _ = llama
    with pytest.raises(CompressError, match="8-layer teacher; this one has 4"):
        build_lm_student(teacher, plan_lm_student(type(teacher.config)(num_hidden_layers=8), "layers=2"))


def test_saved_student_reloads_with_tokenizer_and_chat_template(llama, tmp_path: Path) -> None:
    teacher, tok = llama
    student = build_lm_student(teacher, plan_lm_student(teacher.config, "layers=0,3"))
    out = save_lm_student(student, tok, tmp_path / "student")
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not list(tmp_path.glob(".student*"))  # no temporary folder left behind
    reloaded, tok2 = load_causal_lm(out)
    assert reloaded.config.num_hidden_layers == 2
    assert tok2.chat_template == tok.chat_template and tok2.eos_token == tok.eos_token
    assert reloaded.generation_config.eos_token_id == teacher.generation_config.eos_token_id
    ids = torch.tensor([tok("Names refer to objects.")["input_ids"]])
    assert torch.equal(_logits(reloaded, ids), _logits(student, ids))
    assert load_lm_tokenizer(out).pad_token_id == tok.pad_token_id


# ---------------------------------------------------------------------------------------------
# The real teacher (slow: the GGUF conversion takes about a minute)


@pytest.mark.slow
def test_smollm2_converts_once_and_loads(tmp_path: Path) -> None:
    import time

    folder = resolve_lm_teacher("smollm2", cache_dir=tmp_path)
    assert folder == tmp_path / "teachers" / "smollm2" and is_causal_lm(folder)
    started = time.perf_counter()
    assert resolve_lm_teacher("smollm2-135m-instruct", cache_dir=tmp_path) == folder
    assert time.perf_counter() - started < 1.0  # reused, not converted again
    model, tok = load_causal_lm(folder)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.chat_template and tok.eos_token_id is not None
    prompt = LMExample("", "", (("user", "What is the capital of France?"),))
    ids = torch.tensor([encode_examples([LMExample(prompt.prompt, " x", prompt.messages)], tok, 128)[0].input_ids[:-2]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    student = build_lm_student(model, plan_lm_student(model.config, "layers=6"))
    assert student.config.num_hidden_layers == 6


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_teacher_on_cuda(quant: str, tiny_llama: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, tok = load_causal_lm(tiny_llama, device="cuda", quant=quant)
    assert getattr(model, "is_quantized", False)
    ids = torch.tensor([tok("Every object has an identity")["input_ids"]], device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits.float()).all()
    with pytest.raises(CompressError, match="quantized teacher"):
        build_lm_student(model, plan_lm_student(model.config, "layers=2"))
