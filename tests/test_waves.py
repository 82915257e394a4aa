"""Issue 15, delivery at each reader's local time: the release instant of each group
of an issue's recipients (pipeline/scheduling/waves.py), with the README's DST rules in
every zone.  Pure functions: no database, no clock."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from pipeline.errors import ScheduleError
from pipeline.scheduling import waves
from subscribers.delivery_time import Group, offered_zones

UTC = timezone.utc
EDITORS = Group(None, None)
LONDON, NEW_YORK, KOLKATA, AUCKLAND = (Group(z, None) for z in (
    "Europe/London", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(instant: datetime, zone: str) -> datetime:
    return instant.astimezone(ZoneInfo(zone))


@pytest.mark.parametrize("day, expected", [
    # an ordinary winter day
    (date(2026, 3, 2), {EDITORS: utc(2026, 3, 2, 7), NEW_YORK: utc(2026, 3, 2, 12), KOLKATA: utc(2026, 3, 2, 1, 30),
                        AUCKLAND: utc(2026, 3, 1, 18)}),
    # New York springs forward at 02:00 that morning: 07:00 EDT is 11:00Z
    (date(2026, 3, 8), {EDITORS: utc(2026, 3, 8, 7), NEW_YORK: utc(2026, 3, 8, 11), KOLKATA: utc(2026, 3, 8, 1, 30),
                        AUCKLAND: utc(2026, 3, 7, 18)}),
    # London springs forward at 01:00 GMT: 07:00 BST is 06:00Z
    (date(2026, 3, 29), {EDITORS: utc(2026, 3, 29, 6), NEW_YORK: utc(2026, 3, 29, 11),
                         KOLKATA: utc(2026, 3, 29, 1, 30), AUCKLAND: utc(2026, 3, 28, 18)}),
    # Auckland falls back at 03:00 NZDT: 07:00 NZST (+12) is 19:00Z the previous UTC day
    (date(2026, 4, 5), {EDITORS: utc(2026, 4, 5, 6), NEW_YORK: utc(2026, 4, 5, 11), KOLKATA: utc(2026, 4, 5, 1, 30),
                        AUCKLAND: utc(2026, 4, 4, 19)}),
])
def test_each_zone_gets_the_issue_at_seven_local_on_its_date_across_dst_changes(settings, day, expected):
    groups = [AUCKLAND, EDITORS, KOLKATA, NEW_YORK]
    found = waves.release_instants(day, "daily", settings, groups)
    assert found == expected
    for group, instant in found.items():
        seen = local(instant, group.time_zone or settings.timezone)
        assert (seen.date(), seen.time()) == (day, time(7, 0)), group
    # earliest first: Auckland's morning comes before the UTC day of the issue even starts
    assert [w.group for w in waves.waves(day, "daily", settings, groups)] == sorted(groups, key=expected.get)
    assert LONDON not in found and waves.wave(day, "daily", settings, LONDON).instant == expected[EDITORS]


def test_an_hour_in_the_spring_gap_is_taken_one_hour_later_and_a_repeated_hour_means_the_first(settings):
    # 01:00 does not exist in London on 2026-03-29: 01:00 GMT (= 02:00 BST), once
    gap = waves.wave(date(2026, 3, 29), "daily", settings, Group(None, 1))
    assert gap.instant == utc(2026, 3, 29, 1) and local(gap.instant, "Europe/London").time() == time(2, 0)
    # 02:30 does not exist in New York on 2026-03-08: 02:00 EST = 07:00Z = 03:00 EDT
    ny = waves.wave(date(2026, 3, 8), "daily", settings, Group("America/New_York", 2))
    assert ny.instant == utc(2026, 3, 8, 7) and local(ny.instant, "America/New_York").time() == time(3, 0)
    # 02:00 happens twice in Auckland on 2026-04-05: the first, NZDT (+13)
    twice = waves.wave(date(2026, 4, 5), "daily", settings, Group("Pacific/Auckland", 2))
    assert twice.instant == utc(2026, 4, 4, 13)
    # 01:00 happens twice in London on 2026-10-25: the first, BST
    assert waves.wave(date(2026, 10, 25), "daily", settings, Group(None, 1)).instant == utc(2026, 10, 25, 0)


def test_a_chosen_hour_and_the_days_own_send_time(settings):
    day = date(2026, 6, 10)
    found = waves.release_instants(day, "daily", settings, [EDITORS, Group("Asia/Kolkata", 18), Group(None, 0)],
                                   custom=["09:30", None])
    # groups without an hour follow the day's time (the earliest --at); a chosen hour is kept
    assert found == {EDITORS: utc(2026, 6, 10, 8, 30), Group("Asia/Kolkata", 18): utc(2026, 6, 10, 12, 30),
                     Group(None, 0): utc(2026, 6, 9, 23)}


def test_weekly_subscribers_get_the_digest_on_weekly_day_in_their_own_zone(settings):
    assert settings.weekly_day == "monday"
    monday = date(2026, 3, 2)
    found = waves.release_instants(monday, "weekly", settings, [EDITORS, AUCKLAND, NEW_YORK, Group("Asia/Tokyo", 6)])
    for group, instant in found.items():
        seen = local(instant, group.time_zone or settings.timezone)
        assert seen.strftime("%A") == "Monday" and seen.date() == monday
    assert found[AUCKLAND] == utc(2026, 3, 1, 18)  # Monday 07:00 in Auckland is Sunday in UTC
    assert found[Group("Asia/Tokyo", 6)] == utc(2026, 3, 1, 21)
    # the weekly digest ignores the daily issue's --at times
    assert waves.wave(monday, "weekly", settings, EDITORS, custom=["09:30"]).instant == utc(2026, 3, 2, 7)
    with pytest.raises(ScheduleError, match="not the weekly day"):
        waves.wave(date(2026, 3, 3), "weekly", settings, AUCKLAND)
    with pytest.raises(ScheduleError, match="daily or weekly"):
        waves.wave(monday, "monthly", settings, EDITORS)


def test_the_release_window_spans_more_than_a_day(settings):
    day = date(2026, 3, 29)
    first, last = waves.release_window(day, "daily", settings, [AUCKLAND, NEW_YORK, EDITORS])
    assert (first, last) == (utc(2026, 3, 28, 18), utc(2026, 3, 29, 11))
    # over every zone a reader may choose, everyone at 07:00: Kiritimati (+14) to Pago Pago (-11)
    everyone = [Group(z, None) for z in offered_zones()]
    first, last = waves.release_window(day, "daily", settings, everyone)
    assert (first, last) == (utc(2026, 3, 28, 17), utc(2026, 3, 29, 18))
    assert last - first == timedelta(hours=25)
    # the widest bound: any zone, any hour (00:00 in Kiritimati to 23:00 in Pago Pago)
    assert waves.release_window(day, "daily", settings) == (utc(2026, 3, 28, 10), utc(2026, 3, 30, 10))
    with pytest.raises(ScheduleError, match="no recipients"):
        waves.release_window(day, "daily", settings, [])


def test_a_zone_the_system_no_longer_knows_is_sent_at_the_editors_time_not_skipped(settings):
    gone = waves.wave(date(2026, 3, 2), "daily", settings, Group("Mars/Olympus_Mons", None))
    assert (gone.zone, gone.instant) == ("Europe/London", utc(2026, 3, 2, 7))


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zone=st.sampled_from(offered_zones()), hour=st.integers(0, 23),
       day=st.dates(date(2026, 1, 1), date(2027, 12, 31)))
def test_nobody_gets_it_early_and_a_missing_hour_is_at_most_the_gap_late(settings, zone, hour, day):
    instant = waves.wave(day, "daily", settings, Group(zone, hour)).instant
    assert instant.tzinfo is not None and instant.utcoffset() == timedelta(0)
    seen = local(instant, zone)
    wanted = datetime.combine(day, time(hour, 0))
    late = seen.replace(tzinfo=None) - wanted
    if late:  # only a wall time the zone skipped that day, taken after the change
        assert timedelta(0) < late <= timedelta(hours=1), (zone, day, hour, seen)
        assert datetime.combine(day, time(hour, 0), tzinfo=ZoneInfo(zone)).replace(fold=0).utcoffset() != \
            datetime.combine(day, time(hour, 0), tzinfo=ZoneInfo(zone)).replace(fold=1).utcoffset()
