"""A causal-LM student made of a subset of the teacher's decoder layers.

The student is the teacher's own class with fewer layers: token embeddings, the chosen decoder
layers (in order), the final norm and the LM head are copied from the teacher, so it starts as a
shallow version of the teacher rather than from noise, and the tokenizer and chat template carry
over unchanged. Layers are spread evenly through the depth, keeping the first (closest to the
embeddings) and the last (closest to the head), or (``keep=N``) chosen by how much each block
changes its input on the training text (``block_importance``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.lm.config import resolve_lm_student
from export.base.errors import CompressError
from export.base.files import atomic_directory

# Where the decoder layers live, by architecture layout: Llama / Qwen2 / Mistral / SmolLM2
# (model.layers), GPT-2 (transformer.h), GPT-NeoX (gpt_neox.layers), OPT (model.decoder.layers).
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
# Per-layer lists in some configs (e.g. Qwen2's full / sliding attention per layer) follow the layers.
_PER_LAYER_CONFIG_KEYS = ("layer_types",)


@dataclass
class LMStudentPlan:
    """Which of the teacher's decoder layers the student keeps."""

    family: str  # the config's model_type, e.g. "llama", "qwen2", "gpt2"
    teacher_layers: int
    layers: list[int] = field(default_factory=list)  # teacher layer indices, increasing

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "teacher_layers": self.teacher_layers, "layers": list(self.layers)}


def _num_layers(config: Any) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        n = getattr(config, "n_layer", None)
    if not isinstance(n, int) or n < 1:
        raise CompressError(f"cannot tell how many layers the {getattr(config, 'model_type', '?')} teacher has")
    return n


def spread_layers(total: int, count: int) -> list[int]:
    """``count`` layer indices out of ``total``, evenly spaced, always keeping the first and the last."""
    if not 1 <= count <= total:
        raise CompressError(f"a student needs between 1 and {total} layers; got {count}")
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def most_important(importance: Sequence[float], count: int) -> list[int]:
    """The ``count`` blocks of largest importance, in model order (ties go to the earlier block)."""
    if not 1 <= count <= len(importance):
        raise CompressError(f"a student needs between 1 and {len(importance)} layers; got {count}")
    ranked = sorted(range(len(importance)), key=lambda i: (-importance[i], i))
    return sorted(ranked[:count])


def plan_lm_student(teacher_config: Any, spec: str,
                    importance: Callable[[], Sequence[float]] | None = None) -> LMStudentPlan:
    """Plan a student from ``spec``: ``"layers=N"`` (spread evenly), ``"layers=0,4,8"`` (exact),
    ``"keep=N"`` (the N blocks of largest ``importance()``, measured only when asked), or ``"auto"``."""
    total = _num_layers(teacher_config)
    family = str(getattr(teacher_config, "model_type", "unknown"))
    text = str(spec).strip().lower().replace(" ", "")
    if text == "auto":
        text = resolve_lm_student(text, total)
    keep = re.fullmatch(r"keep=(\d+)", text)
    if keep:
        count = int(keep.group(1))
        if not 1 <= count <= total:
            raise CompressError(f"a student needs between 1 and {total} layers; got {count}")
        if importance is None:
            raise CompressError(f"student spec {spec!r} needs the teacher's block importance, which was not measured")
        layers = most_important(list(importance()), count)
    else:
        match = re.fullmatch(r"layers=(\d+(?:,\d+)*)", text)
        if not match:
            raise CompressError(f"student spec {spec!r} is not understood; use auto, layers=N, keep=N or layers=0,4,8")
        numbers = [int(n) for n in match.group(1).split(",")]
        if len(numbers) == 1:
            layers = spread_layers(total, numbers[0])
        else:
            if any(n >= total for n in numbers):
                raise CompressError(f"student spec {spec!r} names a layer past the teacher's last ({total - 1})")
            if numbers != sorted(set(numbers)):
                raise CompressError(f"student spec {spec!r}: list each layer once, in increasing order")
            layers = numbers
    return LMStudentPlan(family, total, layers)


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder blocks (a ``ModuleList``), wherever its architecture keeps it."""
    total = _num_layers(model.config)
    module = model
    for part in _layer_path(model, total).split("."):
        module = getattr(module, part)
    return module


def _layer_path(model: Any, total: int) -> str:
    for path in LAYER_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None and hasattr(module, "__len__") and len(module) == total:
            return path
    raise CompressError(f"{type(model).__name__} has no decoder-layer list this tool knows "
                        f"({', '.join(LAYER_PATHS)}); cannot build a student from it")


def build_lm_student(teacher_model: Any, plan: LMStudentPlan) -> Any:
    """A new model of the teacher's class with ``plan.layers``, initialised from the teacher's weights.

    Layers are built fresh (so each knows its own index for the KV cache) and the teacher's
    weights copied in; embeddings tied in the teacher stay tied. Returned in eval mode, on the
    teacher's device and dtype.
    """
    if getattr(teacher_model, "is_quantized", False) or getattr(teacher_model, "hf_quantizer", None) is not None:
        raise CompressError("cannot build a student from a quantized teacher; load it without --teacher-quant")
    total = _num_layers(teacher_model.config)
    if total != plan.teacher_layers:
        raise CompressError(f"the student plan is for a {plan.teacher_layers}-layer teacher; this one has {total}")
    if not plan.layers or any(not 0 <= i < total for i in plan.layers):
        raise CompressError(f"student layers {plan.layers} do not fit a {total}-layer teacher")
    prefix = _layer_path(teacher_model, total)

    config = copy.deepcopy(teacher_model.config)
    config.num_hidden_layers = len(plan.layers)  # GPT-2's config maps this onto n_layer
    for key in _PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, list) and len(values) == total:
            setattr(config, key, [values[i] for i in plan.layers])

    parameter = next(teacher_model.parameters())
    student = type(teacher_model)(config).to(device=parameter.device, dtype=parameter.dtype)
    new_index = {old: new for new, old in enumerate(plan.layers)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    state: dict[str, Any] = {}
    for key, value in teacher_model.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(match.group(1))]}.{match.group(2)}"] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    # A tied LM head may be absent from one side's state dict; anything else missing is a bug.
    tied = set(getattr(student, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CompressError(f"student weights do not line up with the teacher's (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    if getattr(teacher_model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher_model.generation_config)
    return student.eval()


def save_lm_student(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Save the student (safetensors), its config and generation config, and the tokenizer with its
    chat template, into ``out_dir`` atomically (built aside, renamed into place)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if getattr(model, "generation_config", None) is not None and not (tmp / "generation_config.json").is_file():
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
