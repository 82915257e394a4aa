"""Issue 15: the daemon delivers at each reader's local time.  One issue, rendered once,
its ledger written once with each row's release instant; the daemon (``schedule.wake`` on
a frozen clock, through the real stages and the Maildir outbox) composes it at the first
wave and sends each later wave at its instant.  Nobody gets it twice or early."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from pipeline.delivery import ledger
from pipeline.scheduling import calendar, schedule, wave_sends
from test_schedule_days import Day, add_articles, utc  # noqa: F401  (the in-process daemon harness)

UTC = timezone.utc
ZONES = {"london@example.com": (None, None), "ny@example.com": ("America/New_York", None),
         "kolkata@example.com": ("Asia/Kolkata", None), "auckland@example.com": ("Pacific/Auckland", None),
         "kolkata9@example.com": ("Asia/Kolkata", 9)}


@pytest.fixture
def days(content_dir, tmp_path, db_url):
    from pipeline.clock import frozen_clock
    with frozen_clock(utc(2026, 3, 1, 0, 0)) as clock:
        yield Day(content_dir, tmp_path, db_url, clock)


def place(days: Day, address: str, zone: str | None, hour: int | None, frequency: str = "daily") -> None:
    from subscribers.models import Subscriber
    days.subscribe(address, frequency)
    t = Subscriber.__table__
    with days.engine.begin() as conn:
        conn.execute(update(t).where(t.c.email == address).values(time_zone=zone, delivery_hour=hour))


def arrivals(days: Day) -> dict[str, list[datetime]]:
    """Each address -> the frozen-clock instants (the Date header) its messages were written."""
    found: dict[str, list[datetime]] = {}
    for mail in days.mails():
        found.setdefault(mail["To"].addresses[0].addr_spec, []).append(mail["Date"].datetime.astimezone(UTC))
    return found


def local_seven(day: date, zone: str | None, hour: int | None = None) -> datetime:
    tz = ZoneInfo(zone or "Europe/London")
    return datetime(day.year, day.month, day.day, hour if hour is not None else 7, tzinfo=tz).astimezone(UTC)


@pytest.mark.parametrize("day", [
    date(2026, 3, 8),  # New York springs forward that morning: 07:00 EDT is 11:00Z, not 12:00Z
    date(2026, 4, 5),  # Auckland falls back that morning: 07:00 NZST is 19:00Z on the 4th; London is on BST
])
def test_each_reader_gets_the_issue_at_seven_local_once_and_never_early(days, day):
    for address, (zone, hour) in ZONES.items():
        place(days, address, zone, hour)
    days.schedule(add_articles(days.content_dir, 1)[0], day)
    due = {a: local_seven(day, z, h) for a, (z, h) in ZONES.items()}
    assert due["auckland@example.com"].date() == day - timedelta(days=1)  # the day before, in UTC
    if day == date(2026, 3, 8):
        assert due["ny@example.com"] == utc(2026, 3, 8, 11)
    else:
        assert due["auckland@example.com"] == utc(2026, 4, 4, 19) and due["london@example.com"] == utc(2026, 4, 5, 6)
    # the daemon wakes a second before each wave, at it, and at times between
    moments = sorted({m for t in due.values() for m in (t - timedelta(seconds=1), t, t + timedelta(minutes=7))}
                     | {due["auckland@example.com"] - timedelta(hours=6)})
    for moment in moments:
        days.wake_at(moment)
        got = arrivals(days)
        for address, when in got.items():
            assert when == [due[address]], f"{address} at {moment}: {when}, due {due[address]}"
        assert set(got) == {a for a, t in due.items() if t <= moment}, moment
    # one render, one ledger: every row of one issue, each with its own wave
    issue = ledger.find_issue(days.engine, day.isoformat())
    assert issue.state == "sent" and issue.recipients == len(ZONES)
    with days.engine.connect() as conn:
        rows = dict(conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.release_at)
                                 .where(ledger.DELIVERIES.c.issue_id == issue.id)).all())
    assert {a: r.astimezone(UTC) for a, r in rows.items()} == due
    run = days.run(day)
    assert run.state == "sent" and run.sent == len(ZONES)
    assert run.planned_at == due["auckland@example.com"]  # composed at the first wave
    # the same subject and body for everyone: rendered once
    assert len({(str(m["Subject"]), m.get_body(("plain",)).get_content().split("Unsubscribe")[0][:200])
                for m in days.mails()}) == 1


def test_a_reader_at_nine_in_kolkata_is_not_mailed_at_the_editors_seven_in_london(days):
    place(days, "london@example.com", None, None)
    place(days, "kolkata9@example.com", "Asia/Kolkata", 9)
    day = date(2026, 3, 3)
    days.schedule("microneedling", day)
    days.wake_at(utc(2026, 3, 3, 7, 0))  # the editors' 07:00 London (12:30 in Kolkata: already due)
    assert set(arrivals(days)) == {"london@example.com", "kolkata9@example.com"}
    assert arrivals(days)["kolkata9@example.com"] == [utc(2026, 3, 3, 7)]  # late, since the daemon only woke now
    # a day where the daemon is up at the Kolkata reader's 09:00 (03:30Z), before London's 07:00
    other = add_articles(days.content_dir, 1)[0]
    days.schedule(other, date(2026, 3, 4))
    days.wake_at(utc(2026, 3, 4, 3, 29))
    days.wake_at(utc(2026, 3, 4, 3, 30))
    mails = [m for m in days.mails() if m["Date"].datetime.date() == date(2026, 3, 4)]
    assert [m["To"].addresses[0].addr_spec for m in mails] == ["kolkata9@example.com"]
    assert days.run(date(2026, 3, 4)).state == "waiting"  # not failed, not sent: London's wave waits
    days.wake_at(utc(2026, 3, 4, 6, 59, 59))
    assert len([m for m in days.mails() if m["Date"].datetime.date() == date(2026, 3, 4)]) == 1
    days.wake_at(utc(2026, 3, 4, 7, 0))
    assert arrivals(days)["london@example.com"][-1] == utc(2026, 3, 4, 7)
    assert days.run(date(2026, 3, 4)).state == "sent"


def test_a_restart_between_waves_resumes_without_resending(days, tmp_path):
    from pipeline.delivery import leases
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    day = date(2026, 3, 10)
    days.schedule("microneedling", day)
    days.wake_at(utc(2026, 3, 9, 18, 0))  # Auckland's 07:00 NZDT
    assert set(arrivals(days)) == {"auckland@example.com"}
    run = days.run(day)
    assert run.state == "waiting" and "the next wave at 2026-03-10 07:00 GMT" in run.error
    # the daemon dies; another one (a new holder) starts after London's wave came due
    days.clock.set(utc(2026, 3, 10, 7, 5))
    done = schedule.wake(days.engine, days.settings, days.content_dir, leases.new_holder())
    assert [r.state for r in done] == ["sent"]
    got = arrivals(days)
    assert got == {"auckland@example.com": [utc(2026, 3, 9, 18)], "london@example.com": [utc(2026, 3, 10, 7, 5)]}
    days.wake_at(utc(2026, 3, 10, 9))
    assert sum(len(v) for v in arrivals(days).values()) == 2


def test_a_waiting_issue_is_not_an_alert_and_status_shows_its_waves(days):
    from pipeline.ops import status
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "ny@example.com", "America/New_York", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 10, 7, 1))  # Auckland (late) and London sent; New York at 11:00Z waits
    report = status.build(days.engine, days.settings)
    assert report.exit_code == 0 and not report.alerts
    assert days.run(date(2026, 3, 10)).state == "waiting"
    [waves] = report.to_json()["waves"]
    assert waves["issue"] == "2026-03-10"
    assert [(w["instant"], w["total"], w["sent"], w["released"], w["to_come"]) for w in waves["waves"]] == [
        ("2026-03-09T18:00:00+00:00", 1, 1, True, 0), ("2026-03-10T07:00:00+00:00", 1, 1, True, 0),
        ("2026-03-10T11:00:00+00:00", 1, 0, False, 1)]
    result = days.cli("status")
    assert result.exit_code == 0, result.output
    assert "waves of issue 2026-03-10" in result.output
    assert "2026-03-10 11:00 GMT: 1 to come (of 1)" in result.output
    assert "2026-03-09 18:00 GMT: released, 1 of 1 sent" in result.output
    days.wake_at(utc(2026, 3, 10, 11))
    [waves] = status.build(days.engine, days.settings).to_json()["waves"]
    assert [w["sent"] for w in waves["waves"]] == [1, 1, 1]


def test_a_pause_between_waves_holds_the_later_ones_until_resume(days):
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 9, 18, 0))
    result = days.cli("pause")
    assert result.exit_code == 0, result.output
    days.wake_at(utc(2026, 3, 10, 7, 0))
    days.wake_at(utc(2026, 3, 10, 12, 0))
    assert set(arrivals(days)) == {"auckland@example.com"}
    assert days.run(date(2026, 3, 10)).state == "waiting"
    assert days.cli("resume").exit_code == 0
    days.wake_at(utc(2026, 3, 10, 12, 0, 5))
    assert arrivals(days)["london@example.com"] == [utc(2026, 3, 10, 12, 0, 5)]
    assert days.run(date(2026, 3, 10)).state == "sent"


def test_a_stop_between_waves_applies_to_the_waves_not_yet_sent(days):
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 9, 18, 0))
    assert days.cli("stop", "--date", "2026-03-10", "--by", "Dr Siân O’Neill").exit_code == 0
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert set(arrivals(days)) == {"auckland@example.com"}
    assert days.run(date(2026, 3, 10)).state == "stopped"
    days.wake_at(utc(2026, 3, 10, 8, 0))
    assert set(arrivals(days)) == {"auckland@example.com"}
    assert days.cli("resume").exit_code == 0
    days.wake_at(utc(2026, 3, 10, 8, 1))
    assert arrivals(days)["london@example.com"] == [utc(2026, 3, 10, 8, 1)]


def test_weekly_readers_get_the_digest_on_the_weekly_day_in_their_own_zone(days):
    place(days, "daily@example.com", None, None)
    place(days, "weekly-auckland@example.com", "Pacific/Auckland", None, "weekly")
    place(days, "weekly-ny@example.com", "America/New_York", 6, "weekly")
    days.schedule("microneedling", date(2026, 3, 4))
    days.wake_at(utc(2026, 3, 4, 7))
    monday = date(2026, 3, 9)
    # Monday 07:00 in Auckland is Sunday 18:00Z; Monday 06:00 in New York (EDT since the 8th) is 10:00Z
    for moment in (utc(2026, 3, 8, 17, 59), utc(2026, 3, 8, 18), utc(2026, 3, 9, 7), utc(2026, 3, 9, 9, 59),
                   utc(2026, 3, 9, 10)):
        days.wake_at(moment)
    got = arrivals(days)
    assert got["weekly-auckland@example.com"] == [utc(2026, 3, 8, 18)]
    assert got["weekly-ny@example.com"] == [utc(2026, 3, 9, 10)]
    assert days.run(monday, "weekly").state == "sent"
    assert utc(2026, 3, 8, 18).astimezone(ZoneInfo("Pacific/Auckland")).date() == monday


def test_the_ledger_write_is_one_insert_with_a_release_per_group(days):
    place(days, "london@example.com", None, None)
    place(days, "ny@example.com", "America/New_York", None)
    place(days, "unknown@example.com", "Mars/Olympus_Mons", None)  # a zone the tz data dropped: the editors'
    from fixtures_delivery import small_rendered
    rendered = small_rendered()
    info = ledger.record_issue(days.engine, rendered.issue, rendered.subject)
    releases = wave_sends.releases_for(days.settings, info.date, "daily")
    assert ledger.write_recipients(days.engine, info.id, "daily", releases=releases) == 3
    with days.engine.connect() as conn:
        rows = dict(conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.release_at)).all())
    editors = local_seven(info.date, None)
    assert rows["london@example.com"] == editors == rows["unknown@example.com"]
    assert rows["ny@example.com"] == local_seven(info.date, "America/New_York")


def test_the_daemon_plans_its_next_wake_at_the_next_wave(days):
    from pipeline.scheduling.run_cli import Daemon
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "ny@example.com", "America/New_York", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    daemon = Daemon(days.engine, days.settings, days.content_dir, holder="planner")
    days.clock.set(utc(2026, 3, 9, 12, 0))
    assert daemon.next_instant() == utc(2026, 3, 9, 18, 0)  # Auckland's 07:00 on the 10th
    days.wake_at(utc(2026, 3, 9, 18, 0))
    assert daemon.next_instant() == utc(2026, 3, 10, 7, 0)
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert daemon.next_instant() == utc(2026, 3, 10, 11, 0)  # New York's wave of the waiting issue


def _edit_article(days: Day, sentence: str) -> None:
    path = days.content_dir / "articles" / "microneedling.md"
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n") + f"\n\n{sentence}\n", encoding="utf-8")


def test_a_correction_between_waves_reaches_the_waves_not_yet_sent(days):
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 9, 18, 0))
    _edit_article(days, "Corrected: patch-test café products first – see £ prices.")
    result = days.cli("correct", "microneedling", "--note", "The patch-test advice was missing.", "--no-build")
    assert result.exit_code == 0, result.output
    days.wake_at(utc(2026, 3, 10, 7, 0))
    bodies = {m["To"].addresses[0].addr_spec: m.get_body(("plain",)).get_content() for m in days.mails()}
    assert "patch-test café products first" not in bodies["auckland@example.com"]  # it went before the correction
    assert "patch-test café products first" in bodies["london@example.com"]
    assert days.run(date(2026, 3, 10)).state == "sent"
    assert ledger.find_issue(days.engine, "2026-03-10").recipients == 2  # one ledger, written once


def test_a_retraction_between_waves_holds_the_waves_not_yet_sent(days):
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 9, 18, 0))
    result = days.cli("retract", "microneedling", "--note", "Withdrawn pending review.", "--no-build")
    assert result.exit_code == 0, result.output
    days.wake_at(utc(2026, 3, 10, 7, 0))
    days.wake_at(utc(2026, 3, 10, 8, 0))
    assert set(arrivals(days)) == {"auckland@example.com"}
    run = days.run(date(2026, 3, 10))
    assert run.state == "nothing-to-send" and "1 recipient(s) of later waves are not sent it" in run.error
    counts = ledger.state_counts(days.engine, ledger.find_issue(days.engine, "2026-03-10").id)
    assert counts[ledger.SENT] == 1 and counts[ledger.SKIPPED] == 1 and counts[ledger.QUEUED] == 0


def test_release_instants_on_sqlite_and_postgresql(store_url, settings, frozen):
    """The CASE of the ledger's one INSERT ... SELECT, and finish_issue's 'waiting', on both engines."""
    from fixtures_delivery import add_subscribers, small_rendered
    from pipeline.database import open_database
    from subscribers.models import Subscriber

    engine = open_database(store_url)
    s = settings.replace(secret_key="waves-test-secret")
    ids = add_subscribers(engine, s, 6)
    zones = [None, "America/New_York", "Asia/Kolkata", "Pacific/Auckland", "Asia/Kolkata", None]
    hours = [None, None, 9, None, None, 23]
    t = Subscriber.__table__
    with engine.begin() as conn:
        for i, z, h in zip(ids, zones, hours):
            conn.execute(update(t).where(t.c.id == i).values(time_zone=z, delivery_hour=h))
    rendered = small_rendered()
    info = ledger.record_issue(engine, rendered.issue, rendered.subject)
    day = info.date
    assert ledger.write_recipients(engine, info.id, "daily",
                                   releases=wave_sends.releases_for(s, day, "daily")) == 6
    with engine.connect() as conn:
        got = dict(conn.execute(select(ledger.DELIVERIES.c.subscriber_id, ledger.DELIVERIES.c.release_at)
                                .where(ledger.DELIVERIES.c.issue_id == info.id)).all())
    assert [got[i] for i in ids] == [local_seven(day, z, h) for z, h in zip(zones, hours)]
    # before any wave: nothing is released, and the issue waits (it is not unfinished)
    frozen.set(local_seven(day, "Pacific/Auckland") - timedelta(seconds=1))
    assert ledger.finish_issue(engine, info.id) == "waiting"
    frozen.set(local_seven(day, None))
    run = ledger.LedgerRun(engine, info.id, "t", fenced=False)
    page = run.page(ledger.QUEUED, 0, 100, 5)
    assert {p.subscriber_id for p in page} == {i for i, z, h in zip(ids, zones, hours)
                                                if local_seven(day, z, h) <= local_seven(day, None)}
    assert ledger.finish_issue(engine, info.id) == "unfinished"  # released rows are open


def test_an_article_added_after_the_first_wave_still_goes_out_that_day(days):
    place(days, "auckland@example.com", "Pacific/Auckland", None)
    place(days, "london@example.com", None, None)
    days.wake_at(utc(2026, 3, 9, 18, 0))  # Auckland's 07:00 on the 10th: nothing is planned for the 10th yet
    assert days.run(date(2026, 3, 10)) is None  # not recorded nothing-to-send this early
    days.schedule("microneedling", date(2026, 3, 10))  # the editors plan it that evening in London
    days.wake_at(utc(2026, 3, 9, 20, 0))
    assert arrivals(days) == {"auckland@example.com": [utc(2026, 3, 9, 20)]}  # late for Auckland, but once
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert arrivals(days)["london@example.com"] == [utc(2026, 3, 10, 7)]
    other = date(2026, 3, 11)
    days.wake_at(utc(2026, 3, 11, 7, 0))  # a day nobody planned ends at the editors' time, as before
    assert days.run(other).state == "nothing-to-send"


def test_status_shows_no_waves_when_everyone_keeps_the_editors_time(days):
    from pipeline.ops import status
    place(days, "london@example.com", None, None)
    days.schedule("microneedling", date(2026, 3, 10))
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert days.run(date(2026, 3, 10)).state == "sent"
    assert status.build(days.engine, days.settings).to_json()["waves"] == []
