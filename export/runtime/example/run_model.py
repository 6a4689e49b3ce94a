"""Run the packaged model on sentences with onnxruntime, numpy and tokenizers only.

    pip install onnxruntime numpy tokenizers
    python example/run_model.py "The cat sits outside." "A man is playing guitar."

Everything this program needs to know (file names, tokenizer settings, which output to read,
how to pool it, the class labels) is in ../manifest.json, so the same program serves every
package. Sentence encoders print the first values of each embedding and the cosine between
the first two sentences; classifiers print each label's probability; token classifiers print
a label per token. README.md next to this file describes the same inputs and outputs for
integrators who do not use Python.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SENTENCES = ("The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps above a sleepy hound.")

class TextEncoder:
    """Text to the model's inputs: the archive's tokenizer and the input names and dtypes of the manifest."""

    def __init__(self, package_dir: Path, manifest: dict) -> None:
        self.settings = manifest["tokenizer"]
        self.inputs = [(spec["name"], np.dtype(spec["dtype"])) for spec in manifest["model"]["signature"]["inputs"]]
        self.tokenizer = Tokenizer.from_file(str(Path(package_dir) / self.settings["file"]))
        # The tokenizer file's own normaliser lowercases (or not) and adds [CLS]/[SEP]; these calls add
        # what a batch needs: cut long texts at the model's limit and pad short ones with [PAD].
        self.tokenizer.enable_truncation(max_length=self.settings["max_length"])
        self._pad(self.tokenizer, None)

    def _pad(self, tokenizer: Tokenizer, length: int | None) -> None:
        pad = self.settings["special_tokens"].get("pad")
        if pad is not None:
            tokenizer.enable_padding(pad_id=pad["id"], pad_token=pad["token"], length=length,
                                     direction=self.settings["padding_side"])

    def __call__(self, texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Inputs for ``texts``, padded to the longest text (or cut and padded to exactly ``pad_to`` tokens)."""
        tokenizer = self.tokenizer
        if pad_to is not None:
            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            tokenizer.enable_truncation(max_length=pad_to)
            self._pad(tokenizer, pad_to)
        encodings = tokenizer.encode_batch(list(texts))
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {}
        for name, dtype in self.inputs:
            if name not in columns:
                raise ValueError(f"the model wants an input named {name!r}, which a tokenizer does not produce")
            feed[name] = np.asarray(columns[name], dtype=dtype)
        return feed


class PackagedModel:
    """The model, its tokenizer and the manifest's instructions for reading its outputs."""

    def __init__(self, package_dir: Path = PACKAGE_DIR, providers: list[str] | None = None,
                 manifest: dict | None = None, session_options: ort.SessionOptions | None = None) -> None:
        package_dir = Path(package_dir)
        self.manifest = manifest or json.loads((package_dir / "manifest.json").read_text(encoding="utf-8"))
        available = ort.get_available_providers()
        wanted = [p for p in (providers or self.manifest.get("providers") or []) if p in available]
        self.session = ort.InferenceSession(
            str(package_dir / self.manifest["model"]["path"]), sess_options=session_options,
            providers=wanted or ["CPUExecutionProvider"],
        )
        self.encode = TextEncoder(package_dir, self.manifest)
        self.output = self.manifest["output"]

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime really uses (it falls back to CPU silently)."""
        return self.session.get_providers()

    def run(self, texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw outputs by name, and the inputs that produced them."""
        feed = self.encode(texts)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed))), feed

    def embed(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings ``(n, dim)``: the graph's own pooled output, or pooling done here."""
        outputs, feed = self.run(texts)
        vectors = outputs[self.output["primary"]].astype(np.float32)
        if self.output.get("pooling"):
            mask = feed["attention_mask"][..., None].astype(np.float32)
            if self.output["pooling"] == "cls":
                vectors = vectors[:, 0]
            elif self.output["pooling"] == "max":
                vectors = np.where(mask > 0, vectors, -np.inf).max(axis=1)
            else:  # mean over real tokens, padding excluded
                vectors = (vectors * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.output.get("normalize"):
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return vectors

    def classify(self, texts: list[str]) -> np.ndarray:
        """Class probabilities ``(n, classes)`` (softmax of the logits)."""
        outputs, _ = self.run(texts)
        return _softmax(outputs[self.output["primary"]].astype(np.float32))

    def tag(self, texts: list[str]) -> list[list[tuple[str, str]]]:
        """For each text, ``(token, label)`` for every real token."""
        outputs, feed = self.run(texts)
        best = outputs[self.output["primary"]].argmax(axis=-1)
        encodings = self.encode.tokenizer.encode_batch(list(texts))
        labels = self.output.get("labels") or []
        tagged = []
        for row, encoding in enumerate(encodings):
            tagged.append([
                (token, labels[best[row, i]] if best[row, i] < len(labels) else str(best[row, i]))
                for i, token in enumerate(encoding.tokens) if feed["attention_mask"][row, i]
            ])
        return tagged

    def answer(self, texts: list[str]) -> np.ndarray:
        """The task's answer as one array per text: embeddings, probabilities, or per-token logits."""
        task = self.manifest["task"]
        if task == "feature-extraction":
            return self.embed(texts)
        if task == "text-classification":
            return self.classify(texts)
        outputs, _ = self.run(texts)
        return outputs[self.output["primary"]].astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def main(argv: list[str]) -> int:
    sentences = argv or list(DEFAULT_SENTENCES)
    model = PackagedModel()
    task = model.manifest["task"]
    print(f"{model.manifest['name']} {model.manifest['version']} ({task}, {model.manifest['precision']}) "
          f"on {', '.join(model.providers)}")
    if task == "feature-extraction":
        vectors = model.embed(sentences)
        for sentence, vector in zip(sentences, vectors):
            head = ", ".join(f"{v:+.4f}" for v in vector[:6])
            print(f"{sentence!r}\n  embedding[{vector.shape[0]}] = [{head}, ...]")
        if len(sentences) >= 2:
            print(f"cosine(sentence 1, sentence 2) = {cosine(vectors[0], vectors[1]):.4f}")
    elif task == "text-classification":
        labels = model.output.get("labels") or []
        for sentence, probabilities in zip(sentences, model.classify(sentences)):
            ranked = sorted(enumerate(probabilities), key=lambda item: -item[1])
            shown = ", ".join(f"{labels[i] if i < len(labels) else i}: {p:.3f}" for i, p in ranked)
            print(f"{sentence!r}\n  {shown}")
    else:
        for sentence, pairs in zip(sentences, model.tag(sentences)):
            print(f"{sentence!r}\n  " + " ".join(f"{token}/{label}" for token, label in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
