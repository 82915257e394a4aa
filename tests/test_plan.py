"""One decider for what a day sends (``pipeline.scheduling.plan.plan_day``), and the calendar's
double sends and silent misses it closes.  Whole days on a frozen clock through the
real stages, the CLI in process, and a counting aiosmtpd server where a relay matters."""
from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, start_scripted_server
from pipeline.scheduling import calendar
from pipeline.delivery import ledger
from test_schedule_days import HOLDER, Day, add_articles, utc

TUE, THU, MON = date(2026, 3, 3), date(2026, 3, 5), date(2026, 3, 9)


@pytest.fixture
def days(content_dir, tmp_path, db_url, frozen):
    return Day(content_dir, tmp_path, db_url, frozen)


def smtp(days: Day, port: int, **more) -> None:
    """Send through the relay on ``port``, one try per message within a run."""
    days.settings = days.settings.replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=port,
                                          smtp_max_attempts=1, smtp_retry_delay=0.01, smtp_timeout=5.0, **more)
    days.env.update({"NEWSLETTER_TRANSPORT": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
                     "NEWSLETTER_SMTP_MAX_ATTEMPTS": "1", "NEWSLETTER_SMTP_RETRY_DELAY": "0.01"})


def nothing_due_sends(days: Day) -> None:
    days.settings = days.settings.replace(send_when_nothing_due=True)
    days.env["NEWSLETTER_SEND_WHEN_NOTHING_DUE"] = "true"


def one_line_error(result) -> str:
    """The one line the command fails with: a NewsletterError (``newsletter`` prints it as
    ``error: ...``, exit 1), or a line it printed itself before a non-zero exit."""
    from pipeline.errors import NewsletterError

    assert result.exit_code != 0, result.output
    if isinstance(result.exception, NewsletterError):
        assert "\n" not in str(result.exception)
        return f"error: {result.exception}"
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def set_published(content_dir: Path, slug: str, published: date) -> None:
    path = content_dir / "articles" / f"{slug}.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"^published: .*$", f"published: {published.isoformat()}", text, count=1,
                           flags=re.MULTILINE), encoding="utf-8")


# -- double sends ------------------------------------------------------------------------------

@pytest.mark.parametrize("finish", ["daemon retry", "send --resume"])
def test_a_partly_sent_day_is_finished_never_sent_again_as_a_new_issue(days, finish):
    controller, server = start_scripted_server(Script(), free_port())
    try:
        smtp(days, server.port)
        add_subscribers(days.engine, days.settings, 20)
        greylisted = {f"sub{i}@example.com" for i in (1, 4, 7, 10, 13, 16)}  # 30 %
        server.script.temp_fail.update(greylisted)
        days.schedule("microneedling", TUE)
        days.wake_at(utc(2026, 3, 3, 7, 0))
        run = days.run(TUE)
        assert run.state == "failed" and run.sent == 14 and "6 recipient(s) not yet delivered" in run.error
        listing = days.cli("schedule", "list").output
        # an editor follows what `schedule list` says (the old hint was a move to another day)
        moved = days.cli("schedule", "move", "microneedling", "--to", "2026-03-05")
        cancelled = days.cli("schedule", "cancel", "microneedling")  # "back to the queue" would resend it later

        server.script.temp_fail.clear()  # the relay takes everyone again
        if finish == "daemon retry":
            days.wake_at(utc(2026, 3, 3, 7, 6))
        else:
            days.wake_at(utc(2026, 3, 3, 9, 30))  # the window closed: it waits for an editor
            assert days.run(TUE).state == "failed"
            days.clock.set(utc(2026, 3, 3, 10, 0))
            done = days.cli("send", "--resume", "--date", "2026-03-03")
            assert done.exit_code == 0, done.output
        for day in (4, 5, 6):
            days.wake_at(utc(2026, 3, day, 7, 0))
    finally:
        controller.stop()
    got = server.by_recipient()
    assert len(got) == 20 and set(got.values()) == {1}, got  # nobody twice, nobody missed
    assert days.run(TUE).state == "sent"
    assert [(e.slug, e.state) for e in calendar.entries(days.engine)] == [("microneedling", "sent")]
    # the one action offered for the partly sent day, in the listing, the refusal and the run's note
    assert "`newsletter send --resume --date 2026-03-03` finishes it" in listing
    assert "schedule move microneedling" not in listing
    refused = one_line_error(moved)
    assert "14 of 20 sent" in refused and "newsletter send --resume --date 2026-03-03" in refused
    assert one_line_error(cancelled) == refused
    assert "newsletter send --resume --date 2026-03-03" in run.error
    again = one_line_error(days.cli("schedule", "add", "microneedling", "--on", "2026-03-09"))
    assert "already sent on 2026-03-03" in again


def test_the_queue_never_sends_an_article_planned_for_a_later_day(days):
    nothing_due_sends(days)
    days.subscribe("reader@example.com")
    part = add_articles(days.content_dir, 1)[0]
    days.schedule("microneedling", THU)  # the head of the queue, planned for Thursday
    for day in (3, 4, 5, 6):
        days.wake_at(utc(2026, 3, day, 7, 0))
    subjects = [str(m["Subject"]) for m in days.mails()]
    assert subjects == ["Microneedling, part 1", "What Is Microneedling?"]  # Tuesday the queue, Thursday its day
    assert days.run(date(2026, 3, 4)).state == "nothing-to-send"  # the queue was empty by then
    assert ledger.find_issue(days.engine, "2026-03-03").articles == (part,)


def test_a_hand_send_on_an_empty_day_is_refused_and_mails_nobody(days):
    days.subscribe("reader@example.com")
    days.clock.set(utc(2026, 3, 3, 6, 0))
    line = one_line_error(days.cli("send", "--date", "2026-03-03"))
    assert "nothing is scheduled" in line and "newsletter schedule add SLUG --on 2026-03-03" in line
    assert days.mails() == [] and ledger.issue_count(days.engine) == 0


def test_a_hand_sent_queue_article_is_that_days_issue_everywhere(days):
    nothing_due_sends(days)
    days.subscribe("daily@example.com")
    days.subscribe("weekly@example.com", frequency="weekly")
    days.clock.set(utc(2026, 3, 3, 10, 0))  # after the daemon recorded nothing... it was not running
    sent = days.cli("send", "--date", "2026-03-03")
    assert sent.exit_code == 0, sent.output
    run = days.run(TUE)
    assert run.state == "sent" and run.issue_key == "2026-03-03" and run.sent == 1
    assert [(e.slug, e.day, e.state) for e in calendar.entries(days.engine)] == [("microneedling", TUE, "sent")]
    for day in range(3, 10):
        days.wake_at(utc(2026, 3, day, 7, 0) + timedelta(hours=4 if day == 3 else 0))
    assert days.run(TUE).state == "sent"
    assert len(days.to("daily@example.com")) == 1
    (weekly,) = days.to("weekly@example.com")
    assert "What Is Microneedling?" in weekly.get_body(("html",)).get_content()


# -- nobody silently missed ------------------------------------------------------------------------

def test_a_day_older_than_the_look_back_ends_missed_with_its_next_step(days):
    days.subscribe("reader@example.com")
    days.wake_at(utc(2026, 3, 2, 7, 0))  # the database's first day
    days.schedule("microneedling", TUE)
    days.wake_at(utc(2026, 3, 10, 7, 30))  # down for a week: the 3rd is beyond the three-day look-back
    assert days.mails() == []
    (entry,) = calendar.entries(days.engine)
    assert entry.state == "missed"
    run = days.run(TUE)
    assert run.state == "missed" and "newsletter schedule move microneedling --to DATE" in run.error
    listing = days.cli("schedule", "list").output
    assert "microneedling was missed on 2026-03-03: `newsletter schedule move microneedling --to DATE`" in listing


def test_a_content_error_day_that_is_over_ends_missed_and_says_so(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", TUE)
    site = days.content_dir / "site.yaml"
    good = site.read_text(encoding="utf-8")
    site.write_text(good.replace("publication_name:", "publication_nam:"), encoding="utf-8")
    days.wake_at(utc(2026, 3, 3, 7, 0))
    assert days.run(TUE).state == "content-error"
    assert calendar.entries(days.engine)[0].state == "scheduled"  # the same day, an editor can still fix and send
    site.write_text(good, encoding="utf-8")
    days.wake_at(utc(2026, 3, 4, 7, 0))  # the day is over, nobody sent it
    assert calendar.entries(days.engine, slug="microneedling")[0].state == "missed"
    run = days.run(TUE)
    assert run.state == "content-error" and "marked missed" in run.error and "schedule move" in run.error
    listing = days.cli("schedule", "list").output
    assert "microneedling was missed on 2026-03-03" in listing
    assert days.mails() == []


def test_an_article_is_embargoed_until_its_published_date(days):
    nothing_due_sends(days)
    days.subscribe("reader@example.com")
    future = add_articles(days.content_dir, 1)[0]
    set_published(days.content_dir, future, date(2026, 3, 6))
    set_published(days.content_dir, "microneedling", date(2026, 3, 6))
    line = one_line_error(days.cli("schedule", "add", future, "--on", "2026-03-05"))
    assert "embargoed until 2026-03-06" in line
    assert one_line_error(days.cli("schedule", "add", future, "--on", "2026-03-03")).startswith("error:")
    days.wake_at(utc(2026, 3, 3, 7, 0))  # the queue does not take it early either
    assert days.mails() == [] and days.run(TUE).state == "nothing-to-send"
    added = days.cli("schedule", "add", future, "--on", "2026-03-06")
    assert added.exit_code == 0, added.output
    # an article put back in time after it was scheduled: the day refuses rather than link to a missing page
    days.schedule("microneedling", THU)
    set_published(days.content_dir, "microneedling", date(2026, 3, 20))
    days.wake_at(utc(2026, 3, 5, 7, 0))
    assert days.run(THU).state == "content-error" and "embargoed until 2026-03-20" in days.run(THU).error
    days.wake_at(utc(2026, 3, 6, 7, 0))
    assert [str(m["Subject"]) for m in days.mails()] == ["Microneedling, part 1"]


def test_a_monday_article_sent_after_the_weekly_digest_goes_into_the_next_one(days):
    days.subscribe("weekly@example.com", frequency="weekly")
    parts = add_articles(days.content_dir, 2)
    days.schedule("microneedling", TUE)
    days.schedule(parts[0], MON, "09:00")  # after the 07:00 digest of that Monday
    days.schedule(parts[1], date(2026, 3, 11))
    for day in range(3, 17):
        for hour in (7, 9):
            days.wake_at(utc(2026, 3, day, hour, 0))
    first, second = days.to("weekly@example.com")
    first_html, second_html = (m.get_body(("html",)).get_content() for m in (first, second))
    assert "What Is Microneedling?" in first_html and "Microneedling, part 1" not in first_html
    assert "Microneedling, part 1" in second_html and "Microneedling, part 2" in second_html
    assert "What Is Microneedling?" not in second_html  # already in the first digest


# -- editors can see what will happen ------------------------------------------------------------------

ISSUE_LINE = re.compile(r"^issue:\s+(\S+) \(number \d+\)(?: \(digest\))?: (.*)$", re.MULTILINE)


def test_preview_and_send_test_show_exactly_the_days_issue(days, tmp_path):
    days.subscribe("reader@example.com")
    parts = add_articles(days.content_dir, 2)
    hair = days.content_dir / "articles" / f"{parts[1]}.md"
    hair.write_text(hair.read_text(encoding="utf-8").replace("  - skin-care", "  - hair-loss"), encoding="utf-8")
    days.schedule(parts[0], TUE)  # the queue's head is microneedling: the preview used to show it
    days.schedule(parts[1], THU)  # only a sensitive topic: the neutral subject
    preview = days.cli("preview", "--date", "2026-03-03", "--out", str(tmp_path / "p1"))
    assert preview.exit_code == 0, preview.output
    assert ISSUE_LINE.search(preview.output).group(2) == parts[0]
    assert "subject:   Microneedling, part 1" in preview.output
    preview = days.cli("preview", "--date", "2026-03-05", "--out", str(tmp_path / "p2"))
    assert ISSUE_LINE.search(preview.output).group(2) == parts[1]
    assert "subject:   Your Klarity Health Library newsletter" in preview.output
    test = days.cli("send-test", "--to", "editor@example.com", "--date", "2026-03-05")
    assert test.exit_code == 0, test.output
    assert ISSUE_LINE.search(test.output).group(2) == parts[1]
    assert "subject: Your Klarity Health Library newsletter" in test.output
    assert str(days.mails()[-1]["Subject"]) == "[TEST] Your Klarity Health Library newsletter"
    line = one_line_error(days.cli("send-test", "--to", "editor@example.com", "--date", "2026-03-04"))
    assert "nothing to send" in line and "2026-03-04" in line
    assert one_line_error(days.cli("preview", "--date", "2026-03-04", "--out", str(tmp_path / "p3")))


@pytest.mark.parametrize("setting, value, message", [
    ("send_time", '"6.30am"', "send_time must be HH:MM"),
    ("weekly_day", "mondays", "weekly_day must be a weekday name"),
    ("timezone", "Europe/Narnia", "not an IANA time zone"),
    ("grace_minutes", "soon", "grace_minutes must be a whole number"),
])
def test_check_reports_bad_schedule_settings_and_the_daemon_will_not_start(days, setting, value, message):
    site = days.content_dir / "site.yaml"
    lines = site.read_text(encoding="utf-8").splitlines()
    found = [n for n, line in enumerate(lines) if line.startswith(f"{setting}:")]
    if found:
        lines[found[0]] = f"{setting}: {value}"
        number = found[0] + 1
    else:
        lines.append(f"{setting}: {value}")
        number = len(lines)
    site.write_text("\n".join(lines) + "\n", encoding="utf-8")
    checked = days.cli("check")
    assert checked.exit_code == 1
    assert any(line.startswith(f"{site}:{number}: error: ") and message in line
               for line in checked.output.splitlines()), checked.output
    refused = days.cli("run", "--no-web")
    line = one_line_error(refused)
    assert message in line and "newsletter check" in line


def test_check_warns_about_a_send_time_the_clocks_skip_or_repeat(days):
    site = days.content_dir / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8").replace('send_time: "07:00"', 'send_time: "01:30"'),
                    encoding="utf-8")
    checked = days.cli("check")
    assert checked.exit_code == 0, checked.output
    assert "warning: 01:30 does not exist on 2026-03-29 in Europe/London" in checked.output
    assert "warning: 01:30 happens twice on 2026-10-25 in Europe/London" in checked.output


def test_calendar_commands_say_what_they_change(days):
    parts = add_articles(days.content_dir, 3)
    days.clock.set(utc(2026, 3, 2, 12, 0))
    first = days.cli("schedule", "add", parts[0], "--on", "2026-03-05", "--at", "09:00")
    assert first.exit_code == 0 and "note:" not in first.output
    second = days.cli("schedule", "add", parts[1], "--on", "2026-03-05", "--at", "08:00")
    assert second.exit_code == 0, second.output
    assert "2026-03-05 now has 2 articles" in second.output and "digest" in second.output
    assert "moves from 09:00 to 08:00" in second.output
    gap = days.cli("schedule", "add", parts[2], "--on", "2026-03-29", "--at", "01:30")
    assert gap.exit_code == 0
    assert "warning: 01:30 does not exist on 2026-03-29" in gap.output and "02:30 BST" in gap.output
    twice = days.cli("schedule", "move", parts[2], "--to", "2026-10-25")
    assert "warning: 01:30 happens twice on 2026-10-25" in twice.output and "01:30 BST" in twice.output

    paused = days.cli("pause", "--until", "2026-03-06")
    assert paused.exit_code == 0
    line = next(line for line in paused.output.splitlines() if "2026-03-05 08:00 GMT daily:" in line)
    assert parts[0] in line and parts[1] in line and "digest" in line
    days.wake_at(utc(2026, 3, 5, 8, 0))
    days.clock.set(utc(2026, 3, 5, 9, 0))
    resumed = days.cli("resume")
    assert "skipped while paused" in resumed.output
    line = next(line for line in resumed.output.splitlines() if "2026-03-05 daily:" in line)
    assert parts[0] in line and parts[1] in line
    assert f"`newsletter schedule move {parts[0]} --to DATE`" in resumed.output


def test_schedule_list_shows_history_with_the_real_send_time(days):
    days.subscribe("reader@example.com")
    parts = add_articles(days.content_dir, 1)
    days.schedule(parts[0], TUE, "08:15")
    days.wake_at(utc(2026, 3, 3, 8, 15))
    days.clock.set(utc(2026, 3, 3, 12, 0))
    listing = days.cli("schedule", "list").output
    today = next(line for line in listing.splitlines() if line.lstrip("│ ").startswith("2026-03-03") and "daily" in line)
    assert "08:15 GMT" in today and "sent" in today
    days.clock.set(utc(2026, 3, 4, 12, 0))
    listing = days.cli("schedule", "list").output
    assert "Recent days" in listing
    past = next(line for line in listing.splitlines() if "2026-03-03" in line)
    assert "08:15 GMT" in past and "sent" in past and parts[0] in past


def test_run_once_at_rehearses_a_moment_of_the_day(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", TUE)
    early = days.cli("run", "--once", "--at", "2026-03-03 06:59")
    assert early.exit_code == 0, early.output
    assert "nothing was due" in early.output and "next send: 2026-03-03 07:00 GMT" in early.output
    assert days.mails() == []
    on_time = days.cli("run", "--once", "--at", "2026-03-03 07:00")
    assert on_time.exit_code == 0, on_time.output
    assert "daily issue of 2026-03-03: sent" in on_time.output
    assert days.run(TUE).started_at == utc(2026, 3, 3, 7, 0)
    assert len(days.mails()) == 1
    assert one_line_error(days.cli("run", "--once", "--at", "tomorrow")).startswith("error: --at must be")


# -- one decider: every path agrees ----------------------------------------------------------------------

SITUATIONS = {
    # name: (set-up on a fresh database, day, kind, expected articles)
    "scheduled": (lambda d, p: d.schedule(p[0], TUE), TUE, "daily", lambda p: [p[0]]),
    "double-booked": (lambda d, p: (d.schedule(p[0], TUE, "09:00"), d.schedule(p[1], TUE)), TUE, "daily",
                      lambda p: [p[0], p[1]]),
    "queue with planned later": (lambda d, p: (nothing_due_sends(d), d.schedule("microneedling", THU)), TUE,
                                 "daily", lambda p: [p[0]]),
    "weekly day": (lambda d, p: (d.schedule(p[1], TUE), d.wake_at(utc(2026, 3, 3, 7, 0))), MON, "weekly",
                   lambda p: [p[1]]),
    "empty day": (lambda d, p: None, TUE, "daily", lambda p: []),
}
PATHS = ("daemon", "run --once", "send", "schedule list", "preview", "send-test")


def _slugs_in(text: str, known: list[str]) -> list[str]:
    words = set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text))
    return sorted(slug for slug in known if slug in words)


def _what(path: str, days: Day, day: date, kind: str, known: list[str], out: Path) -> list[str]:
    key = day.isoformat() + ("-weekly" if kind == "weekly" else "")
    if path == "daemon":
        days.wake_at(utc(day.year, day.month, day.day, 7, 0))
        days.wake_at(utc(day.year, day.month, day.day, 9, 0))
    elif path == "run --once":
        days.clock.set(utc(day.year, day.month, day.day, 5, 0))
        days.cli("run", "--once", "--date", day.isoformat())
    elif path == "send":
        days.clock.set(utc(day.year, day.month, day.day, 5, 0))
        result = days.cli("send", "--date", day.isoformat())
        assert (result.exit_code == 0) == (ledger.find_issue(days.engine, key) is not None), result.output
    if path in ("daemon", "run --once", "send"):
        issue = ledger.find_issue(days.engine, key)
        return sorted(issue.articles) if issue else []
    days.clock.set(utc(day.year, day.month, day.day, 5, 0))
    if path == "schedule list":
        listing = days.cli("schedule", "list", "--history", "0").output
        line = next(line for line in listing.splitlines() if day.isoformat() in line and kind in line)
        return _slugs_in(line, known)
    args = ["preview", "--out", str(out)] if path == "preview" else ["send-test", "--to", "editor@example.com"]
    result = days.cli(*args, "--date", day.isoformat(), "--kind", kind)
    found = ISSUE_LINE.search(result.output)
    assert (result.exit_code == 0) == (found is not None), result.output
    return sorted(re.split(r",\s*", found.group(2))) if found else []


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_every_command_agrees_on_what_a_day_sends(content_dir, tmp_path, frozen, situation):
    setup, day, kind, expected = SITUATIONS[situation]
    parts = add_articles(content_dir, 2)
    known = ["microneedling", *parts]
    answers = {}
    for n, path in enumerate(PATHS):
        if kind == "weekly" and path == "send":
            continue  # `newsletter send` sends daily issues only
        frozen.set(utc(2026, 3, 2, 12, 0))
        folder = tmp_path / f"path{n}"
        folder.mkdir()
        days = Day(content_dir, folder, f"sqlite:///{folder / 'newsletter.db'}", frozen)
        days.subscribe("daily@example.com")
        days.subscribe("weekly@example.com", frequency="weekly")
        setup(days, parts)
        answers[path] = _what(path, days, day, kind, known, folder / "preview")
    assert answers == {path: sorted(expected(parts)) for path in answers}, answers
    assert HOLDER  # the daemon path woke as the test daemon


@pytest.mark.postgres
def test_plan_on_postgresql(content_dir, tmp_path, frozen, postgres_database):
    days = Day(content_dir, tmp_path, postgres_database, frozen)
    days.subscribe("reader@example.com")
    days.subscribe("weekly@example.com", frequency="weekly")
    parts = add_articles(content_dir, 2)
    days.wake_at(utc(2026, 3, 2, 7, 0))
    days.schedule(parts[0], TUE)
    days.schedule("microneedling", date(2026, 3, 4))
    days.wake_at(utc(2026, 3, 3, 7, 0))
    line = one_line_error(days.cli("schedule", "move", parts[0], "--to", "2026-03-12"))
    assert "already sent on 2026-03-03" in line
    days.wake_at(utc(2026, 3, 9, 7, 0))  # down from the 3rd: the 4th is beyond the look-back
    assert calendar.entries(days.engine, slug="microneedling")[0].state == "missed"
    assert days.run(date(2026, 3, 4)).state == "missed"
    (weekly,) = days.to("weekly@example.com")
    assert "Microneedling, part 1" in weekly.get_body(("html",)).get_content()
    assert [str(m["Subject"]) for m in days.to("reader@example.com")] == ["Microneedling, part 1"]
