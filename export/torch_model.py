"""A Hugging Face folder in PyTorch: loaded offline from safetensors, and what its output means.

One definition of "the model's output" for teacher and student alike, used by distillation,
pruning, bitsandbytes quantization and the ONNX export's parity check. Sentence encoders: token
states pooled as the sentence-transformers folder says, then the optional ``Dense`` projection,
then L2 normalisation when the pooling asks for it, in that order, as sentence-transformers runs
them. Classifiers: logits. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from export.base.errors import CompressError
from export.base.tasks import Pooling, Task

if TYPE_CHECKING:
    import torch

TeacherQuant = Literal["8bit", "4bit"]
TEACHER_QUANTS: tuple[str, ...] = ("8bit", "4bit")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DENSE_FOLDER = "2_Dense"


def _load_errors() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError  # a truncated or corrupt weights file
    except ImportError:
        return (OSError, ValueError)
    return (OSError, ValueError, SafetensorError)


# What loading a damaged or foreign model folder raises: bad input, never an internal error.
LOAD_ERRORS = _load_errors()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors run to pages)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def has_safetensors(folder: Path) -> bool:
    return any(Path(folder).glob("*.safetensors")) or (Path(folder) / "model.safetensors.index.json").is_file()


def model_class(task: Task) -> Any:
    """The transformers Auto class that loads a folder for ``task``."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    return {
        "feature-extraction": AutoModel,
        "text-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }[task]


def load_model(folder: Path, task: Task, *, device: str = "cpu", quant: TeacherQuant | None = None,
               trust_remote_code: bool = False, attn_implementation: str | None = None) -> Any:
    """Load a model folder for ``task``: offline, safetensors only, in eval mode, on ``device``."""
    import torch

    if not has_safetensors(folder):
        raise CompressError(f"{folder} has no .safetensors weights; only safetensors are loaded "
                            "(convert the checkpoint with save_pretrained(safe_serialization=True))")
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True,
                              "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs.update(bitsandbytes_kwargs(quant, device))
    try:
        model = model_class(task).from_pretrained(folder, **kwargs)
    except LOAD_ERRORS as exc:
        raise CompressError(f"cannot load {folder} as a {task} model: {first_line(exc)}") from None
    if quant is None:
        model = model.to(device=device, dtype=torch.float32)
    elif not str(device).startswith("cuda"):
        keep_bnb_cpu_kernels_to_their_shapes(model)
    return model.eval()


# bitsandbytes' AVX512-BF16 CPU path repacks a 4-bit weight at its first forward pass and assumes
# out_features is a multiple of 32 and in_features a multiple of the quantization block (64):
# other shapes raise "shape '[32, 0]' is invalid" (an AVX2-only CPU never takes that path).
_BNB_CPU_BLOCK_N = 32


def keep_bnb_cpu_kernels_to_their_shapes(model: Any) -> int:
    """Send 4-bit layers whose shape the AVX512-BF16 repacking cannot take down the generic CPU path.

    Returns the number of layers changed. A no-op where bitsandbytes or that path is absent.
    """
    changed = 0
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        state = getattr(module.weight, "quant_state", None)
        blocksize = int(getattr(state, "blocksize", 64) or 64)
        if module.out_features % _BNB_CPU_BLOCK_N or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def bitsandbytes_kwargs(quant: str, device: str, *, cuda_only: bool = False) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the weights through bitsandbytes (int8, or 4-bit NF4).

    ``cuda_only``: refuse a CPU device (a quantized language-model teacher is slower than fp32
    there and only pays off on a GPU, where it saves memory).
    """
    import torch

    if quant not in TEACHER_QUANTS:
        raise CompressError(f"unknown --teacher-quant {quant!r}; use one of {', '.join(TEACHER_QUANTS)}")
    on_cuda = str(device).startswith("cuda")
    if cuda_only and not (on_cuda and torch.cuda.is_available()):
        raise CompressError(f"a {quant} teacher needs a CUDA device (got {device!r}); drop --teacher-quant on a CPU")
    try:
        import accelerate  # noqa: F401  (transformers needs it for device_map)
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise CompressError(f"--teacher-quant needs bitsandbytes and accelerate ({exc})") from None
    # int8 matmuls want fp16 activations on CUDA; on CPU bitsandbytes computes in fp32.
    dtype = torch.float16 if on_cuda else torch.float32
    if quant == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch.float32)
    return {"quantization_config": config, "device_map": {"": device}, "dtype": dtype}


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """A folder's tokenizer, offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CompressError(f"cannot load the tokenizer of {folder}: {first_line(exc)}") from None


def read_dense(folder: Path) -> Any:
    """The sentence-transformers Dense projection saved in ``folder`` as a ``torch.nn.Linear``, or None."""
    import torch
    from safetensors.torch import load_file

    modules_path = Path(folder) / "modules.json"
    if not modules_path.is_file():
        return None
    dense = [m for m in json.loads(modules_path.read_text()) if m.get("type", "").endswith("Dense")]
    if not dense:
        return None
    module_dir = Path(folder) / dense[0].get("path", DENSE_FOLDER)
    config = json.loads((module_dir / "config.json").read_text())
    if not config.get("activation_function", "").endswith("Identity"):
        raise CompressError(f"{module_dir}: only a linear (Identity activation) Dense module is supported")
    if not (module_dir / "model.safetensors").is_file():
        raise CompressError(f"{module_dir}: no model.safetensors")
    weights = load_file(str(module_dir / "model.safetensors"))
    projection = torch.nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    projection.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
    return projection


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Sentence embeddings from token states (``(batch, seq, dim)``) under ``pooling``."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    if pooling.mode == "cls":
        pooled = hidden_states[:, 0]
    elif pooling.mode == "max":
        pooled = hidden_states.masked_fill(mask == 0, torch.finfo(hidden_states.dtype).min).max(dim=1).values
    else:
        pooled = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if pooling.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled


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
