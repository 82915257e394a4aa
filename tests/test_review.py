"""Medical sign-off (issue 12, step 2): a review belongs to one version of an article; with
``review_required`` the one decider (``plan_day``) refuses an unapproved issue for the daemon,
``send``, ``send-test`` and ``preview`` alike; ``check`` and ``schedule list`` say so; an
approved article says "Medically reviewed by NAME, CREDENTIALS on DATE" in its email, page and
feed item.  In process on a frozen clock, with the real stages and a Maildir outbox."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from lxml import html as lxml_html

from fixtures_console import CREDENTIALS, PASSWORD, REVIEWER, add_staff, cheap_hashing, cli
from test_schedule_days import Day

UTC = timezone.utc
DAY = date(2026, 3, 3)  # a Tuesday; the clock starts on Monday 2 March 06:00Z
SEND = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
LINE = f"Medically reviewed by {REVIEWER}, {CREDENTIALS} on 3 March 2026"  # approved on the send day


@pytest.fixture(autouse=True)
def _cheap(monkeypatch):
    cheap_hashing(monkeypatch)


@pytest.fixture
def day(content_dir, tmp_path, db_url):
    from pipeline.clock import frozen_clock
    with frozen_clock(datetime(2026, 3, 2, 6, 0, tzinfo=UTC)) as clock:
        d = Day(content_dir, tmp_path, db_url, clock)
        d.tmp_path = tmp_path
        d.settings = d.settings.replace(review_required=True)
        d.env["NEWSLETTER_REVIEW_REQUIRED"] = "true"
        d.subscribe("reader@example.com")
        d.reviewer = add_staff(d.engine, "rev@example.org", "reviewer")
        d.editor = add_staff(d.engine, "ed@example.org", "editor", name="Ed Itor", credentials="")
        yield d


def article(d, slug="microneedling"):
    from pipeline.content.library import load_library
    return load_library(d.content_dir, d.settings).article(slug)


def approve(d, slug="microneedling"):
    from pipeline.review import reviews
    return reviews.decide(d.engine, d.reviewer, article(d, slug), reviews.APPROVED)


def edit(d, slug="microneedling"):
    path = d.content_dir / "articles" / f"{slug}.md"
    path.write_text(path.read_text(encoding="utf-8") + "\nOne more sentence after sign-off.\n", encoding="utf-8")


# -- the review itself -------------------------------------------------------------------------

def test_an_edit_after_approval_makes_it_stale(day):
    from pipeline.review import reviews

    assert reviews.status(day.engine, article(day)).state == reviews.AWAITING
    approve(day)
    assert reviews.status(day.engine, article(day)).approved
    edit(day)
    stale = reviews.status(day.engine, article(day))
    assert stale.state == reviews.STALE and stale.review.reviewer == f"{REVIEWER}, {CREDENTIALS}"
    # CRLF line endings or a byte-order mark are the same version
    path = day.content_dir / "articles" / "microneedling.md"
    approve(day)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert reviews.status(day.engine, article(day)).approved


def test_an_editor_cannot_approve_and_sending_back_needs_a_comment(day):
    from pipeline.errors import StaffError
    from pipeline.review import reviews

    with pytest.raises(StaffError, match="needs the reviewer role"):
        reviews.decide(day.engine, day.editor, article(day), reviews.APPROVED)
    with pytest.raises(StaffError, match="needs a comment"):
        reviews.decide(day.engine, day.reviewer, article(day), reviews.REJECTED, "  ")
    reviews.decide(day.engine, day.reviewer, article(day), reviews.REJECTED, "Cite the 2024 NICE update – £ é 微针")
    found = reviews.status(day.engine, article(day))
    assert found.state == reviews.REJECTED and "微针" in found.describe()


def test_review_cli_asks_who_you_are_and_checks_the_password(day):
    no_one = day.cli("review", "approve", "microneedling")
    assert no_one.exit_code == 1 and "--as EMAIL" in str(no_one.exception)
    wrong = cli(day.content_dir, "review", "approve", "microneedling", "--as", "rev@example.org",
                env={**day.env, "NEWSLETTER_STAFF_PASSWORD": "not the password"})
    assert wrong.exit_code == 1 and wrong.error_line.startswith("error: sign-in refused")
    editor = cli(day.content_dir, "review", "approve", "microneedling", "--as", "ed@example.org",
                 env={**day.env, "NEWSLETTER_STAFF_PASSWORD": PASSWORD})
    assert editor.exit_code == 1 and "needs the reviewer role" in editor.error_line
    # the password from a hidden prompt
    ok = cli(day.content_dir, "review", "approve", "microneedling", "--as", "rev@example.org", env=day.env,
             input=PASSWORD + "\n")
    assert ok.exit_code == 0, ok.output
    assert f"approved by {REVIEWER}, {CREDENTIALS}" in ok.output and PASSWORD not in ok.output
    listed = cli(day.content_dir, "review", "list", env=day.env).stdout
    assert listed.startswith("microneedling\tapproved (approved by")
    log = cli(day.content_dir, "audit", "--action", "review", env=day.env).stdout.splitlines()
    assert len(log) == 1 and "rev@example.org  review.approve  microneedling" in log[0]
    failures = cli(day.content_dir, "audit", "--action", "signin.failed", env=day.env).stdout.splitlines()
    assert len(failures) == 1 and "(cli)" in failures[0]


# -- the one decider -----------------------------------------------------------------------------

def test_plan_day_refuses_an_unapproved_issue_until_it_is_approved(day):
    from pipeline.content.library import load_library
    from pipeline.errors import ReviewError
    from pipeline.scheduling.plan import plan_day

    library = load_library(day.content_dir, day.settings)
    # the queue (nothing scheduled, send_when_nothing_due on) is held like the calendar
    with pytest.raises(ReviewError, match="awaiting medical review: microneedling"):
        plan_day(day.engine, day.settings.replace(send_when_nothing_due=True), library, DAY)
    day.schedule("microneedling", DAY)
    with pytest.raises(ReviewError, match="awaiting medical review: microneedling") as held:
        plan_day(day.engine, day.settings, library, DAY)
    assert held.value.slugs == ("microneedling",)
    overridden = plan_day(day.engine, day.settings, library, DAY, override_review="urgent recall notice")
    assert overridden.slugs == ("microneedling",) and overridden.issue.lead.reviewed_by is None
    approve(day)
    plan = plan_day(day.engine, day.settings, library, DAY)
    assert str(plan.issue.lead.reviewed_by) == f"{REVIEWER}, {CREDENTIALS}"
    assert plan.issue.lead.reviewed_on == date(2026, 3, 2)
    # sign-off off: no refusal
    assert plan_day(day.engine, day.settings.replace(review_required=False), library, DAY).sends


def test_the_daemon_records_the_refusal_alerts_and_sends_once_approved(day):
    from pipeline.ops import status

    day.schedule("microneedling", DAY)
    (run,) = [r for r in day.wake_at(SEND + timedelta(minutes=1)) if r.day == DAY]
    assert run.state == "failed" and "awaiting medical review: microneedling" in run.error
    assert day.mails() == []
    alerts = status.build(day.engine, day.settings).alerts
    assert [a.day for a in alerts] == [DAY] and "awaiting medical review" in alerts[0].message
    listed = day.cli("schedule", "list", "--history", "0").output
    assert "awaiting review" in listed
    approve(day)
    day.wake_at(SEND + timedelta(minutes=7))  # the next try, inside the grace window
    assert day.run(DAY).state == "sent"
    (mail,) = day.to("reader@example.com")
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    tree = lxml_html.fromstring(html)
    assert LINE in " ".join(tree.text_content().split())
    assert LINE in " ".join(text.split())
    assert status.build(day.engine, day.settings).alerts == ()
    # the article page and its feed item say it too (the day's build)
    page = (day.tmp_path / "public" / "articles" / "microneedling" / "index.html").read_text(encoding="utf-8")
    reviewed = lxml_html.fromstring(page).cssselect("p.reviewed")
    assert reviewed and " ".join(reviewed[0].text_content().split()) == LINE
    assert reviewed[0].cssselect("time")[0].get("datetime") == "2026-03-03"
    feed = json.loads((day.tmp_path / "public" / "feed.json").read_text(encoding="utf-8"))
    item = next(i for i in feed["items"] if i["url"].endswith("/articles/microneedling/"))
    assert LINE in " ".join(lxml_html.fromstring(item["content_html"]).text_content().split())


def test_send_send_test_and_preview_agree_and_the_override_is_audited(day):
    day.schedule("microneedling", DAY)
    on = DAY.isoformat()
    for args in (("send", "--date", on, "--no-progress"), ("send-test", "--date", on, "--to", "ed@example.org"),
                 ("preview", "--date", on, "--out", str(day.tmp_path / "preview"))):
        refused = cli(day.content_dir, *args, env=day.env)
        assert refused.exit_code == 1 and "awaiting medical review: microneedling" in refused.error_line, args
        assert "\n" not in refused.error_line
    assert day.mails() == []
    empty = cli(day.content_dir, "send", "--date", on, "--no-progress", "--override-review", "  ", env=day.env)
    assert empty.exit_code == 1 and "needs the reason" in empty.error_line
    sent = cli(day.content_dir, "send", "--date", on, "--no-progress", "--override-review",
               "Recall notice – cannot wait for Dr O’Connor", env=day.env)
    assert sent.exit_code == 0, sent.output
    assert "sending without current medical approval: microneedling" in sent.output
    assert len(day.to("reader@example.com")) == 1
    log = cli(day.content_dir, "audit", "--action", "send", env=day.env).stdout.splitlines()
    assert "send.override-review" in log[0] and "Recall notice – cannot wait for Dr O’Connor" in log[0]
    assert '"unreviewed": ["microneedling"]' in log[0] and "  send  " in log[1]


def test_check_flags_unapproved_articles_at_their_file(day):
    flagged = cli(day.content_dir, "check", env=day.env)
    assert flagged.exit_code == 0
    line = next(l for l in flagged.output.splitlines() if "not medically approved" in l)
    assert line.startswith(f"{day.content_dir / 'articles' / 'microneedling.md'}:1: warning: not medically approved: "
                           "awaiting review")
    approve(day)
    assert "not medically approved" not in cli(day.content_dir, "check", env=day.env).output
    edit(day)
    assert "awaiting review (edited since approval)" in cli(day.content_dir, "check", env=day.env).output
    off = cli(day.content_dir, "check", env={**day.env, "NEWSLETTER_REVIEW_REQUIRED": "false"})
    assert "not medically approved" not in off.output
