"""Calendar changes: the one code path of ``newsletter schedule add|move|cancel``,
``pause`` and ``resume`` and of the console's calendar.

Each operation checks its input (an unknown slug, an embargo, a day in the past or
already done, a send time that has passed, an article whose send started), makes
the change, writes the audit row (who, what, before and after), and returns what
the caller tells the editor.  A running daemon picks the change up within
``reconcile_seconds``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipeline import clock
from pipeline.errors import ScheduleError
from pipeline.scheduling import calendar, schedule, slots
from pipeline.scheduling.view import day_time
from pipeline.staff import audit

SLUG_LINE = re.compile(r"^slug:\s*['\"]?([a-z0-9-]+)['\"]?\s*$", re.MULTILINE)
PUBLISHED_LINE = re.compile(r"^published:\s*['\"]?(\d{4}-\d{2}-\d{2})['\"]?\s*$", re.MULTILINE)
LIBRARY_HAS_ERRORS = ("the library has errors (run `newsletter check`); the day's send will refuse "
                      "until they are fixed")


def load_checked_library(content_dir: Path):
    from pipeline.content.library import check_library
    library, _problems = check_library(content_dir)
    return library


def known_articles(content_dir: Path) -> tuple[dict[str, date | None], bool]:
    """Slug -> published date of the library's articles, and whether the library is
    healthy.  A library with errors still has its article files: the calendar stays
    usable during a fix."""
    library = load_checked_library(content_dir)
    if library is not None:
        return {a.slug: a.published for a in library.articles}, True
    found: dict[str, date | None] = {}
    for path in sorted((Path(content_dir) / "articles").glob("*.md")):
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
        match = SLUG_LINE.search(head)
        if match:
            published = PUBLISHED_LINE.search(head)
            try:
                found[match.group(1)] = date.fromisoformat(published.group(1)) if published else None
            except ValueError:
                found[match.group(1)] = None
    return found, False


def check_slug(content_dir: Path, slug: str, day: date) -> list[str]:
    """The article exists, and its ``published`` date (an embargo: its page is not on
    the site before then) is not after ``day``.  Returns warnings."""
    articles, healthy = known_articles(content_dir)
    if slug not in articles:
        hint = "" if healthy else " (the library has errors: run `newsletter check`)"
        raise ScheduleError(f"no article with slug {audit.clean(slug, 80)!r} in {Path(content_dir) / 'articles'}{hint}")
    published = articles[slug]
    if published is not None and day < published:
        raise ScheduleError(f"{slug} is embargoed until {published.isoformat()} (its published date; its page is "
                            f"not on the site before then): schedule it on {published.isoformat()} or later")
    return [] if healthy else [LIBRARY_HAS_ERRORS]


def check_day(engine, settings, day: date, at: str | None, slug: str | None = None) -> None:
    """A day can take an article if its daily send is still ahead."""
    today = slots.today(settings)
    if day < today:
        raise ScheduleError(f"{day.isoformat()} is in the past (today is {today.isoformat()} in {settings.timezone})")
    run = calendar.get_run(engine, day, "daily")
    # a day that ended without an email can still take a later send; one that sent
    # (or is sending, or needs an editor) cannot
    if run is not None and run.state not in ("pending",) + calendar.REOPEN:
        raise ScheduleError(f"the issue of {day.isoformat()} is already done ({run.state}); choose a later date")
    others = [e.at for e in calendar.scheduled_on(engine, day) if e.slug != slug]
    slot_at = slots.daily_time(settings, others + [at])
    instant = slots.send_instant(day, slot_at, slots.zone(settings))
    if instant <= clock.now():
        raise ScheduleError(f"the send time {slot_at:%H:%M} on {day.isoformat()} has passed; "
                            "use a later --at or another date")


def at_text(at: str | None) -> str | None:
    """A send time as the calendar stores it (HH:MM), or None when not given."""
    return f"{slots.parse_hhmm(at, '--at'):%H:%M}" if at else None


@dataclass(frozen=True)
class Change:
    """What a calendar change did: the entry, the day's slot now, the day's send time
    before (to say what moved), and warnings for the editor."""

    entry: calendar.Entry
    slot: slots.Slot | None = None
    before: object = None
    warnings: tuple[str, ...] = ()


def _where(entry: calendar.Entry | None) -> dict | None:
    return None if entry is None else {"day": entry.day.isoformat(), "at": entry.at, "state": entry.state}


def _current(engine, slug: str) -> calendar.Entry | None:
    found = calendar.entries(engine, slug=slug, states=calendar.MOVABLE)
    return found[0] if found else None


def add_article(engine, settings, content_dir: Path, slug: str, day: date, at: str | None, *, actor: str,
                via: str = "cli", ip: str | None = None) -> Change:
    from pipeline.scheduling.plan import refuse_if_reached

    at = at_text(at)
    warnings = check_slug(content_dir, slug, day)
    refuse_if_reached(engine, slug)
    check_day(engine, settings, day, at)
    before = day_time(engine, settings, day)
    entry = calendar.add_entry(engine, slug, day, at)
    audit.write(engine, actor, "calendar.add", slug, after=_where(entry), via=via, ip=ip)
    return Change(entry, schedule.planned_slot(engine, settings, day, "daily"), before, tuple(warnings))


def move_article(engine, settings, content_dir: Path, slug: str, day: date, at: str | None, *, actor: str,
                 via: str = "cli", ip: str | None = None) -> Change:
    from pipeline.scheduling.plan import refuse_if_reached

    at = at_text(at)
    warnings = check_slug(content_dir, slug, day)
    refuse_if_reached(engine, slug)
    current = calendar.entries(engine, slug=slug, states=calendar.MOVABLE)
    keep = at is None
    check_day(engine, settings, day, at if not keep else (current[0].at if current else None), slug)
    before = day_time(engine, settings, day)
    entry = calendar.move_entry(engine, slug, day, at, keep_time=keep)
    audit.write(engine, actor, "calendar.move", slug, before=_where(current[0] if current else None),
                after=_where(entry), via=via, ip=ip)
    return Change(entry, schedule.planned_slot(engine, settings, day, "daily"), before, tuple(warnings))


def cancel_article(engine, slug: str, *, actor: str, via: str = "cli", ip: str | None = None) -> Change:
    from pipeline.scheduling.plan import refuse_if_reached

    refuse_if_reached(engine, slug)
    before = _current(engine, slug)
    entry = calendar.cancel_entry(engine, slug)
    audit.write(engine, actor, "calendar.cancel", slug, before=_where(before), after=_where(entry), via=via, ip=ip)
    return Change(entry)


def pause(engine, settings, until: date | None, *, actor: str, via: str = "cli", ip: str | None = None) -> list:
    """Pause sending (until a date); returns the days whose send under way it stopped."""
    if until is not None and until <= slots.today(settings):
        raise ScheduleError(f"--until {until.isoformat()} is not in the future")
    was = calendar.get_pause(engine)
    calendar.set_pause(engine, True, until)
    audit.write(engine, actor, "calendar.pause", None,
                before={"paused": was.paused, "until": was.until.isoformat() if getattr(was, "until", None) else None},
                after={"paused": True, "until": until.isoformat() if until else None}, via=via, ip=ip)
    # a pause also stops a send under way (after the message in flight; the rest stays queued),
    # from the CLI and the console alike
    running = [d for d in sending_days(engine) if until is None or d < until]
    if running:
        from pipeline.delivery import stops
        stops.request(engine, None, actor, "pause")
    return running


def resume(engine, *, actor: str, via: str = "cli", ip: str | None = None):
    """Lift the pause; returns the pause as it was."""
    was = calendar.get_pause(engine)
    calendar.set_pause(engine, False)
    audit.write(engine, actor, "calendar.resume", None, before={"paused": was.paused}, after={"paused": False},
                via=via, ip=ip)
    return was


def sending_days(engine) -> dict:
    """Days with a send under way: an issue whose send lease is live or that has a live
    sender node (a shared send whose first node died goes on on the others), or a run
    ``running`` under a live send lease (composing, publishing)."""
    from sqlalchemy import select

    from pipeline import clock, holders
    from pipeline.delivery import claims, leases, ledger
    from pipeline.scheduling import calendar

    now = clock.now()
    days: dict = {}
    nodes = claims.live_nodes(engine)
    with engine.connect() as conn:
        for row in conn.execute(select(ledger.ISSUES.c.id, ledger.ISSUES.c.date, ledger.ISSUES.c.key,
                                       ledger.ISSUES.c.lease_owner, ledger.ISSUES.c.lease_expires_at)
                                .where(ledger.ISSUES.c.lease_owner.is_not(None)
                                       | ledger.ISSUES.c.id.in_(list(nodes)))).all():
            leased = (row.lease_owner is not None and row.lease_expires_at is not None and row.lease_expires_at > now
                      and not holders.is_dead(row.lease_owner))
            if leased or row.id in nodes:
                days.setdefault(row.date, []).append(row.key)
    if leases.lease_holder(engine, leases.SEND_LEASE) is not None:
        for run in calendar.recent_runs(engine, 10):
            if run.state == "running":
                days.setdefault(run.day, [])
    return days
