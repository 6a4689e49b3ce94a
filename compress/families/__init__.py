"""Task families: what differs between the kinds of model the one chain compresses.

``family_for(teacher)`` picks the family from the teacher a user names: an endpoint URL is an
:class:`EndpointLMFamily`; a registered language model or a folder whose config names a causal-LM
architecture is a :class:`CausalLMFamily`; anything else (the default teacher included) is an
:class:`EncoderFamily`.
"""

from __future__ import annotations

from pathlib import Path

from compress.stages.family import TaskFamily
from compress.stages.outputs import Exported
from compress.families.causal_lm import CausalLMFamily
from compress.families.encoder import EncoderFamily
from compress.families.endpoint_lm import EndpointLMFamily

__all__ = ["CausalLMFamily", "EncoderFamily", "EndpointLMFamily", "Exported", "TaskFamily", "family_for"]


def family_for(teacher: str | None, *, teacher_url: str | None = None) -> TaskFamily:
    """The family of ``teacher`` (a folder, a registered name, or None for the default teacher) or of an endpoint."""
    from compress.lm.teacher import REGISTERED_TEACHERS
    from export.base.errors import CompressError
    from export.base.tasks import is_causal_lm

    if teacher_url:
        if teacher is not None:
            raise CompressError("--teacher and --teacher-url both name a teacher; give one (the model to start "
                                "the student from is --student-from)")
        return EndpointLMFamily()
    if teacher is None:
        return EncoderFamily()
    path = Path(teacher)
    if path.is_dir():
        return CausalLMFamily() if is_causal_lm(path) else EncoderFamily()
    return CausalLMFamily() if teacher.lower() in REGISTERED_TEACHERS else EncoderFamily()
