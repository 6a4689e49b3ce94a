"""Score an exported causal LM on held-out text: perplexity, and its next-token choices.

The same texts, tokenized by the same tokenizer, give every model the same positions, so two
models' choices can be compared position by position: next-token agreement with the fp32 teacher
is what the release chooser and the gate judge a language model by, beside perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.base.errors import CompressError
from export.lm_export import MODEL_FILE, PARITY_BATCH, clean_texts, load_lm_tokenizer, load_ort_causal_lm, \
    padded_batches, quiet_export


@dataclass
class TokenScores:
    """A model's perplexity on some texts and its argmax next token at every scored position."""

    perplexity: float
    choices: np.ndarray  # int64, one per scored position, texts in order

    def agreement(self, reference: TokenScores) -> float:
        """Share of positions where this model's next token is ``reference``'s (same texts, same tokenizer)."""
        if self.choices.shape != reference.choices.shape:
            raise CompressError(f"cannot compare next-token choices over {self.choices.size} and "
                                f"{reference.choices.size} positions: the models tokenize the texts differently")
        return float((self.choices == reference.choices).mean())


def onnx_token_scores(onnx_dir: Path, texts: list[str], *, max_length: int = 256,
                      file_name: str = MODEL_FILE) -> TokenScores:
    """Run the ONNX model in ``onnx_dir`` over ``texts``: perplexity of every token after each text's
    first, and the argmax at each of those positions.

    Texts are tokenized by the folder's own tokenizer, truncated to ``max_length`` tokens and run
    through ``ORTModelForCausalLM`` in right-padded batches.
    """
    import torch

    onnx_dir = Path(onnx_dir)
    texts = clean_texts(texts, "perplexity texts")
    model = load_ort_causal_lm(onnx_dir, file_name)
    tokenizer = load_lm_tokenizer(onnx_dir)
    total_nll, total_tokens, choices = 0.0, 0, []
    with torch.inference_mode(), quiet_export():
        for batch in padded_batches(tokenizer, texts, max_length, PARITY_BATCH):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            total_nll += float(nll[mask].double().sum())
            total_tokens += int(mask.sum())
            choices.append(logits[:, :-1].argmax(-1)[mask].numpy())
    if total_tokens == 0:
        raise CompressError("perplexity texts: every text is a single token; nothing to score")
    return TokenScores(math.exp(total_nll / total_tokens), np.concatenate(choices).astype(np.int64))


def onnx_perplexity(onnx_dir: Path, texts: list[str], *, max_length: int = 256, file_name: str = MODEL_FILE) -> float:
    """Perplexity of the ONNX model in ``onnx_dir`` on ``texts`` (see :func:`onnx_token_scores`)."""
    return onnx_token_scores(onnx_dir, texts, max_length=max_length, file_name=file_name).perplexity
