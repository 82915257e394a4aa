"""Schedule stage: when each day's issue goes out, and doing one day's work once.

Decisions are pure functions of the clock (``pipeline.clock.now()``), the
settings and what the database says; ``wake`` applies them and ``run_day`` does
one (day, kind):

1. load and check the content; on any error record ``content-error``, log why,
   and leave the calendar as it is (fix, then ``newsletter send`` or
   ``newsletter run --once --date D``);
2. ask ``pipeline.scheduling.plan.plan_day`` (the one decider, shared with every command)
   what the day sends; when nothing, the run is recorded ``nothing-to-send``
   with the reason and no email goes out;
3. render it, publish its archive page and rebuild the archive and feeds;
4. send it to confirmed subscribers of that frequency through the send ledger.

Exactly once per (day, kind): the send lease lets one process at a time work, the
``runs`` row (unique on day and kind) records who did the day and how it ended,
and the send ledger underneath never mails a subscriber twice even when a run is
resumed after a crash.

The time rules (send instants, daylight-saving changes, grace, pause) are in
``pipeline/scheduling/slots.py``; what the ledger says about past issues is read through
``pipeline/scheduling/issue_history.py``.
"""
from __future__ import annotations

import logging
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from pipeline.scheduling import calendar, wave_sends
from pipeline.delivery import leases
from pipeline import clock
from pipeline.scheduling.calendar import Entry, Run
from pipeline.errors import ContentError, LeaseLost, NewsletterError, ScheduleError
from pipeline.scheduling import issue_history
from pipeline.scheduling.issue_history import ledger_counts, settle_from_ledger
from pipeline.settings import Settings, load_settings
from pipeline.scheduling.slots import Slot, grace, local_day, slots_for, today, zone

log = logging.getLogger("newsletter.schedule")

# how far back a waking daemon looks for days it should have sent (and records them missed)
LOOKBACK_DAYS = 3
# a failed run is retried, inside the grace window, no sooner than this after it failed
RETRY_AFTER = timedelta(minutes=5)

_work = threading.Lock()  # one run at a time per process (the lease is per holder, not per thread)


# -- the daemon's decisions ----------------------------------------------------------------

def decide(slot: Slot, now: datetime, window: timedelta, run: Run | None, paused: bool, wave_due: bool = False,
           wave_call: datetime | None = None) -> str:
    """What a waking daemon does about ``slot``:

    ``wait`` (not yet), ``run`` (send now, or retry/resume within the window),
    ``miss`` (too late: record missed), ``pause`` (record paused),
    ``expire`` (a failed or interrupted run whose window has closed: leave it to
    an editor), ``done`` (nothing more to do for this slot).  ``wave_due``: a wave of
    the day's issue was released since the run's last attempt began, and has rows still
    queued (``wave_sends.wave_due``); it is sent at once whatever state the run was left
    in, unless paused (then it waits for ``resume``).  ``wave_call``: the latest
    released wave with rows still open (``wave_sends.last_open_wave``); a run's window
    counts from it when later than the editors' time (each wave has its own grace).
    """
    late = now > max(slot.last_call, wave_call or slot.last_call) + window
    if run is not None and run.state in ("waiting", "failed", "running") and wave_due:
        return "wait" if paused else "run"
    if run is not None and run.state == "waiting":
        return "wait"  # the next wave is not released yet
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
    # and the next two days: their first wave (Pacific/Auckland's 07:00) may be today here
    days = candidate_days(today_, first) + [today_ + timedelta(days=n) for n in (1, 2)]
    runs = calendar.runs_between(engine, days[0], days[-1])
    custom = custom_times(engine, days[0], days[-1])
    groups = {kind: wave_sends.audience_groups(engine, kind) for kind in calendar.KINDS}
    pause = calendar.get_pause(engine)
    lease = leases.lease_holder(engine, leases.SEND_LEASE)
    done: list[Run] = []
    for day in days:
        for slot in slots_for(day, settings, custom.get(day, [])):
            slot = wave_sends.opening(slot, settings, groups[slot.kind], custom.get(day, []))
            run = runs.get((day, slot.kind))
            if first is None and day < today_ and now > slot.last_call + window:
                continue  # a database that never ran: yesterday was not expected of anyone
            if run is not None and run.state == "stopped":
                # an operator stopped it: it goes on only once they release the stop
                # (`newsletter resume`), whatever the time, since part of it is out already
                from pipeline.delivery import stops
                if not pause.covers(day) and not stops.blocks(engine, day):
                    done.append(run_day(engine, settings, content_dir, day, slot.kind, holder=holder, slot=slot))
                continue
            due, call = False, None
            if run is not None and run.state in ("waiting", "failed", "running") and run.issue_key is not None:
                due = wave_sends.wave_due(engine, run.issue_key, run.started_at, now,
                                         None if run.state == "waiting" else window)
                call = wave_sends.last_open_wave(engine, run.issue_key, now)
            action = decide(slot, now, window, run, pause.covers(day), due, call)
            if action in ("wait", "done"):
                continue
            if run is not None and run.state == "running" and lease is not None:
                # its holder is alive and working on it; on PostgreSQL this node joins its send (nodes15)
                from pipeline.scheduling.joining import join_day
                join_day(engine, settings, content_dir, run)
                continue
            if action == "run" and run is None and slot.kind == "daily" and slot.editors is not None \
                    and now < slot.editors and not custom.get(day) and not settings.send_when_nothing_due:
                continue  # an early wave with nothing planned yet: editors may still add the day's article
            replace = run if reopened(slot, run) else None
            if action == "miss" and slot.kind == "daily" and not custom.get(day) and not settings.send_when_nothing_due:
                _record_skip(engine, slot, "nothing-to-send", "nothing was scheduled (and the daemon was not running "
                             "at the send time)", replace)
            elif action == "miss":
                _record_skip(engine, slot, "missed",
                             f"not sent: the daemon was not running between {_local(slot.instant, tz)} and "
                             f"{_local(slot.last_call + window, tz)} (grace {settings.grace_minutes} min)", replace)
            elif action == "pause":
                _record_skip(engine, slot, "paused", "sending was paused at the send time", replace)
            elif action == "expire":
                _expire(engine, slot, run)  # type: ignore[arg-type]
            else:
                done.append(run_day(engine, settings, content_dir, day, slot.kind, holder=holder, slot=slot))
    from pipeline.scheduling.plan import close_past_days
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
                and now > slot.last_call + grace(settings):
            _record_skip(engine, slot, "missed", f"too late: more than {settings.grace_minutes} min after the send time",
                         current if reopen else None)
            return calendar.get_run(engine, day, kind) or current  # type: ignore[return-value]
        retry: tuple[str, ...] = ("pending", "failed", "stopped", "waiting")
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
            return _perform(engine, settings, Path(content_dir), day, kind, holder, resume=claimed.attempts > 1,
                            by_hand=force)
        except LeaseLost:
            # this process stalled past its lease and another took the day over: it has
            # written nothing since, and leaves the outcome to the new holder
            log.warning("%s issue of %s: lost the send lease to another process; stopped here, "
                        "the new holder records the outcome", kind, day.isoformat())
            return calendar.get_run(engine, day, kind)  # type: ignore[return-value]


def _perform(engine: Engine, settings: Settings, content_dir: Path, day: date, kind: str, holder: str,
             *, resume: bool, by_hand: bool = False) -> Run:
    from pipeline.content.library import check_library
    from pipeline.scheduling.plan import plan_day

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
    from pipeline.review.reviews import attach
    library = attach(engine, library)  # its pages say "Medically reviewed by ..." where approved
    try:
        plan = plan_day(engine, settings, library, day, kind)  # the one decider
        if plan.issue is None:
            log.info("%s issue of %s: nothing to send (%s)", kind, day.isoformat(), plan.reason)
            held = wave_sends.hold_waves(engine, issue_history.issue_key(day, kind), plan.reason or "held")
            why = f"{plan.reason}; its {held} recipient(s) of later waves are not sent it" if held else plan.reason
            return calendar.finish_run(engine, day, kind, holder, "nothing-to-send", error=why)
        return _publish_and_send(engine, settings, library, plan.issue, list(plan.entries), holder, resume=resume,
                                 by_hand=by_hand)
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


def _publish_and_send(engine: Engine, settings: Settings, library, issue, entries: list[Entry], holder: str,
                      *, resume: bool, by_hand: bool = False) -> Run:
    from pipeline.delivery.deliver import render_for_send
    from pipeline.site.pages import build_site, publish_issue

    kind, day = issue.kind, issue.date
    rendered = render_for_send(issue, settings)
    for warning in rendered.warnings:
        log.warning("%s issue of %s: %s", kind, day.isoformat(), warning)
    publish_issue(rendered, settings.public_dir, settings=settings)
    # incremental: rewrites only the pages the day's articles change (and the archive, feeds,
    # sitemap), so a send never waits on a rebuild of the whole library
    from pipeline.corrections.notices import site_update
    build_site(library, settings.public_dir, as_of=day,
               notices=site_update(library, day, engine=engine, sent=issue.articles))
    # each reader's local time (``run --once`` is the editors sending by hand: their readers get it now)
    summary = wave_sends.send_with_waves(engine, settings, rendered, [e.at for e in entries], by_hand=by_hand,
                                         frequency=kind, resume=resume, progress=False)
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
    if summary.state == "waiting":
        return wave_sends.wait_for_waves(engine, settings, issue, entries, holder, counts)
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

