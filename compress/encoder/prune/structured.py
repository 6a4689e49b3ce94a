"""Structured surgery on BERT-style encoders: whole layers, attention heads, FFN neurons.

Every cut really shrinks the weight matrices (and the config), so the exported ONNX graph does
fewer FLOPs; nothing is masked to zero and left in place.

* Layers: the encoder's ``ModuleList`` keeps the chosen layers; ``num_hidden_layers`` and the
  layer keys of ``pruned_heads`` follow.
* Heads: transformers' ``prune_heads`` (query/key/value rows and the attention output columns),
  recorded in ``config.pruned_heads`` so ``from_pretrained`` rebuilds the same shapes. Layers may
  keep different numbers of heads; every layer keeps at least one.
* FFN neurons: rows of ``intermediate.dense`` and columns of ``output.dense``. A BERT config has a
  single ``intermediate_size``, so every layer keeps the same number of neurons (each layer
  chooses its own by importance).
"""

from __future__ import annotations

from typing import Any

from export.base.errors import CompressError

# Model types whose layers have BERT's module layout (attention.self, intermediate, output).
BERT_STYLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "xmod", "data2vec-text")


def encoder_layers(model: Any) -> Any:
    """The ``ModuleList`` of encoder layers; CompressError when the model is not BERT-style."""
    base = getattr(model, "base_model", model)
    model_type = str(getattr(model.config, "model_type", "?"))
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not len(layers):
        raise CompressError(f"pruning supports BERT-style encoders ({', '.join(BERT_STYLE)}); "
                            f"model_type {model_type!r} has no encoder.layer list")
    first = layers[0]
    needed = ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")
    for path in needed:
        target = first
        for part in path.split("."):
            target = getattr(target, part, None)
        if target is None:
            raise CompressError(f"pruning supports BERT-style encoders ({', '.join(BERT_STYLE)}); "
                                f"model_type {model_type!r} has no {path}")
    return layers


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def head_counts(model: Any) -> list[int]:
    return [int(layer.attention.self.num_attention_heads) for layer in encoder_layers(model)]


def ffn_size(model: Any) -> int:
    return int(encoder_layers(model)[0].intermediate.dense.out_features)


def keep_layers(model: Any, kept: list[int]) -> None:
    """Keep only the encoder layers ``kept`` (indices into the current list), in their order."""
    import torch

    layers = encoder_layers(model)
    if not kept or any(not 0 <= i < len(layers) for i in kept) or len(set(kept)) != len(kept):
        raise CompressError(f"invalid layers to keep {kept} of {len(layers)}")
    kept = sorted(kept)
    new_layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.base_model.encoder.layer = new_layers
    model.config.num_hidden_layers = len(kept)
    pruned = {int(k): v for k, v in (model.config.pruned_heads or {}).items()}
    model.config.pruned_heads = {new: sorted(pruned[old]) for new, old in enumerate(kept) if old in pruned}


def prune_heads(model: Any, heads: dict[int, list[int]]) -> None:
    """Remove ``heads`` (layer -> positions among the heads the layer has now)."""
    layers = encoder_layers(model)
    original: dict[int, list[int]] = {}
    for layer_index, positions in heads.items():
        if not positions:
            continue
        attention = layers[layer_index].attention
        total = attention.self.num_attention_heads + len(attention.pruned_heads)
        remaining = [h for h in range(total) if h not in attention.pruned_heads]
        if len(positions) >= len(remaining):
            raise CompressError(f"cannot prune every head of layer {layer_index}")
        # transformers counts heads by their original index, already pruned ones included.
        original[layer_index] = sorted(remaining[p] for p in positions)
    if original:
        model.prune_heads(original)


def prune_ffn(model: Any, keep: list[Any]) -> None:
    """Keep the FFN neurons ``keep[i]`` (index tensors, same length for every layer) of layer ``i``."""
    import torch

    layers = encoder_layers(model)
    sizes = {len(k) for k in keep}
    if len(keep) != len(layers) or len(sizes) != 1 or 0 in sizes:
        raise CompressError("every layer must keep the same, non-zero number of FFN neurons")
    for layer, index in zip(layers, keep):
        index = torch.as_tensor(sorted(int(i) for i in index), dtype=torch.long)
        layer.intermediate.dense = _slice_linear(layer.intermediate.dense, index, dim=0)
        layer.output.dense = _slice_linear(layer.output.dense, index, dim=1)
    model.config.intermediate_size = sizes.pop()


def _slice_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new Linear with only the output rows (``dim=0``) or input columns (``dim=1``) in ``index``."""
    import torch

    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, index).clone()
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype,
                          device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new
