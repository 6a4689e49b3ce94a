"""Generate text with the packaged language model: onnxruntime, numpy and tokenizers only.

    pip install onnxruntime numpy tokenizers
    python example/generate.py "Explain what a cache is."
    python example/generate.py --max-new-tokens 64 --raw "Once upon a time"

Everything this program needs (file names, how the chat template wraps a prompt, the
end-of-sequence tokens) is in ../manifest.json. It wraps the prompt in the chat template (``--raw``
skips that), encodes it with tokenizer.json, and decodes greedily with the KV cache:

1. prefill: the whole prompt with an empty cache (``past_key_values.*`` with 0 positions);
2. each later step: the last token alone, with the ``present.*`` outputs of the step before as
   ``past_key_values.*``, ``attention_mask`` of ones over all positions so far and
   ``position_ids`` counting on;
3. the next token is the argmax of the last position's ``logits``; stop at an end-of-sequence
   token or after ``--max-new-tokens``.

README.md next to this file describes the same loop for integrators who do not use Python.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PROMPT = "Explain in one sentence why a small model is useful on a phone."
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class Generator:
    """The packaged decoder with its KV cache, its tokenizer and the manifest's prompt format."""

    def __init__(self, package_dir: Path = PACKAGE_DIR, providers: list[str] | None = None,
                 manifest: dict | None = None, session_options: ort.SessionOptions | None = None) -> None:
        package_dir = Path(package_dir)
        self.manifest = manifest or json.loads((package_dir / "manifest.json").read_text(encoding="utf-8"))
        available = ort.get_available_providers()
        wanted = [p for p in (providers or self.manifest.get("providers") or []) if p in available]
        self.session = ort.InferenceSession(str(package_dir / self.manifest["model"]["path"]),
                                            sess_options=session_options, providers=wanted or ["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(package_dir / self.manifest["tokenizer"]["file"]))
        self.prompt_format = self.manifest.get("prompt") or {"prefix": "", "suffix": "", "add_special_tokens": True}
        self.eos = set(self.manifest["output"].get("eos_token_ids") or [])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.types = {name: _DTYPES[arg.type] for name, arg in inputs.items() if arg.type in _DTYPES}
        # Each past input (batch, heads, past positions, head size) is fed by the present output of the same layer.
        self.caches = [(name, "present." + name[len("past_key_values."):], _DTYPES[arg.type], arg.shape[1], arg.shape[3])
                       for name, arg in inputs.items() if _PAST.match(name)]
        self.output_names = ["logits"] + [present for _, present, *_ in self.caches]

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime really uses (it falls back to CPU silently)."""
        return self.session.get_providers()

    def encode(self, prompt: str, raw: bool = False) -> list[int]:
        """Token ids for ``prompt``: wrapped in the chat template unless ``raw``."""
        fmt = self.prompt_format
        if raw:
            return self.tokenizer.encode(prompt).ids
        text = fmt["prefix"] + prompt + fmt["suffix"]
        return self.tokenizer.encode(text, add_special_tokens=bool(fmt["add_special_tokens"])).ids

    def _feeds(self, ids: list[int], start: int, past: list[np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {"input_ids": np.asarray([ids], dtype=self.types["input_ids"])}
        if "attention_mask" in self.types:
            feeds["attention_mask"] = np.ones((1, start + len(ids)), dtype=self.types["attention_mask"])
        if "position_ids" in self.types:
            feeds["position_ids"] = np.arange(start, start + len(ids), dtype=self.types["position_ids"])[None, :]
        if "use_cache_branch" in self.types:  # older merged decoders
            feeds["use_cache_branch"] = np.array([start > 0])
        feeds.update({name: value for (name, *_), value in zip(self.caches, past)})
        return feeds

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 32, stop_at_eos: bool = True) -> list[int]:
        """Greedy decoding with the KV cache; the new token ids (an end-of-sequence token included).

        ``stop_at_eos`` False goes on past end-of-sequence tokens to exactly ``max_new_tokens``.
        """
        past = [np.zeros((1, heads, 0, size), dtype=dtype) for _, _, dtype, heads, size in self.caches]
        ids, position, tokens = list(prompt_ids), 0, []
        while len(tokens) < max_new_tokens:
            logits, *past = self.session.run(self.output_names, self._feeds(ids, position, past))
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            position += len(ids)
            if stop_at_eos and token in self.eos:
                break
            ids = [token]
        return tokens

    def until_eos(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to and including the first end-of-sequence token."""
        end = next((i for i, token in enumerate(tokens) if token in self.eos), len(tokens))
        return tokens[:end + 1]

    def decode(self, tokens: list[int]) -> str:
        """Text for ``tokens``, special tokens (such as end-of-sequence) left out."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def generate(self, prompt: str, max_new_tokens: int = 32, raw: bool = False) -> str:
        """The model's greedy answer to ``prompt``."""
        return self.decode(self.generate_ids(self.encode(prompt, raw), max_new_tokens))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Greedy text generation with the packaged model.")
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    args = parser.parse_args(argv)
    model = Generator()
    m = model.manifest
    print(f"{m['name']} {m['version']} ({m['task']}, {m['precision']}) on {', '.join(model.providers)}")
    print(f"prompt: {args.prompt}")
    print(f"answer: {model.generate(args.prompt, args.max_new_tokens, args.raw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
