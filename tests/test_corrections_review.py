"""Issue 16 under a hostile review: concurrent editors, a reader who got the article
twice, people who leave between the ledger and the send, a retraction of an article
that is due tomorrow, and what the site and a spam filter make of a retraction."""
from __future__ import annotations

import mailbox
import shutil
import subprocess
import signal
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from email import message_from_bytes, policy
from zoneinfo import ZoneInfo

import lxml.html
import pytest
from sqlalchemy import insert, update

from conftest import free_port, missing
from fixtures_corrections import NEWSLETTER, SECRET, World, send_issue_of, world  # noqa: F401  (fixture)
from fixtures_delivery import Script, add_subscribers, start_scripted_server
from fixtures_site import write_article
from pipeline import clock
from pipeline.corrections import records
from pipeline.database import open_database
from pipeline.errors import CorrectionError

SLUG = "microneedling"
TITLE = "Dr Zoë’s café – £30 微针 🙂 =?utf-8?b?SGk=?="


def _today(world: World):
    return clock.now().astimezone(ZoneInfo(world.settings().timezone)).date()


def test_two_editors_recording_one_edit_at_once_make_one_correction(store_url, library):
    """Four editors run `correct --significant` for the same edit at the same moment: one
    correction (so one notice per reader), three told it has not changed since."""
    engine = open_database(store_url)
    with engine.begin() as conn:  # the version that went out differs from the file now
        conn.execute(insert(records.VERSIONS).values(slug=SLUG, content_hash="0" * 64, source=records.ISSUE,
                                                     recorded_at=clock.now()))
    gate, results = threading.Barrier(4), [None] * 4

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = records.record(engine, library, SLUG, f"Dose corrected ({i}).", significant=True,
                                        by=f"editor {i}", today=clock.now().date())
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    done = [r for r in results if isinstance(r, records.Correction)]
    refused = [r for r in results if isinstance(r, CorrectionError)]
    assert len(done) == 1 and len(refused) == 3, results
    assert all("has not changed" in str(r) for r in refused)
    assert len(records.listing(engine, SLUG)) == 1


def test_a_reader_who_got_it_daily_and_weekly_gets_one_notice_and_leavers_get_none(world):
    """The article went out in a daily issue and in the weekly digest; two readers got both.
    Between the ledger and the send one reader is erased and one unsubscribes: nobody gets two
    notices, nobody who left gets one, every issue page that carried it shows the notice."""
    from pipeline.corrections import audience
    from pipeline.corrections.send import notice_for
    from pipeline.delivery import ledger
    from pipeline.delivery.deliver import send_issue
    from pipeline.privacy import rights
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue
    from pipeline.site.pages import publish_issue
    from subscribers import store
    from subscribers.models import Subscriber

    write_article(world.content, SLUG, "2023-02-17", title=TITLE, topics=("skin-care",))
    settings = world.settings().replace(secret_key=SECRET)
    engine = world.engine()
    daily = add_subscribers(engine, settings, 6)
    weekly = add_subscribers(engine, settings, 3, start=50, frequency="weekly")
    world.invoke("build")
    send_issue_of(world, (SLUG,), settings=settings)
    with engine.begin() as conn:  # two daily readers switch to the weekly digest and get it again
        conn.execute(update(Subscriber.__table__).where(Subscriber.__table__.c.id.in_(daily[:2]))
                     .values(frequency="weekly"))
    digest = compose_issue(world.library(), date(2026, 3, 2), number=1, scheduled=[SLUG],
                           kind="weekly")
    rendered = render_issue(digest, settings)
    publish_issue(rendered, world.public, settings=world.settings())
    send_issue(engine, settings, rendered, frequency="weekly", progress=False)
    assert len(audience.carrying_issues(engine, SLUG)) == 2

    world.edit(SLUG, "a claim", "a corrected claim")
    world.run("correct", SLUG, "--note", "The dose – 0.25 mm\r\nnot 2.5 mm\u2028(£30).", "--significant")
    assert audience.count_audience(engine, SLUG) == 9
    correction, notice = notice_for(engine, world.library(), 1)
    info = ledger.record_issue(engine, notice.issue, notice.subject)
    assert audience.write_audience(engine, info.id, SLUG) == 9  # the ledger is written...
    rights.erase(engine, settings, daily[2], method="cli")  # ...then one is erased, one leaves
    store.unsubscribe(engine, settings, weekly[0], method="cli")
    world.run("send", "--correction", "1", "--no-progress")
    everyone = {f"sub{i}@example.com" for i in (0, 1, 3, 4, 5, 51, 52)}
    notices = Counter()
    for m in mailbox.Maildir(world.cwd / "outbox", create=False):
        message = message_from_bytes(m.as_bytes(), policy=policy.default)
        if message["Subject"].startswith("Correction: "):
            notices[message["To"].addresses[0].addr_spec] += 1
            assert message["Subject"] == f"Correction: {TITLE}"
    assert notices == Counter({r: 1 for r in everyone}), notices
    pages = sorted((world.public / "issues").glob("*/index.html"))
    assert len(pages) == 2, pages  # the daily issue's page and the digest's
    for page in pages:
        doc = lxml.html.document_fromstring(page.read_text("utf-8"))
        assert "0.25 mm not 2.5 mm (£30)." in doc.xpath("//div[@role='note']")[0].text_content(), page


def test_a_notice_send_stopped_by_sigterm_resumes_and_leaves_no_stop_open(world):
    """Ctrl-C / SIGTERM of `send --correction`: exit 3, `status` names the resume command;
    `--resume` finishes everyone once, and no stop stays open on the notice's day (an open
    one there holds back the daemon's finishing of that day's own stopped issue)."""
    from pipeline.delivery import stops

    settings = world.settings().replace(transport="outbox", outbox_dir=str(world.cwd / "io"), secret_key=SECRET)
    add_subscribers(world.engine(), settings, 60)
    send_issue_of(world, (SLUG,), settings=settings)
    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.invoke("correct", SLUG, "--note", "Corrected depth – 0.25 mm.", "--significant", "--no-build")
    port = free_port()
    controller, server = start_scripted_server(Script(), port)
    world.smtp(port, NEWSLETTER_SMTP_CONNECTIONS="1", NEWSLETTER_DELIVERY_BATCH_SIZE="5",
               NEWSLETTER_SMTP_RATE_LIMIT="60")
    command = [str(NEWSLETTER), "--content", str(world.content), "send", "--correction", "1", "--no-progress"]
    try:
        proc = subprocess.Popen(command, cwd=world.cwd, env=world.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(server.accepted) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "Traceback" not in err, err
        assert 10 <= len(server.accepted) < 60
        status = world.invoke("status")
        assert status.exit_code == 2 and "`newsletter send --correction 1 --resume` finishes it" in status.output
        world.run("send", "--correction", "1", "--resume", "--no-progress")
        time.sleep(0.3)
        got = server.by_recipient()
    finally:
        controller.stop()
    assert got == {f"sub{i}@example.com": 1 for i in range(60)}  # a signal stop leaves nothing in flight
    assert world.invoke("status").exit_code == 0
    assert [r for r in stops.open_requests(world.engine()) if r.issue_key and "correction" in r.issue_key] == []


def _retract_due_tomorrow(world: World):
    from pipeline.scheduling import calendar
    from pipeline.scheduling.plan import plan_day

    tomorrow = _today(world) + timedelta(days=1)
    write_article(world.content, "due-tomorrow", tomorrow.isoformat(), title=TITLE)
    calendar.add_entry(world.engine(), "due-tomorrow", tomorrow, None)
    assert plan_day(world.engine(), world.settings(), world.library(), tomorrow).slugs == ("due-tomorrow",)
    out = world.run("retract", "due-tomorrow", "--note", "Withdrawn before publication: a dose was wrong.").stdout
    assert "refused from every future send" in out and "no notice to send" in out
    return tomorrow, plan_day(world.engine(), world.settings(), world.library(), tomorrow)


def test_an_article_due_tomorrow_can_be_retracted_and_its_send_leaves_it_out(world):
    """An article published and scheduled for tomorrow is found wrong today: `retract` (once
    refused: "not published until") withdraws it, and tomorrow's plan leaves it out.  A
    correction of it stays refused: nobody has seen it, so the editor edits it freely."""
    _tomorrow, plan = _retract_due_tomorrow(world)
    assert not plan.sends and "retracted" in plan.describe()
    write_article(world.content, "also-tomorrow", (_today(world) + timedelta(days=1)).isoformat())
    assert "not published until" in world.refused("correct", "also-tomorrow", "--note", "x")


def test_schedule_list_says_why_a_retracted_article_will_not_go(world):
    tomorrow, _plan = _retract_due_tomorrow(world)
    listing = world.run("schedule", "list").stdout
    (row,) = [line for line in listing.splitlines() if tomorrow.isoformat() in line and "daily" in line]
    assert "retracted" in row, row


def _retracted(world: World):
    world.invoke("build")
    world.run("retract", SLUG, "--note", "Withdrawn: the trial it relied on was retracted.")
    return world.library().article(SLUG)


def test_the_archive_listing_of_a_retracted_article_shows_the_retraction_not_the_withdrawn_summary(world):
    article = _retracted(world)
    listing = lxml.html.document_fromstring((world.public / "index.html").read_text("utf-8")).text_content()
    assert article.title in listing and "Withdrawn: the trial" in listing
    assert article.summary not in listing


def test_the_sitemap_drops_a_retracted_page_and_moves_a_corrected_ones_lastmod(world):
    world.invoke("build")
    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.run("correct", SLUG, "--note", "Depth corrected.")
    sitemap = (world.public / "sitemap.xml").read_text("utf-8")
    assert f"<lastmod>{_today(world).isoformat()}</lastmod>" in sitemap, sitemap
    world.run("retract", SLUG, "--note", "Withdrawn.")
    assert f"/articles/{SLUG}/" not in (world.public / "sitemap.xml").read_text("utf-8")


def test_a_corrected_page_carries_date_modified_in_json_ld(world):
    import json

    world.invoke("build")
    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.run("correct", SLUG, "--note", "Depth corrected.")
    page = lxml.html.document_fromstring((world.public / "articles" / SLUG / "index.html").read_text("utf-8"))
    (script,) = page.xpath("//script[@type='application/ld+json']")
    data = json.loads(script.text)
    assert data["dateModified"][:10] == _today(world).isoformat()


def test_the_notice_scores_no_low_contrast_font_in_spamassassin(world):
    from pipeline.corrections.notice_mail import render_notice
    from pipeline.delivery.message import build_message
    from pipeline.rendering.issue import Personal

    if shutil.which("spamassassin") is None:
        missing("spamassassin is not installed")
    world.invoke("build")
    world.edit(SLUG, "Microneedling", "Micro-needling")
    correction = records.record(world.engine(), world.library(), SLUG, "Depth corrected.", significant=True,
                                by="ed", today=_today(world))
    rendered = render_notice(correction, world.library().article(SLUG), world.settings())
    data = build_message(rendered, world.settings(), to="reader@example.com",
                         personal=Personal("https://my.klarity.health/newsletter/unsubscribe/t",
                                           "https://my.klarity.health/newsletter/preferences/t"))
    out = subprocess.run(["spamassassin", "-L", "-t"], input=data, capture_output=True, timeout=120).stdout
    status = message_from_bytes(out, policy=policy.default)["X-Spam-Status"]
    assert "HTML_FONT_LOW_CONTRAST" not in status, status


def test_feed_readers_see_a_retraction_as_the_same_item_updated_with_the_notice_first(world):
    """Re-read with feedparser after a correction and then a retraction: one item, the same
    GUID in all three feeds, `updated` moved each time, the notice first, nothing withdrawn."""
    import json

    import feedparser

    world.invoke("build")
    before = feedparser.parse((world.public / "atom.xml").read_bytes()).entries[0]
    rss_before = feedparser.parse((world.public / "feed.xml").read_bytes()).entries[0]
    json_before = json.loads((world.public / "feed.json").read_text("utf-8"))["items"][0]
    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.run("correct", SLUG, "--note", "Depth – 0.25 mm 微针 🙂\r\n=?utf-8?b?SGk=?=", "--significant")
    corrected = feedparser.parse((world.public / "atom.xml").read_bytes()).entries[0]
    time.sleep(1.1)  # the feeds keep whole seconds
    world.run("retract", SLUG, "--note", "Withdrawn: the trial <b>was</b> retracted.")
    atom = feedparser.parse((world.public / "atom.xml").read_bytes())
    rss = feedparser.parse((world.public / "feed.xml").read_bytes())
    (item,) = json.loads((world.public / "feed.json").read_text("utf-8"))["items"]
    assert not atom.bozo and not rss.bozo
    (entry,), (rss_entry,) = atom.entries, rss.entries
    assert entry.id == before.id and rss_entry.id == rss_before.id and item["id"] == json_before["id"]
    assert before.updated_parsed < corrected.updated_parsed < entry.updated_parsed
    assert item["date_modified"] > json_before["date_modified"]
    content = lxml.html.fragment_fromstring(entry.content[0].value, create_parent="div").text_content()
    assert content.lstrip().startswith("Retracted, ") and "the trial <b>was</b> retracted." in content
    assert "collagen" not in content.lower() and "collagen" not in item["content_html"].lower()


def _unwritable_public(world: World) -> None:
    world.invoke("build")
    (world.cwd / "blocker").write_text("a file where the site's folder should be", encoding="utf-8")
    world.env["NEWSLETTER_PUBLIC_DIR"] = str(world.cwd / "blocker" / "public")


def test_a_correction_whose_rebuild_fails_is_kept_and_says_so_in_one_line(world):
    """The site cannot be written: the correction stays recorded (nothing is lost), and the
    editor gets one line saying so and what to run, with a non-zero exit, not a traceback."""
    _unwritable_public(world)
    world.edit(SLUG, "Microneedling", "Micro-needling")
    line = world.fails("correct", SLUG, "--note", "Depth corrected.", "--significant")
    assert "correction 1 of microneedling is recorded" in line and "`newsletter build`" in line, line
    assert [c.note for c in records.listing(world.engine(), SLUG)] == ["Depth corrected."]


def test_a_build_into_an_unwritable_folder_is_one_line(world):
    _unwritable_public(world)
    world.fails("build")


def test_why_a_send_leaves_out_a_retracted_article_agrees_with_its_page_about_the_day(world, frozen):
    """Retracted at 00:30 London time on 2 July (23:30 UTC on 1 July): the page says 2 July,
    so the plan's reason must not say 1 July as if it were the day."""
    from pipeline.corrections import signoff

    world.invoke("build")
    frozen.set(datetime(2026, 7, 1, 23, 30, tzinfo=timezone.utc))
    records.record(world.engine(), world.library(), SLUG, "Withdrawn.", kind=records.RETRACTION, by="ed",
                   today=date(2026, 7, 2))
    reason = signoff.held(world.engine())[SLUG]
    assert "2026-07-02" in reason or "2026-07-01 23:30 UTC" in reason, reason
