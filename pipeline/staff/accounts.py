"""Staff accounts: who may sign in to the console (and act as staff from the CLI).

Roles: ``editor`` (calendar, preview, test send, pause), ``reviewer`` (medical
sign-off), ``admin`` (accounts, settings, subscriber look-up); one person may
hold several.  Passwords are hashed with Argon2id (argon2-cffi).  Every change
writes an audit row in the same transaction.

Sign-in (``authenticate``, the one check for the console and the CLI):
- per client IP, ``staff_login_rate_per_ip`` attempts an hour, and per account,
  ``staff_login_rate_per_account`` an hour, counted in the database
  (``subscribers.limits``) so every process shares them;
- ``staff_lockout_failures`` wrong passwords in a row lock the account for
  ``staff_lockout_minutes``; while locked even the right password is refused;
- the answer never says which of these it was, nor whether the account exists.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, select, update

from pipeline import clock
from pipeline.database import transaction
from pipeline.errors import StaffError
from pipeline.mail.headers import name_problem
from pipeline.staff import audit
from pipeline.staff.models import ROLES, StaffRecord, StaffSession
from subscribers import limits

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
_hasher = PasswordHasher()
# verified against when the address is unknown, so the answer takes as long either way
_DUMMY_HASH: str | None = None  # made on first use, so importing this module costs no hash


def _dummy_hash() -> str:
    """A hash to check an unknown address's password against, so a refusal takes as long either way."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash("not a password of anyone")
    return _DUMMY_HASH
REFUSED = "sign-in refused: wrong address or password, or too many attempts (wait and try again)"


@dataclass(frozen=True)
class Staff:
    id: int
    email: str
    name: str
    credentials: str
    roles: tuple[str, ...]
    disabled: bool = False
    locked_until: datetime | None = None

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def signature(self) -> str:
        """How a review names them: "NAME, CREDENTIALS" (or the name alone)."""
        return f"{self.name}, {self.credentials}" if self.credentials else self.name

    @classmethod
    def of(cls, row: StaffRecord) -> "Staff":
        return cls(row.id, row.email, row.name, row.credentials or "", tuple(r for r in row.roles.split(",") if r),
                   row.disabled_at is not None, row.locked_until)


def email_key(address: str) -> tuple[str, str]:
    from subscribers.store import normalise_email
    from pipeline.errors import SubscriberError

    try:
        return normalise_email(address)
    except SubscriberError as exc:
        raise StaffError(f"staff address: {exc}") from None


def check_roles(roles) -> tuple[str, ...]:
    picked = tuple(dict.fromkeys(r.strip().lower() for r in roles if r and r.strip()))
    if not picked:
        raise StaffError(f"give at least one role ({', '.join(ROLES)})")
    unknown = [r for r in picked if r not in ROLES]
    if unknown:
        raise StaffError(f"unknown role {audit.clean(unknown[0], 40)!r}: roles are {', '.join(ROLES)}")
    return tuple(r for r in ROLES if r in picked)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise StaffError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise StaffError(f"the password is too long: at most {MAX_PASSWORD} characters")


def _check_text(what: str, value: str, limit: int = 200) -> str:
    problem = name_problem(value) if value else None  # before tidying: a CR or LF is refused, not joined
    value = " ".join((value or "").split())
    if problem:
        raise StaffError(f"{what}: {problem}")
    if len(value) > limit:
        raise StaffError(f"{what} is too long: at most {limit} characters")
    return value


def _find(session, key: str) -> StaffRecord | None:
    return session.scalars(select(StaffRecord).where(StaffRecord.email_key == key)).first()


def _row(session, address: str) -> StaffRecord:
    _, key = email_key(address)
    row = _find(session, key)
    if row is None:
        raise StaffError(f"no staff account {audit.clean(address, 80)}")
    return row


def _public(row: StaffRecord) -> dict:
    return {"email": row.email, "name": row.name, "credentials": row.credentials, "roles": row.roles,
            "disabled": row.disabled_at is not None}


def add(engine: Engine, address: str, *, name: str, roles, password: str, credentials: str = "",
        actor: str, via: str = "cli", ip: str | None = None) -> Staff:
    email, key = email_key(address)
    name = _check_text("name", name)
    if not name:
        raise StaffError("give the person's name (--name), as reviews and the audit log show it")
    credentials = _check_text("credentials", credentials)
    picked = check_roles(roles)
    check_password(password)
    now = clock.now()
    with transaction(engine) as session:
        if _find(session, key) is not None:
            raise StaffError(f"{email} already has a staff account (`newsletter staff reset` changes its password)")
        row = StaffRecord(email=email, email_key=key, name=name, credentials=credentials, roles=",".join(picked),
                          password_hash=_hasher.hash(password), failed_logins=0, created_at=now,
                          password_changed_at=now)
        session.add(row)
        session.flush()
        audit.record(session, actor, "staff.add", email, after=_public(row), via=via, ip=ip)
        return Staff.of(row)


def all_staff(engine: Engine) -> list[Staff]:
    with transaction(engine) as session:
        return [Staff.of(r) for r in session.scalars(select(StaffRecord).order_by(StaffRecord.id))]


def get(engine: Engine, staff_id: int) -> Staff | None:
    with transaction(engine) as session:
        row = session.get(StaffRecord, staff_id)
        return Staff.of(row) if row else None


def _revoke_sessions(session, staff_id: int) -> None:
    session.execute(update(StaffSession).where(StaffSession.staff_id == staff_id, StaffSession.revoked_at.is_(None))
                    .values(revoked_at=clock.now()))


def disable(engine: Engine, address: str, *, actor: str, via: str = "cli", ip: str | None = None) -> Staff:
    """No more sign-ins; every open console session of theirs ends now.  Their reviews stand."""
    with transaction(engine) as session:
        row = _row(session, address)
        before = _public(row)
        if row.disabled_at is None:
            row.disabled_at = clock.now()
        _revoke_sessions(session, row.id)
        audit.record(session, actor, "staff.disable", row.email, before=before, after=_public(row), via=via, ip=ip)
        return Staff.of(row)


def reset(engine: Engine, address: str, password: str, *, actor: str, roles=None, enable: bool = True,
          via: str = "cli", ip: str | None = None) -> Staff:
    """A new password (and optionally new roles); unlocks and re-enables the account and
    ends its open sessions."""
    check_password(password)
    picked = check_roles(roles) if roles else None
    with transaction(engine) as session:
        row = _row(session, address)
        before = _public(row)
        row.password_hash = _hasher.hash(password)
        row.password_changed_at = clock.now()
        row.failed_logins = 0
        row.locked_until = None
        if enable:
            row.disabled_at = None
        if picked:
            row.roles = ",".join(picked)
        _revoke_sessions(session, row.id)
        audit.record(session, actor, "staff.reset", row.email, before=before, after=_public(row), via=via, ip=ip)
        return Staff.of(row)


def _key(prefix: str, value: str) -> str:
    return f"{prefix}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def authenticate(engine: Engine, settings, address: str, password: str, *, via: str,
                 ip: str | None = None) -> Staff:
    """The staff member ``address`` names, if ``password`` is theirs and nothing
    forbids the sign-in now; else ``StaffError(REFUSED)``.  Records the outcome."""
    now = clock.now()
    address = (address or "").strip()[:320]
    password = password or ""
    try:
        _, key = email_key(address)
    except StaffError:
        key = address.lower()
    outcome: Staff | None = None
    with transaction(engine) as session:
        reason = None
        if ip is not None and not limits.take(session, _key("staff-ip", limits.ip_bucket(ip)),
                                              int(settings.staff_login_rate_per_ip), timedelta(hours=1), now):
            reason = "too many attempts from this address"
        elif not limits.take(session, _key("staff-account", key), int(settings.staff_login_rate_per_account),
                             timedelta(hours=1), now):
            reason = "too many attempts for this account"
        row = _find(session, key)
        if reason is None:
            good = _verify(row.password_hash if row else _dummy_hash(), password[:MAX_PASSWORD])
            if row is None:
                reason = "no such account"
            elif row.disabled_at is not None:
                reason = "account disabled"
            elif row.locked_until is not None and row.locked_until > now:
                reason = "account locked"
            elif not good:
                reason = "wrong password"
                row.failed_logins = (row.failed_logins or 0) + 1
                if row.failed_logins >= int(settings.staff_lockout_failures):
                    row.locked_until = now + timedelta(minutes=float(settings.staff_lockout_minutes))
                    row.failed_logins = 0
                    reason = f"wrong password; account locked for {settings.staff_lockout_minutes} min"
            else:
                row.failed_logins = 0
                row.locked_until = None
                if _hasher.check_needs_rehash(row.password_hash):
                    row.password_hash = _hasher.hash(password)
                outcome = Staff.of(row)
        if outcome is None:
            audit.record(session, address or "(none)", "signin.failed", address or None, after={"reason": reason},
                         via=via, ip=ip)
        else:
            audit.record(session, outcome.email, "signin", outcome.email, via=via, ip=ip)
    if outcome is None:
        raise StaffError(REFUSED)
    return outcome


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def require(staff: Staff, role: str, what: str) -> None:
    """Refuse ``what`` to someone without ``role``."""
    if not staff.has(role):
        raise StaffError(f"{staff.email} cannot {what}: that needs the {role} role "
                         f"(theirs: {', '.join(staff.roles) or 'none'})")
