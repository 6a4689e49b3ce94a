"""The registry of task families: which family compresses the teacher a user names.

A family lives in its own package (``compress.encoder``, ``compress.lm``) and registers itself
with :func:`register` when its module is imported. :func:`family_for` asks every registered
family, most specific first, whether it claims the teacher; the encoder family claims any local
teacher, so it is the one left when no other does. A new family is a package and one
``register`` call: nothing here changes.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from compress.stages.family import TaskFamily, TeacherRequest
from export.base.errors import CompressError

__all__ = ["TaskFamily", "TeacherRequest", "family_for", "register", "registered"]

# The families shipped with the project, imported (and so registered) on first use.
BUILTIN_FAMILY_MODULES = ("compress.encoder.family", "compress.lm.family", "compress.lm.endpoint_family")

F = TypeVar("F", bound=type[TaskFamily])
_REGISTRY: dict[str, type[TaskFamily]] = {}


def register(family: F) -> F:
    """Make ``family`` one that :func:`family_for` can choose (a class decorator; registering twice is a no-op)."""
    _REGISTRY[family.name] = family
    return family


def registered() -> list[type[TaskFamily]]:
    """Every registered family, most specific claim first."""
    for module in BUILTIN_FAMILY_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY.values(), key=lambda family: -family.claim_priority)


def family_for(teacher: str | None, *, teacher_url: str | None = None) -> TaskFamily:
    """The family of ``teacher`` (a folder, a registered name, or None for the default teacher) or of an endpoint."""
    if teacher_url and teacher is not None:
        raise CompressError("--teacher and --teacher-url both name a teacher; give one (the model to start "
                            "the student from is --student-from)")
    request = TeacherRequest(teacher=teacher, teacher_url=teacher_url or None)
    for family in registered():
        if family.claims(request):
            return family()
    raise CompressError(f"no task family compresses the teacher {teacher or teacher_url!r}")
