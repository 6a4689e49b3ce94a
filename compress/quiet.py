"""Keep third-party chatter (loggers, warnings, stray prints) off the user's terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_libraries(*logger_names: str, root: bool = False, stdout: bool = True) -> Iterator[None]:
    """Raise the named loggers (and the root logger when ``root``) to ERROR, silence warnings and,
    when ``stdout``, swallow what the libraries print; everything is restored on exit."""
    loggers = ([logging.getLogger()] if root else []) + [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), \
                (contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
