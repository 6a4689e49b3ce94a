"""An ONNX file on disk: its size with external weights, and the facts read from its protobuf."""

from __future__ import annotations

from pathlib import Path


def onnx_size_bytes(path: Path) -> int:
    """Size of an ONNX file with its external data files, if any."""
    path = Path(path)
    total = path.stat().st_size
    total += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}_data*") if p.is_file())
    total += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data") if p.is_file())
    return total
