"""The teacher's outputs per training example, kept in fp16 after the first time it is seen.

Small outputs (sentence embeddings, logits) are computed once, so later epochs pay for the
student only; a checkpoint carries the cache, so a resumed run does not pay again either.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.training.teacher_states import TeacherStatesCache


class TeacherCache:
    """The teacher's final outputs per training example, in fp16, filled as examples are first seen.

    Rows are fixed-size: ``(dim,)`` embeddings, ``(classes,)`` logits, or ``(max_length, classes)``
    token logits. Values are always read back through fp16, whether just computed or cached, so a
    run gives the same result whichever epoch it resumed in.
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.values: Any = None  # torch tensor (size, *row_shape), fp16
        self.filled: Any = None  # torch bool (size,)
        self.disabled_reason: str | None = None
        # The teacher's hidden states for layer transfer, when a loss needs them (checkpointed with this cache).
        self.states: TeacherStatesCache | None = None

    def lookup(self, indices: Any, length: int | None = None) -> Any:
        """Cached outputs for a batch, or None when any of its examples is missing."""
        if self.values is None:
            return None
        if not bool(self.filled[indices].all()):
            return None
        rows = self.values[indices]
        return (rows[:, :length] if length is not None else rows).float()

    def store(self, indices: Any, outputs: Any, full_length: int | None = None) -> Any:
        """Keep a batch's outputs (padded to ``full_length`` along dim 1 for tokens); returns them as cached."""
        import torch

        half = outputs.detach().to(torch.float16)
        if self.disabled_reason is not None:
            return half.float()
        if self.values is None:
            row_shape = tuple(half.shape[1:])
            if full_length is not None:
                row_shape = (full_length, *row_shape[1:])
            needed = self.size * math.prod(row_shape) * 2
            if needed > self.max_bytes:
                self.disabled_reason = f"the cache would need {needed / 2**30:.1f} GiB"
                return half.float()
            self.values = torch.zeros((self.size, *row_shape), dtype=torch.float16, device=half.device)
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=half.device)
        if full_length is not None:
            self.values[indices, : half.shape[1]] = half
        else:
            self.values[indices] = half
        self.filled[indices] = True
        return half.float()

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.values is not None:
            out.update(values=self.values.cpu(), filled=self.filled.cpu())
        if self.states is not None:
            out["states"] = self.states.state()
        return out

    def load_state(self, state: dict[str, Any], device: str) -> None:
        if "values" in state:
            self.values = state["values"].to(device)
            self.filled = state["filled"].to(device)
        if self.states is not None and "states" in state:
            self.states.load_state(state["states"])
