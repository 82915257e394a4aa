"""Schedule stage: when each day's issue goes out, and doing one day's work once.

Decisions are pure functions of the clock (``pipeline.clock.now()``), the
settings and what the database says; ``wake`` applies them and ``run_day`` does
one (day, kind):

1. load and check the content; on any error record ``content-error``, log why,
   and leave the calendar as it is (fix, then ``newsletter send`` or
   ``newsletter run --once --date D``);
2. ask ``pipeline.plan.plan_day`` (the one decider, shared with every command)
   what the day sends; when nothing, the run is recorded ``nothing-to-send``
   with the reason and no email goes out;
3. render it, publish its archive page and rebuild the archive and feeds;
4. send it to confirmed subscribers of that frequency through the send ledger.

Exactly once per (day, kind): the send lease lets one process at a time work, the
``runs`` row (unique on day and kind) records who did the day and how it ended,
and the send ledger underneath never mails a subscriber twice even when a run is
resumed after a crash.

Time rules (documented in the README, tested across 2026-03-29 and 2026-10-25):

- A day's send instant is its send time as a wall-clock time in
  ``settings.timezone``: 07:00 Europe/London is 07:00Z in winter, 06:00Z in summer.
- A wall time that does not exist (the spring-forward hour, e.g. 01:30 on the
  last Sunday of March) is taken with the offset in force before the change,
  which puts it one hour later on the new clock (02:30 BST): the send happens
  once, as soon after the chosen time as the clock allows.
- A wall time that happens twice (the fall-back hour, 01:30 on the last Sunday
  of October) means its first occurrence (01:30 BST = 00:30Z), and only that one.
- A day's daily send time is the earliest ``--at`` of the articles scheduled on
  it, else ``send_time``.  The weekly digest goes at ``send_time`` on
  ``weekly_day``, after that day's daily issue when both are due together.
- Within ``grace_minutes`` after the instant a send still happens (late); after
  that the day is recorded ``missed`` and never sent by the daemon.
- ``pause --until D`` pauses every day before D; D sends again.  A day whose
  instant passes while paused is recorded ``paused`` (its articles ``missed``)
  and is not sent after a resume.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine

from pipeline import calendar, clock, leases
from pipeline.calendar import Entry, Run
from pipeline.errors import ContentError, LeaseLost, NewsletterError, ScheduleError
from pipeline.settings import Settings, load_settings

log = logging.getLogger("newsletter.schedule")

UTC = clock.UTC
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# how far back a waking daemon looks for days it should have sent (and records them missed)
LOOKBACK_DAYS = 3
# a failed run is retried, inside the grace window, no sooner than this after it failed
RETRY_AFTER = timedelta(minutes=5)

_work = threading.Lock()  # one run at a time per process (the lease is per holder, not per thread)


# -- pure time rules ---------------------------------------------------------------------

def parse_hhmm(value: str, what: str = "time") -> time:
    """``HH:MM`` (24-hour) as a time; a ``ScheduleError`` naming the bad value otherwise."""
    text = str(value).strip()
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() and len(p) == 2 for p in parts):
        hour, minute = int(parts[0]), int(parts[1])
        if hour < 24 and minute < 60:
            return time(hour, minute)
    raise ScheduleError(f"{what} must be HH:MM (24-hour), got {text!r}")


def parse_day(value: str, what: str = "date") -> date:
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ScheduleError(f"{what} must be a date as YYYY-MM-DD, got {value!r}") from None


def zone(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {settings.timezone!r} is not an IANA time zone (e.g. Europe/London)") from None


def grace(settings: Settings) -> timedelta:
    return timedelta(minutes=int(settings.grace_minutes))


def weekly_weekday(settings: Settings) -> int:
    name = str(settings.weekly_day).strip().lower()
    if name not in WEEKDAYS:
        raise ScheduleError(f"weekly_day must be a weekday name (monday ... sunday), got {settings.weekly_day!r}")
    return WEEKDAYS.index(name)


def is_weekly_day(day: date, settings: Settings) -> bool:
    return day.weekday() == weekly_weekday(settings)


def send_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall time ``at`` on ``day`` in ``tz`` (see the module rules).

    ``fold=0`` gives exactly the documented rule: for a wall time in the spring
    gap, the offset before the change (so one hour later on the new clock); for
    a wall time that happens twice, the first occurrence.
    """
    return datetime.combine(day, at, tzinfo=tz).replace(fold=0).astimezone(UTC)


def local_day(instant: datetime, tz: ZoneInfo) -> date:
    return clock.require_aware(instant).astimezone(tz).date()


def today(settings: Settings) -> date:
    return local_day(clock.now(), zone(settings))


@dataclass(frozen=True)
class Slot:
    """One planned send: a day, a kind, its local wall time and its UTC instant."""

    day: date
    kind: str
    at: time
    instant: datetime


def daily_time(settings: Settings, custom: Sequence[str | None] = ()) -> time:
    """The day's send time: the earliest ``--at`` among its articles, else ``send_time``."""
    times = [parse_hhmm(t, "--at") for t in custom if t]
    return min(times) if times else parse_hhmm(settings.send_time, "send_time")


def slots_for(day: date, settings: Settings, custom: Sequence[str | None] = ()) -> list[Slot]:
    tz = zone(settings)
    at = daily_time(settings, custom)
    slots = [Slot(day, "daily", at, send_instant(day, at, tz))]
    if is_weekly_day(day, settings):
        weekly_at = parse_hhmm(settings.send_time, "send_time")
        slots.append(Slot(day, "weekly", weekly_at, send_instant(day, weekly_at, tz)))
    return slots


def decide(slot: Slot, now: datetime, window: timedelta, run: Run | None, paused: bool) -> str:
    """What a waking daemon does about ``slot``:

    ``wait`` (not yet), ``run`` (send now, or retry/resume within the window),
    ``miss`` (too late: record missed), ``pause`` (record paused),
    ``expire`` (a failed or interrupted run whose window has closed: leave it to
    an editor), ``done`` (nothing more to do for this slot).
    """
    late = now > slot.instant + window
    if reopened(slot, run):
        run = None
    if run is not None and run.state != "pending":
        if run.final:
            return "done"
        if run.state == "failed":
            if late:
                return "done"
            finished = run.finished_at or run.started_at or now
            return "run" if now - finished >= RETRY_AFTER else "wait"
        if run.state == "running":
            # the caller only acts on this when the lease is free: its holder is gone
            return "expire" if late else "run"
    if now < slot.instant:
        return "wait"
    if paused:
        return "pause"
    if late:
        return "miss"
    return "run"


def reopened(slot: Slot, run: Run | None) -> bool:
    """Did the day end without an email (nothing to send, missed, paused) and has a
    later send been planned for it since (an article added with a later ``--at``)?
    Then the later send is not a second send and may go."""
    return (run is not None and run.state in calendar.REOPEN and run.planned_at is not None
            and slot.instant > run.planned_at)


def candidate_days(today_: date, first_run_day: date | None) -> list[date]:
    """Days a waking daemon looks at, oldest first: today and up to LOOKBACK_DAYS
    before it, but never before the first day this database ever recorded a run
    (nothing older was expected of it); on a new database, yesterday and today."""
    if first_run_day is None:
        return [today_ - timedelta(days=1), today_]
    start = max(today_ - timedelta(days=LOOKBACK_DAYS), min(first_run_day, today_))
    return [start + timedelta(days=n) for n in range((today_ - start).days + 1)]


def next_instant(now: datetime, settings: Settings, custom_by_day: dict[date, list[str | None]],
                 pause: calendar.Pause) -> datetime | None:
    """The next send instant after ``now`` over the coming eight days (covering a
    weekly digest), skipping paused days."""
    start = local_day(now, zone(settings))
    future = []
    for n in range(0, 9):
        day = start + timedelta(days=n)
        if pause.covers(day):
            continue
        future += [s.instant for s in slots_for(day, settings, custom_by_day.get(day, ())) if s.instant > now]
    return min(future) if future else None


# -- reading the plan from the database ---------------------------------------------------

def custom_times(engine: Engine, start: date, end: date) -> dict[date, list[str | None]]:
    found: dict[date, list[str | None]] = {}
    for entry in calendar.entries(engine, start=start, end=end, states=("scheduled", "failed")):
        found.setdefault(entry.day, []).append(entry.at)
    return found


def planned_slot(engine: Engine, settings: Settings, day: date, kind: str) -> Slot:
    custom = custom_times(engine, day, day).get(day, [])
    for slot in slots_for(day, settings, custom):
        if slot.kind == kind:
            return slot
    raise ScheduleError(f"{day.isoformat()} is not a {settings.weekly_day}: no weekly digest goes out that day")


def upcoming(engine: Engine, settings: Settings, days: int = 14) -> list[tuple[Slot, list[Entry], Run | None, bool]]:
    """The coming ``days`` days' slots with their articles, run (if any) and paused flag."""
    start = today(settings)
    end = start + timedelta(days=days - 1)
    planned = calendar.entries(engine, start=start, end=end, states=("scheduled", "failed", "sent", "missed"))
    by_day: dict[date, list[Entry]] = {}
    for entry in planned:
        by_day.setdefault(entry.day, []).append(entry)
    runs = calendar.runs_between(engine, start, end)
    pause = calendar.get_pause(engine)
    rows = []
    for n in range(days):
        day = start + timedelta(days=n)
        active = [e.at for e in by_day.get(day, []) if e.state in ("scheduled", "failed")]
        if not active and (day, "daily") in runs:  # the day went: its time was its articles' own
            active = [e.at for e in by_day.get(day, [])]
        for slot in slots_for(day, settings, active):
            rows.append((slot, by_day.get(day, []) if slot.kind == "daily" else [], runs.get((day, slot.kind)),
                         pause.covers(day)))
    return rows


# -- waking up -------------------------------------------------------------------------------

def wake(engine: Engine, settings: Settings, content_dir: Path | str, holder: str) -> list[Run]:
    """Look at the recent days and do what is due: send what is due, record what was
    missed or paused.  Safe to call at any time and from any number of processes."""
    settle_from_ledger(engine)
    now = clock.now()
    window = grace(settings)
    tz = zone(settings)
    today_ = local_day(now, tz)
    first, _latest = calendar.run_days(engine)
    days = candidate_days(today_, first)
    runs = calendar.runs_between(engine, days[0], today_)
    custom = custom_times(engine, days[0], today_)
    pause = calendar.get_pause(engine)
    lease = leases.lease_holder(engine, leases.SEND_LEASE)
    done: list[Run] = []
    for day in days:
        for slot in slots_for(day, settings, custom.get(day, [])):
            run = runs.get((day, slot.kind))
            if first is None and day < today_ and now > slot.instant + window:
                continue  # a database that never ran: yesterday was not expected of anyone
            if run is not None and run.state == "stopped":
                # an operator stopped it: it goes on only once they release the stop
                # (`newsletter resume`), whatever the time, since part of it is out already
                from pipeline import stops
                if not pause.covers(day) and not stops.blocks(engine, day):
                    done.append(run_day(engine, settings, content_dir, day, slot.kind, holder=holder, slot=slot))
                continue
            action = decide(slot, now, window, run, pause.covers(day))
            if action in ("wait", "done"):
                continue
            if run is not None and run.state == "running" and lease is not None:
                continue  # its holder is alive and working on it
            replace = run if reopened(slot, run) else None
            if action == "miss" and slot.kind == "daily" and not custom.get(day) and not settings.send_when_nothing_due:
                _record_skip(engine, slot, "nothing-to-send", "nothing was scheduled (and the daemon was not running "
                             "at the send time)", replace)
            elif action == "miss":
                _record_skip(engine, slot, "missed",
                             f"not sent: the daemon was not running between {_local(slot.instant, tz)} and "
                             f"{_local(slot.instant + window, tz)} (grace {settings.grace_minutes} min)", replace)
            elif action == "pause":
                _record_skip(engine, slot, "paused", "sending was paused at the send time", replace)
            elif action == "expire":
                _expire(engine, slot, run)  # type: ignore[arg-type]
            else:
                done.append(run_day(engine, settings, content_dir, day, slot.kind, holder=holder, slot=slot))
    from pipeline.plan import close_past_days
    close_past_days(engine, settings)  # older days, and content-error days now over
    return done


def _local(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def _record_skip(engine: Engine, slot: Slot, state: str, why: str, replace: Run | None = None) -> None:
    run = calendar.record_outcome(engine, slot.day, slot.kind, state, planned_at=slot.instant, error=why,
                                  replace=replace)
    if run is None:
        return  # another process recorded the day first
    if slot.kind == "daily":
        calendar.mark_entries(engine, [e.id for e in calendar.scheduled_on(engine, slot.day)], "missed")
    log.warning("%s %s issue of %s: %s", state, slot.kind, slot.day.isoformat(), why)


def _expire(engine: Engine, slot: Slot, run: Run) -> None:
    why = (f"interrupted and not resumed within the grace window; finish it with "
           f"`newsletter send --date {slot.day.isoformat()} --resume`")
    calendar.finish_run(engine, slot.day, slot.kind, run.holder or "", "failed", error=why)
    log.error("%s issue of %s: %s", slot.kind, slot.day.isoformat(), why)


# -- one day's work -----------------------------------------------------------------------------

def run_day(engine: Engine, settings: Settings, content_dir: Path | str, day: date, kind: str = "daily", *,
            holder: str | None = None, force: bool = False, slot: Slot | None = None) -> Run:
    """Do the (``day``, ``kind``) work once and return its run.

    Without ``force`` (the daemon) a day past its grace window is recorded
    ``missed`` instead.  With ``force`` (``run --once``, an editor's explicit
    command) the send time and window are ignored and a day that ended missed,
    paused, failed, content-error or nothing-to-send is tried again; a day
    already ``sent`` never is.  When another process holds the send lease the
    run as the database has it is returned (state ``running`` or ``pending``).
    """
    if kind not in calendar.KINDS:
        raise ScheduleError(f"kind must be daily or weekly, got {kind!r}")
    holder = holder or leases.new_holder()
    slot = slot or planned_slot(engine, settings, day, kind)
    with _work, leases.held(engine, leases.SEND_LEASE, holder, float(settings.lease_seconds)) as mine:
        if not mine:
            return calendar.get_run(engine, day, kind) or Run(day, kind, "pending",
                                                              error="another process holds the send lease")
        current = calendar.get_run(engine, day, kind)
        now = clock.now()
        reopen = reopened(slot, current)
        if not force and (current is None or current.state == "pending" or reopen) \
                and now > slot.instant + grace(settings):
            _record_skip(engine, slot, "missed", f"too late: more than {settings.grace_minutes} min after the send time",
                         current if reopen else None)
            return calendar.get_run(engine, day, kind) or current  # type: ignore[return-value]
        retry: tuple[str, ...] = ("pending", "failed", "stopped")
        if reopen and current is not None:
            retry += (current.state,)
        if force:
            retry += ("missed", "paused", "content-error", "nothing-to-send")
        # holding the lease, a run left `running` is a dead holder's: resume it (the ledger
        # underneath skips whoever it already mailed)
        claimed = calendar.claim_run(engine, day, kind, holder, planned_at=slot.instant, retry=retry, take_over=True)
        if claimed is None:
            return calendar.get_run(engine, day, kind)  # type: ignore[return-value]
        log.info("%s issue of %s: started (attempt %d)", kind, day.isoformat(), claimed.attempts)
        try:
            return _perform(engine, settings, Path(content_dir), day, kind, holder, resume=claimed.attempts > 1)
        except LeaseLost:
            # this process stalled past its lease and another took the day over: it has
            # written nothing since, and leaves the outcome to the new holder
            log.warning("%s issue of %s: lost the send lease to another process; stopped here, "
                        "the new holder records the outcome", kind, day.isoformat())
            return calendar.get_run(engine, day, kind)  # type: ignore[return-value]


def _perform(engine: Engine, settings: Settings, content_dir: Path, day: date, kind: str, holder: str,
             *, resume: bool) -> Run:
    from pipeline.content import check_library
    from pipeline.plan import plan_day

    entries = calendar.scheduled_on(engine, day) if kind == "daily" else []
    # 1. the content, checked as `newsletter check` would: the site file must still load,
    #    and the library must have no error.  The calendar is left as it is.
    problems: list[str] = []
    try:
        load_settings(content_dir)
    except ContentError as exc:
        problems.append(str(exc))
    # through the build's content cache: a send day re-checks only the articles that changed
    library, found = check_library(content_dir, settings, cache_dir=Path(settings.public_dir) / ".cache")
    problems += [str(p) for p in found if p.level == "error"]
    if library is not None:
        known = {a.slug for a in library.articles}
        problems += [f"calendar: {e.slug} is scheduled on {day.isoformat()} but is not in the library"
                     for e in entries if e.slug not in known]
    if problems:
        for problem in problems:
            log.error("content error, %s issue of %s not sent: %s", kind, day.isoformat(), problem)
        summary = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        return calendar.finish_run(engine, day, kind, holder, "content-error", error=summary)
    assert library is not None
    try:
        plan = plan_day(engine, settings, library, day, kind)  # the one decider
        if plan.issue is None:
            log.info("%s issue of %s: nothing to send (%s)", kind, day.isoformat(), plan.reason)
            return calendar.finish_run(engine, day, kind, holder, "nothing-to-send", error=plan.reason)
        return _publish_and_send(engine, settings, library, plan.issue, list(plan.entries), holder, resume=resume)
    except LeaseLost:
        raise
    except ContentError as exc:
        log.error("content error, %s issue of %s not sent: %s", kind, day.isoformat(), exc)
        return calendar.finish_run(engine, day, kind, holder, "content-error", error=str(exc))
    except Exception as exc:  # any failure is recorded, the calendar kept for a retry
        if isinstance(exc, NewsletterError):  # an expected failure: one line, no traceback
            log.error("%s issue of %s failed: %s", kind, day.isoformat(), exc)
        else:
            log.exception("%s issue of %s failed", kind, day.isoformat())
        calendar.mark_entries(engine, [e.id for e in entries], "failed")
        message = str(exc) if isinstance(exc, NewsletterError) else f"{type(exc).__name__}: {exc}"
        return calendar.finish_run(engine, day, kind, holder, "failed", error=message)


# -- the send ledger underneath --------------------------------------------------------------

def issue_key(day: date, kind: str) -> str:
    """The key the ledger and the archive use for the day's general issue of ``kind``."""
    from pipeline.issue import issue_key as key_of
    return key_of(day, kind)


def issue_number(engine: Engine, day: date, kind: str) -> int:
    """Issues are numbered per kind in date order, as the ledger has them: a day the
    ledger already knows (a retry) keeps its number, a new one follows the issues
    of earlier days (whether the daemon or `newsletter send` sent them)."""
    from sqlalchemy import func, select

    from pipeline.database import transaction
    from pipeline.ledger import IssueRecord

    with transaction(engine) as session:
        known = session.scalar(select(IssueRecord.number).where(IssueRecord.key == issue_key(day, kind)))
        if known is not None:
            return int(known)
        before = session.scalar(select(func.max(IssueRecord.number)).where(
            IssueRecord.kind == kind, IssueRecord.date < day, IssueRecord.audience_topic.is_(None)))
    return int(before or 0) + 1


def sent_slugs(engine: Engine) -> set[str]:
    """Articles already sent in a daily issue: on the calendar as sent, or in the
    ledger (an issue sent by hand with `newsletter send` counts too)."""
    import json

    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.ledger import IssueRecord

    slugs = calendar.sent_slugs(engine)
    with transaction(engine) as session:
        # an issue for one topic's audience does not take its article from everyone else
        for articles in session.scalars(select(IssueRecord.articles).where(
                IssueRecord.kind == "daily", IssueRecord.state != "composed", IssueRecord.audience_topic.is_(None))):
            slugs.update(json.loads(articles or "[]"))
    return slugs


def ledger_counts(engine: Engine, keys: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per issue key, the ledger's rows by outcome now: bounces arrive after the run
    ended, so `status` reads them here rather than from the run."""
    from sqlalchemy import func, select

    from pipeline import ledger
    from pipeline.database import transaction

    found: dict[str, dict[str, int]] = {}
    if not keys:
        return found
    with transaction(engine) as session:
        rows = session.execute(
            select(ledger.IssueRecord.key, ledger.Delivery.state, func.count())
            .join(ledger.Delivery, ledger.Delivery.issue_id == ledger.IssueRecord.id)
            .where(ledger.IssueRecord.key.in_(list(keys)))
            .group_by(ledger.IssueRecord.key, ledger.Delivery.state)).all()
    for key, state, count in rows:
        counts = found.setdefault(key, {"sent": 0, "deferred": 0, "failed": 0, "bounced": 0})
        if state == ledger.SENT:
            counts["sent"] += count
        elif state in (ledger.DEFERRED, ledger.QUEUED, ledger.SENDING, ledger.UNCERTAIN):
            counts["deferred"] += count
        elif state == ledger.FAILED:
            counts["failed"] += count
        elif state == ledger.BOUNCED:
            counts["bounced"] += count
    return found


def settle_from_ledger(engine: Engine) -> list[Run]:
    """Runs that ended in a content error, a failure or a stop, whose issue an editor has since
    sent by hand (`newsletter send`) to the end: record them sent, with the ledger's
    counts, and mark the day's articles sent, so `status` stops alerting."""
    import json

    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.ledger import IssueRecord

    settled = []
    for run in calendar.recent_runs(engine, 30):
        if run.state not in calendar.ALERT + ("stopped",):
            continue
        key = issue_key(run.day, run.kind)
        with transaction(engine) as session:
            record = session.execute(select(IssueRecord.state, IssueRecord.articles)
                                     .where(IssueRecord.key == key)).first()
        if record is None or record.state != "sent":
            continue
        counts = ledger_counts(engine, [key]).get(key, {})
        note = f"sent by hand after {run.state}: {run.error or ''}".strip()
        done = calendar.settle_run(engine, run, "sent", issue_key=key, counts=counts, error=note)
        if done is None:
            continue
        if run.kind == "daily":
            slugs = set(json.loads(record.articles or "[]"))
            calendar.mark_entries(engine, [e.id for e in calendar.scheduled_on(engine, run.day) if e.slug in slugs],
                                  "sent", key)
        log.info("%s issue of %s was sent by hand; recorded as sent", run.kind, run.day.isoformat())
        settled.append(done)
    return settled


def _publish_and_send(engine: Engine, settings: Settings, library, issue, entries: list[Entry], holder: str,
                      *, resume: bool) -> Run:
    from pipeline.deliver import render_for_send, send_issue
    from pipeline.site import build_site, publish_issue

    kind, day = issue.kind, issue.date
    rendered = render_for_send(issue, settings)
    for warning in rendered.warnings:
        log.warning("%s issue of %s: %s", kind, day.isoformat(), warning)
    publish_issue(rendered, settings.public_dir)
    # incremental: rewrites only the pages the day's articles change (and the archive, feeds,
    # sitemap), so a send never waits on a rebuild of the whole library
    build_site(library, settings.public_dir, as_of=day)
    summary = send_issue(engine, settings, rendered, frequency=kind, resume=resume, progress=False)
    counts = ledger_counts(engine, [issue.key]).get(issue.key) or {
        name: int(getattr(summary, name, 0) or 0) for name in ("sent", "deferred", "failed", "bounced")}
    ids = [e.id for e in entries]
    if summary.lease_lost:
        raise LeaseLost(summary.error)
    if summary.stopped:
        note = (f"{summary.stopped}; `newsletter send --date {day.isoformat()} --resume` or "
                "`newsletter resume` finishes it")
        log.warning("%s issue %s: %s", kind, issue.key, note)
        return calendar.finish_run(engine, day, kind, holder, "stopped", issue_key=issue.key, counts=counts,
                                   error=note)
    if summary.state != "sent":
        # rows left deferred (or a relay refusing everything): retried, resuming the
        # ledger, inside the grace window; after it `status` alerts
        why = f"unfinished: {counts['deferred']} recipient(s) not yet delivered"
        if summary.error:
            why += f" ({summary.error})"
        why += (f"; retried within the grace window, then finish it with "
                f"`newsletter send --resume --date {day.isoformat()}`")
        calendar.mark_entries(engine, ids, "failed")
        log.error("%s issue %s: %s", kind, issue.key, why)
        return calendar.finish_run(engine, day, kind, holder, "failed", issue_key=issue.key, counts=counts, error=why)
    if kind == "daily":
        # a queued article (nothing was scheduled) goes on the calendar as sent, so the
        # weekly digest finds it and `schedule list` shows it
        scheduled = {e.slug for e in entries}
        for slug in (a.slug for a in issue.articles if a.slug not in scheduled):
            ids.append(calendar.add_sent_entry(engine, slug, day, issue.key))
        calendar.mark_entries(engine, ids, "sent", issue.key)
    log.info("%s issue %s (%s): sent %d, deferred %d, failed %d, bounced %d", kind, issue.key,
             ", ".join(a.slug for a in issue.articles), counts["sent"], counts["deferred"], counts["failed"],
             counts["bounced"])
    return calendar.finish_run(engine, day, kind, holder, "sent", issue_key=issue.key, counts=counts)
