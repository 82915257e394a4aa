"""Slots: when a day's issue goes out, from the settings, a date and the clock.

A ``Slot`` is one planned send (a day, a kind, its local wall time and its UTC
instant); ``slots_for`` gives a day's slots, ``next_instant`` the next one to come.
Nothing here reads the database; ``pipeline/scheduling/schedule.py`` applies these rules.

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

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline import clock
from pipeline.scheduling.calendar import Pause
from pipeline.errors import ScheduleError
from pipeline.settings import Settings

UTC = clock.UTC
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


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
    """One planned send: a day, a kind, its local wall time and its UTC instant.

    With readers' own delivery times (``pipeline.scheduling.wave_sends.opening``)
    ``instant`` is the first wave and ``editors`` the editors' instant."""

    day: date
    kind: str
    at: time
    instant: datetime
    editors: datetime | None = None

    @property
    def last_call(self) -> datetime:
        """The instant the grace window counts from: the editors' time, or the first wave if later."""
        return max(self.instant, self.editors) if self.editors is not None else self.instant


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



def next_instant(now: datetime, settings: Settings, custom_by_day: dict[date, list[str | None]],
                 pause: Pause) -> datetime | None:
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

