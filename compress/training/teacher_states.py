"""The teacher's hidden states for layer transfer, kept per training token so the teacher runs once per text.

Layer transfer (a student layer's states matched to the teacher layer it was copied from) needs
the teacher's internals, which used to mean a teacher forward pass every step of every epoch.
Only the mapped layers are kept (the embedding output and one teacher layer per student layer),
in fp16, in one file on disk beside the checkpoint (``teacher_states.f16``): the operating system
keeps it in memory while memory lasts and spills it otherwise, and a checkpoint only records which
texts are filled (after flushing them), so a resumed run trusts no row it did not finish writing.
Values are always read back through fp16, whether just computed or cached, so a run gives the
same result whichever epoch it resumed in.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

STATES_FILE = "teacher_states.f16"
# Disk kept free beyond the file itself, so that the checkpoint and the student can still be written.
DISK_MARGIN_BYTES = 1 << 30


class TeacherStatesCache:
    """fp16 teacher states ``(tokens, states, width)`` for a training set of known lengths, filled as texts are seen."""

    def __init__(self, lengths: np.ndarray, states: int, width: int, path: Path, max_bytes: int) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self.shape = (int(self.starts[-1]), states, width)
        self.path = Path(path)
        self.filled = np.zeros(len(self.lengths), dtype=bool)
        self._array: np.memmap | None = None
        self.disabled_reason = self._refusal(max_bytes)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 2

    def _refusal(self, max_bytes: int) -> str | None:
        if self.nbytes > max_bytes:
            return (f"the teacher's hidden states would need {self.nbytes / 2**30:.1f} GiB, over the "
                    f"{max_bytes / 2**30:.1f} GiB cache limit")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.path.parent).free + (self.path.stat().st_size if self.path.is_file() else 0)
        if free < self.nbytes + DISK_MARGIN_BYTES:
            return (f"the teacher's hidden states need {self.nbytes / 2**30:.1f} GiB and {self.path.parent} has "
                    f"{free / 2**30:.1f} GiB free")
        return None

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def _open(self, fresh: bool) -> np.memmap:
        if self._array is None:
            mode = "w+" if fresh or not self._file_matches() else "r+"
            self._array = np.memmap(self.path, dtype=np.float16, mode=mode, shape=self.shape)
        return self._array

    def _file_matches(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size == self.nbytes

    def lookup(self, indices: np.ndarray, length: int) -> tuple[Any, ...] | None:
        """The batch's states, each ``(rows, length, width)`` in fp32 and zero-padded, or None when a row is missing."""
        import torch

        if not self.enabled or self._array is None or not bool(self.filled[indices].all()):
            return None
        out = np.zeros((len(indices), length, *self.shape[1:]), dtype=np.float16)
        for row, index in enumerate(indices):
            start, end = self.starts[index], self.starts[index + 1]
            out[row, : end - start] = self._array[start:end]
        return tuple(torch.from_numpy(out).float().unbind(2))

    def store(self, indices: np.ndarray, states: tuple[Any, ...]) -> tuple[Any, ...]:
        """Keep a batch's states (each ``(rows, length, width)``); returns them as they will be read back."""
        import torch

        half = torch.stack([s.detach() for s in states], dim=2).to(torch.float16)
        if self.enabled:
            array = self._open(fresh=not self.filled.any())
            values = half.cpu().numpy()
            for row, index in enumerate(indices):
                start, end = self.starts[index], self.starts[index + 1]
                array[start:end] = values[row, : end - start]
            self.filled[indices] = True
        return tuple(half.float().unbind(2))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: which texts are filled, after their rows reached the file."""
        import torch

        if self._array is not None:
            self._array.flush()
        return {"filled": torch.from_numpy(self.filled.copy()), "shape": torch.tensor(self.shape)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Trust the checkpoint's filled texts only when the file beside it still has this cache's size and shape."""
        shape = tuple(int(v) for v in state.get("shape", []))
        if not self.enabled or shape != self.shape or not self._file_matches():
            self.filled[:] = False
            return
        self.filled = state["filled"].numpy().astype(bool).copy()
        self._open(fresh=False)

    def remove(self) -> None:
        """Delete the file (the run is over: the states are recomputed should it ever be resumed)."""
        self._array = None
        self.filled[:] = False
        self.path.unlink(missing_ok=True)
