"""The audit log: who changed what, when, and what it was before and after.

Every console and CLI action that changes something writes one row here, in the
same transaction as the change where it can (so a change is never without its
row, nor a row without its change); sign-ins, sign-in failures and subscriber
look-ups are recorded too.  Rows are only ever inserted: nothing in the code
updates or deletes them.
"""
from __future__ import annotations

import getpass
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from pipeline import clock
from pipeline.database import transaction
from pipeline.staff.models import AuditRecord

# CR, LF, other controls, line and paragraph separators, bidi overrides: a log line stays one line
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_FIELD = 400


def clean(text: Any, limit: int = MAX_FIELD) -> str:
    """``text`` as one safe line of at most ``limit`` characters."""
    value = _UNSAFE.sub(" ", str(text))
    return value if len(value) <= limit else value[:limit - 1] + "…"


def operator() -> str:
    """Who runs a CLI command that needs no staff identity: the machine user."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name (a container without passwd entry)
        user = "unknown"
    return f"cli:{clean(user, 60)}"


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def record(session, actor: str, action: str, subject: str | None = None, *, before: Any = None,
           after: Any = None, via: str = "cli", ip: str | None = None) -> None:
    """Add one row inside the caller's transaction."""
    session.add(AuditRecord(at=clock.now(), actor=clean(actor, 320), action=clean(action, 64),
                            subject=clean(subject) if subject is not None else None,
                            before=_dump(before), after=_dump(after), via=clean(via, 16),
                            ip=clean(ip, 64) if ip else None))


def write(engine: Engine, actor: str, action: str, subject: str | None = None, **fields: Any) -> None:
    """``record`` in a transaction of its own (for actions whose change is elsewhere, or none)."""
    with transaction(engine) as session:
        record(session, actor, action, subject, **fields)


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    before: Any
    after: Any
    via: str
    ip: str | None

    def line(self, tz=None) -> str:
        at = self.at.astimezone(tz) if tz else self.at
        parts = [f"{at:%Y-%m-%d %H:%M:%S %Z}", self.actor, self.action]
        if self.subject:
            parts.append(self.subject)
        if self.before is not None:
            parts.append(f"before={json.dumps(self.before, ensure_ascii=False, sort_keys=True)}")
        if self.after is not None:
            parts.append(f"after={json.dumps(self.after, ensure_ascii=False, sort_keys=True)}")
        parts.append(f"({self.via}{', ' + self.ip if self.ip else ''})")
        return clean("  ".join(parts), 4000)


def entries(engine: Engine, *, since: datetime | None = None, actor: str | None = None,
            action: str | None = None, limit: int = 500) -> list[Entry]:
    """The newest ``limit`` rows matching the filters, oldest first.  ``action`` matches a
    prefix (``staff`` finds staff.add and staff.disable); ``actor`` is exact, case-insensitive."""
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if since is not None:
        query = query.where(AuditRecord.at >= clock.require_aware(since, "since"))
    if actor:
        query = query.where(func.lower(AuditRecord.actor) == actor.strip().lower())
    if action:
        query = query.where(AuditRecord.action.startswith(action, autoescape=True))
    with transaction(engine) as session:
        rows = session.scalars(query).all()
        return [Entry(r.id, r.at, r.actor, r.action, r.subject, json.loads(r.before) if r.before else None,
                      json.loads(r.after) if r.after else None, r.via, r.ip) for r in reversed(rows)]
