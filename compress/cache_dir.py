"""Where compress keeps what it builds once and reuses: converted and unpacked teachers."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$COMPRESS_CACHE``, else ``~/.cache/compress``."""
    return Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress")
