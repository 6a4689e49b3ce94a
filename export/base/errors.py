"""The one exception type the CLI turns into a clean message and exit code 2."""

from __future__ import annotations


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
