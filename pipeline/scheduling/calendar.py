"""The editorial calendar and the scheduler's records, in the database.

- ``CalendarEntry``: an article planned for a date (optionally at its own time).
- ``Run``: one row per (day, kind) send attempt; its unique key is what makes a
  day's issue go out once, whichever daemon gets there first.
- ``PauseRecord``: one row saying whether sending is paused, and until when.

The send lease and the daemons' heartbeats are in ``pipeline/delivery/leases.py``.

The schema is created by migration 0003.  Every function here takes an engine
and commits its own short transaction, so the CLI (another process) and the
daemon see each other's changes at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Sequence

from sqlalchemy import Boolean, Date, Engine, Index, Integer, String, Text, UniqueConstraint, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock
from pipeline.database import AwareDateTime, Base, transaction
from pipeline.errors import LeaseLost, ScheduleError

ENTRY_STATES = ("scheduled", "sent", "cancelled", "missed", "failed")
# an entry in one of these states may be moved back onto the calendar
MOVABLE = ("scheduled", "missed", "failed")

# waiting: the issue went to its first waves; later ones wait for their readers' local time
RUN_STATES = ("pending", "running", "sent", "nothing-to-send", "missed", "paused", "content-error", "failed",
              "stopped", "waiting")
# states after which the daemon never touches the day again on its own
FINAL = ("sent", "nothing-to-send", "missed", "paused", "content-error")
# states that mean "something is wrong": `newsletter status` exits non-zero
ALERT = ("content-error", "failed")
# states `status` keeps alerting on until they are dealt with (see pipeline/ops/status.py)
LASTING_ALERT = ("content-error", "failed", "stopped", "missed", "paused")
# states in which no email went out, so a send planned later the same day (an
# article added with a later --at) may still go: it is not a second send
REOPEN = ("nothing-to-send", "missed", "paused")
KINDS = ("daily", "weekly")


class CalendarEntry(Base):
    __tablename__ = "calendar_entries"
    __table_args__ = (
        # an article is on the calendar at most once at a time (enforced by the
        # database, so two editors' concurrent `schedule add` cannot both win)
        Index("uq_calendar_entries_scheduled_slug", "slug", unique=True,
              sqlite_where=text("state = 'scheduled'"), postgresql_where=text("state = 'scheduled'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    at: Mapped[str | None] = mapped_column(String(5))  # HH:MM local, or None for the default send time
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    issue_key: Mapped[str | None] = mapped_column(String(64))  # set when sent
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    updated_at: Mapped[datetime] = mapped_column(AwareDateTime())


class RunRecord(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("day", "kind", name="uq_runs_day_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    issue_key: Mapped[str | None] = mapped_column(String(64))
    planned_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    started_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    holder: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    deferred: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    bounced: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    acknowledged_at: Mapped[datetime | None] = mapped_column(AwareDateTime())


class PauseRecord(Base):
    __tablename__ = "schedule_pause"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    until: Mapped[date | None] = mapped_column(Date)  # first day that sends again
    changed_at: Mapped[datetime] = mapped_column(AwareDateTime())


# -- values handed out (frozen snapshots, never live ORM rows) -----------------------

@dataclass(frozen=True)
class Entry:
    id: int
    slug: str
    day: date
    at: str | None
    state: str
    issue_key: str | None = None


@dataclass(frozen=True)
class Run:
    day: date
    kind: str
    state: str
    issue_key: str | None = None
    planned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    holder: str | None = None
    attempts: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    error: str | None = None
    acknowledged_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class Pause:
    paused: bool = False
    until: date | None = None
    changed_at: datetime | None = field(default=None, compare=False)  # when it was last paused or resumed

    def covers(self, day: date) -> bool:
        """Is ``day`` paused?  ``until`` is the first day that sends again."""
        return self.paused and (self.until is None or day < self.until)


def _entry(row: CalendarEntry) -> Entry:
    return Entry(row.id, row.slug, row.day, row.at, row.state, row.issue_key)


def _run(row: RunRecord) -> Run:
    return Run(row.day, row.kind, row.state, row.issue_key, row.planned_at, row.started_at, row.finished_at,
               row.holder, row.attempts, row.sent, row.deferred, row.failed, row.bounced, row.error,
               row.acknowledged_at)


# -- the calendar ----------------------------------------------------------------------

def entries(engine: Engine, *, start: date | None = None, end: date | None = None,
            states: Sequence[str] | None = None, slug: str | None = None) -> list[Entry]:
    """Calendar entries between ``start`` and ``end`` (inclusive), by day then time then id."""
    query = select(CalendarEntry)
    if start is not None:
        query = query.where(CalendarEntry.day >= start)
    if end is not None:
        query = query.where(CalendarEntry.day <= end)
    if states is not None:
        query = query.where(CalendarEntry.state.in_(states))
    if slug is not None:
        query = query.where(CalendarEntry.slug == slug)
    with transaction(engine) as session:
        rows = session.scalars(query).all()
        found = [_entry(r) for r in rows]
    return sorted(found, key=lambda e: (e.day, e.at or "", e.id))


def scheduled_on(engine: Engine, day: date) -> list[Entry]:
    """What the editors planned for ``day`` and has not gone out: the day's issue."""
    return entries(engine, start=day, end=day, states=("scheduled", "failed"))


def add_entry(engine: Engine, slug: str, day: date, at: str | None) -> Entry:
    now = clock.now()
    with transaction(engine) as session:
        current = session.scalars(select(CalendarEntry).where(CalendarEntry.slug == slug,
                                                              CalendarEntry.state.in_(("scheduled", "sent")))).first()
        if current is not None and current.state == "scheduled":
            raise ScheduleError(f"{slug} is already scheduled on {current.day.isoformat()}; "
                                f"use `newsletter schedule move {slug} --to DATE`")
        if current is not None:
            raise ScheduleError(f"{slug} was already sent on {current.day.isoformat()} (issue {current.issue_key})")
        row = CalendarEntry(slug=slug, day=day, at=at, state="scheduled", created_at=now, updated_at=now)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise ScheduleError(f"{slug} was scheduled by someone else at the same moment; "
                                "see `newsletter schedule list`") from None
        return _entry(row)


def _movable(session, slug: str) -> CalendarEntry:
    row = session.scalars(select(CalendarEntry).where(CalendarEntry.slug == slug, CalendarEntry.state.in_(MOVABLE))
                          .order_by(CalendarEntry.state != "scheduled", CalendarEntry.day.desc())).first()
    if row is None:
        raise ScheduleError(f"{slug} is not on the calendar (add it with `newsletter schedule add {slug} --on DATE`)")
    return row


def move_entry(engine: Engine, slug: str, day: date, at: str | None = None, *, keep_time: bool = True) -> Entry:
    """Move an article to another day.  A missed or failed entry goes back on the calendar."""
    with transaction(engine) as session:
        row = _movable(session, slug)
        row.day = day
        if not keep_time:
            row.at = at
        row.state = "scheduled"
        row.updated_at = clock.now()
        try:
            session.flush()
        except IntegrityError:
            raise ScheduleError(f"{slug} is already scheduled on another day") from None
        return _entry(row)


def cancel_entry(engine: Engine, slug: str) -> Entry:
    with transaction(engine) as session:
        row = session.scalars(select(CalendarEntry).where(CalendarEntry.slug == slug,
                                                          CalendarEntry.state == "scheduled")).first()
        if row is None:
            raise ScheduleError(f"{slug} is not scheduled, so there is nothing to cancel")
        row.state = "cancelled"
        row.updated_at = clock.now()
        return _entry(row)


def mark_entries(engine: Engine, ids: Sequence[int], state: str, issue_key: str | None = None) -> None:
    if not ids:
        return
    assert state in ENTRY_STATES, state
    with transaction(engine) as session:
        session.execute(update(CalendarEntry).where(CalendarEntry.id.in_(list(ids)))
                        .values(state=state, issue_key=issue_key, updated_at=clock.now()))


def add_sent_entry(engine: Engine, slug: str, day: date, issue_key: str) -> int:
    """Record that ``slug`` went out on ``day`` without being scheduled (the queue chose it)."""
    now = clock.now()
    with transaction(engine) as session:
        row = CalendarEntry(slug=slug, day=day, at=None, state="sent", issue_key=issue_key, created_at=now,
                            updated_at=now)
        session.add(row)
        session.flush()
        return row.id


def sent_slugs(engine: Engine) -> set[str]:
    with transaction(engine) as session:
        return set(session.scalars(select(CalendarEntry.slug).where(CalendarEntry.state == "sent")))


# -- runs ---------------------------------------------------------------------------------

def get_run(engine: Engine, day: date, kind: str) -> Run | None:
    with transaction(engine) as session:
        row = session.scalars(select(RunRecord).where(RunRecord.day == day, RunRecord.kind == kind)).first()
        return _run(row) if row else None


def runs_between(engine: Engine, start: date, end: date) -> dict[tuple[date, str], Run]:
    with transaction(engine) as session:
        rows = session.scalars(select(RunRecord).where(RunRecord.day >= start, RunRecord.day <= end)).all()
        return {(r.day, r.kind): _run(r) for r in rows}


def recent_runs(engine: Engine, limit: int = 10) -> list[Run]:
    """The newest runs first (by when they were last touched)."""
    with transaction(engine) as session:
        rows = session.scalars(select(RunRecord).order_by(RunRecord.day.desc(), RunRecord.kind.desc(),
                                                          RunRecord.id.desc()).limit(limit)).all()
        return [_run(r) for r in rows]


def run_days(engine: Engine) -> tuple[date | None, date | None]:
    """The first and the latest day any run was recorded for (None, None on a new database)."""
    from sqlalchemy import func
    with transaction(engine) as session:
        first, latest = session.execute(select(func.min(RunRecord.day), func.max(RunRecord.day))).one()
        return first, latest


def record_outcome(engine: Engine, day: date, kind: str, state: str, *, planned_at: datetime | None = None,
                   error: str | None = None, replace: Run | None = None,
                   started_at: datetime | None = None) -> Run | None:
    """Record a day that will not be sent (missed, paused) if nothing is recorded yet,
    or over ``replace`` if the row is still exactly as read (a later send planned
    the same day after an empty-handed run, see ``REOPEN``).  ``started_at``
    defaults to now (a hand send finished by ``--resume`` passes when it began).

    Returns the new run, or None when another process recorded the day first.
    """
    assert state in RUN_STATES, state
    now = clock.now()
    values = dict(state=state, planned_at=planned_at, started_at=started_at or now, finished_at=now, error=error)
    if replace is not None:
        with transaction(engine) as session:
            result = session.execute(
                update(RunRecord).where(RunRecord.day == day, RunRecord.kind == kind,
                                        RunRecord.state == replace.state, RunRecord.attempts == replace.attempts,
                                        RunRecord.planned_at == replace.planned_at).values(**values))
            if result.rowcount != 1:
                return None
        return get_run(engine, day, kind)
    try:
        with transaction(engine) as session:
            row = RunRecord(day=day, kind=kind, attempts=0, sent=0, deferred=0, failed=0, bounced=0, **values)
            session.add(row)
            session.flush()
            return _run(row)
    except IntegrityError:
        return None


def claim_run(engine: Engine, day: date, kind: str, holder: str, *, planned_at: datetime | None,
              retry: Sequence[str] = (), take_over: bool = False) -> Run | None:
    """Take the (day, kind) run for ``holder``: insert it as ``running``, or move it to
    ``running`` from one of the ``retry`` states, or with ``take_over`` (the caller
    holds the send lease, so the previous holder is gone) from another holder's
    ``running``.  None when the run is not ours to do.

    The unique key on (day, kind) and the state compare-and-set make this safe even
    without the lease; the lease only keeps two daemons from racing for it.
    """
    now = clock.now()
    try:
        with transaction(engine) as session:
            row = RunRecord(day=day, kind=kind, state="running", planned_at=planned_at, started_at=now,
                            holder=holder, attempts=1, sent=0, deferred=0, failed=0, bounced=0)
            session.add(row)
            session.flush()
            return _run(row)
    except IntegrityError:
        pass
    current = get_run(engine, day, kind)
    if current is None or not (current.state in retry or (take_over and current.state == "running")):
        return None
    with transaction(engine) as session:
        result = session.execute(
            update(RunRecord)
            .where(RunRecord.day == day, RunRecord.kind == kind, RunRecord.state == current.state,
                   RunRecord.attempts == current.attempts)
            .values(state="running", holder=holder, started_at=now, finished_at=None, error=None,
                    attempts=current.attempts + 1, planned_at=planned_at or current.planned_at))
        if result.rowcount != 1:
            return None
    return get_run(engine, day, kind)


def _outcome(state: str, issue_key: str | None, counts: dict[str, int] | None, error: str | None) -> dict:
    """The columns a run's outcome sets: state, error, and the issue and counts when known."""
    values: dict = dict(state=state, error=error)
    if issue_key is not None:
        values["issue_key"] = issue_key
    for name in ("sent", "deferred", "failed", "bounced"):
        if counts and name in counts:
            values[name] = int(counts[name])
    return values


def finish_run(engine: Engine, day: date, kind: str, holder: str, state: str, *, issue_key: str | None = None,
               counts: dict[str, int] | None = None, error: str | None = None) -> Run:
    """Record how ``holder``'s run ended.  Fenced: only while the run is still ``running``
    for ``holder``; ``LeaseLost`` when another process took it over meanwhile."""
    assert state in RUN_STATES, state
    values = dict(_outcome(state, issue_key, counts, error), finished_at=clock.now())
    with transaction(engine) as session:
        done = session.execute(update(RunRecord).where(RunRecord.day == day, RunRecord.kind == kind,
                                                       RunRecord.holder == holder, RunRecord.state == "running")
                               .values(**values)).rowcount
    if done != 1:
        raise LeaseLost(f"the {kind} run of {day.isoformat()} was taken over by another process")
    run = get_run(engine, day, kind)
    assert run is not None
    return run


def settle_run(engine: Engine, run: Run, state: str, *, issue_key: str | None = None,
               counts: dict[str, int] | None = None, error: str | None = None) -> Run | None:
    """Change a finished run's outcome if it is still exactly as read (compare-and-set)."""
    values = _outcome(state, issue_key, counts, error)
    with transaction(engine) as session:
        result = session.execute(update(RunRecord).where(
            RunRecord.day == run.day, RunRecord.kind == run.kind, RunRecord.state == run.state,
            RunRecord.attempts == run.attempts).values(**values))
        if result.rowcount != 1:
            return None
    return get_run(engine, run.day, run.kind)


def acknowledge(engine: Engine, day: date) -> list[Run]:
    """An operator has dealt with ``day``'s alerting runs (``status --ack``): they stop alerting."""
    with transaction(engine) as session:
        rows = session.scalars(select(RunRecord).where(RunRecord.day == day, RunRecord.state.in_(LASTING_ALERT),
                                                       RunRecord.acknowledged_at.is_(None))).all()
        for row in rows:
            row.acknowledged_at = clock.now()
        return [_run(row) for row in rows]


# -- pause ---------------------------------------------------------------------------------

def get_pause(engine: Engine) -> Pause:
    with transaction(engine) as session:
        row = session.get(PauseRecord, 1)
        return Pause(row.paused, row.until, row.changed_at) if row else Pause()


def set_pause(engine: Engine, paused: bool, until: date | None = None) -> Pause:
    with transaction(engine) as session:
        row = session.get(PauseRecord, 1)
        if row is None:
            row = PauseRecord(id=1)
            session.add(row)
        row.paused, row.until, row.changed_at = paused, (until if paused else None), clock.now()
        return Pause(row.paused, row.until, row.changed_at)
