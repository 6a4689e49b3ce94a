"""Task families: what differs between the kinds of model the one chain compresses.

``family_for(teacher)`` picks the family from the teacher a user names: a registered language
model or a folder whose config names a causal-LM architecture is a :class:`CausalLMFamily`;
anything else (the default teacher included) is an :class:`EncoderFamily`.
"""

from __future__ import annotations

from pathlib import Path

from compress.families.base import Exported, TaskFamily
from compress.families.causal_lm import CausalLMFamily
from compress.families.encoder import EncoderFamily

__all__ = ["CausalLMFamily", "EncoderFamily", "Exported", "TaskFamily", "family_for"]


def family_for(teacher: str | None) -> TaskFamily:
    """The family of ``teacher`` (a folder, a registered name, or None for the default teacher)."""
    from compress.lm.teacher import REGISTERED_TEACHERS
    from export.base.tasks import is_causal_lm

    if teacher is None:
        return EncoderFamily()
    path = Path(teacher)
    if path.is_dir():
        return CausalLMFamily() if is_causal_lm(path) else EncoderFamily()
    return CausalLMFamily() if teacher.lower() in REGISTERED_TEACHERS else EncoderFamily()
