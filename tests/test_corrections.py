"""Corrections and retractions (issue 16): the records, the refusals, where they show
(article page, the three feeds re-read with feedparser, issue pages) and what a day may
send.  The command runs as a real process; pages and feeds are parsed back."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import date
from email import message_from_bytes, policy

import feedparser
import lxml.html
import pytest

from conftest import missing
from fixtures_corrections import World, send_issue_of, world  # noqa: F401  (fixture)
from fixtures_site import write_article

NOTE = "The dose was 0.5 mm – it is 0.25 mm; ‘£30’ per session, café, 微针 🙂 <script>alert(1)</script>"
SLUG = "microneedling"


def sha(world: World, slug: str) -> str:
    return hashlib.sha256((world.content / "articles" / f"{slug}.md").read_bytes()).hexdigest()


def test_bad_input_is_one_clear_line_and_nothing_is_recorded(world):
    from pipeline.corrections import records

    world.invoke("build")  # the first published version is recorded
    first = sha(world, SLUG)
    assert "unknown article 'nope'" in world.fails("correct", "nope", "--note", "x")  # a real process
    assert "has not changed" in world.refused("correct", SLUG, "--note", "x")
    world.edit(SLUG, "Microneedling", "Micro-needling")
    assert "note is empty" in world.refused("correct", SLUG, "--note", " \u2028 ")
    assert "control characters" in world.refused("correct", SLUG, "--note", "a\x1bb")
    assert "keep it under" in world.refused("correct", SLUG, "--note", "x" * 1001)
    assert "unknown article" in world.refused("retract", "nope", "--note", "x")
    assert "unknown article" in world.refused("corrections", "nope")
    assert records.listing(world.engine()) == []

    out = world.invoke("correct", SLUG, "--note", NOTE, "--by", "Dr Zoë Ó’Brien", "--no-build").output
    assert "correction 1 of microneedling recorded by Dr Zoë Ó’Brien" in out
    assert "has not changed" in world.refused("correct", SLUG, "--note", "again")  # nothing edited since
    (row,) = records.listing(world.engine(), SLUG)
    assert (row.before_hash, row.after_hash, row.created_by, row.significant) == (first, sha(world, SLUG),
                                                                                 "Dr Zoë Ó’Brien", False)
    assert row.note == NOTE and row.created_at.tzinfo is not None

    world.invoke("retract", SLUG, "--note", "Withdrawn: the evidence was misread.", "--no-build")
    assert "already retracted" in world.fails("retract", SLUG, "--note", "twice")
    world.edit(SLUG, "Micro-needling", "Microneedling")
    assert "cannot be corrected" in world.refused("correct", SLUG, "--note", "after")
    listing = world.invoke("corrections", SLUG).output
    assert "Updated" in listing and "Retraction" in listing and "Withdrawn: the evidence" in listing
    assert [r.kind for r in records.listing(world.engine())] == ["correction", "retraction"]


def test_a_note_is_one_plain_paragraph():
    from pipeline.corrections.records import clean_note

    assert clean_note("Dose\r\nBcc: x@example.com\u2028=?utf-8?b?QQ==?=  end") == \
        "Dose Bcc: x@example.com =?utf-8?b?QQ==?= end"


def test_a_build_that_cannot_read_the_corrections_stops_in_one_line(world):
    world.env["DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    line = world.fails("build")  # one line, whichever reader meets the database first
    assert "cannot read the corrections from the database" in line or "cannot open the database" in line
    assert "Connection refused" in line or "connection failed" in line
    assert not (world.public / "feed.xml").exists()


def test_a_future_article_cannot_be_corrected(world):
    write_article(world.content, "embargoed", "2099-01-01")
    assert "not published until 2099-01-01" in world.refused("correct", "embargoed", "--note", "x")


def _page(world: World, slug: str):
    return lxml.html.document_fromstring((world.public / "articles" / slug / "index.html").read_text("utf-8"))


def test_edit_correct_rebuild_shows_everywhere_and_feed_readers_update_the_same_item(world):
    world.invoke("build")
    send_issue_of(world, (SLUG,))  # its "view in browser" page is published
    issue_page = world.public / "issues" / "2026-03-02" / "index.html"
    old_issue_text = lxml.html.document_fromstring(issue_page.read_text("utf-8")).xpath("//body")[0].text_content()
    before = {name: feedparser.parse((world.public / name).read_bytes()) for name in ("feed.xml", "atom.xml")}
    json_before = json.loads((world.public / "feed.json").read_text("utf-8"))

    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.invoke("correct", SLUG, "--note", NOTE, "--significant")
    world.run("build")  # a real process

    page = _page(world, SLUG)
    (box,) = page.xpath("//aside[contains(@class, 'correction')]")
    assert box.text_content().strip().startswith("Correction, ")
    assert NOTE in box.text_content()
    assert not page.xpath("//script[not(@type='application/ld+json')]")  # the note is text, never markup
    history = page.xpath("//section[@aria-labelledby='section-corrections']//li")
    assert len(history) == 1 and NOTE in history[0].text_content()

    for name, old in before.items():
        new = feedparser.parse((world.public / name).read_bytes())
        assert not new.bozo, new.bozo_exception
        (old_item,), (new_item,) = old.entries, new.entries
        assert new_item.id == old_item.id  # the same item: readers update it, not add one
        if name == "atom.xml":  # (RSS 2.0 items have no updated date: readers go by the guid)
            assert new_item.updated_parsed > old_item.updated_parsed
        content = new_item.content[0].value
        assert NOTE.split("<")[0] in lxml.html.fragment_fromstring(content, create_parent="div").text_content()
        assert content.index("Correction") < content.index("Micro-needling")  # the note comes first
    (item,) = json.loads((world.public / "feed.json").read_text("utf-8"))["items"]
    assert item["id"] == json_before["items"][0]["id"]
    assert item["date_modified"] > json_before["items"][0]["date_modified"]
    assert item["date_published"] == json_before["items"][0]["date_published"]

    issue_doc = lxml.html.document_fromstring(issue_page.read_text("utf-8"))
    (notice,) = issue_doc.xpath("//div[@role='note']")
    assert NOTE in notice.text_content() and "what we sent on 2 March 2026" in notice.text_content()
    assert old_issue_text.strip() in issue_doc.xpath("//body")[0].text_content()  # the old text stays
    body = issue_doc.xpath("//body")[0]
    assert [c for c in body if isinstance(c.tag, str)][0] is notice  # above the old text

    # a rebuild changes nothing: the notice is not added twice
    snapshot = {p: p.read_bytes() for p in world.public.rglob("*") if p.is_file() and ".cache" not in p.parts}
    world.invoke("build")
    assert {p: p.read_bytes() for p in snapshot} == snapshot


def test_a_retracted_articles_page_and_feed_item_become_the_notice(world):
    world.invoke("build")
    title = world.library().article(SLUG).title
    world.run("retract", SLUG, "--note", "Withdrawn: the trial it relied on was retracted.")
    page = _page(world, SLUG)
    assert page.xpath("//h1")[0].text_content() == title
    text = page.text_content()
    assert "This article has been retracted" in text and "the trial it relied on" in text
    assert "17 February 2023" in text  # the dates stay
    assert "collagen" not in text.lower()  # the withdrawn text does not
    (entry,) = feedparser.parse((world.public / "atom.xml").read_bytes()).entries
    assert entry.title == title and entry.summary.startswith("Retracted: Withdrawn")
    assert "collagen" not in entry.content[0].value.lower()


def test_plan_day_leaves_out_retracted_and_unapproved_articles(world, monkeypatch):
    """A significant correction holds its article until a reviewer approves the corrected version itself
    (through pipeline.review, as `newsletter review approve` and the console do); a retraction holds it for good."""
    from fixtures_console import add_staff, cheap_hashing
    from pipeline.corrections import records
    from pipeline.review import reviews
    from pipeline.scheduling import calendar
    from pipeline.scheduling.plan import plan_day

    cheap_hashing(monkeypatch)
    write_article(world.content, "second", "2023-01-01")
    engine, day = world.engine(), date(2099, 1, 5)
    reviewer = add_staff(engine, "rev@example.org", "reviewer")
    world.invoke("build")
    calendar.add_entry(engine, SLUG, day, None)
    calendar.add_entry(engine, "second", day, None)
    plan = lambda: plan_day(engine, world.settings(), world.library(), day)  # noqa: E731
    assert plan().slugs == (SLUG, "second")
    # an approval of the version before the correction does not count for the corrected one
    reviews.decide(engine, reviewer, world.library().article("second"), reviews.APPROVED)

    world.edit("second", "a claim", "a corrected claim")
    world.invoke("correct", "second", "--note", "The claim was wrong.", "--significant", "--no-build")
    held = plan()
    assert held.slugs == (SLUG,) and "awaiting medical sign-off" in held.describe()
    reviews.decide(engine, reviewer, world.library().article("second"), reviews.REJECTED, "Not yet – £ é")
    assert plan().slugs == (SLUG,)  # sent back: still held
    reviews.decide(engine, reviewer, world.library().article("second"), reviews.APPROVED)
    assert plan().slugs == (SLUG, "second")

    records.record(engine, world.library(), SLUG, "Withdrawn.", kind=records.RETRACTION, by="ed",
                   today=date(2026, 11, 1))
    assert plan().slugs == ("second",)
    world.edit("second", "a corrected claim", "a twice corrected claim")
    world.invoke("correct", "second", "--note", "Corrected again.", "--significant", "--no-build")
    nothing = plan()
    assert not nothing.sends and "retracted" in nothing.reason and "sign-off" in nothing.reason
    # the queue never offers them either
    settings = world.settings().replace(send_when_nothing_due=True)
    assert not plan_day(engine, settings, world.library(), date(2099, 2, 1)).sends


def _notice(world: World, slug: str, topics: tuple[str, ...] | None = None):
    from pipeline.corrections import records
    from pipeline.corrections.notice_mail import render_notice

    if topics is not None:
        write_article(world.content, slug, "2023-01-01", title="Living with eczema – a guide", topics=topics)
    world.invoke("build")
    world.edit(slug, "a claim" if topics is not None else "Microneedling", "a corrected claim"
               if topics is not None else "Micro-needling")
    correction = records.record(world.engine(), world.library(), slug, NOTE, significant=True, by="ed",
                                today=date(2026, 11, 1))
    return correction, render_notice(correction, world.library().article(slug), world.settings())


def test_the_notice_email_has_title_note_link_and_a_text_part(world):
    from pipeline.delivery.message import build_message
    from pipeline.rendering.issue import Personal

    correction, rendered = _notice(world, SLUG)
    assert rendered.subject == f"Correction: {world.library().article(SLUG).title}"
    assert rendered.issue.key.endswith(f"-correction-n{correction.id}")
    data = build_message(rendered, world.settings(), to="Zoë <zoe@example.com>",
                         personal=Personal("https://my.klarity.health/newsletter/unsubscribe/t",
                                           "https://my.klarity.health/newsletter/preferences/t"))
    message = message_from_bytes(data, policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    url = "https://my.klarity.health/newsletter/articles/microneedling/"
    assert NOTE in " ".join(text.split()) and url in text.splitlines() and "Unsubscribe: https://" in text
    assert max(len(line) for line in text.splitlines()) <= 78
    doc = lxml.html.document_fromstring(html)
    assert NOTE in " ".join(doc.text_content().split()) and not doc.xpath("//script")  # lines fitted for the wire
    assert [" ".join(a.text_content().split()) for a in doc.xpath(f"//a[@href='{url}']")] == ["Read the corrected article"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_sensitive_topic_keeps_the_subject_and_preheader_neutral(world):
    settings = world.settings()
    sensitive = sorted(settings.sensitive_topics)[0]
    _correction, rendered = _notice(world, "eczema-guide", (sensitive,))
    names = ["eczema", "Living with", settings.topics[sensitive]["name"].lower(), sensitive]
    for value in (rendered.subject, rendered.preheader):
        assert not any(name.lower() in value.lower() for name in names), value
    assert rendered.subject == f"A correction from {settings.publication_name}"
    assert "Living with eczema" in " ".join(rendered.text.split())  # the opened message names it


def test_the_notice_passes_spamassassin(world):
    from pipeline.delivery.message import build_message
    from pipeline.rendering.issue import Personal

    if shutil.which("spamassassin") is None:
        missing("spamassassin is not installed")
    _correction, rendered = _notice(world, SLUG)
    data = build_message(rendered, world.settings(), to="reader@example.com",
                         personal=Personal("https://my.klarity.health/newsletter/unsubscribe/t",
                                           "https://my.klarity.health/newsletter/preferences/t"))
    out = subprocess.run(["spamassassin", "-L", "-t"], input=data, capture_output=True, timeout=120).stdout
    status = message_from_bytes(out, policy=policy.default)["X-Spam-Status"]
    score = float(status.split("score=")[1].split()[0])
    assert status.startswith("No") and score < 2.0, status


@pytest.mark.browser
def test_preview_of_the_notice_with_a_375_px_screenshot(world):
    from conftest import CHROMIUM

    if not shutil.which(CHROMIUM) and not CHROMIUM.startswith("/"):
        missing("chromium is not installed")
    correction, _rendered = _notice(world, SLUG)
    out = world.cwd / "preview"
    printed = world.run("preview", "--correction", str(correction.id), "--out", str(out), "--screenshots").stdout
    assert "subject:   Correction: " in printed
    png = (out / "issue-375.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 375
    message = message_from_bytes((out / "issue.eml").read_bytes(), policy=policy.default)
    assert NOTE in " ".join(message.get_body(("plain",)).get_content().split())
    assert "no correction with id 99" in world.fails("preview", "--correction", "99")
