"""The editors' calendar commands: ``schedule add|list|move|cancel``, ``pause``,
``resume`` and ``status``.

They write only the calendar and pause tables; a running ``newsletter run``
picks the change up within ``reconcile_seconds``, no restart needed.
Bad input (an unknown slug, a date in the past, a time that is not HH:MM) is one
clear line and a non-zero exit.
"""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pipeline.scheduling import calendar, schedule
from pipeline.scheduling import slots
from pipeline import clock
from pipeline.scheduling import view as view
from pipeline.errors import ScheduleError

SLUG_LINE = re.compile(r"^slug:\s*['\"]?([a-z0-9-]+)['\"]?\s*$", re.MULTILINE)


def _console() -> Console:
    return Console(width=160, soft_wrap=False)


def _engine(settings):
    from pipeline.database import open_database
    return open_database(settings.database_url)


def _library(content_dir: Path):
    from pipeline.content.library import check_library
    library, _problems = check_library(content_dir)
    return library


PUBLISHED_LINE = re.compile(r"^published:\s*['\"]?(\d{4}-\d{2}-\d{2})['\"]?\s*$", re.MULTILINE)


def known_articles(content_dir: Path) -> tuple[dict[str, date | None], bool]:
    """Slug -> published date of the library's articles, and whether the library is
    healthy.  A library with errors still has its article files: the calendar stays
    usable during a fix."""
    library = _library(content_dir)
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


def known_slugs(content_dir: Path) -> tuple[set[str], bool]:
    articles, healthy = known_articles(content_dir)
    return set(articles), healthy


def _check_slug(content_dir: Path, slug: str, day: date) -> None:
    """The article exists, and its ``published`` date (an embargo: its page is not on
    the site before then) is not after ``day``."""
    articles, healthy = known_articles(content_dir)
    if slug not in articles:
        hint = "" if healthy else " (the library has errors: run `newsletter check`)"
        raise ScheduleError(f"no article with slug {slug!r} in {Path(content_dir) / 'articles'}{hint}")
    published = articles[slug]
    if published is not None and day < published:
        raise ScheduleError(f"{slug} is embargoed until {published.isoformat()} (its published date; its page is "
                            f"not on the site before then): schedule it on {published.isoformat()} or later")
    if not healthy:
        click.echo("warning: the library has errors (run `newsletter check`); the day's send will refuse "
                   "until they are fixed", err=True)


def _check_day(engine, settings, day: date, at: str | None, slug: str | None = None) -> None:
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


def _at_text(at: str | None) -> str | None:
    """``--at`` as the calendar stores it (HH:MM), or None when not given."""
    return f"{slots.parse_hhmm(at, '--at'):%H:%M}" if at else None


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
    from pipeline.scheduling.plan import refuse_if_reached

    settings = obj.settings()
    day = slots.parse_day(on, "--on")
    at_text = _at_text(at)
    _check_slug(obj.content_dir, slug, day)
    engine = _engine(settings)
    refuse_if_reached(engine, slug)
    _check_day(engine, settings, day, at_text)
    before = view.day_time(engine, settings, day)
    entry = calendar.add_entry(engine, slug, day, at_text)
    slot = schedule.planned_slot(engine, settings, day, "daily")
    click.echo(f"scheduled {entry.slug} on {day.isoformat()} at {view.wall(slot, settings)}")
    view.say_what_changes(engine, settings, slug, day, at_text, before)


@schedule_group.command("move")
@click.argument("slug")
@click.option("--to", "to", required=True, metavar="YYYY-MM-DD", help="The new day.")
@click.option("--at", "at", default=None, metavar="HH:MM", help="Also change its send time.")
@click.pass_obj
def move(obj, slug: str, to: str, at: str | None) -> None:
    """Move an article (also a missed one) to another day.

    An article whose send has started (it may have reached someone) is not moved:
    its issue is finished with `newsletter send --resume --date D` instead."""
    from pipeline.scheduling.plan import refuse_if_reached

    settings = obj.settings()
    day = slots.parse_day(to, "--to")
    at_text = _at_text(at)
    _check_slug(obj.content_dir, slug, day)
    engine = _engine(settings)
    refuse_if_reached(engine, slug)
    current = calendar.entries(engine, slug=slug, states=calendar.MOVABLE)
    keep = at_text is None
    _check_day(engine, settings, day, at_text if not keep else (current[0].at if current else None), slug)
    before = view.day_time(engine, settings, day)
    entry = calendar.move_entry(engine, slug, day, at_text, keep_time=keep)
    slot = schedule.planned_slot(engine, settings, day, "daily")
    click.echo(f"moved {entry.slug} to {day.isoformat()} at {view.wall(slot, settings)}")
    view.say_what_changes(engine, settings, slug, day, entry.at, before)


@schedule_group.command("cancel")
@click.argument("slug")
@click.pass_obj
def cancel(obj, slug: str) -> None:
    """Take an article off the calendar (it returns to the queue).

    An article whose send has started is not cancelled: its issue is finished with
    `newsletter send --resume --date D` instead."""
    from pipeline.scheduling.plan import refuse_if_reached

    settings = obj.settings()
    engine = _engine(settings)
    refuse_if_reached(engine, slug)
    entry = calendar.cancel_entry(engine, slug)
    click.echo(f"cancelled {entry.slug} (was on {entry.day.isoformat()})")


@schedule_group.command("list")
@click.option("--weeks", default=2, show_default=True, type=click.IntRange(1, 52), help="How many weeks to show.")
@click.option("--history", default=7, show_default=True, type=click.IntRange(0, 366),
              help="How many past days to show with their recorded outcome.")
@click.pass_obj
def list_(obj, weeks: int, history: int) -> None:
    """Recent days with their outcome, then the coming weeks: date, send time, articles, state."""
    from pipeline.scheduling.plan import close_past_days, next_step, upcoming

    settings = obj.settings()
    engine = _engine(settings)
    close_past_days(engine, settings)  # a day that is over ends in a recorded state, daemon or not
    tz = slots.zone(settings)
    console = _console()
    if history:
        console.print(view.history_table(engine, settings, history))
    library = _library(obj.content_dir)
    rows = upcoming(engine, settings, days=7 * weeks, library=library)
    table = Table("date", "send time", "kind", "articles", "state", title=f"Calendar ({settings.timezone})")
    for row in rows:
        local = row.slot.instant.astimezone(tz)
        table.add_row(f"{row.slot.day.isoformat()} {row.slot.day:%a}", f"{local:%H:%M %Z}", row.slot.kind,
                      view.articles_text(row), view.state_text(row))
    console.print(table)
    today = slots.today(settings)
    stranded = calendar.entries(engine, end=today, states=("missed", "failed"))
    stranded = [e for e in stranded if not calendar.entries(engine, slug=e.slug, states=("scheduled", "sent"))]
    seen: set[str] = set()
    for entry in reversed(stranded):  # the latest outcome of each article
        if entry.slug not in seen:
            seen.add(entry.slug)
            console.print(next_step(engine, entry))
    pause = calendar.get_pause(engine)
    if pause.paused:
        console.print(f"sending is paused{' until ' + pause.until.isoformat() if pause.until else ''}")


@click.command("pause")
@click.option("--until", "until", default=None, metavar="YYYY-MM-DD",
              help="First day that sends again (default: until `newsletter resume`).")
@click.pass_obj
def pause(obj, until: str | None) -> None:
    """Stop sending (until a date, or until `newsletter resume`), listing the sends it skips."""
    settings = obj.settings()
    day = slots.parse_day(until, "--until") if until else None
    if day is not None and day <= slots.today(settings):
        raise ScheduleError(f"--until {day.isoformat()} is not in the future")
    engine = _engine(settings)
    calendar.set_pause(engine, True, day)
    click.echo(f"paused: no issue goes out {'before ' + day.isoformat() if day else 'until `newsletter resume`'}")
    skips = view.coming_skips(engine, settings, _library(obj.content_dir), day)
    if skips:
        click.echo("these sends will be skipped" + ("" if day else " (the next two weeks)")
                   + "; a skipped day is not sent after a resume:")
        for line in skips:
            click.echo(line)
    else:
        click.echo("no send was due" + (f" before {day.isoformat()}" if day else " in the next two weeks"))
    _stop_running(engine, settings, day)


def _stop_running(engine, settings, until: date | None) -> None:
    """A pause also stops a send under way (at its next batch boundary; the rest stays queued)."""
    from pipeline.delivery import stops
    from pipeline.ops.cli import sending_days

    running = [d for d in sending_days(engine) if until is None or d < until]
    if running:
        stops.request(engine, None, stops.operator(), "pause")
        click.echo(f"stopping the send under way ({', '.join(d.isoformat() for d in running)}) at the next batch "
                   "boundary; `newsletter resume` finishes it")


@click.command("resume")
@click.pass_obj
def resume(obj) -> None:
    """Start sending again from the next send time (paused days are not sent late); lists what was skipped."""
    from pipeline.scheduling.plan import next_step

    settings = obj.settings()
    engine = _engine(settings)
    from pipeline.delivery import stops

    was = calendar.get_pause(engine)
    calendar.set_pause(engine, False)
    released = stops.release(engine)
    if not was.paused and not released:
        click.echo("was not paused; nothing changed")
        return
    click.echo("resumed")
    stopped = [r for r in calendar.recent_runs(engine, 30) if r.state == "stopped"]
    if stopped:
        click.echo("the daemon finishes the stopped send of "
                   + ", ".join(f"{r.day.isoformat()} ({r.kind})" for r in stopped) + " within reconcile_seconds")
    if not was.paused:
        return
    since = slots.local_day(was.changed_at, slots.zone(settings)) if was.changed_at else slots.today(settings)
    skipped = [r for r in calendar.runs_between(engine, since, slots.today(settings)).values() if r.state == "paused"]
    if not skipped:
        click.echo("nothing was skipped while paused")
        return
    click.echo("skipped while paused (not sent now):")
    for run in sorted(skipped, key=lambda r: (r.day, r.kind != "daily")):
        entries = [e for e in calendar.entries(engine, start=run.day, end=run.day) if e.state == "missed"]
        what = ", ".join(e.slug for e in entries) if run.kind == "daily" else "weekly digest"
        click.echo(f"  {run.day.isoformat()} {run.kind}: {what or 'nothing was due'}")
        for entry in entries:
            if not calendar.entries(engine, slug=entry.slug, states=("scheduled", "sent")):
                click.echo(f"    {next_step(engine, entry)}")
