"""Checks of the schedule: its settings, and wall times the clock change makes odd.

``settings_problems`` is what ``newsletter check`` reports (as
``site.yaml:LINE: error: ...``) and what stops ``newsletter run`` from starting,
so a ``send_time`` of ``6.30am`` is found before the send time, not by a daemon
logging an error every reconcile.  ``wall_time_note`` says when a wall time does
not exist on a day (the spring-forward hour) or happens twice (the fall-back hour).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pipeline.scheduling import slots
from pipeline.errors import ScheduleError
from pipeline.settings import Settings


def _number(value, kind: type) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int and not float(value).is_integer():
        return None
    return float(value)


def settings_problems(settings: Settings) -> list[tuple[str, str, str]]:
    """(setting, level, message) for each schedule setting that is wrong ("error") or
    odd ("warning": a send time the clocks skip or repeat on some day)."""
    found: list[tuple[str, str, str]] = []
    checks = (("send_time", lambda s: slots.parse_hhmm(s.send_time, "send_time")),
              ("timezone", slots.zone),
              ("weekly_day", slots.weekly_weekday))
    for name, check in checks:
        try:
            check(settings)
        except ScheduleError as exc:
            found.append((name, "error", str(exc)))
    for name, kind, low in (("grace_minutes", int, 0), ("reconcile_seconds", float, 0),
                            ("lease_seconds", float, 0)):
        value = _number(settings[name], kind)
        if value is None or (value < low if kind is int else value <= low):
            what = "a whole number of minutes, 0 or more" if kind is int else "a number of seconds above 0"
            found.append((name, "error", f"{name} must be {what}, got {settings[name]!r}"))
    if not isinstance(settings.send_when_nothing_due, bool):
        found.append(("send_when_nothing_due", "error",
                      f"send_when_nothing_due must be true or false, got {settings.send_when_nothing_due!r}"))
    if not any(name in ("send_time", "timezone") for name, _, _ in found):
        at = slots.parse_hhmm(settings.send_time, "send_time")
        tz = slots.zone(settings)
        for note in odd_days(at, tz, slots.today(settings)):
            found.append(("send_time", "warning", note))
    return found


def require_valid(settings: Settings) -> None:
    """Raise the first schedule settings error as one line (the daemon will not start)."""
    for name, level, message in settings_problems(settings):
        if level == "error":
            where = f"{settings.source}: " if settings.source else ""
            raise ScheduleError(f"{where}{message} (run `newsletter check`)")


def wall_time_note(day: date, at: time, tz: ZoneInfo) -> str | None:
    """Why ``at`` on ``day`` is not an ordinary wall time in ``tz``, with when it goes
    out by the time rules; None for an ordinary one."""
    first = datetime.combine(day, at, tzinfo=tz).replace(fold=0)
    second = first.replace(fold=1)
    name = getattr(tz, "key", str(tz))
    if first.utcoffset() == second.utcoffset():
        return None
    instant = slots.send_instant(day, at, tz)
    shown = instant.astimezone(tz)
    if shown.time().replace(second=0) != at:  # the spring gap
        return (f"{at:%H:%M} does not exist on {day.isoformat()} in {name} (the clocks go forward); "
                f"it goes out at {shown:%H:%M %Z}")
    return (f"{at:%H:%M} happens twice on {day.isoformat()} in {name} (the clocks go back); "
            f"it goes out once, at the first ({shown:%H:%M %Z})")


def odd_days(at: time, tz: ZoneInfo, start: date, days: int = 366) -> list[str]:
    """Notes for the days of the coming year on which ``at`` is skipped or repeated."""
    notes = []
    for n in range(days):
        note = wall_time_note(start + timedelta(days=n), at, tz)
        if note:
            notes.append(note)
    return notes
