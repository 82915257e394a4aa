"""Waves: when each group of an issue's recipients gets it, at their own local time.

An issue is rendered once, for a date D.  Its recipients fall into groups by
(time_zone, delivery_hour) (``subscribers.delivery_time``); a group's ledger rows
are released at its *release instant*:

- the wall time is the group's ``delivery_hour`` (``HH:00``), or else the issue's
  own send time: for a daily issue ``daily_time`` (the earliest ``--at`` of its
  articles, else ``send_time``), for the weekly digest ``send_time``;
- on date D in the group's ``time_zone``, or else in ``settings.timezone``;
- converted to UTC by ``slots.send_instant``, so the README's DST rules hold in
  every zone: a wall time in the spring gap is taken one hour later on the new
  clock, a wall time that happens twice means its first occurrence.

Weekly subscribers get the digest on ``weekly_day`` *in their own zone*: the
digest's date D is that weekday, and each group's instant is on D locally.

So one issue goes out over about a day and more: 07:00 on D in Pacific/Auckland
is the previous UTC day, 07:00 in America/Los_Angeles is 15:00Z on D.
``release_window`` gives the first and last release for a date.

A zone the system no longer knows (tz data can drop names) is treated as the
editors' zone, so nobody is silently skipped.  Nothing here reads the database
or the clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.errors import ScheduleError
from pipeline.scheduling.slots import daily_time, is_weekly_day, parse_hhmm, send_instant, zone
from pipeline.settings import Settings
from subscribers.delivery_time import HOURS, Group, offered_zones

KINDS = ("daily", "weekly")


@dataclass(frozen=True)
class Wave:
    """One group's release: its local wall time in its zone on the issue's date, as a UTC instant."""

    group: Group
    zone: str  # the zone actually used (the editors' when the group has none)
    at: time  # the local wall time asked for
    instant: datetime  # UTC


def _zone_of(name: str | None, settings: Settings) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # an unknown stored zone: the editors' (see the module notes)
    return zone(settings)


def default_time(day: date, kind: str, settings: Settings, custom: Sequence[str | None] = ()) -> time:
    """The issue's own wall time, for groups without an hour of their own."""
    if kind not in KINDS:
        raise ScheduleError(f"an issue is daily or weekly, not {kind!r}")
    if kind == "weekly":
        if not is_weekly_day(day, settings):
            raise ScheduleError(f"{day.isoformat()} is not the weekly day ({settings.weekly_day}): "
                                "the weekly digest goes out on weekly_day in each reader's zone")
        return parse_hhmm(settings.send_time, "send_time")
    return daily_time(settings, custom)


def wave(day: date, kind: str, settings: Settings, group: Group, custom: Sequence[str | None] = ()) -> Wave:
    """The release of one group of the issue of ``day`` (``custom``: its articles' ``--at`` times)."""
    at = time(group.delivery_hour, 0) if group.delivery_hour is not None else default_time(day, kind, settings, custom)
    tz = _zone_of(group.time_zone, settings)
    if kind == "weekly":
        default_time(day, kind, settings)  # refuses a date that is not weekly_day
    return Wave(group, tz.key, at, send_instant(day, at, tz))


def waves(day: date, kind: str, settings: Settings, groups: Iterable[Group],
          custom: Sequence[str | None] = ()) -> list[Wave]:
    """Each group's release, earliest first (ties: the editors' group first, then by zone and hour)."""
    found = [wave(day, kind, settings, g, custom) for g in dict.fromkeys(groups)]
    return sorted(found, key=lambda w: (w.instant, w.group.time_zone is not None, w.group.time_zone or "",
                                        w.group.delivery_hour if w.group.delivery_hour is not None else -1))


def release_instants(day: date, kind: str, settings: Settings, groups: Iterable[Group],
                     custom: Sequence[str | None] = ()) -> dict[Group, datetime]:
    """{group: its UTC release instant} for the issue of ``day``."""
    return {w.group: w.instant for w in waves(day, kind, settings, groups, custom)}


def release_window(day: date, kind: str, settings: Settings, groups: Iterable[Group] | None = None,
                   custom: Sequence[str | None] = ()) -> tuple[datetime, datetime]:
    """The first and last release of the issue of ``day``: over ``groups``, or, without
    them, over every zone a reader may choose and every hour (the widest an issue can
    span; with everyone at 07:00, Pacific/Kiritimati to Pacific/Pago_Pago is 25 hours)."""
    if groups is None:
        groups = [Group(None, None)] + [Group(z, h) for z in offered_zones() for h in (None, HOURS[0], HOURS[-1])]
    found = waves(day, kind, settings, groups, custom)
    if not found:
        raise ScheduleError(f"the issue of {day.isoformat()} has no recipients, so no releases")
    return found[0].instant, found[-1].instant
