"""Console sessions and CSRF tokens.

A session is a random 256-bit token, given to the browser in a cookie signed with an
HMAC under the secret (``NEWSLETTER_SECRET``) and kept server-side as its SHA-256 in
``staff_sessions``, so it can be revoked (sign-out, ``staff disable``/``reset``) and
expires after ``console_idle_minutes`` without use.  A new token is made at every
sign-in, whatever cookie came with the request (no fixation).  The cookie is
``Secure; HttpOnly; SameSite=Strict`` and scoped to the console's path, so the public
pages never see it.

Every form carries a CSRF token: an HMAC of the session id, checked in constant time.
The sign-in form, before there is a session, binds its token to a short-lived
pre-session cookie the same way.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, update

from pipeline import clock, keys
from pipeline.database import transaction
from pipeline.staff.accounts import Staff
from pipeline.staff.models import StaffRecord, StaffSession

COOKIE = "nl_console"
PRE_COOKIE = "nl_console_login"
TOUCH_EVERY = timedelta(seconds=30)  # last_seen is written at most this often per session


def _mac(settings, purpose: str, value: str) -> str:
    return hmac.new(keys.secret(settings).encode(), f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cookie_value(settings, token: str) -> str:
    return f"{token}.{_mac(settings, 'session', token)[:43]}"


def token_of(settings, value: str | None) -> str | None:
    """The token in a cookie whose signature holds, else None."""
    if not value or value.count(".") != 1 or len(value) > 200:
        return None
    token, sig = value.split(".")
    return token if keys.same(sig, _mac(settings, "session", token)[:43]) else None


@dataclass(frozen=True)
class Session:
    id: str  # SHA-256 of the token
    staff: Staff

    def csrf(self, settings) -> str:
        return _mac(settings, "csrf", self.id)

    def csrf_ok(self, settings, value: str | None) -> bool:
        return bool(value) and keys.same(value, self.csrf(settings))


def start(engine: Engine, settings, staff: Staff, ip: str | None) -> str:
    """A new session for ``staff``; returns the cookie value."""
    token = secrets.token_urlsafe(32)
    now = clock.now()
    with transaction(engine) as session:
        session.add(StaffSession(id=_digest(token), staff_id=staff.id, created_at=now, last_seen=now,
                                 ip=(ip or "")[:64] or None))
    return cookie_value(settings, token)


def find(engine: Engine, settings, cookie: str | None) -> Session | None:
    """The live session the cookie names: signed, not revoked, not idle past
    ``console_idle_minutes``, its staff member not disabled.  An idle one is revoked."""
    token = token_of(settings, cookie)
    if token is None:
        return None
    sid = _digest(token)
    now = clock.now()
    idle = timedelta(minutes=float(settings.console_idle_minutes))
    with transaction(engine) as session:
        row = session.get(StaffSession, sid)
        if row is None or row.revoked_at is not None:
            return None
        if now - row.last_seen > idle:
            row.revoked_at = now
            return None
        staff = session.get(StaffRecord, row.staff_id)
        if staff is None or staff.disabled_at is not None:
            return None
        if now - row.last_seen > TOUCH_EVERY:
            row.last_seen = now
        return Session(sid, Staff.of(staff))


def end(engine: Engine, session_id: str) -> None:
    with transaction(engine) as session:
        session.execute(update(StaffSession).where(StaffSession.id == session_id).values(revoked_at=clock.now()))


def login_token(settings) -> tuple[str, str]:
    """(pre-session cookie value, the sign-in form's CSRF token)."""
    nonce = secrets.token_urlsafe(24)
    return nonce, _mac(settings, "login", nonce)


def login_token_ok(settings, nonce: str | None, value: str | None) -> bool:
    return bool(nonce and value) and len(nonce) < 100 and keys.same(value, _mac(settings, "login", nonce))
