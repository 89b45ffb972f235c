"""Logging an unexpected error without patient data.

An exception's message can carry the data that caused it (a database error quotes its
parameters; a parser quotes the value). Logs get the exception's type and where it was raised,
never its message or the values around it.
"""

from __future__ import annotations

import logging
import traceback


def log_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "unknown"
    log.error("%s: %s at %s", what, type(exc).__name__, where)
