"""The editors' calendar commands: ``schedule add|list|move|cancel``, ``pause``,
``resume`` and ``status``.

They write only the calendar and pause tables; a running ``newsletter run``
picks the change up within ``reconcile_seconds``, no restart needed.
Bad input (an unknown slug, a date in the past, a time that is not HH:MM) is one
clear line and a non-zero exit.
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pipeline.scheduling import calendar
from pipeline.scheduling import slots
from pipeline.scheduling import editing
from pipeline.scheduling import view as view
from pipeline.staff.audit import operator


def _console() -> Console:
    return Console(width=160, soft_wrap=False)


def _engine(settings):
    from pipeline.database import open_database
    return open_database(settings.database_url)


def _library(content_dir: Path):
    return editing.load_checked_library(content_dir)


def _warn(change) -> None:
    for warning in change.warnings:
        click.echo(f"warning: {warning}", err=True)


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
    day = slots.parse_day(on, "--on")
    engine = _engine(settings)
    change = editing.add_article(engine, settings, obj.content_dir, slug, day, at, actor=operator())
    _warn(change)
    click.echo(f"scheduled {change.entry.slug} on {day.isoformat()} at {view.wall(change.slot, settings)}")
    view.say_what_changes(engine, settings, slug, day, change.entry.at, change.before)


@schedule_group.command("move")
@click.argument("slug")
@click.option("--to", "to", required=True, metavar="YYYY-MM-DD", help="The new day.")
@click.option("--at", "at", default=None, metavar="HH:MM", help="Also change its send time.")
@click.pass_obj
def move(obj, slug: str, to: str, at: str | None) -> None:
    """Move an article (also a missed one) to another day.

    An article whose send has started (it may have reached someone) is not moved:
    its issue is finished with `newsletter send --resume --date D` instead."""
    settings = obj.settings()
    day = slots.parse_day(to, "--to")
    engine = _engine(settings)
    change = editing.move_article(engine, settings, obj.content_dir, slug, day, at, actor=operator())
    _warn(change)
    click.echo(f"moved {change.entry.slug} to {day.isoformat()} at {view.wall(change.slot, settings)}")
    view.say_what_changes(engine, settings, slug, day, change.entry.at, change.before)


@schedule_group.command("cancel")
@click.argument("slug")
@click.pass_obj
def cancel(obj, slug: str) -> None:
    """Take an article off the calendar (it returns to the queue).

    An article whose send has started is not cancelled: its issue is finished with
    `newsletter send --resume --date D` instead."""
    settings = obj.settings()
    entry = editing.cancel_article(_engine(settings), slug, actor=operator()).entry
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
    note = view.waves_note(engine, settings, rows[0].slot.day) if rows else None
    if note:
        console.print(note, overflow="fold")
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
    engine = _engine(settings)
    running = editing.pause(engine, settings, day, actor=operator())
    click.echo(f"paused: no issue goes out {'before ' + day.isoformat() if day else 'until `newsletter resume`'}")
    skips = view.coming_skips(engine, settings, _library(obj.content_dir), day)
    if skips:
        click.echo("these sends will be skipped" + ("" if day else " (the next two weeks)")
                   + "; a skipped day is not sent after a resume:")
        for line in skips:
            click.echo(line)
    else:
        click.echo("no send was due" + (f" before {day.isoformat()}" if day else " in the next two weeks"))
    if running:
        click.echo(f"stopping the send under way ({', '.join(d.isoformat() for d in running)}) after the message "
                   "in flight; `newsletter resume` finishes it")


@click.command("resume")
@click.pass_obj
def resume(obj) -> None:
    """Start sending again from the next send time (paused days are not sent late); lists what was skipped."""
    from pipeline.scheduling.plan import next_step

    settings = obj.settings()
    engine = _engine(settings)
    from pipeline.delivery import stops

    was = editing.resume(engine, actor=operator())
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
