"""An issue's waves in the ledger: when its rows are released, and what is due.

``pipeline.scheduling.waves`` says when each (time_zone, delivery_hour) group gets
the issue of a date; this module applies that to the send ledger and the daemon:

- ``releases_for`` is the one decider of each ledger row's ``release_at``: it is
  handed to ``send_issue`` by ``send_with_waves``, the one way the daemon,
  ``newsletter send`` and a node joining a send call it, and the
  ledger calls it with the recipients' groups while it writes the rows (one
  INSERT ... SELECT with a CASE per group).  Correction notices are not waved:
  they go at once.
- ``opening`` moves a day's slot to its first wave, so the daemon composes the
  issue (renders it once, writes its ledger) at the first reader's local time;
  the grace window still counts from the editors' time (``Slot.last_call``).
- ``wave_due`` tells the daemon that a wave was released since the run's last
  attempt began, and ``last_open_wave`` the wave a run's grace counts from; ``next_release`` when the next one is; ``waves_of_issue`` what
  ``status`` shows per wave; ``release_all`` is ``newsletter send --release-all``.

Nothing here sends; ``pipeline.scheduling.schedule`` does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Iterable, Sequence

from sqlalchemy import Engine, and_, case, func, select, true, update

from pipeline import clock
from pipeline.delivery import ledger
from pipeline.scheduling import calendar, waves
from pipeline.scheduling.slots import Slot, local_day, slots_for
from pipeline.settings import Settings
from subscribers.delivery_time import Group, waves_of

log = logging.getLogger("newsletter.schedule")

D = ledger.DELIVERIES
I = ledger.ISSUES


def releases_for(settings: Settings, day: date, kind: str, custom: Sequence[str | None] = (), *,
                 by_hand: bool = False) -> Callable[[Iterable[Group]], dict[Group, datetime]]:
    """The release of each group of the issue of ``day`` (``custom``: its articles' ``--at``).

    ``by_hand`` (``newsletter send``, ``run --once``): the editors are sending now, so
    readers who keep the editors' time (no zone, no hour of their own) get it now if
    that is earlier; everyone else still at their own local time."""
    def releases(groups: Iterable[Group]) -> dict[Group, datetime]:
        found = waves.release_instants(day, kind, settings, groups, custom)
        editors = Group(None, None)
        if by_hand and editors in found:
            found[editors] = min(found[editors], clock.now())
        return found
    return releases


def send_with_waves(engine: Engine, settings: Settings, rendered, custom: Sequence[str | None] = (), *,
                    by_hand: bool = False, release_all: bool = False, **options):
    """``send_issue`` with each reader's wave (``releases_for``): the one way the daemon,
    ``newsletter send`` and a node joining a send reach the ledger, so whichever of them
    ends up writing the recipients (a joiner takes the lead when the leader died first)
    releases each row at its reader's local time.  ``release_all``
    (``newsletter send --release-all``) is the one exception: every row at once."""
    from pipeline.delivery.deliver import send_issue

    issue = rendered.issue
    releases = None if release_all else releases_for(settings, issue.date, issue.kind, custom, by_hand=by_hand)
    return send_issue(engine, settings, rendered, releases=releases, **options)


def audience_groups(engine: Engine, kind: str) -> list[Group]:
    """The groups among the confirmed subscribers of the frequency ``kind`` (all topics:
    an issue's audience is one of its subsets, so its first wave is never earlier)."""
    from subscribers.models import Subscriber

    sub = Subscriber.__table__
    query = select(sub.c.id).where(sub.c.status == "confirmed", sub.c.frequency == kind)
    return [g.group for g in waves_of(engine, query)]


def opening(slot: Slot, settings: Settings, groups: Sequence[Group], custom: Sequence[str | None] = ()) -> Slot:
    """``slot`` starting at the first wave of its readers (the editors' instant is kept
    for the grace window); unchanged when nobody has a time of their own."""
    if not groups or all(g == Group(None, None) for g in groups):
        return slot
    first, _last = waves.release_window(slot.day, slot.kind, settings, groups, custom)
    return replace(slot, instant=first, editors=slot.instant)


def _aware(value) -> datetime | None:
    if value is None or isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, datetime):  # min() bypasses the column type on SQLite
        value = datetime.fromisoformat(str(value))
    return value.replace(tzinfo=timezone.utc)


def _issue_id(conn, key: str) -> int | None:
    return conn.execute(select(I.c.id).where(I.c.key == key)).scalar_one_or_none()


OPEN = (ledger.QUEUED, ledger.DEFERRED, ledger.SENDING, ledger.UNCERTAIN)


def wave_due(engine: Engine, key: str, since: datetime | None, now: datetime, window: timedelta | None) -> bool:
    """Has a wave of issue ``key`` been released after ``since`` (when the run's last attempt
    began: that attempt may have ended before the wave, or counted it unfinished as it came
    in), within the last ``window`` when given (the grace window, counted from the wave's own
    release: the rest of a run interrupted or failed days ago is not sent late; the daemon
    passes None for a run ``waiting`` between waves, whose held wave goes when a pause is
    lifted), with rows still queued?  Then the daemon sends it at once, whatever state the run was left in; the
    ledger skips whoever has it."""
    with engine.connect() as conn:
        found = conn.execute(select(func.count()).select_from(D.join(I, I.c.id == D.c.issue_id))
                             .where(I.c.key == key, D.c.state == ledger.QUEUED, D.c.release_at.is_not(None),
                                    D.c.release_at <= now, D.c.release_at >= now - window if window is not None else true(),
                                    D.c.release_at > since if since is not None else true())).scalar_one()
    return found > 0


def last_open_wave(engine: Engine, key: str, now: datetime) -> datetime | None:
    """The latest wave of issue ``key`` released by ``now`` that still has rows not final
    (queued, deferred, sending, uncertain): the daemon's grace for the issue's run counts
    from it, so a run interrupted or failed in a later wave is resumed or retried within
    that wave's own window."""
    with engine.connect() as conn:
        when = conn.execute(select(func.max(D.c.release_at)).select_from(D.join(I, I.c.id == D.c.issue_id))
                            .where(I.c.key == key, D.c.state.in_(OPEN), D.c.release_at <= now)).scalar_one()
    return _aware(when)


def next_release(engine: Engine, key: str, now: datetime) -> tuple[datetime | None, int]:
    """The next wave of issue ``key`` after ``now`` and how many rows wait for it and later ones."""
    with engine.connect() as conn:
        when, count = conn.execute(select(func.min(D.c.release_at), func.count())
                                   .select_from(D.join(I, I.c.id == D.c.issue_id))
                                   .where(I.c.key == key, D.c.state == ledger.QUEUED,
                                          D.c.release_at > now)).one()
    return _aware(when), count


def next_wave_after(engine: Engine, now: datetime) -> datetime | None:
    """The next release instant of any issue still waiting (for the daemon's ``next-send``)."""
    with engine.connect() as conn:
        when = conn.execute(select(func.min(D.c.release_at)).select_from(D.join(I, I.c.id == D.c.issue_id))
                            .where(I.c.state == "waiting", D.c.state == ledger.QUEUED,
                                   D.c.release_at > now)).scalar_one()
    return _aware(when)


@dataclass(frozen=True)
class WaveCount:
    """One release instant of an issue: its rows, how many were sent and how many are final."""

    instant: datetime | None  # None: released at once (no wave)
    released: bool
    total: int
    sent: int
    open: int  # queued, deferred, sending, uncertain


def waves_of_issue(engine: Engine, key: str, now: datetime) -> list[WaveCount]:
    """Issue ``key``'s rows by release instant, earliest first."""
    open_ = case((D.c.state.in_(OPEN), 1), else_=0)
    sent = case((D.c.state == ledger.SENT, 1), else_=0)
    with engine.connect() as conn:
        rows = conn.execute(select(D.c.release_at, func.count(), func.sum(sent), func.sum(open_))
                            .select_from(D.join(I, I.c.id == D.c.issue_id)).where(I.c.key == key)
                            .group_by(D.c.release_at)).all()
    found = [WaveCount(_aware(at), at is None or _aware(at) <= now, total, int(s or 0), int(o or 0))
             for at, total, s, o in rows]
    return sorted(found, key=lambda w: (w.instant is not None, w.instant or now))


def release_all(engine: Engine, key: str, now: datetime) -> int:
    """Release every wave of issue ``key`` now (``newsletter send --release-all``); how many rows."""
    with engine.begin() as conn:
        issue_id = _issue_id(conn, key)
        if issue_id is None:
            return 0
        return conn.execute(update(D).where(and_(D.c.issue_id == issue_id, D.c.state == ledger.QUEUED,
                                                 D.c.release_at > now)).values(release_at=now)).rowcount


def waiting_days(engine: Engine) -> dict[date, str]:
    """Days whose daily issue waits for later waves (no send under way): {day: issue key}."""
    with engine.connect() as conn:
        rows = conn.execute(select(I.c.date, I.c.key).where(I.c.state == "waiting", I.c.kind == "daily",
                                                            I.c.audience_topic.is_(None))).all()
    return {r.date: r.key for r in rows}


def stop_waiting(engine: Engine, day: date, key: str, who: str, tz) -> str:
    """``newsletter stop`` of a day between its waves: the waves not yet sent are held (the
    request is honoured at once, the run recorded ``stopped``) until ``newsletter resume``
    or ``newsletter send --date D --resume``.  Returns the line to print."""
    from pipeline.delivery import stops

    counts = ledger.state_counts(engine, ledger.find_issue(engine, key).id)
    total = sum(counts.values())
    made = stops.request(engine, day, who)
    stops.honour(engine, [made.id], key, counts[ledger.SENT], total)
    line = stops.stopped(engine, key).describe(tz) + " (between its waves: the later ones are held)"
    for kind in ("daily",):
        run = calendar.get_run(engine, day, kind)
        if run is not None and run.state == "waiting":
            calendar.settle_run(engine, run, "stopped", error=line)
    return line


def current_waves(engine: Engine, now: datetime) -> list[tuple[str, list[WaveCount]]]:
    """What ``status`` shows: each issue with waves still to come or open (oldest first), else
    the newest issue that had waves; with its waves (an issue with one wave, released, is left out)."""
    with engine.connect() as conn:
        keys = conn.execute(select(I.c.key).where(I.c.state.in_(("waiting", "queued", "sending", "unfinished")),
                                                  select(D.c.id).where(D.c.issue_id == I.c.id,
                                                                       D.c.release_at.is_not(None)).exists())
                            .order_by(I.c.date, I.c.id)).scalars().all()
        if not keys:
            newest = conn.execute(select(I.c.key).where(select(D.c.id).where(
                D.c.issue_id == I.c.id, D.c.release_at.is_not(None)).exists())
                .order_by(I.c.date.desc(), I.c.id.desc()).limit(1)).scalar_one_or_none()
            keys = [newest] if newest else []
    found = [(key, waves_of_issue(engine, key, now)) for key in keys]
    # one wave, all released, is an ordinary send: nothing to show
    return [(key, w) for key, w in found if len(w) > 1 or any(not one.released for one in w)]


def plan_lines(engine: Engine, settings: Settings, day: date, kind: str, key: str, custom: Sequence[str | None] = (),
               topic: str | None = None, topics: Sequence[str] = ()) -> list[str]:
    """The waves of an issue, one line each (``send --dry-run``): from its ledger once written,
    else from its recipients now.  Empty when everyone gets it at the editors' time."""
    tz = waves.zone(settings)
    now = clock.now()
    found = ledger.find_issue(engine, key)
    if found is not None and found.state != "composed":
        counted = waves_of_issue(engine, key, now)
        if all(w.instant is None for w in counted):
            return []
        return [f"  {'at once' if w.instant is None else f'{w.instant.astimezone(tz):%Y-%m-%d %H:%M %Z}'}: "
                f"{w.total} recipient(s), " + ("released" if w.released else "to come") for w in counted]
    recipients = ledger._recipients_query(None, kind, topic, now, topics)
    sizes = {g.group: g.count for g in waves_of(engine, recipients)}
    if not sizes or set(sizes) == {Group(None, None)}:
        return []
    by_instant: dict[datetime, int] = {}
    for w in waves.waves(day, kind, settings, sizes, custom):
        by_instant[w.instant] = by_instant.get(w.instant, 0) + sizes[w.group]
    return [f"  {at.astimezone(tz):%Y-%m-%d %H:%M %Z}: {n} recipient(s)" for at, n in sorted(by_instant.items())]


def next_instant(engine: Engine, settings: Settings, now: datetime, custom_by_day: dict[date, list[str | None]],
                 pause) -> datetime | None:
    """The daemon's next wake for waves: the next first wave of a coming day (skipping paused
    days), or the next release of an issue already waiting; None when neither."""
    groups = {kind: audience_groups(engine, kind) for kind in waves.KINDS}
    start = local_day(now, waves.zone(settings))
    found = [next_wave_after(engine, now)]
    for n in range(0, 10):
        day = start + timedelta(days=n)
        if pause.covers(day):
            continue
        for slot in slots_for(day, settings, custom_by_day.get(day, ())):
            first = opening(slot, settings, groups[slot.kind], custom_by_day.get(day, ())).instant
            found.append(first if first > now else None)
    found = [f for f in found if f is not None]
    return min(found) if found else None


def hold_waves(engine: Engine, key: str, why: str) -> int:
    """The waves of issue ``key`` not yet sent when its article may no longer go out (retracted,
    or a significant correction awaiting sign-off, between waves): their rows are closed as
    skipped with ``why``, so the issue ends instead of waiting for good.  How many rows."""
    with engine.begin() as conn:
        issue_id = _issue_id(conn, key)
        if issue_id is None or conn.execute(select(I.c.state).where(I.c.id == issue_id)).scalar_one() != "waiting":
            return 0
        held = conn.execute(update(D).where(D.c.issue_id == issue_id, D.c.state == ledger.QUEUED)
                            .values(state=ledger.SKIPPED, updated_at=clock.now(),
                                    last_reply=f"not sent: {why}"[:500])).rowcount
    ledger.finish_issue(engine, issue_id)
    return held


def wait_for_waves(engine: Engine, settings: Settings, issue, entries, holder: str, counts):
    """Every released row is final and later waves wait for their readers' local time: the
    run is ``waiting`` (no alert); the daemon wakes at each wave and sends it."""
    kind, day = issue.kind, issue.date
    if kind == "daily":  # it has gone out (to the first waves): the articles are sent
        ids = [e.id for e in entries]
        scheduled = {e.slug for e in entries}
        ids += [calendar.add_sent_entry(engine, a.slug, day, issue.key) for a in issue.articles
                if a.slug not in scheduled]
        calendar.mark_entries(engine, ids, "sent", issue.key)
    when, left = next_release(engine, issue.key, clock.now())
    note = (f"{counts['sent']} sent; {left} wait for their local time, the next wave at "
            f"{when.astimezone(waves.zone(settings)):%Y-%m-%d %H:%M %Z}" if when else "every wave released")
    log.info("%s issue %s: %s", kind, issue.key, note)
    return calendar.finish_run(engine, day, kind, holder, "waiting", issue_key=issue.key, counts=counts, error=note)
