"""Plan stage: what a given day sends, decided in one place.

``plan_day`` is the one function that answers "what does (day, kind) send?".
The daemon (``schedule.run_day``), ``run --once``, ``newsletter send``,
``send-test --date``, ``preview --date`` and ``schedule list`` all ask it, so
what an editor sees is what goes out.  The rules, in order:

1. An issue the ledger already recorded for that day (a retry, a resumed crash, a
   hand send) is sent again as it was: the same articles, the same number.  Part
   of it may be out already, so the calendar no longer decides it.
2. The weekly digest holds the daily articles that went out since the previous
   weekly digest: sent in the seven days up to and including its own day,
   whatever the hour, and not in the previous digest (so a Monday article sent
   after the Monday digest goes into the next one).
3. A daily issue holds the articles on the calendar for that day.  An article
   whose ``published`` date is after the day is embargoed: its page is not on
   the site yet, so the day is a content error rather than an email with a dead
   link.
4. With nothing on the calendar, the queue gives the oldest published article
   that has not gone out and is not planned for another day, only when
   ``send_when_nothing_due`` is on.  Otherwise nothing is sent, with the reason.
5. Under every rule, an article ``pipeline.corrections.signoff.held`` names (retracted,
   or with a significant correction awaiting sign-off) is left out: it never goes
   out again, and a recorded issue that carries it is not sent to anyone more.

The module also settles past days that were left without an outcome
(``close_past_days``), records a hand send as the day's issue
(``record_hand_send``), and names the one next step for an article that did not
go out (``next_step``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Collection

from sqlalchemy import Engine, select

from pipeline.scheduling import calendar, issue_history, schedule
from pipeline.scheduling import slots
from pipeline import clock
from pipeline.delivery import ledger
from pipeline.scheduling.calendar import Entry, Run
from pipeline.rendering.compose import compose_issue, weekly_issue
from pipeline.database import transaction
from pipeline.errors import ContentError, ReviewError, ScheduleError
from pipeline.review import reviews
from pipeline.rendering.issue import Issue, issue_key
from pipeline.settings import Settings

log = logging.getLogger("newsletter.schedule")

# ledger issue states in which at least part of an issue may have gone out
STARTED = ("queued", "sending", "sent", "unfinished", "waiting")


@dataclass(frozen=True)
class DayPlan:
    """What (``day``, ``kind``) sends: ``issue`` (None when nothing goes out, with
    ``reason``), where its articles come from (``source``: recorded, calendar,
    queue, weekly or none) and the day's calendar entries."""

    day: date
    kind: str
    issue: Issue | None
    source: str
    entries: tuple[Entry, ...] = ()
    reason: str | None = None
    held: tuple[str, ...] = ()  # why calendar articles were left out (retracted, awaiting sign-off)

    @property
    def sends(self) -> bool:
        return self.issue is not None

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(a.slug for a in self.issue.articles) if self.issue else ()

    def describe(self) -> str:
        """One line for the CLI: the issue key, number and articles, or why nothing goes out."""
        if self.issue is None:
            return f"nothing to send for the {self.kind} issue of {self.day.isoformat()}: {self.reason}"
        digest = " (digest)" if len(self.slugs) > 1 and self.kind == "daily" else ""
        left_out = f" (left out: {'; '.join(self.held)})" if self.held else ""
        return f"{self.issue.key} (number {self.issue.number}){digest}: {', '.join(self.slugs)}{left_out}"


def plan_day(engine: Engine, settings: Settings, library, day: date, kind: str = "daily", *,
             topic: str | None = None, taken: Collection[str] = (), override_review: str | None = None) -> DayPlan:
    """What (``day``, ``kind``) sends (see the module rules).  ``topic`` plans the issue
    for one topic's audience; ``taken`` are slugs to treat as gone already (the
    calendar listing chains the queue over the coming days with it).

    Raises ``ContentError`` for a calendar entry that cannot go out that day (not in
    the library, or embargoed), ``ScheduleError`` for a weekly plan on another day,
    and ``ReviewError`` (a ``ScheduleError``) when ``review_required`` is on and a
    new daily issue holds an article whose current version no reviewer approved,
    unless ``override_review`` gives the reason to send it anyway (the caller audits it).
    """
    if kind not in calendar.KINDS:
        raise ScheduleError(f"kind must be daily or weekly, got {kind!r}")
    if kind == "weekly" and not slots.is_weekly_day(day, settings):
        raise ScheduleError(f"{day.isoformat()} is not a {settings.weekly_day}: no weekly digest goes out that day")
    plan = _plan(engine, settings, library, day, kind, topic, taken)
    if plan.issue is None:
        return plan
    if plan.source in ("calendar", "queue") and settings.review_required and not (override_review or "").strip():
        _refuse_unreviewed(engine, plan)
    # the issue's approved articles say "Medically reviewed by ..." (only they are looked at:
    # `schedule list` plans many days of a library that may hold thousands of articles)
    return replace(plan, issue=replace(plan.issue, articles=reviews.attach_articles(engine, settings,
                                                                                   plan.issue.articles)))


def _refuse_unreviewed(engine: Engine, plan: DayPlan) -> None:
    """A new daily issue goes out only when each article's current version is approved."""
    blocked = reviews.blocking(engine, plan.issue.articles)
    if not blocked:
        return
    names = ", ".join(f"{b.slug} ({b.label})" for b in blocked)
    first = blocked[0].slug
    raise ReviewError(
        f"the daily issue of {plan.day.isoformat()} is held, not sent: awaiting medical review: {names}; "
        f"a reviewer approves it with "
        f"`newsletter review approve {first} --as EMAIL` (or in the console), then the day can go "
        f"(`newsletter send --date {plan.day.isoformat()}` by hand, or the daemon's next try)", tuple(b.slug for b in blocked))


def _plan(engine: Engine, settings: Settings, library, day: date, kind: str, topic: str | None,
          taken: Collection[str]) -> DayPlan:
    label = None
    if topic is not None:
        from subscribers.tokens import audience_label
        label = audience_label(settings, topic)
    from pipeline.corrections.signoff import held as held_articles

    barred = held_articles(engine)
    entries = tuple(calendar.scheduled_on(engine, day)) if kind == "daily" else ()
    known = ledger.find_issue(engine, issue_key(day, kind, label))
    if known is not None and known.articles:
        stopped = [barred[slug] for slug in known.articles if slug in barred]
        if stopped and known.state != "sent":
            return DayPlan(day, kind, None, "none", entries, reason=(
                f"issue {known.key} carries an article that may not go out any more ({'; '.join(stopped)}); "
                "nobody else is sent it"))
        issue = compose_issue(library, day, number=known.number, scheduled=list(known.articles),
                              audience_topic=known.audience_topic, kind=known.kind)
        return DayPlan(day, kind, issue, "recorded", entries)
    number = issue_history.issue_number(engine, day, kind)
    if kind == "weekly":
        sent_on = {slug: when for slug, when in weekly_sent_on(engine, day).items() if slug not in barred}
        issue = weekly_issue(library, day, number, sent_on=sent_on, audience_topic=topic,
                             start=day - timedelta(days=7))
        if issue is None:
            return DayPlan(day, kind, None, "none", reason="no daily article went out since the last weekly digest")
        return DayPlan(day, kind, issue, "weekly")
    held = tuple(barred[e.slug] for e in entries if e.slug in barred)
    if held and all(e.slug in barred for e in entries):
        return DayPlan(day, kind, None, "none", entries, reason="; ".join(held), held=held)
    if entries:
        for entry in entries:
            published = library.article(entry.slug).published  # an unknown slug is a ContentError naming it
            if published > day:
                raise ContentError(f"calendar: {entry.slug} is scheduled on {day.isoformat()} but is embargoed "
                                   f"until {published.isoformat()} (its published date): "
                                   f"`newsletter schedule move {entry.slug} --to {published.isoformat()}`")
        issue = compose_issue(library, day, number=number,
                              scheduled=[e.slug for e in entries if e.slug not in barred], audience_topic=topic)
        return DayPlan(day, kind, issue, "calendar", entries, held=held)
    if not settings.send_when_nothing_due:
        return DayPlan(day, kind, None, "none", reason=(
            f"nothing is scheduled (send_when_nothing_due is off); put an article on the calendar first: "
            f"`newsletter schedule add SLUG --on {day.isoformat()}`"))
    gone = issue_history.sent_slugs(engine) | planned_slugs(engine) | set(taken) | set(barred)
    issue = compose_issue(library, day, number=number, sent=gone, audience_topic=topic)
    if issue is None:
        return DayPlan(day, kind, None, "none",
                       reason="nothing is scheduled and the queue has no unsent article published by then")
    return DayPlan(day, kind, issue, "queue")


def planned_slugs(engine: Engine) -> set[str]:
    """Articles on the calendar for some day: the queue never takes them early."""
    return {e.slug for e in calendar.entries(engine, states=("scheduled", "failed"))}


def _daily_issues(engine: Engine, start: date, end: date) -> list[ledger.IssueInfo]:
    """The general daily issues of ``start`` .. ``end`` whose send has started."""
    with transaction(engine) as session:
        rows = session.execute(select(ledger.IssueRecord).where(
            ledger.IssueRecord.kind == "daily", ledger.IssueRecord.audience_topic.is_(None),
            ledger.IssueRecord.date >= start, ledger.IssueRecord.date <= end,
            ledger.IssueRecord.state.in_(STARTED))).scalars().all()
        return [ledger.IssueInfo.of(r) for r in rows]


def weekly_sent_on(engine: Engine, day: date) -> dict[str, date]:
    """slug -> day its daily issue went out, for the weekly digest of ``day``: the
    seven days up to ``day`` and the previous weekly day, less what the previous
    digest already held."""
    start = day - timedelta(days=7)
    found: dict[str, date] = {}
    for entry in calendar.entries(engine, start=start, end=day, states=("sent",)):
        found.setdefault(entry.slug, entry.day)
    for issue in _daily_issues(engine, start, day):  # hand sends the calendar does not know yet
        for slug in issue.articles:
            found.setdefault(slug, issue.date)
    previous = ledger.find_issue(engine, issue_key(start, "weekly"))
    if previous is not None and previous.state in STARTED:
        for slug in previous.articles:
            found.pop(slug, None)
    return found


# -- what an article that did not go out needs -------------------------------------------------

@dataclass(frozen=True)
class Reach:
    """A started daily issue holding an article, and how far it got."""

    issue: ledger.IssueInfo
    sent: int
    total: int

    @property
    def finished(self) -> bool:
        return self.issue.state == "sent"


def reach_of(engine: Engine, slug: str) -> Reach | None:
    """The general daily issue holding ``slug`` whose send started (it may have
    reached someone), with its counts; None when no send of it ever started."""
    from pipeline.delivery.ledger import Delivery, IssueRecord

    with transaction(engine) as session:
        rows = session.execute(select(IssueRecord).where(
            IssueRecord.kind == "daily", IssueRecord.audience_topic.is_(None),
            IssueRecord.state.in_(STARTED))).scalars().all()
        hits = [ledger.IssueInfo.of(r) for r in rows if slug in json.loads(r.articles or "[]")]
        if not hits:
            return None
        info = sorted(hits, key=lambda i: i.date)[-1]
        states = session.execute(select(Delivery.state).where(Delivery.issue_id == info.id)).scalars().all()
    return Reach(info, sum(s == ledger.SENT for s in states), len(states))


def resume_command(day: date) -> str:
    return f"`newsletter send --resume --date {day.isoformat()}`"


def refuse_if_reached(engine: Engine, slug: str) -> None:
    """``schedule add``/``move`` of an article whose send started would mail it again to
    everyone as a new issue: refuse, naming the one action that is right."""
    reach = reach_of(engine, slug)
    if reach is None:
        return
    day = reach.issue.date
    if reach.finished:
        raise ScheduleError(f"{slug} was already sent on {day.isoformat()} (issue {reach.issue.key}, "
                            f"{reach.sent} recipient(s)); it is never sent twice")
    if reach.issue.state == "waiting":
        raise ScheduleError(f"{slug} is going out in the issue of {day.isoformat()} at each reader's local time "
                            f"({reach.sent} of {reach.total} sent so far); it is never sent twice")
    raise ScheduleError(f"{slug} is in the unfinished issue of {day.isoformat()} ({reach.sent} of {reach.total} "
                        f"sent); finish that issue with {resume_command(day)}, which mails only those not yet "
                        "delivered")


def next_step(engine: Engine, entry: Entry) -> str:
    """The one thing to do about an entry that did not go out (missed or failed)."""
    reach = reach_of(engine, entry.slug)
    if reach is not None and not reach.finished:
        return (f"{entry.slug}: the issue of {reach.issue.date.isoformat()} is unfinished ({reach.sent} of "
                f"{reach.total} sent): {resume_command(reach.issue.date)} finishes it")
    return (f"{entry.slug} was {entry.state} on {entry.day.isoformat()}: "
            f"`newsletter schedule move {entry.slug} --to DATE` puts it back")


# -- past days and hand sends ------------------------------------------------------------------

def close_past_days(engine: Engine, settings: Settings) -> list[Entry]:
    """Every calendar entry still ``scheduled`` on a day that is over (an earlier local
    day whose send window has closed) gets an outcome: the entry ``missed`` and, for
    a day no run recorded (an outage longer than the daemon's look-back), a
    ``missed`` run whose note names the next step; a content-error day keeps its
    state and gains the note.  Returns the entries closed."""
    tz = slots.zone(settings)
    now = clock.now()
    today = slots.local_day(now, tz)
    stranded = calendar.entries(engine, end=today - timedelta(days=1), states=("scheduled",))
    by_day: dict[date, list[Entry]] = {}
    for entry in stranded:
        by_day.setdefault(entry.day, []).append(entry)
    closed: list[Entry] = []
    for day, day_entries in sorted(by_day.items()):
        slot = schedule.planned_slot(engine, settings, day, "daily")
        if now <= slot.instant + slots.grace(settings):
            continue  # still inside its window: the daemon may send it late
        run = calendar.get_run(engine, day, "daily")
        if run is not None and run.state in ("running", "pending", "failed"):
            continue  # in hand, or a started send: the ledger and `send --resume` deal with it
        slugs = " ".join(e.slug for e in day_entries)
        step = (f"its article(s) are marked missed; `newsletter schedule move {day_entries[0].slug} --to DATE` "
                "puts one back")
        if run is None:
            calendar.record_outcome(engine, day, "daily", "missed", planned_at=slot.instant,
                                    error=f"not sent: no daemon sent {slugs} by the end of its window; {step}")
        elif run.state == "content-error" and "marked missed" not in (run.error or ""):
            calendar.settle_run(engine, run, run.state, error=f"{run.error}; the day is over: {step}")
        calendar.mark_entries(engine, [e.id for e in day_entries], "missed")
        log.warning("daily issue of %s was never sent (%s): %s marked missed", day.isoformat(),
                    run.state if run else "no run", slugs)
        closed += day_entries
    return closed


def record_hand_send(engine: Engine, plan: DayPlan, summary) -> Run | None:
    """A general daily issue sent to the end with ``newsletter send`` is that day's
    issue everywhere: its calendar entries are sent (a queued article gains one),
    and the day's run says ``sent``, so the daemon neither records it missed nor
    leaves it out of the weekly digest."""
    state = summary.state  # waiting: sent to the waves released so far; the daemon sends the rest
    if plan.issue is None or plan.kind != "daily" or plan.issue.audience_topic is not None or \
            state not in ("sent", "waiting"):
        return None
    day, key = plan.day, plan.issue.key
    slugs = set(plan.slugs)
    on_day = calendar.entries(engine, start=day, end=day)
    mark = [e.id for e in on_day if e.slug in slugs and e.state in ("scheduled", "failed", "missed")]
    calendar.mark_entries(engine, mark, "sent", key)
    known = {e.slug for e in on_day if e.slug in slugs}
    for slug in plan.slugs:
        if slug not in known:
            calendar.add_sent_entry(engine, slug, day, key)
    counts = issue_history.ledger_counts(engine, [key]).get(key, {})
    note = "sent by hand with `newsletter send`"
    run = calendar.get_run(engine, day, "daily")
    if run is None:
        from pipeline.delivery import ledger
        issue = ledger.find_issue(engine, key)  # the send began when the issue was recorded, not at its --resume
        run = (calendar.record_outcome(engine, day, "daily", state, error=note,
                                       started_at=issue.created_at if issue is not None else None)
               or calendar.get_run(engine, day, "daily"))
        if run is not None and run.state == state and run.issue_key is None:
            return calendar.settle_run(engine, run, state, issue_key=key, counts=counts, error=note)
        return run
    if run.state not in ("sent", "running") and not (run.state == state == "waiting"):
        return calendar.settle_run(engine, run, state, issue_key=key, counts=counts,
                                   error=f"{note} after {run.state}" + (f": {run.error}" if run.error else ""))
    return run


# -- the calendar as the editors see it -----------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One coming slot for ``schedule list``: its entries, run, pause and plan."""

    slot: slots.Slot
    entries: tuple[Entry, ...]
    run: Run | None
    paused: bool
    plan: DayPlan | None = None
    problem: str | None = None  # the plan could not be made (content error)
    awaiting_review: tuple[str, ...] = ()  # articles whose current version no reviewer approved yet


def upcoming(engine: Engine, settings: Settings, days: int = 14, library=None) -> list[Row]:
    """The coming ``days`` days' slots (``schedule.upcoming``).  With ``library``, each
    slot not yet done carries ``plan_day``'s answer, the queue chained over the days
    (each queued article is offered once); a weekly digest's is what went out so far."""
    taken: set[str] = set()
    rows = []
    for slot, day_entries, run, paused in schedule.upcoming(engine, settings, days):
        plan = problem = None
        awaiting: tuple[str, ...] = ()
        if library is not None and (run is None or not run.final):
            try:
                plan = plan_day(engine, settings, library, slot.day, slot.kind, taken=taken)
                if plan.source == "queue":
                    taken.update(plan.slugs)
            except ReviewError as exc:
                awaiting = exc.slugs
                if not day_entries:  # the queue offers it: chain the queue past it
                    taken.update(exc.slugs)
            except (ContentError, ScheduleError) as exc:
                problem = str(exc)
        rows.append(Row(slot, tuple(day_entries), run, paused, plan, problem, awaiting))
    return rows


def local_time(instant: datetime | None, settings: Settings) -> str:
    return instant.astimezone(slots.zone(settings)).strftime("%H:%M %Z") if instant else "-"
