"""Training checkpoints: everything a killed run needs to continue exactly where it was.

One folder, written atomically (a kill mid-save leaves the previous checkpoint intact):
``tensors.pt`` (student and projection weights, optimizer state, RNG states, teacher-output
cache; loaded with ``torch.load(weights_only=True)``) and ``state.json`` (step, epoch, position
in the epoch, time spent, the loss history, and the fingerprint of the settings it belongs to).
The epoch's batch order is rebuilt from the seed, so it is not stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from export.base.errors import CompressError
from export.base.files import atomic_directory, atomic_write_json

if TYPE_CHECKING:
    from compress.training.teacher_cache import TeacherCache

TENSORS = "tensors.pt"
STATE = "state.json"
CHECKPOINT_SCHEMA = 1


class Student(Protocol):
    """What a checkpoint keeps of a student: the model and, for a narrower one, its width projection."""

    model: Any
    projection: Any


@dataclass
class TrainingState:
    """Where the loop is: counters, time spent and the history so far."""

    fingerprint: str
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of ``epoch`` already done
    elapsed_s: float = 0.0  # training time spent, over all sessions of the run
    samples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = CHECKPOINT_SCHEMA


def save_checkpoint(folder: Path, state: TrainingState, student: Student, optimizer: Any, cache: TeacherCache) -> Path:
    """Write the checkpoint folder atomically, replacing the previous one."""
    import torch

    tensors: dict[str, Any] = {
        "model": student.model.state_dict(),
        "projection": student.projection.state_dict() if student.projection is not None else {},
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "cache": cache.state(),
    }
    if torch.cuda.is_available():
        tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
    with atomic_directory(folder) as tmp:
        torch.save(tensors, tmp / TENSORS)
        atomic_write_json(tmp / STATE, asdict(state))
    return folder


def read_state(folder: Path) -> TrainingState | None:
    """The checkpoint's counters, or None when there is no complete checkpoint."""
    import json

    path = Path(folder) / STATE
    if not path.is_file() or not (Path(folder) / TENSORS).is_file():
        return None
    try:
        return TrainingState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def load_checkpoint(folder: Path, fingerprint: str, student: Student, optimizer: Any, cache: TeacherCache,
                    device: str) -> TrainingState:
    """Restore a checkpoint into the live objects; refuse one made with different settings."""
    import torch

    state = read_state(folder)
    if state is None:
        raise CompressError(f"no checkpoint to resume from in {folder}")
    if state.fingerprint != fingerprint:
        raise CompressError(f"the checkpoint in {folder} was made with different settings or data; "
                            "run again without --resume to start over")
    tensors = torch.load(Path(folder) / TENSORS, map_location="cpu", weights_only=True)
    student.model.load_state_dict(tensors["model"])
    if student.projection is not None:
        student.projection.load_state_dict(tensors["projection"])
    optimizer.load_state_dict(tensors["optimizer"])
    torch.set_rng_state(tensors["rng_cpu"])
    if "rng_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["rng_cuda"])
    cache.load_state(tensors["cache"], device)
    return state
