"""Issue 15: `newsletter send` by hand with readers in several zones.  The same decider as
the daemon (``wave_sends.releases_for``): a hand send mails the waves released so far, says
in one line how many wait and when the next wave is, and the daemon sends the rest;
``--release-all`` sends everyone now; ``--dry-run`` lists the waves."""
from __future__ import annotations

from datetime import date

import pytest

from pipeline.delivery import ledger
from test_schedule_days import Day, utc
from test_waves_daemon import arrivals, place


@pytest.fixture
def days(content_dir, tmp_path, db_url):
    from pipeline.clock import frozen_clock
    with frozen_clock(utc(2026, 3, 10, 7, 30)) as clock:
        day = Day(content_dir, tmp_path, db_url, clock)
        place(day, "london@example.com", None, None)
        place(day, "ny@example.com", "America/New_York", None)
        place(day, "tokyo@example.com", "Asia/Tokyo", 20)  # 20:00 JST is 11:00Z
        day.schedule("microneedling", date(2026, 3, 10))
        yield day


def test_a_hand_send_mails_the_released_waves_and_the_daemon_the_rest(days):
    result = days.cli("send", "--date", "2026-03-10")
    assert result.exit_code == 0, result.output
    assert "waiting: 2 recipient(s) get it at their own local time, the next wave at 2026-03-10 11:00 GMT" \
        in result.output
    assert set(arrivals(days)) == {"london@example.com"}
    assert days.run(date(2026, 3, 10)).state == "waiting"
    again = days.cli("send", "--date", "2026-03-10")  # a second hand send before the next wave: nothing more
    assert again.exit_code == 0 and set(arrivals(days)) == {"london@example.com"}
    days.wake_at(utc(2026, 3, 10, 10, 59, 59))
    assert set(arrivals(days)) == {"london@example.com"}
    days.wake_at(utc(2026, 3, 10, 11, 0))
    assert arrivals(days) == {"london@example.com": [utc(2026, 3, 10, 7, 30)],
                              "ny@example.com": [utc(2026, 3, 10, 11)], "tokyo@example.com": [utc(2026, 3, 10, 11)]}
    assert days.run(date(2026, 3, 10)).state == "sent"
    assert ledger.find_issue(days.engine, "2026-03-10").state == "sent"


def test_release_all_sends_everyone_now_even_after_the_ledger_was_written(days):
    assert days.cli("send", "--date", "2026-03-10").exit_code == 0
    result = days.cli("send", "--date", "2026-03-10", "--release-all")
    assert result.exit_code == 0, result.output
    assert "waiting" not in result.output
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "ny@example.com": 1,
                                                             "tokyo@example.com": 1}
    assert days.run(date(2026, 3, 10)).state == "sent"


def test_dry_run_lists_the_waves_and_writes_nothing(days):
    result = days.cli("send", "--date", "2026-03-10", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "waves (each reader's local time):" in result.output
    assert "  2026-03-10 07:00 GMT: 1 recipient(s)" in result.output
    assert "  2026-03-10 11:00 GMT: 2 recipient(s)" in result.output
    assert ledger.find_issue(days.engine, "2026-03-10") is None and not arrivals(days)


def test_schedule_list_says_the_day_goes_out_in_waves(days):
    days.clock.set(utc(2026, 3, 10, 5, 0))
    result = days.cli("schedule", "list", "--history", "0")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert ("readers' own times: the issue of 2026-03-10 goes out in 2 waves, from 2026-03-10 07:00 GMT to "
            "2026-03-10 11:00 GMT") in text


def test_a_hand_send_before_the_editors_time_sends_their_readers_now_and_the_others_at_their_own(days):
    days.clock.set(utc(2026, 3, 10, 5, 0))  # 05:00 London: the editors send by hand, early
    result = days.cli("send", "--date", "2026-03-10")
    assert result.exit_code == 0, result.output
    assert arrivals(days) == {"london@example.com": [utc(2026, 3, 10, 5)]}
    assert "the next wave at 2026-03-10 11:00 GMT" in result.output
    days.wake_at(utc(2026, 3, 10, 7, 0))  # the daemon at the editors' time: nothing more (London had it)
    assert set(arrivals(days)) == {"london@example.com"}
    days.wake_at(utc(2026, 3, 10, 11, 0))
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "ny@example.com": 1,
                                                             "tokyo@example.com": 1}


def test_run_once_does_the_days_work_now_for_the_editors_readers(days):
    days.clock.set(utc(2026, 3, 10, 5, 0))
    result = days.cli("run", "--once", "--date", "2026-03-10")
    assert result.exit_code == 0, result.output
    assert set(arrivals(days)) == {"london@example.com"}
    assert days.run(date(2026, 3, 10)).state == "waiting"


def test_an_article_going_out_in_waves_cannot_be_moved_or_scheduled_again(days):
    assert days.cli("send", "--date", "2026-03-10").exit_code == 0  # London now, the others later
    result = days.cli("schedule", "move", "microneedling", "--to", "2026-03-12")
    assert result.exit_code == 1
    assert "microneedling is going out in the issue of 2026-03-10 at each reader's local time (1 of 3 sent so far)" \
        in str(result.exception)
