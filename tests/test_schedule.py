"""Schedule: the time rules (DST included), the decisions, the lease, the calendar
and its CLI.  Pure functions and a real SQLite file; the clock is frozen and moved."""
from __future__ import annotations

import threading
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from pipeline.scheduling import calendar, schedule
from pipeline.delivery import leases
from pipeline.scheduling import slots
from pipeline.scheduling.calendar import Pause, Run
from pipeline.cli import cli
from pipeline.errors import ScheduleError

UTC = timezone.utc
LONDON = ZoneInfo("Europe/London")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- time rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("day, expected", [
    (date(2026, 3, 28), utc(2026, 3, 28, 7, 0)),   # Saturday, GMT
    (date(2026, 3, 29), utc(2026, 3, 29, 6, 0)),   # the clocks went forward at 01:00Z: BST
    (date(2026, 3, 30), utc(2026, 3, 30, 6, 0)),
    (date(2026, 10, 24), utc(2026, 10, 24, 6, 0)),  # still BST
    (date(2026, 10, 25), utc(2026, 10, 25, 7, 0)),  # back to GMT at 01:00Z
    (date(2026, 10, 26), utc(2026, 10, 26, 7, 0)),
])
def test_seven_oclock_london_across_both_changes(day, expected):
    assert slots.send_instant(day, time(7, 0), LONDON) == expected
    assert slots.send_instant(day, time(7, 0), LONDON).astimezone(LONDON).hour == 7


def test_a_time_in_the_spring_gap_goes_out_one_hour_later_on_the_new_clock():
    instant = slots.send_instant(date(2026, 3, 29), time(1, 30), LONDON)
    assert instant == utc(2026, 3, 29, 1, 30)
    assert instant.astimezone(LONDON).strftime("%H:%M %Z") == "02:30 BST"


def test_a_time_that_happens_twice_in_autumn_means_the_first_one():
    instant = slots.send_instant(date(2026, 10, 25), time(1, 30), LONDON)
    assert instant == utc(2026, 10, 25, 0, 30)
    assert instant.astimezone(LONDON).strftime("%H:%M %Z") == "01:30 BST"


def test_daily_time_is_the_earliest_custom_time_else_the_setting(settings):
    assert slots.daily_time(settings) == time(7, 0)
    assert slots.daily_time(settings, [None, "09:15", "08:05"]) == time(8, 5)


def test_weekly_slot_only_on_the_weekly_day(settings):
    monday, tuesday = date(2026, 3, 9), date(2026, 3, 10)
    assert [s.kind for s in slots.slots_for(monday, settings)] == ["daily", "weekly"]
    assert [s.kind for s in slots.slots_for(tuesday, settings)] == ["daily"]
    with pytest.raises(ScheduleError, match="weekly_day"):
        slots.weekly_weekday(settings.replace(weekly_day="someday"))


@pytest.mark.parametrize("raw", ["7:00", "24:00", "07:60", "0700", "seven", ""])
def test_bad_times_are_one_clear_error(raw):
    with pytest.raises(ScheduleError, match="HH:MM"):
        slots.parse_hhmm(raw, "--at")


def test_unknown_time_zone_is_a_clear_error(settings):
    with pytest.raises(ScheduleError, match="IANA"):
        slots.zone(settings.replace(timezone="Europe/Narnia"))


# -- decisions -----------------------------------------------------------------------------

SLOT = slots.Slot(date(2026, 3, 2), "daily", time(7, 0), utc(2026, 3, 2, 7, 0))
GRACE = timedelta(minutes=120)


def run_in(state, **kw) -> Run:
    return Run(SLOT.day, "daily", state, planned_at=SLOT.instant, **kw)


@pytest.mark.parametrize("now, run, paused, expected", [
    (utc(2026, 3, 2, 6, 59, 59), None, False, "wait"),
    (utc(2026, 3, 2, 7, 0), None, False, "run"),
    (utc(2026, 3, 2, 9, 0), None, False, "run"),            # late, inside the window
    (utc(2026, 3, 2, 9, 0, 1), None, False, "miss"),        # outside it
    (utc(2026, 3, 2, 7, 0), None, True, "pause"),
    (utc(2026, 3, 2, 6, 0), None, True, "wait"),            # paused, but not yet time
    (utc(2026, 3, 2, 7, 5), run_in("sent"), False, "done"),
    (utc(2026, 3, 2, 7, 5), run_in("content-error"), False, "done"),
    (utc(2026, 3, 2, 7, 5), run_in("running"), False, "run"),    # holder gone (the caller checks the lease)
    (utc(2026, 3, 2, 9, 5), run_in("running"), False, "expire"),
    (utc(2026, 3, 2, 7, 3), run_in("failed", finished_at=utc(2026, 3, 2, 7, 1)), False, "wait"),
    (utc(2026, 3, 2, 7, 6), run_in("failed", finished_at=utc(2026, 3, 2, 7, 1)), False, "run"),
    (utc(2026, 3, 2, 9, 6), run_in("failed", finished_at=utc(2026, 3, 2, 7, 1)), False, "done"),
])
def test_decide(now, run, paused, expected):
    assert schedule.decide(SLOT, now, GRACE, run, paused) == expected


def test_a_later_send_reopens_a_day_that_ended_without_email():
    later = slots.Slot(SLOT.day, "daily", time(11, 0), utc(2026, 3, 2, 11, 0))
    empty = run_in("nothing-to-send")
    assert schedule.decide(later, utc(2026, 3, 2, 10, 0), GRACE, empty, False) == "wait"
    assert schedule.decide(later, utc(2026, 3, 2, 11, 0), GRACE, empty, False) == "run"
    # but never a day that sent
    assert schedule.decide(later, utc(2026, 3, 2, 11, 0), GRACE, run_in("sent"), False) == "done"


def test_pause_until_is_the_first_day_that_sends_again():
    pause = Pause(True, date(2026, 3, 5))
    assert pause.covers(date(2026, 3, 4))
    assert not pause.covers(date(2026, 3, 5))
    assert Pause(True, None).covers(date(2030, 1, 1))
    assert not Pause(False, None).covers(date(2026, 3, 4))


def test_next_instant_skips_paused_days_and_crosses_dst(settings):
    now = utc(2026, 3, 28, 8, 0)  # Saturday after the send
    assert slots.next_instant(now, settings, {}, Pause()) == utc(2026, 3, 29, 6, 0)
    assert slots.next_instant(now, settings, {}, Pause(True, date(2026, 3, 31))) == utc(2026, 3, 31, 6, 0)
    custom = {date(2026, 3, 28): ["09:30"]}
    assert slots.next_instant(now, settings, custom, Pause()) == utc(2026, 3, 28, 9, 30)


# -- the database: lease, runs, calendar ------------------------------------------------------

@pytest.fixture
def engine(db_url):
    from pipeline.database import open_database
    return open_database(db_url)


@pytest.fixture
def both(store_url):
    """An engine once on SQLite and once on PostgreSQL: the lease and the run claim
    must be atomic on both."""
    from pipeline.database import open_database
    return open_database(store_url)


def test_lease_is_exclusive_until_it_expires(both, frozen):
    assert leases.acquire(both, "send", "a", 60)
    assert not leases.acquire(both, "send", "b", 60)
    assert leases.acquire(both, "send", "a", 60)  # renewing our own
    frozen.advance(seconds=59)
    assert not leases.acquire(both, "send", "b", 60)
    assert leases.renew(both, "send", "a", 60)
    frozen.advance(seconds=61)  # a stopped renewing (crashed): the lease frees itself
    assert leases.acquire(both, "send", "b", 60)
    assert not leases.renew(both, "send", "a", 60)
    leases.release(both, "send", "a")  # not a's any more: no effect
    assert leases.lease_holder(both, "send")[0] == "b"
    leases.release(both, "send", "b")
    assert leases.lease_holder(both, "send") is None


def test_lease_race_between_threads_has_one_winner(both, frozen):
    winners = []
    barrier = threading.Barrier(8)

    def take(name):
        barrier.wait()
        if leases.acquire(both, "race", name, 60):
            winners.append(name)

    threads = [threading.Thread(target=take, args=(f"h{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_claim_run_once_per_day_and_kind(both, frozen):
    day = date(2026, 3, 2)
    first = calendar.claim_run(both, day, "daily", "a", planned_at=SLOT.instant)
    assert first is not None and first.state == "running" and first.attempts == 1
    calendar.finish_run(both, day, "daily", "a", "sent", issue_key="2026-03-02", counts={"sent": 3})
    assert calendar.claim_run(both, day, "daily", "b", planned_at=SLOT.instant, retry=("failed",)) is None
    assert calendar.get_run(both, day, "daily").sent == 3
    # the weekly kind of the same day is a separate run
    assert calendar.claim_run(both, day, "weekly", "b", planned_at=SLOT.instant) is not None


def test_failed_run_can_be_retried_once_by_one_holder(both, frozen):
    day = date(2026, 3, 2)
    calendar.claim_run(both, day, "daily", "a", planned_at=SLOT.instant)
    calendar.finish_run(both, day, "daily", "a", "failed", error="relay down")
    retried = calendar.claim_run(both, day, "daily", "b", planned_at=SLOT.instant, retry=("failed",))
    assert retried.state == "running" and retried.attempts == 2 and retried.holder == "b"
    assert calendar.claim_run(both, day, "daily", "c", planned_at=SLOT.instant, retry=("failed",)) is None


def test_calendar_add_move_cancel(engine, frozen):
    calendar.add_entry(engine, "microneedling", date(2026, 3, 5), None)
    with pytest.raises(ScheduleError, match="already scheduled on 2026-03-05"):
        calendar.add_entry(engine, "microneedling", date(2026, 3, 6), None)
    moved = calendar.move_entry(engine, "microneedling", date(2026, 3, 9))
    assert moved.day == date(2026, 3, 9) and moved.state == "scheduled"
    cancelled = calendar.cancel_entry(engine, "microneedling")
    assert cancelled.state == "cancelled"
    with pytest.raises(ScheduleError, match="not scheduled"):
        calendar.cancel_entry(engine, "microneedling")
    with pytest.raises(ScheduleError, match="not on the calendar"):
        calendar.move_entry(engine, "microneedling", date(2026, 3, 10))
    assert calendar.add_entry(engine, "microneedling", date(2026, 3, 10), "08:00").at == "08:00"


def test_only_one_scheduled_entry_per_article_even_racing(both, frozen):
    """The partial unique index holds even when the application check is bypassed."""
    from sqlalchemy.exc import IntegrityError

    from pipeline.scheduling.calendar import CalendarEntry
    from pipeline.database import transaction

    calendar.add_entry(both, "microneedling", date(2026, 3, 5), None)
    with pytest.raises(IntegrityError):
        with transaction(both) as session:
            now = frozen.now()
            session.add(CalendarEntry(slug="microneedling", day=date(2026, 3, 6), state="scheduled",
                                      created_at=now, updated_at=now))


# -- the calendar CLI ---------------------------------------------------------------------------

@pytest.fixture
def invoke(content_dir, db_url, tmp_path):
    env = {"DATABASE_URL": db_url, "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
           "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox")}

    def run(*args: str):
        return CliRunner().invoke(cli, ["--content", str(content_dir), *args], env=env)
    return run


def test_schedule_add_list_move_cancel_from_the_cli(invoke, engine, frozen):
    # frozen: Monday 2026-03-02 06:00Z (06:00 GMT)
    result = invoke("schedule", "add", "microneedling", "--on", "2026-03-04", "--at", "08:30")
    assert result.exit_code == 0, result.output
    assert "scheduled microneedling on 2026-03-04 at 08:30" in result.output
    listing = invoke("schedule", "list")
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if "2026-03-04" in line)
    assert "08:30 GMT" in row and "microneedling" in row and "scheduled" in row
    assert any("2026-03-02" in line and "weekly" in line for line in listing.output.splitlines())
    moved = invoke("schedule", "move", "microneedling", "--to", "2026-03-06")
    assert moved.exit_code == 0 and "moved microneedling to 2026-03-06 at 08:30" in moved.output
    assert [(e.day, e.at) for e in calendar.entries(engine, states=("scheduled",))] == [(date(2026, 3, 6), "08:30")]
    cancelled = invoke("schedule", "cancel", "microneedling")
    assert cancelled.exit_code == 0 and "was on 2026-03-06" in cancelled.output
    assert calendar.entries(engine, states=("scheduled",)) == []


@pytest.mark.parametrize("args, message", [
    (("schedule", "add", "no-such-article", "--on", "2026-03-04"), "no article with slug 'no-such-article'"),
    (("schedule", "add", "microneedling", "--on", "2026-03-01"), "2026-03-01 is in the past"),
    (("schedule", "add", "microneedling", "--on", "04/03/2026"), "--on must be a date as YYYY-MM-DD"),
    (("schedule", "add", "microneedling", "--on", "2026-03-04", "--at", "8.30"), "--at must be HH:MM"),
    (("schedule", "add", "microneedling", "--on", "2026-03-02", "--at", "05:00"), "has passed"),
    (("schedule", "move", "microneedling", "--to", "2026-03-04"), "not on the calendar"),
    (("schedule", "cancel", "microneedling"), "nothing to cancel"),
    (("pause", "--until", "2026-03-02"), "not in the future"),
])
def test_bad_calendar_input_is_one_line_and_non_zero(invoke, engine, frozen, args, message):
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in str(result.exception) or message in result.output


def test_pause_and_resume_from_the_cli(invoke, engine, frozen):
    assert invoke("pause", "--until", "2026-03-05").exit_code == 0
    assert calendar.get_pause(engine) == Pause(True, date(2026, 3, 5))
    listing = invoke("schedule", "list").output
    assert "sending is paused until 2026-03-05" in listing
    assert "paused" in next(line for line in listing.splitlines() if "2026-03-04" in line)
    assert "scheduled" not in next(line for line in listing.splitlines() if "2026-03-04" in line)
    assert invoke("resume").output.splitlines()[0] == "resumed"
    assert calendar.get_pause(engine) == Pause(False, None)
