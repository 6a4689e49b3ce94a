"""Which of the teacher's hidden units, heads and FFN neurons a narrower student starts from.

A student narrower than its teacher keeps, in every layer, the teacher's most important units
instead of its leading ones, as width pruning does. Importance is measured on real text when a
calibration batch is given (the mean magnitude of each hidden unit across the residual stream, of
each FFN neuron's activation, of each head's output), else read from the weights (the weight mass
that reads and writes each unit, every tensor counting equally). Kept units stay in the teacher's
order, and the projection back to the teacher's width starts as the identity onto them.

Hidden units are the exception: on all-MiniLM-L6-v2, keeping the hidden units of largest activation
(or weight mass) started a narrower student further from the teacher than keeping the leading ones
(held-out cosine before training 0.136 by activation, 0.103 by weights, 0.194 leading for
layers=3,hidden=256;
benchmarks/width_init.py), so a narrower student keeps the leading hidden units and chooses only
its heads and FFN neurons.

Weights of BERT-style encoders (and MPNet's) are read by name: every tensor whose axes this module does not know
is copied from its leading slice, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_LAYER = re.compile(r"\.(?:layer|layers)\.(\d+)\.")
# Axis roles by parameter name: "h" hidden units, "a" attention (head) units, "f" FFN neurons, "-" any.
_ROLES = (
    (re.compile(r"attention\.self\.(query|key|value)\.weight$"), "ah"),
    (re.compile(r"attention\.self\.(query|key|value)\.bias$"), "a"),
    (re.compile(r"attention\.output\.dense\.weight$"), "ha"),
    # MPNet: the projections live in attention.attn as q, k, v and o.
    (re.compile(r"attention\.attn\.(q|k|v)\.weight$"), "ah"),
    (re.compile(r"attention\.attn\.(q|k|v)\.bias$"), "a"),
    (re.compile(r"attention\.attn\.o\.weight$"), "ha"),
    (re.compile(r"attention\.attn\.o\.bias$"), "h"),
    (re.compile(r"intermediate\.dense\.weight$"), "fh"),
    (re.compile(r"intermediate\.dense\.bias$"), "f"),
    (re.compile(r"(?<!attention\.)output\.dense\.weight$"), "hf"),
    (re.compile(r"embeddings\.\w+_embeddings\.weight$"), "-h"),
    (re.compile(r"pooler\.dense\.weight$"), "hh"),
    (re.compile(r"classifier\.weight$"), "-h"),
    (re.compile(r"(LayerNorm\.(weight|bias)|output\.dense\.bias|pooler\.dense\.bias)$"), "h"),
)


@dataclass(frozen=True)
class WidthChoice:
    """The teacher units a narrower student keeps (indices in the teacher's order)."""

    hidden: list[int]
    heads: dict[int, list[int]]  # teacher layer -> kept heads
    neurons: dict[int, list[int]]  # teacher layer -> kept FFN neurons
    head_dim: int


def roles(name: str) -> str | None:
    """The axis roles of parameter ``name`` ("ah": attention units x hidden units, ...), or None."""
    for pattern, axes in _ROLES:
        if pattern.search(name):
            return axes
    return None


def choose_width(teacher: Any, hidden: int, heads: int, ffn: int, batch: dict[str, Any] | None = None
                 ) -> WidthChoice:
    """The ``hidden`` hidden units, ``heads`` heads and ``ffn`` neurons per layer the student keeps.

    ``batch`` (tokenized real text) measures importance from activations; without it, from weights.
    """
    if batch is not None:
        return _by_activations(teacher, hidden, heads, ffn, batch)

    config = teacher.config
    head_dim = int(config.hidden_size) // int(config.num_attention_heads)
    state = {name: tensor.detach().float() for name, tensor in teacher.state_dict().items()}
    head_score: dict[int, torch.Tensor] = {}
    neuron_score: dict[int, torch.Tensor] = {}
    for name, tensor in state.items():
        axes = roles(name)
        if axes is None or len(axes) != tensor.dim():
            continue
        mass = tensor.pow(2)
        mass = mass / mass.sum().clamp(min=1e-12)
        match = _LAYER.search(name)
        layer = int(match.group(1)) if match else -1
        for axis, role in enumerate(axes):
            per_unit = mass.sum(dim=[d for d in range(mass.dim()) if d != axis]) if mass.dim() > 1 else mass
            if role == "a":
                per_head = per_unit.reshape(-1, head_dim).sum(dim=1)
                head_score[layer] = head_score.get(layer, 0) + per_head
            elif role == "f":
                neuron_score[layer] = neuron_score.get(layer, 0) + per_unit
    return WidthChoice(
        hidden=_leading(config, hidden),
        heads={layer: _top(score, heads) for layer, score in head_score.items()},
        neurons={layer: _top(score, ffn) for layer, score in neuron_score.items()},
        head_dim=head_dim,
    )


def _by_activations(teacher: Any, hidden: int, heads: int, ffn: int, batch: dict[str, Any]) -> WidthChoice:
    import torch

    config = teacher.config
    head_dim = int(config.hidden_size) // int(config.num_attention_heads)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    tokens = mask.sum().clamp(min=1.0)
    head_score: dict[int, torch.Tensor] = {}
    neuron_score: dict[int, torch.Tensor] = {}
    hooks = []
    for index, layer in enumerate(teacher.encoder.layer):
        def on_heads(_module: Any, _inputs: Any, output: Any, index: int = index) -> None:
            context = output[0] if isinstance(output, tuple) else output  # (batch, seq, heads * head_dim)
            per_head = context.reshape(*context.shape[:2], -1, head_dim).norm(dim=-1) * mask
            head_score[index] = per_head.sum(dim=(0, 1)) / tokens

        def on_neurons(_module: Any, _inputs: Any, output: Any, index: int = index) -> None:
            neuron_score[index] = (output.abs() * mask).sum(dim=(0, 1)) / tokens

        if hasattr(layer.attention, "self"):  # BERT: the self-attention's output is the heads' context
            hooks.append(layer.attention.self.register_forward_hook(on_heads))
        else:  # MPNet: its attention ends in the output projection; the context is that projection's input
            hooks.append(layer.attention.attn.o.register_forward_pre_hook(
                lambda module, inputs, index=index: on_heads(module, inputs, inputs[0], index)))
        hooks.append(layer.intermediate.register_forward_hook(on_neurons))
    try:
        with torch.no_grad():
            out = teacher(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                          output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    del out
    return WidthChoice(
        hidden=_leading(config, hidden),
        heads={layer: _top(score, heads) for layer, score in head_score.items()},
        neurons={layer: _top(score, ffn) for layer, score in neuron_score.items()},
        head_dim=head_dim,
    )


def _leading(config: Any, hidden: int) -> list[int]:
    return list(range(min(hidden, int(config.hidden_size))))


def _top(score: torch.Tensor, keep: int) -> list[int]:
    keep = min(keep, int(score.numel()))
    return sorted(int(i) for i in score.topk(keep).indices)


def gather(origin: torch.Tensor, name: str, teacher_layer: int | None, choice: WidthChoice,
           shape: tuple[int, ...]) -> torch.Tensor | None:
    """``origin`` (a teacher tensor) cut down to the student's ``shape`` along the units ``choice`` keeps.

    None when the tensor's axes are not known by name: the caller copies its leading slice.
    """
    import torch

    axes = roles(name)
    if axes is None or len(axes) != origin.dim():
        return None
    out = origin
    for axis, role in enumerate(axes):
        if role == "h":
            index = choice.hidden
        elif role == "a" and teacher_layer in choice.heads:
            index = [h * choice.head_dim + d for h in choice.heads[teacher_layer] for d in range(choice.head_dim)]
        elif role == "f" and teacher_layer in choice.neurons:
            index = choice.neurons[teacher_layer]
        else:
            index = list(range(shape[axis]))
        if len(index) != shape[axis]:
            return None  # a shape this choice does not produce (heads of another size): leading slice
        out = out.index_select(axis, torch.tensor(index, dtype=torch.long))
    return out
