"""The editors' calendar commands: ``schedule add|list|move|cancel``, ``pause``,
``resume`` and ``status``.

They write only the calendar and pause tables; a running ``newsletter run``
picks the change up within ``reconcile_seconds``, no restart needed.
Bad input (an unknown slug, a date in the past, a time that is not HH:MM) is one
clear line and a non-zero exit.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pipeline import calendar, clock, schedule
from pipeline.errors import ScheduleError

# `status` exits with this when the last day's run needs an editor (content error, failure)
ALERT_EXIT = 2
SLUG_LINE = re.compile(r"^slug:\s*['\"]?([a-z0-9-]+)['\"]?\s*$", re.MULTILINE)


def _console() -> Console:
    return Console(width=160, soft_wrap=False)


def _engine(settings):
    from pipeline.database import open_database
    return open_database(settings.database_url)


def _library(content_dir: Path):
    from pipeline.content import check_library
    library, _problems = check_library(content_dir)
    return library


def known_slugs(content_dir: Path) -> tuple[set[str], bool]:
    """Slugs of the library, and whether the library is healthy.  A library with
    errors still has its article files: the calendar stays usable during a fix."""
    library = _library(content_dir)
    if library is not None:
        return {a.slug for a in library.articles}, True
    found = set()
    for path in sorted((Path(content_dir) / "articles").glob("*.md")):
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
        match = SLUG_LINE.search(head)
        if match:
            found.add(match.group(1))
    return found, False


def _check_slug(content_dir: Path, slug: str) -> None:
    slugs, healthy = known_slugs(content_dir)
    if slug not in slugs:
        hint = "" if healthy else " (the library has errors: run `newsletter check`)"
        raise ScheduleError(f"no article with slug {slug!r} in {Path(content_dir) / 'articles'}{hint}")
    if not healthy:
        click.echo("warning: the library has errors (run `newsletter check`); the day's send will refuse "
                   "until they are fixed", err=True)


def _check_day(engine, settings, day: date, at: str | None, slug: str | None = None) -> None:
    """A day can take an article if its daily send is still ahead."""
    today = schedule.today(settings)
    if day < today:
        raise ScheduleError(f"{day.isoformat()} is in the past (today is {today.isoformat()} in {settings.timezone})")
    run = calendar.get_run(engine, day, "daily")
    # a day that ended without an email can still take a later send; one that sent
    # (or is sending, or needs an editor) cannot
    if run is not None and run.state not in ("pending",) + calendar.REOPEN:
        raise ScheduleError(f"the issue of {day.isoformat()} is already done ({run.state}); choose a later date")
    others = [e.at for e in calendar.scheduled_on(engine, day) if e.slug != slug]
    slot_at = schedule.daily_time(settings, others + [at])
    instant = schedule.send_instant(day, slot_at, schedule.zone(settings))
    if instant <= clock.now():
        raise ScheduleError(f"the send time {slot_at:%H:%M} on {day.isoformat()} has passed; "
                            "use a later --at or another date")


def _at_text(at: str | None) -> str | None:
    """``--at`` as the calendar stores it (HH:MM), or None when not given."""
    return f"{schedule.parse_hhmm(at, '--at'):%H:%M}" if at else None


@click.group("schedule")
def schedule_group() -> None:
    """Plan which article goes out on which day."""


@schedule_group.command("add")
@click.argument("slug")
@click.option("--on", "on", required=True, metavar="YYYY-MM-DD", help="The day it goes out.")
@click.option("--at", "at", default=None, metavar="HH:MM", help="Send time that day (default: the send_time setting).")
@click.pass_obj
def add(obj, slug: str, on: str, at: str | None) -> None:
    """Put an article on the calendar."""
    settings = obj.settings()
    day = schedule.parse_day(on, "--on")
    at_text = _at_text(at)
    _check_slug(obj.content_dir, slug)
    engine = _engine(settings)
    _check_day(engine, settings, day, at_text)
    entry = calendar.add_entry(engine, slug, day, at_text)
    slot = schedule.planned_slot(engine, settings, day, "daily")
    click.echo(f"scheduled {entry.slug} on {day.isoformat()} at {slot.at:%H:%M} {settings.timezone}")


@schedule_group.command("move")
@click.argument("slug")
@click.option("--to", "to", required=True, metavar="YYYY-MM-DD", help="The new day.")
@click.option("--at", "at", default=None, metavar="HH:MM", help="Also change its send time.")
@click.pass_obj
def move(obj, slug: str, to: str, at: str | None) -> None:
    """Move an article (also a missed or failed one) to another day."""
    settings = obj.settings()
    day = schedule.parse_day(to, "--to")
    at_text = _at_text(at)
    _check_slug(obj.content_dir, slug)
    engine = _engine(settings)
    current = calendar.entries(engine, slug=slug, states=calendar.MOVABLE)
    keep = at_text is None
    _check_day(engine, settings, day, at_text if not keep else (current[0].at if current else None), slug)
    entry = calendar.move_entry(engine, slug, day, at_text, keep_time=keep)
    slot = schedule.planned_slot(engine, settings, day, "daily")
    click.echo(f"moved {entry.slug} to {day.isoformat()} at {slot.at:%H:%M} {settings.timezone}")


@schedule_group.command("cancel")
@click.argument("slug")
@click.pass_obj
def cancel(obj, slug: str) -> None:
    """Take an article off the calendar (it returns to the queue)."""
    settings = obj.settings()
    entry = calendar.cancel_entry(_engine(settings), slug)
    click.echo(f"cancelled {entry.slug} (was on {entry.day.isoformat()})")


def _queue_preview(obj, settings, engine, days: list[date], planned: dict[date, list[str]]) -> dict[date, str]:
    """Which queued article each unplanned day would send (send_when_nothing_due)."""
    if not settings.send_when_nothing_due:
        return {}
    library = _library(obj.content_dir)
    if library is None:
        return {}
    from pipeline.compose import next_in_queue

    taken = schedule.sent_slugs(engine) | {s for slugs in planned.values() for s in slugs}
    preview = {}
    for day in days:
        if planned.get(day):
            continue
        article = next_in_queue(library, day, taken)
        if article is not None:
            preview[day] = article.slug
            taken.add(article.slug)
    return preview


@schedule_group.command("list")
@click.option("--weeks", default=2, show_default=True, type=click.IntRange(1, 52), help="How many weeks to show.")
@click.pass_obj
def list_(obj, weeks: int) -> None:
    """The coming weeks: date, send time, articles, state."""
    settings = obj.settings()
    engine = _engine(settings)
    rows = schedule.upcoming(engine, settings, days=7 * weeks)
    planned = {slot.day: [e.slug for e in es if e.state in ("scheduled", "failed")] for slot, es, _, _ in rows
               if slot.kind == "daily"}
    preview = _queue_preview(obj, settings, engine, sorted(planned), planned)
    tz = schedule.zone(settings)
    table = Table("date", "send time", "kind", "articles", "state", title=f"Calendar ({settings.timezone})")
    for slot, day_entries, run, paused in rows:
        if slot.kind == "weekly":
            articles = "weekly digest of the week's articles"
        elif day_entries:
            articles = ", ".join(e.slug + (f" @{e.at}" if e.at else "") + ("" if e.state == "scheduled" else f" ({e.state})")
                                 for e in day_entries)
        elif slot.day in preview:
            articles = f"(queue) {preview[slot.day]}"
        else:
            articles = "-"
        if run is not None:
            state = run.state
        elif paused:
            state = "paused"
        elif slot.kind == "daily" and not any(e.state in ("scheduled", "failed") for e in day_entries) \
                and slot.day not in preview:
            state = "nothing due"
        else:
            state = "scheduled"
        local = slot.instant.astimezone(tz)
        table.add_row(f"{slot.day.isoformat()} {slot.day:%a}", f"{local:%H:%M %Z}", slot.kind, articles, state)
    console = _console()
    console.print(table)
    stranded = calendar.entries(engine, end=schedule.today(settings), states=("missed", "failed"))
    stranded = [e for e in stranded if not calendar.entries(engine, slug=e.slug, states=("scheduled", "sent"))]
    for entry in stranded:
        console.print(f"{entry.slug} was {entry.state} on {entry.day.isoformat()}: "
                      f"`newsletter schedule move {entry.slug} --to DATE` puts it back")
    pause = calendar.get_pause(engine)
    if pause.paused:
        console.print(f"sending is paused{' until ' + pause.until.isoformat() if pause.until else ''}")


@click.command("pause")
@click.option("--until", "until", default=None, metavar="YYYY-MM-DD",
              help="First day that sends again (default: until `newsletter resume`).")
@click.pass_obj
def pause(obj, until: str | None) -> None:
    """Stop sending (until a date, or until `newsletter resume`)."""
    settings = obj.settings()
    day = schedule.parse_day(until, "--until") if until else None
    if day is not None and day <= schedule.today(settings):
        raise ScheduleError(f"--until {day.isoformat()} is not in the future")
    calendar.set_pause(_engine(settings), True, day)
    click.echo(f"paused: no issue goes out {'before ' + day.isoformat() if day else 'until `newsletter resume`'}")


@click.command("resume")
@click.pass_obj
def resume(obj) -> None:
    """Start sending again from the next send time (paused days are not sent late)."""
    settings = obj.settings()
    engine = _engine(settings)
    was = calendar.get_pause(engine)
    calendar.set_pause(engine, False)
    click.echo("resumed" if was.paused else "was not paused; nothing changed")


def _ago(when: datetime) -> str:
    seconds = int((clock.now() - when).total_seconds())
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def alive_window(settings) -> timedelta:
    return timedelta(seconds=max(3 * float(settings.reconcile_seconds), 60.0))


@click.command("status")
@click.option("--next", "next_count", default=5, show_default=True, help="How many coming sends to show.")
@click.pass_obj
def status(obj, next_count: int) -> None:
    """Next sends, last ten sends, the queue, and whether the daemon runs.

    Exits 2 when the latest day's run ended in a content error or a failure."""
    settings = obj.settings()
    engine = _engine(settings)
    console = _console()
    tz = schedule.zone(settings)

    running = calendar.daemons(engine, alive_within=alive_window(settings))
    if running:
        for d in running:
            console.print(f"daemon: running (pid {d.pid} on {d.host}, last seen {_ago(d.last_seen)})")
    else:
        console.print(f"daemon: not running (no heartbeat in the last {int(alive_window(settings).total_seconds())} s)")
    pause_state = calendar.get_pause(engine)
    if pause_state.covers(schedule.today(settings)):
        console.print(f"sending: paused{' until ' + pause_state.until.isoformat() if pause_state.until else ''}")
    else:
        console.print("sending: active")

    upcoming = [(slot, es) for slot, es, run, paused in schedule.upcoming(engine, settings, days=14)
                if run is None and not paused and slot.instant > clock.now()][:next_count]
    table = Table("date", "send time", "kind", "articles", title="Next sends")
    for slot, day_entries in upcoming:
        scheduled = [e.slug for e in day_entries if e.state in ("scheduled", "failed")]
        articles = ", ".join(scheduled) if scheduled else (
            "weekly digest" if slot.kind == "weekly" else
            "(next in queue)" if settings.send_when_nothing_due else "nothing due")
        table.add_row(slot.day.isoformat(), f"{slot.instant.astimezone(tz):%H:%M %Z}", slot.kind, articles)
    console.print(table)

    schedule.settle_from_ledger(engine)
    recent = calendar.recent_runs(engine, 10)
    live = schedule.ledger_counts(engine, [r.issue_key for r in recent if r.issue_key])
    table = Table("date", "kind", "state", "sent", "deferred", "failed", "bounced", "issue", "note", title="Last sends")
    for run in recent:
        counts = live.get(run.issue_key or "", {"sent": run.sent, "deferred": run.deferred, "failed": run.failed,
                                                 "bounced": run.bounced})
        table.add_row(run.day.isoformat(), run.kind, run.state, str(counts["sent"]), str(counts["deferred"]),
                      str(counts["failed"]), str(counts["bounced"]), run.issue_key or "", (run.error or "")[:70])
    console.print(table)
    from subscribers.mailqueue import status_line
    console.print(status_line(engine))  # transactional mail (sign-ups) waiting for the relay

    library = _library(obj.content_dir)
    if library is None:
        console.print("queue: unknown (the library has errors: run `newsletter check`)")
    else:
        sent = schedule.sent_slugs(engine)
        planned = {e.slug: e.day for e in calendar.entries(engine, states=("scheduled",))}
        queue = [a for a in library.articles if a.slug not in sent]
        console.print(f"queue: {len(queue)} unsent article(s)"
                      + ("" if settings.send_when_nothing_due else " (sent only when scheduled: send_when_nothing_due is off)"))
        for article in queue:
            note = f"scheduled {planned[article.slug].isoformat()}" if article.slug in planned else "unscheduled"
            console.print(f"  {article.slug}  ({note})")

    if recent:
        latest_day = recent[0].day
        alerts = [r for r in recent if r.day == latest_day and r.state in calendar.ALERT]
        if alerts:
            for run in alerts:
                click.echo(f"ALERT: {run.kind} issue of {run.day.isoformat()} {run.state}: {run.error}", err=True)
            raise SystemExit(ALERT_EXIT)
