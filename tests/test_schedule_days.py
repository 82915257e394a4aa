"""Whole days of the schedule, in process, on a frozen and movable clock: what a
daemon does when it wakes (``schedule.wake``) through the real stages (compose,
render, publish, the ledger, the Maildir outbox).  Daily sends across both DST
changes, downtime inside and outside the grace window, pause and resume, the
weekly digest, a content error on the day, a relay failure and a crashed holder."""
from __future__ import annotations

import mailbox
import re
from datetime import date, datetime, timedelta, timezone
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.scheduling import calendar, schedule
from pipeline.delivery import leases
from pipeline.cli import cli
from pipeline.clock import frozen_clock

UTC = timezone.utc
SECRET = "test-secret-not-for-production-0123456789"
HOLDER = "test-daemon"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_articles(content_dir: Path, count: int) -> list[str]:
    """``count`` more articles, copies of the committed one with their own slug and title."""
    source = (content_dir / "articles" / "microneedling.md").read_text(encoding="utf-8")
    slugs = []
    for n in range(1, count + 1):
        slug = f"microneedling-part-{n}"
        text = source.replace("slug: microneedling\n", f"slug: {slug}\n", 1)
        text = text.replace("title: What Is Microneedling?", f"title: Microneedling, part {n}", 1)
        (content_dir / "articles" / f"{slug}.md").write_text(text, encoding="utf-8")
        slugs.append(slug)
    return slugs


class Day:
    """The test's daemon: a database, settings, an outbox and a frozen clock."""

    def __init__(self, content_dir: Path, tmp_path: Path, db_url: str, clock):
        from pipeline.database import open_database
        from pipeline.settings import load_settings

        self.content_dir = content_dir
        self.clock = clock
        outbox = tmp_path / "outbox"
        mailbox.Maildir(outbox, create=True)
        self.settings = load_settings(content_dir, env={}).replace(
            transport="outbox", outbox_dir=str(outbox), public_dir=str(tmp_path / "public"),
            var_dir=str(tmp_path / "var"), secret_key=SECRET, database_url=db_url)
        self.engine = open_database(db_url)
        self.env = {"DATABASE_URL": db_url, "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_OUTBOX_DIR": str(outbox),
                    "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var")}

    def subscribe(self, address: str, frequency: str = "daily") -> None:
        from subscribers import store
        store.add(self.engine, self.settings, address, frequency=frequency, confirmed=True,
                  consent="I agree to receive the newsletter (test).")

    def schedule(self, slug: str, day: date, at: str | None = None) -> None:
        calendar.add_entry(self.engine, slug, day, at)

    def wake_at(self, when: datetime) -> list[calendar.Run]:
        self.clock.set(when)
        return schedule.wake(self.engine, self.settings, self.content_dir, HOLDER)

    def mails(self) -> list:
        """Every message in the outbox, in the order they were sent (by their Date:
        Maildir keys are real-time based, the clock here is frozen)."""
        box = mailbox.Maildir(self.settings.outbox_dir, create=False)
        found = [message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.keys()]
        return sorted(found, key=lambda m: (m["Date"].datetime, str(m["Subject"])))

    def to(self, address: str) -> list:
        return [m for m in self.mails() if m["To"].addresses[0].addr_spec == address]

    def run(self, day: date, kind: str = "daily") -> calendar.Run | None:
        return calendar.get_run(self.engine, day, kind)

    def cli(self, *args: str):
        return CliRunner().invoke(cli, ["--content", str(self.content_dir), *args], env=self.env)


@pytest.fixture
def days(content_dir, tmp_path, db_url):
    with frozen_clock(utc(2026, 3, 2, 6, 0)) as clock:
        yield Day(content_dir, tmp_path, db_url, clock)


# -- daily sends across the changes of the clocks --------------------------------------------

@pytest.mark.parametrize("dates, instants", [
    # Fri, Sat GMT; Sun 29 March the clocks go forward: 07:00 BST is 06:00Z
    ([date(2026, 3, 27), date(2026, 3, 28), date(2026, 3, 29)],
     [utc(2026, 3, 27, 7), utc(2026, 3, 28, 7), utc(2026, 3, 29, 6)]),
    # Sat BST; Sun 25 October the clocks go back: 07:00 GMT is 07:00Z again
    ([date(2026, 10, 24), date(2026, 10, 25)], [utc(2026, 10, 24, 6), utc(2026, 10, 25, 7)]),
])
def test_daily_send_at_seven_london_across_dst(days, dates, instants):
    days.subscribe("reader@example.com")
    slugs = add_articles(days.content_dir, len(dates))
    for slug, day in zip(slugs, dates):
        days.schedule(slug, day)
    for n, (day, instant) in enumerate(zip(dates, instants), 1):
        days.wake_at(instant - timedelta(hours=1))  # an hour early: on 25 Oct that is 06:00 GMT, still too early
        days.wake_at(instant - timedelta(seconds=1))
        assert len(days.mails()) == n - 1, f"sent before {instant} on {day}"
        days.wake_at(instant)
        mails = days.mails()
        assert len(mails) == n
        assert mails[-1]["Subject"] == f"Microneedling, part {n}"
        run = days.run(day)
        assert run.state == "sent" and run.sent == 1 and run.issue_key == day.isoformat()
        assert run.planned_at == instant and run.started_at == instant
        assert datetime.strptime(mails[-1]["Date"], "%a, %d %b %Y %H:%M:%S %z") == instant
        days.wake_at(instant + timedelta(minutes=30))  # waking again the same day sends nothing more
        assert len(days.mails()) == n
    assert [e.state for e in calendar.entries(days.engine)] == ["sent"] * len(dates)


# -- downtime ----------------------------------------------------------------------------------

def test_downtime_inside_the_grace_window_sends_once_late(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", date(2026, 3, 3))
    days.wake_at(utc(2026, 3, 3, 8, 59))  # down since before 07:00; 1 h 59 late
    assert len(days.mails()) == 1
    assert days.run(date(2026, 3, 3)).started_at == utc(2026, 3, 3, 8, 59)
    days.wake_at(utc(2026, 3, 3, 9, 30))
    days.wake_at(utc(2026, 3, 4, 7, 0))  # the next day has nothing scheduled
    assert len(days.mails()) == 1
    assert days.run(date(2026, 3, 4)).state == "nothing-to-send"


def test_downtime_outside_the_grace_window_is_missed_not_sent_late(days):
    days.subscribe("reader@example.com")
    part = add_articles(days.content_dir, 1)[0]
    days.schedule("microneedling", date(2026, 3, 3))
    days.schedule(part, date(2026, 3, 4))
    days.wake_at(utc(2026, 3, 3, 9, 1))  # 2 h 01 after the send time
    assert days.mails() == []
    run = days.run(date(2026, 3, 3))
    assert run.state == "missed" and "not running" in run.error
    assert calendar.entries(days.engine, slug="microneedling")[0].state == "missed"
    days.wake_at(utc(2026, 3, 3, 12, 0))
    assert days.mails() == []
    days.wake_at(utc(2026, 3, 4, 7, 0))  # the next day is unaffected
    assert [m["Subject"] for m in days.mails()] == ["Microneedling, part 1"]
    # the missed article can be put back on the calendar
    listing = days.cli("schedule", "list")
    assert "microneedling was missed on 2026-03-03" in listing.output
    assert days.cli("schedule", "move", "microneedling", "--to", "2026-03-05").exit_code == 0
    days.wake_at(utc(2026, 3, 5, 7, 0))
    assert [m["Subject"] for m in days.mails()][-1] == "What Is Microneedling?"


def test_several_days_down_are_each_recorded(days):
    days.subscribe("reader@example.com")
    slugs = add_articles(days.content_dir, 3)
    days.schedule(slugs[0], date(2026, 3, 3))
    days.schedule(slugs[1], date(2026, 3, 5))
    days.schedule(slugs[2], date(2026, 3, 6))
    days.wake_at(utc(2026, 3, 3, 7, 0))
    days.wake_at(utc(2026, 3, 6, 7, 10))  # down from the 3rd after the send to the 6th at 07:10
    assert days.run(date(2026, 3, 4)).state == "nothing-to-send"  # nothing was scheduled
    assert days.run(date(2026, 3, 5)).state == "missed"
    assert days.run(date(2026, 3, 6)).state == "sent"
    assert [m["Subject"] for m in days.mails()] == ["Microneedling, part 1", "Microneedling, part 3"]


# -- pause and resume --------------------------------------------------------------------------------

def test_pause_resume_and_pause_until(days):
    days.subscribe("reader@example.com")
    slugs = add_articles(days.content_dir, 4)
    for slug, day in zip(slugs, (3, 4, 5, 6)):
        days.schedule(slug, date(2026, 3, day))
    days.clock.set(utc(2026, 3, 2, 20, 0))
    assert days.cli("pause").exit_code == 0
    days.wake_at(utc(2026, 3, 3, 7, 0))
    assert days.mails() == []
    assert days.run(date(2026, 3, 3)).state == "paused"
    days.clock.set(utc(2026, 3, 3, 7, 30))
    assert days.cli("resume").exit_code == 0
    days.wake_at(utc(2026, 3, 3, 7, 31))  # a paused day is not sent after the resume
    assert days.mails() == []
    days.wake_at(utc(2026, 3, 4, 7, 0))
    assert [m["Subject"] for m in days.mails()] == ["Microneedling, part 2"]
    # pause until the 6th: the 5th is paused, the 6th sends
    days.clock.set(utc(2026, 3, 4, 12, 0))
    assert days.cli("pause", "--until", "2026-03-06").exit_code == 0
    days.wake_at(utc(2026, 3, 5, 7, 0))
    days.wake_at(utc(2026, 3, 6, 7, 0))
    assert days.run(date(2026, 3, 5)).state == "paused"
    assert [m["Subject"] for m in days.mails()] == ["Microneedling, part 2", "Microneedling, part 4"]


# -- the weekly digest -----------------------------------------------------------------------------------

def test_weekly_digest_on_the_weekly_day_with_the_weeks_articles(days):
    days.subscribe("daily@example.com")
    days.subscribe("weekly@example.com", frequency="weekly")
    slugs = add_articles(days.content_dir, 3)
    # Tue 3, Thu 5, Sat 7 and Monday 9 March (the weekly day)
    for slug, day in zip(["microneedling", *slugs], (3, 5, 7, 9)):
        days.schedule(slug, date(2026, 3, day))
    days.wake_at(utc(2026, 3, 2, 6, 59))  # Monday 2nd: the weekly of the week before has nothing
    for day in range(2, 10):
        days.wake_at(utc(2026, 3, day, 7, 0))
    assert days.run(date(2026, 3, 2), "weekly").state == "nothing-to-send"
    assert len(days.to("daily@example.com")) == 4
    weekly = days.to("weekly@example.com")
    assert len(weekly) == 1
    assert weekly[0]["Subject"] == "This week: What Is Microneedling? and 3 more"
    html = weekly[0].get_body(("html",)).get_content()
    for title in ("What Is Microneedling?", "Microneedling, part 1", "Microneedling, part 2",
                  "Microneedling, part 3"):
        assert title in html
    run = days.run(date(2026, 3, 9), "weekly")
    assert run.state == "sent" and run.sent == 1 and run.issue_key == "2026-03-09-weekly"
    assert (Path(days.settings.public_dir) / "issues" / "2026-03-09-weekly" / "index.html").exists()


# -- a content error on the day -------------------------------------------------------------------------

def test_content_error_on_the_day_stops_the_send_and_alerts(days, caplog):
    days.subscribe("reader@example.com")
    other = add_articles(days.content_dir, 1)[0]
    days.schedule("microneedling", date(2026, 3, 3))
    # any error in the library stops the day, not only one in the day's article
    broken = days.content_dir / "articles" / f"{other}.md"
    good = broken.read_text(encoding="utf-8")
    broken.write_text(good.replace("author: amy-murtagh", "author: nobody-we-know"), encoding="utf-8")

    days.wake_at(utc(2026, 3, 3, 7, 0))
    assert days.mails() == []
    run = days.run(date(2026, 3, 3))
    assert run.state == "content-error"
    assert f"{other}.md" in run.error and "nobody-we-know" in run.error
    assert any("content error" in r.getMessage() and f"{other}.md" in r.getMessage() for r in caplog.records)
    assert [(e.slug, e.state) for e in calendar.entries(days.engine)] == [("microneedling", "scheduled")]  # intact
    days.wake_at(utc(2026, 3, 3, 7, 30))  # the daemon does not retry on its own
    assert days.mails() == []

    status = days.cli("status")
    assert status.exit_code == 2, status.output
    assert "content-error" in status.output

    broken.write_text(good, encoding="utf-8")  # the editors fix it, then send by hand
    days.clock.set(utc(2026, 3, 3, 8, 0))
    sent = days.cli("send", "--date", "2026-03-03")
    assert sent.exit_code == 0, sent.output
    assert [m["Subject"] for m in days.mails()] == ["What Is Microneedling?"]
    status = days.cli("status")
    assert status.exit_code == 0, status.output
    assert days.run(date(2026, 3, 3)).state == "sent"
    assert days.run(date(2026, 3, 3)).sent == 1
    assert [(e.slug, e.state) for e in calendar.entries(days.engine)] == [("microneedling", "sent")]
    days.wake_at(utc(2026, 3, 3, 8, 30))  # and the daemon leaves the day alone
    days.wake_at(utc(2026, 3, 4, 7, 0))  # the queue moved on: nothing else is due
    assert len(days.mails()) == 1


def test_run_once_retries_a_day_after_a_content_error(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", date(2026, 3, 3))
    site = days.content_dir / "site.yaml"
    good = site.read_text(encoding="utf-8")
    site.write_text(good.replace("publication_name:", "publication_nam:"), encoding="utf-8")
    days.wake_at(utc(2026, 3, 3, 7, 0))
    assert days.run(date(2026, 3, 3)).state == "content-error"
    assert "site.yaml" in days.run(date(2026, 3, 3)).error
    site.write_text(good, encoding="utf-8")
    once = days.cli("run", "--once", "--date", "2026-03-03")
    assert once.exit_code == 0, once.output
    assert "daily issue of 2026-03-03: sent" in once.output
    assert len(days.mails()) == 1
    again = days.cli("run", "--once", "--date", "2026-03-03")  # never twice
    assert again.exit_code == 0 and len(days.mails()) == 1


# -- failures while sending ----------------------------------------------------------------------------

def test_a_relay_failure_is_retried_within_the_window(days):
    from conftest import free_port

    days.subscribe("reader@example.com")
    days.schedule("microneedling", date(2026, 3, 3))
    good = days.settings
    days.settings = good.replace(transport="smtp", smtp_port=free_port(), smtp_timeout=2.0,  # nobody listens
                                 smtp_retry_delay=0.01, smtp_max_attempts=1)
    days.wake_at(utc(2026, 3, 3, 7, 0))
    first = days.run(date(2026, 3, 3))
    # nobody was delivered: the day is not "sent", and status alerts until a retry works
    assert first.state == "failed" and first.sent == 0
    assert days.mails() == []
    days.settings = good  # the relay is back
    days.wake_at(utc(2026, 3, 3, 7, 2))  # too soon after the failure
    assert days.mails() == []
    days.wake_at(utc(2026, 3, 3, 7, 6))
    assert len(days.mails()) == 1
    run = days.run(date(2026, 3, 3))
    assert run.state == "sent" and run.attempts == 2


def test_a_crashed_holder_is_taken_over_after_its_lease_expires(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", date(2026, 3, 3))
    days.clock.set(utc(2026, 3, 3, 7, 0))
    # another daemon took the lease and the day, then died without a word
    assert leases.acquire(days.engine, leases.SEND_LEASE, "dead-daemon", days.settings.lease_seconds)
    assert calendar.claim_run(days.engine, date(2026, 3, 3), "daily", "dead-daemon", planned_at=utc(2026, 3, 3, 7))
    days.wake_at(utc(2026, 3, 3, 7, 1))
    assert days.mails() == []  # its lease is still live: hands off
    days.wake_at(utc(2026, 3, 3, 7, 0) + timedelta(seconds=days.settings.lease_seconds + 1))
    assert len(days.mails()) == 1
    run = days.run(date(2026, 3, 3))
    assert run.state == "sent" and run.holder == HOLDER and run.attempts == 2


def test_status_shows_next_sends_last_sends_queue_and_daemon(days):
    days.subscribe("reader@example.com")
    slugs = add_articles(days.content_dir, 2)
    days.schedule(slugs[0], date(2026, 3, 3), "08:15")
    days.wake_at(utc(2026, 3, 3, 8, 15))
    leases.beat(days.engine, "host:1:abc", utc(2026, 3, 3, 8, 0))
    days.schedule(slugs[1], date(2026, 3, 5))
    out = days.cli("status")
    assert out.exit_code == 0, out.output
    text = out.output
    assert "daemon: running" in text
    last = next(line for line in text.splitlines() if "2026-03-03" in line and "sent" in line)
    assert re.search(r"sent\W+1\W+0\W+0\W+0\W", last), last
    assert any("2026-03-05" in line and slugs[1] in line for line in text.splitlines())
    assert "queue: 2 unsent article(s)" in text
    assert "microneedling  (unscheduled)" in text and f"{slugs[1]}  (scheduled 2026-03-05)" in text
    days.clock.set(utc(2026, 3, 3, 9, 0))
    assert "daemon: not running" in days.cli("status").output


@pytest.mark.postgres
def test_a_day_on_postgresql(content_dir, tmp_path, postgres_database):
    with frozen_clock(utc(2026, 3, 2, 6, 0)) as clock:
        days = Day(content_dir, tmp_path, postgres_database, clock)
        days.subscribe("reader@example.com")
        days.schedule("microneedling", date(2026, 3, 3))
        days.wake_at(utc(2026, 3, 3, 6, 59))
        assert days.mails() == []
        days.wake_at(utc(2026, 3, 3, 7, 0))
        days.wake_at(utc(2026, 3, 3, 7, 1))
        assert [m["Subject"] for m in days.mails()] == ["What Is Microneedling?"]
        assert days.run(date(2026, 3, 3)).state == "sent"
        days.wake_at(utc(2026, 3, 4, 9, 30))  # down at the next send, nothing was due anyway
        assert days.run(date(2026, 3, 4)).state == "nothing-to-send"
        status = days.cli("status")
        assert status.exit_code == 0, status.output
        assert "queue: 0 unsent article(s)" in status.output
