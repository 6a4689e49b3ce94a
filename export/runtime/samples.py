"""Real text as ONNX feeds: the held-out texts every quality number is measured on.

Quality numbers (export parity, quantization drop, pruning quality) are measured on real text
tokenized by the model's own ``tokenizer.json``, never on random ids alone. By default the texts
are the held-out split of the default corpus (``export.base.corpus``): the same split the
distillation never trains on, so a number measured here is a number on unseen text. Calibration
for static quantization draws from the training side of that split, so calibration and
evaluation never share a text.

numpy and ``tokenizers`` only (no torch, no transformers), so the device side can reuse it. A
model with no tokenizer next to it (any ONNX graph a user brings) gets synthetic feeds built
from its signature, and every report says which kind of samples it used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.base.errors import CompressError

DEFAULT_MAX_LENGTH = 128
DEFAULT_EVAL_SAMPLES = 64
DEFAULT_CALIBRATION_SAMPLES = 128
# Synthetic feeds (models without a tokenizer): a short sequence keeps the checks fast.
SYNTHETIC_SEQUENCE_LENGTH = 16

Feed = dict[str, np.ndarray]
SampleKind = Literal["text", "synthetic"]

_TEXT_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")


def read_texts(path: str | Path) -> list[str]:
    """The texts of a data file (``.txt`` one per line, ``.jsonl``/``.csv``/``.tsv`` with a text field).

    Raises CompressError when the file is missing, in an unknown format or has no usable row.
    """
    from export.base.corpus import load_corpus

    corpus = load_corpus(Path(path))
    texts = [example.text for example in corpus.examples if example.text.strip()]
    if not texts:
        raise CompressError(f"{path}: no usable texts")
    return texts


def held_out_texts(limit: int | None = DEFAULT_EVAL_SAMPLES, path: str | Path | None = None) -> list[str]:
    """Evaluation texts: the user's file (all of it), or the default corpus's held-out split."""
    if path is not None:
        texts = read_texts(path)
    else:
        from export.base.corpus import default_split

        texts = [example.text for example in default_split().held_out]
    return texts[:limit] if limit else texts


def training_texts(limit: int | None = DEFAULT_CALIBRATION_SAMPLES, path: str | Path | None = None) -> list[str]:
    """Texts to calibrate or measure importance on: the user's file, or the default corpus's training split.

    The default is spread over the whole split (every k-th text), not its first topics only.
    """
    if path is not None:
        texts = read_texts(path)
        return texts[:limit] if limit else texts
    from export.base.corpus import default_split

    texts = [example.text for example in default_split().train]
    if limit and len(texts) > limit:
        step = len(texts) / limit
        texts = [texts[int(i * step)] for i in range(limit)]
    return texts


@dataclass(frozen=True)
class Signature:
    """One declared model input or output: name, ONNX Runtime type, shape (str/None = dynamic)."""

    name: str
    type: str
    shape: list[int | str | None]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": list(self.shape)}


def signature(args: Sequence[Any]) -> list[Signature]:
    """``session.get_inputs()`` / ``get_outputs()`` as plain dataclasses."""
    return [Signature(a.name, a.type, list(a.shape)) for a in args]


def configured_pad_token(folder: Path) -> str | None:
    """The pad token named by ``special_tokens_map.json`` or ``tokenizer_config.json`` in ``folder``."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("pad_token") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


class TextEncoder:
    """A model's ``tokenizer.json``, padding and truncation set here rather than by whoever saved it."""

    def __init__(self, path: Path, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises its own Exception subclass for a bad file
            raise CompressError(f"cannot read tokenizer {self.path}: {exc}") from None
        pad_id, pad_token = self._pad()
        # Pad to the longest text of a batch (a saved tokenizer.json may pad everything to a fixed length).
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length

    @classmethod
    def from_folder(cls, folder: Path, max_length: int = DEFAULT_MAX_LENGTH) -> TextEncoder | None:
        path = Path(folder) / "tokenizer.json"
        return cls(path, max_length) if path.is_file() else None

    def _pad(self) -> tuple[int, str]:
        padding = self.tokenizer.padding
        if padding and padding.get("pad_token") is not None:
            return int(padding["pad_id"]), str(padding["pad_token"])
        # The pad token the tokenizer's own configuration names: a vocabulary may also hold a stray
        # "[PAD]" (all-mpnet-base-v2 pads with <pad>, id 1, and has [PAD] as id 4).
        named = configured_pad_token(self.path.parent)
        if named is not None and self.tokenizer.token_to_id(named) is not None:
            return int(self.tokenizer.token_to_id(named)), named
        for token in _PAD_TOKENS:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id, token
        return 0, "[PAD]"

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, padded to the longest text)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def _numpy_type(ort_type: str) -> np.dtype:
    from export.runtime.inputs import numpy_dtype

    return numpy_dtype(ort_type)


def text_feeds(encoder: TextEncoder, texts: Sequence[str], inputs: Sequence[Signature], *,
               batch_size: int = 1) -> list[Feed]:
    """One feed per batch of ``texts`` for a model whose inputs are ``inputs``.

    Batch size 1 (the default) runs every text at its own length, with no padding: what an edge
    caller sends, and what dynamic quantization (ranges taken per run) is measured under.
    """
    unknown = [arg.name for arg in inputs if arg.name not in _TEXT_INPUTS]
    if unknown:
        raise CompressError(f"model input(s) {', '.join(unknown)} are not text inputs "
                            f"(expected {', '.join(_TEXT_INPUTS)})")
    if not texts:
        raise CompressError("no texts to build samples from")
    feeds: list[Feed] = []
    for start in range(0, len(texts), batch_size):
        encoded = encoder.encode(texts[start:start + batch_size])
        feeds.append({arg.name: encoded[arg.name].astype(_numpy_type(arg.type)) for arg in inputs})
    return feeds


def synthetic_feeds(inputs: Sequence[Any], count: int, *, seed: int = 0,
                    sequence_length: int = SYNTHETIC_SEQUENCE_LENGTH) -> list[Feed]:
    """``count`` feeds of batch 1 built from the model's declared signature (no tokenizer at hand)."""
    from export.runtime.inputs import synthesize_inputs

    return [synthesize_inputs(list(inputs), batch_size=1, sequence_length=sequence_length, seed=seed + i)[0]
            for i in range(count)]


@dataclass
class Samples:
    """Feeds for one ONNX model, and what they were made from."""

    feeds: list[Feed]
    kind: SampleKind
    source: str  # "default held-out split", a file path, or "synthetic from the model's signature"
    texts: int  # how many texts (0 for synthetic)


def model_samples(model_path: Path, inputs: Sequence[Any], *, texts: Sequence[str] | None = None,
                  source: str = "", count: int = DEFAULT_EVAL_SAMPLES, batch_size: int = 1,
                  max_length: int = DEFAULT_MAX_LENGTH) -> Samples:
    """Feeds for the ONNX model at ``model_path``: real ``texts`` through its tokenizer, else synthetic.

    ``inputs`` is ``session.get_inputs()``. Texts need a ``tokenizer.json`` beside the model and
    text-shaped inputs; without them the model gets ``count`` synthetic feeds.
    """
    encoder = TextEncoder.from_folder(Path(model_path).parent, max_length)
    is_text_model = all(arg.name in _TEXT_INPUTS for arg in inputs)
    if encoder is not None and is_text_model:
        if texts is None:
            texts, source = held_out_texts(count), "default corpus, held-out split"
        return Samples(text_feeds(encoder, texts, signature(inputs), batch_size=batch_size), "text",
                       source or "texts", len(texts))
    return Samples(synthetic_feeds(inputs, count), "synthetic", "synthetic from the model's signature", 0)
