"""One clock for the whole pipeline.

Call ``now()`` everywhere instead of ``datetime.now()``.  Tests freeze it and
move it forward with ``frozen_clock``; a subprocess can be started on a fixed
time with ``NEWSLETTER_FAKE_NOW`` (ISO 8601 with an offset), which then ticks
forward in real time from that instant.  Naive datetimes are rejected at the
edges with ``require_aware``.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

UTC = timezone.utc

_frozen: datetime | None = None
_offset: timedelta | None = None  # set from NEWSLETTER_FAKE_NOW


def require_aware(value: datetime, what: str = "datetime") -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value


def _fake_offset() -> timedelta | None:
    global _offset
    raw = os.environ.get("NEWSLETTER_FAKE_NOW")
    if not raw:
        return None
    if _offset is None:
        start = require_aware(datetime.fromisoformat(raw), "NEWSLETTER_FAKE_NOW")
        _offset = start - datetime.now(UTC)
    return _offset


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    if _frozen is not None:
        return _frozen
    offset = _fake_offset()
    real = datetime.now(UTC)
    return real + offset if offset is not None else real


class FrozenClock:
    """Handle returned by ``frozen_clock``: read, set or move the frozen time."""

    def now(self) -> datetime:
        assert _frozen is not None
        return _frozen

    def set(self, when: datetime) -> None:
        global _frozen
        _frozen = require_aware(when).astimezone(UTC)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        global _frozen
        assert _frozen is not None
        _frozen = _frozen + (delta or timedelta(**kwargs))
        return _frozen

    def fast_forward(self, days: float) -> datetime:
        return self.advance(days=days)


@contextmanager
def frozen_clock(when: datetime) -> Iterator[FrozenClock]:
    global _frozen
    previous = _frozen
    clock = FrozenClock()
    clock.set(when)
    try:
        yield clock
    finally:
        _frozen = previous


def monotonic() -> float:
    return time.monotonic()
