"""What the calendar commands show: the rows of ``schedule list`` (from
``pipeline.scheduling.plan.upcoming``), the recent days with their outcome, the sends a
pause will skip, and the notes on what adding an article to a day changes (a
digest, a moved send time, a wall time the clock change skips or repeats)."""
from __future__ import annotations

from datetime import date, time, timedelta

import click
from rich.table import Table

from pipeline.scheduling import calendar, schedule
from pipeline.scheduling import slots
from pipeline import clock


def say_what_changes(engine, settings, slug: str, day: date, at: str | None, before: time | None) -> None:
    """The side effects of putting ``slug`` on ``day``: a digest, a moved send time,
    a wall time the clock change skips or repeats."""
    from pipeline.scheduling.check import wall_time_note

    slot = schedule.planned_slot(engine, settings, day, "daily")
    others = [e for e in calendar.scheduled_on(engine, day) if e.slug != slug]
    if others:
        names = ", ".join(e.slug for e in calendar.scheduled_on(engine, day))
        click.echo(f"note: {day.isoformat()} now has {len(others) + 1} articles ({names}): they go out as one "
                   f"digest, the first in full and the rest as summaries")
        if before is not None and before != slot.at:
            click.echo(f"note: the send time of {day.isoformat()} moves from {before:%H:%M} to {slot.at:%H:%M} "
                       f"(the earliest --at of its articles), for {', '.join(e.slug for e in others)} too")
    note = wall_time_note(day, slot.at, slots.zone(settings))
    if note:
        click.echo(f"warning: {note}", err=True)


def day_time(engine, settings, day: date) -> time | None:
    """The day's send time now, if anything is on it."""
    if not calendar.scheduled_on(engine, day):
        return None
    return schedule.planned_slot(engine, settings, day, "daily").at


def wall(slot, settings) -> str:
    """A slot's send time as the clock on the wall shows it (a time in the spring gap
    goes out an hour later)."""
    return f"{slot.instant.astimezone(slots.zone(settings)):%H:%M %Z} ({settings.timezone})"


def entries_text(entries) -> str:
    text = ", ".join(e.slug + (f" @{e.at}" if e.at else "") + ("" if e.state == "scheduled" else f" ({e.state})")
                     for e in entries)
    return text + (" (digest)" if sum(e.state in ("scheduled", "failed") for e in entries) > 1 else "")


def articles_text(row) -> str:
    if row.slot.kind == "weekly":
        if row.plan is None:
            return "weekly digest of the week's articles"
        so_far = " (so far)" if row.slot.instant > clock.now() else ""
        return f"weekly digest: {', '.join(row.plan.slugs)}{so_far}" if row.plan.sends else \
            f"weekly digest: nothing sent this week{' yet' if so_far else ''}"
    awaiting = f"; awaiting review: {', '.join(row.awaiting_review)}" if row.awaiting_review else ""
    held = f"; held: {'; '.join(row.plan.held)}" if row.plan is not None and row.plan.held else ""
    if any(e.state in ("scheduled", "failed") for e in row.entries):
        return entries_text(row.entries) + (f"; content error: {row.problem}" if row.problem else "") + awaiting + held
    if row.problem:
        return f"content error: {row.problem}"
    if row.awaiting_review:
        return f"(queue) {row.awaiting_review[0]}{awaiting}"
    if row.plan is not None and row.plan.source == "queue":
        return f"(queue) {row.plan.slugs[0]}"
    if row.entries:
        return entries_text(row.entries)
    if row.plan is not None and row.plan.sends:
        return ", ".join(row.plan.slugs)
    return "-"


def state_text(row) -> str:
    if row.run is not None and (row.run.final or not row.awaiting_review):
        return row.run.state
    if row.paused:
        return "paused"
    if row.awaiting_review:
        return "awaiting review"
    if row.plan is not None and row.plan.held and not row.plan.sends:
        return "held"  # every article of the day is retracted or awaits a correction's sign-off
    if row.slot.kind == "daily" and row.problem is None and (row.plan is None or not row.plan.sends) \
            and not any(e.state in ("scheduled", "failed") for e in row.entries):
        return "nothing due"
    return "scheduled"


def history_table(engine, settings, days: int) -> Table:
    """The past ``days`` days that recorded a run: when they went (the real time) and how they ended."""
    tz = slots.zone(settings)
    today = slots.today(settings)
    start = today - timedelta(days=days)
    runs = calendar.runs_between(engine, start, today - timedelta(days=1))
    by_day: dict[date, list] = {}
    for entry in calendar.entries(engine, start=start, end=today - timedelta(days=1)):
        if entry.state != "cancelled":
            by_day.setdefault(entry.day, []).append(entry)
    table = Table("date", "planned", "started", "kind", "articles", "outcome", "note",
                  title=f"Recent days ({settings.timezone})")
    for (day, kind), run in sorted(runs.items(), key=lambda item: (item[0][0], item[0][1] != "daily")):
        articles = ", ".join(e.slug + (f" @{e.at}" if e.at else "") + f" ({e.state})" for e in by_day.get(day, [])) \
            if kind == "daily" else "weekly digest"
        planned = f"{run.planned_at.astimezone(tz):%H:%M %Z}" if run.planned_at else "-"
        started = f"{run.started_at.astimezone(tz):%H:%M %Z}" if run.started_at and run.attempts else "-"
        table.add_row(f"{day.isoformat()} {day:%a}", planned, started, kind, articles or "-", run.state,
                      run.error or "")
    return table


def coming_skips(engine, settings, library, until: date | None) -> list[str]:
    """The sends a pause until ``until`` (None: for now, shown for two weeks) will skip."""
    from pipeline.scheduling.plan import upcoming

    now = clock.now()
    tz = slots.zone(settings)
    lines = []
    for row in upcoming(engine, settings, days=14, library=library):
        if row.run is not None and row.run.final or row.slot.instant <= now:
            continue
        if until is not None and row.slot.day >= until:
            break
        if row.slot.kind == "daily" and row.plan is not None and not row.plan.sends and not row.problem:
            continue  # nothing was going out that day
        lines.append(f"  {row.slot.day.isoformat()} {row.slot.instant.astimezone(tz):%H:%M %Z} {row.slot.kind}: "
                     f"{articles_text(row)}")
    return lines


def waves_note(engine, settings, day) -> str | None:
    """One line for `schedule list` when readers have times of their own: the day's daily
    issue goes out in waves, from the first to the last (``wave_sends``), else None."""
    from pipeline.scheduling import wave_sends, waves

    groups = wave_sends.audience_groups(engine, "daily")
    custom = schedule.custom_times(engine, day, day).get(day, [])
    found = waves.waves(day, "daily", settings, groups, custom) if groups else []
    instants = sorted({w.instant for w in found})
    if len(instants) < 2:
        return None
    tz = slots.zone(settings)
    return (f"readers' own times: the issue of {day.isoformat()} goes out in {len(instants)} waves, from "
            f"{instants[0].astimezone(tz):%Y-%m-%d %H:%M %Z} to {instants[-1].astimezone(tz):%Y-%m-%d %H:%M %Z} "
            f"(`newsletter send --date {day.isoformat()} --dry-run` lists them)")
