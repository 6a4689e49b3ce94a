"""Which decoder blocks matter: how much each one changes the hidden state passing through it.

A block whose output is nearly its input (cosine close to 1) adds little, and a student that drops
it loses least (block influence, as in ShortGPT). Measured on training text through forward hooks
on the blocks themselves, so a final norm that some models fold into their last hidden state does
not make the last block look important.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from export.base.errors import CompressError

if TYPE_CHECKING:
    import torch

    from compress.lm.data import EncodedLM

# Enough text to rank 30 blocks stably, little enough to cost seconds on a CPU.
IMPORTANCE_EXAMPLES = 64
IMPORTANCE_BATCH = 8


def block_importance(model: torch.nn.Module, encoded: Sequence[EncodedLM], *, pad_id: int,
                     device: str = "cpu") -> list[float]:
    """Per decoder block, the mean of 1 - cosine(input, output) over the non-padding tokens of ``encoded``."""
    import torch

    from compress.lm.data import collate_lm
    from compress.lm.student import decoder_layers

    if not encoded:
        raise CompressError("block importance needs some text; got none")
    blocks = decoder_layers(model)
    change: dict[int, torch.Tensor] = {}

    def recorder(index: int):  # noqa: ANN202 - a hook factory
        def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            change[index] = 1 - torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
        return record

    handles = [block.register_forward_hook(recorder(i), with_kwargs=True) for i, block in enumerate(blocks)]
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), IMPORTANCE_BATCH):
                batch = collate_lm(encoded[start:start + IMPORTANCE_BATCH], pad_id)
                mask = batch["attention_mask"].to(device)
                change.clear()
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
                for index, per_token in change.items():
                    totals[index] += float((per_token * mask).sum())
                tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return (totals / max(tokens, 1)).tolist()

