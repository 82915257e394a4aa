"""Tokens never reach a log line.

A confirmation, unsubscribe, preferences or data link carries a bearer token in
its path, and uvicorn's access log (and any of our messages that quotes a path)
would otherwise write it down for anyone who reads the logs.  ``install``
replaces the logging record factory, so every record made in this process, by
any logger, has each ``/<kind>/<token>`` path segment replaced with
``/<kind>/[token]`` in its message and its string arguments (uvicorn's access
formatter reads the path from ``record.args``, so the arguments are redacted in
place, keeping their number).
"""
from __future__ import annotations

import logging
import re

PLACEHOLDER = "[token]"
_TOKEN_PATH = re.compile(r"(/(?:confirm|unsubscribe|preferences|data)/)[A-Za-z0-9_=%-]{8,}")


def redact(text: str) -> str:
    return _TOKEN_PATH.sub(lambda m: m.group(1) + PLACEHOLDER, text)


def _clean(value):
    return redact(value) if isinstance(value, str) else value


_installed = False


def install() -> None:
    """Wrap the record factory once per process."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
