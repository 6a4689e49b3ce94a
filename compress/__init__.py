"""compress: distill, prune, quantize, export and gate Hugging Face models for edge targets."""

from export.base.version import __version__

__all__ = ["__version__"]
