"""What "the model's output" is for each task, for teacher and student alike.

Sentence encoders: token states pooled as the sentence-transformers folder says, then the
optional projection (a sentence-transformers ``Dense`` module), then L2 normalisation when the
pooling asks for it, in that order, as sentence-transformers runs them. Classifiers: logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compress.tasks import Pooling, Task, pool

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TaskOutputs:
    """One forward pass: the task output and, when asked for, the internals the extra losses use."""

    final: Any  # (batch, dim) embeddings, (batch, classes) or (batch, seq, classes) logits
    hidden_states: tuple[Any, ...] | None = None  # embeddings output, then one per layer
    attentions: tuple[Any, ...] | None = None  # one (batch, heads, seq, seq) per layer


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {name: batch[name] for name in MODEL_INPUTS if name in batch}


def embed(model: Any, batch: dict[str, Any], pooling: Pooling, projection: Any = None) -> Any:
    """Sentence embeddings of a batch (pool, project, normalise)."""
    return task_outputs(model, batch, "feature-extraction", pooling, projection).final


def task_outputs(model: Any, batch: dict[str, Any], task: Task, pooling: Pooling | None = None,
                 projection: Any = None, *, hidden_states: bool = False, attentions: bool = False) -> TaskOutputs:
    """Run ``model`` on ``batch`` and read its output for ``task``."""
    import torch

    out = model(**model_inputs(batch), output_hidden_states=hidden_states, output_attentions=attentions)
    if task == "feature-extraction":
        assert pooling is not None
        tokens = out.last_hidden_state.float()
        final = pool(tokens, batch["attention_mask"], Pooling(mode=pooling.mode, normalize=False))
        if projection is not None:
            final = projection(final)
        if pooling.normalize:
            final = torch.nn.functional.normalize(final, p=2, dim=-1)
    else:
        final = out.logits.float()
    return TaskOutputs(
        final=final,
        hidden_states=tuple(out.hidden_states) if hidden_states else None,
        attentions=tuple(out.attentions) if attentions else None,
    )
