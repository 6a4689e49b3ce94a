"""Tiny causal language models built from configs, with a real byte-level BPE tokenizer.

The tokenizer is trained (in about a second) on English sentences from Python's documentation,
so tokenized text is real text. Families: ``llama`` (also stands in for Qwen2 and SmolLM2, which
share its layout), ``qwen2`` and ``gpt2``. Nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_bpe_tokenizer(folder: Path, vocab_size: int = 512) -> object:
    """Train a byte-level BPE on real sentences and save it as a fast tokenizer into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import real_sentences

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(real_sentences(2000), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def build_tiny_causal_lm(folder: Path, family: str = "llama", *, layers: int = 4, hidden: int = 64, heads: int = 4,
                         kv_heads: int = 2, ffn: int = 128, max_positions: int = 256, seed: int = 0,
                         vocab_size: int = 512) -> Path:
    """Save a tiny randomly initialised causal LM of ``family`` (with tokenizer) into ``folder``."""
    import torch
    from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    tokenizer = build_bpe_tokenizer(folder, vocab_size)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL}
    common = {"vocab_size": len(tokenizer), "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"],
              "pad_token_id": ids["<|endoftext|>"]}
    if family == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=max_positions,
                            **common)
        model_cls = GPT2LMHeadModel
    elif family in ("llama", "qwen2"):
        config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config,
                                                                                           Qwen2ForCausalLM)
        config = config_cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv_heads, intermediate_size=ffn,
                            max_position_embeddings=max_positions, tie_word_embeddings=True, **common)
    else:
        raise ValueError(f"unknown family {family!r}")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(**common).save_pretrained(folder)
    return folder


def build_tiny_chat_teacher(folder: Path, *, steps: int = 60, seed: int = 0) -> Path:
    """A tiny Llama trained for a few seconds to answer chat prompts with real sentences.

    A randomly initialised model answers with one repeated token (often whitespace); a served
    teacher must say something a student can learn, so this one learns, by plain next-token
    cross-entropy, to answer a chat turn with a sentence from Python's documentation.
    """
    import torch

    from compress.lm.teacher import load_causal_lm
    from tests.conftest import real_sentences

    build_tiny_causal_lm(folder, "llama", seed=seed)
    model, tokenizer = load_causal_lm(folder)
    sentences = real_sentences(400)
    rows = []
    for i, sentence in enumerate(sentences):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": sentence}], add_generation_prompt=True,
                                               tokenize=False)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(sentences[(i + 1) % len(sentences)], add_special_tokens=False)["input_ids"][:40]
        rows.append((head + tail + [tokenizer.eos_token_id], len(head)))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = rows[(step * 16) % len(rows):][:16]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for r, (row, head) in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
            labels[r, head:len(row)] = torch.tensor(row[head:])  # the answer only, and where it ends
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (torch.arange(width) < width), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder
