"""The one exception type the CLI turns into a clean message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompressError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback
    unless ``--debug`` is given. Library code raises it with a message that names the
    offending file, key or value.
    """

    exit_code = 2


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise CompressError with the message of the first check that fails (each ``(ok, message)``)."""
    for ok, message in checks:
        if not ok:
            raise CompressError(message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'distill'?)"`` for the closest choice to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
