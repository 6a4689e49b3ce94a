"""Keep third-party chatter (loggers, warnings, stray prints) off the user's terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import os
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


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Keep onnxruntime's provider-fallback chatter off stdout and the terminal.

    onnxruntime-gpu lists TensorRT and CUDA as available on any machine; creating a session with
    them where their libraries are missing logs an error and *prints* "EP Error ... Falling back"
    to stdout, which would corrupt ``--json`` output. Callers read back the providers the session
    really uses and report those instead. ``COMPRESS_DEBUG=1`` lets it all through.
    """
    if os.environ.get("COMPRESS_DEBUG"):
        yield
        return
    import onnxruntime as ort

    captured = io.StringIO()
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        ort.set_default_logger_severity(2)
        if captured.getvalue().strip():
            logging.getLogger("compress.onnxruntime").debug("onnxruntime said: %s", captured.getvalue().strip())
