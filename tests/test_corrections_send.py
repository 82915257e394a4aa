"""The notice of a significant correction or a retraction, sent through the ledger and a
real aiosmtpd relay by the real ``newsletter`` process: exactly the people who got the
article and are still subscribed, once each; a second run sends nothing; a SIGKILL
mid-send, resumed, misses nobody and duplicates only rows the ledger marked uncertain."""
from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from datetime import date

from sqlalchemy import select

from conftest import free_port
from fixtures_corrections import NEWSLETTER, SECRET, World, send_issue_of, world  # noqa: F401  (fixture)
from fixtures_delivery import Script, add_subscribers, start_scripted_server
from fixtures_site import write_article
from pipeline.delivery import ledger

SLUG = "microneedling"


def _outbox(world: World, **more):
    return world.settings().replace(transport="outbox", outbox_dir=str(world.cwd / "issue-outbox"),
                                    secret_key=SECRET, **more)


def _leave(world: World, ids, how: str) -> None:
    from subscribers import store
    settings = world.settings().replace(secret_key=SECRET)
    for subscriber in ids:
        getattr(store, how)(world.engine(), settings, subscriber, **({"method": "cli"} if how == "unsubscribe" else {}))


def test_a_significant_correction_reaches_the_180_still_subscribed_once(world, smtp_server):
    settings = world.settings().replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port,
                                        secret_key=SECRET)
    ids = add_subscribers(world.engine(), settings, 200)
    summary, _ = send_issue_of(world, (SLUG,), settings=settings)  # the issue, through the same relay
    assert summary.sent == 200 and len(smtp_server.wait_for(200)) == 200
    smtp_server.received.clear()
    _leave(world, ids[:20], "unsubscribe")
    add_subscribers(world.engine(), settings, 5, start=500)  # joined later: never got the article

    world.edit(SLUG, "Microneedling", "Micro-needling")
    out = world.invoke("correct", SLUG, "--note", "The needle depth was wrong – 0.25 mm, not 2.5 mm.",
                       "--significant").output
    assert "notice for the 180 person(s) who got it" in out
    world.smtp(smtp_server.port)
    assert "sent to reader@example.com" in world.run("send-test", "--correction", "1", "--to",
                                                      "reader@example.com").stdout
    test_copy = smtp_server.wait_for(1)[0].message
    assert test_copy["Subject"].startswith("[TEST] Correction: What Is Micro-needling?")
    smtp_server.received.clear()

    world.run("send", "--correction", "1", "--no-progress")
    received = smtp_server.wait_for(180)
    time.sleep(0.3)
    rcpts = Counter(r.rcpt_tos[0] for r in received)
    assert len(received) == 180 and set(rcpts.values()) == {1}
    assert set(rcpts) == {f"sub{i}@example.com" for i in range(20, 200)}
    message = received[0].message
    assert message["Subject"] == "Correction: What Is Micro-needling?"
    assert "0.25 mm, not 2.5 mm" in " ".join(message.get_body(("plain",)).get_content().split())
    assert message["List-Unsubscribe"].startswith("<https://")

    world.run("send", "--correction", "1", "--no-progress")
    time.sleep(0.3)
    assert len(smtp_server.received) == 180  # a second run sends none
    listing = world.invoke("corrections", SLUG).output
    assert "notice 2026-" in listing and "180 of 180 sent" in listing
    # a minor correction is not mailed: one line says so
    world.edit(SLUG, "Micro-needling", "Micro needling")
    world.invoke("correct", SLUG, "--note", "A typo.", "--no-build")
    assert "is minor" in world.refused("send", "--correction", "2")


def test_a_killed_notice_send_resumes_to_everyone_within_the_in_flight_bound(world):
    connections, batch, n = 2, 5, 300
    settings = _outbox(world)
    add_subscribers(world.engine(), settings, n)
    send_issue_of(world, (SLUG,), settings=settings)
    world.edit(SLUG, "Microneedling", "Micro-needling")
    world.invoke("correct", SLUG, "--note", "Corrected depth.", "--significant", "--no-build")
    port = free_port()
    controller, server = start_scripted_server(Script(), port)
    world.smtp(port, NEWSLETTER_SMTP_CONNECTIONS=str(connections), NEWSLETTER_DELIVERY_BATCH_SIZE=str(batch),
               NEWSLETTER_UNCERTAIN_POLICY="resend", NEWSLETTER_SMTP_RATE_LIMIT="300")
    command = [str(NEWSLETTER), "--content", str(world.content), "send", "--correction", "1", "--no-progress"]
    try:
        proc = subprocess.Popen(command, cwd=world.cwd, env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.accepted) < 80 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = len(server.accepted)
        assert 80 <= killed_at < n, f"the kill came too late to prove anything ({killed_at} of {n})"
        status = world.invoke("status")  # the interrupted notice alerts, naming its one command
        assert status.exit_code == 2 and "`newsletter send --correction 1 --resume` finishes it" in status.output
        world.run("send", "--correction", "1", "--resume", "--no-progress")
        time.sleep(0.3)
        got = server.by_recipient()
    finally:
        controller.stop()
    assert set(got) == {f"sub{i}@example.com" for i in range(n)}  # nobody missed
    twice = {r for r, c in got.items() if c > 1}
    assert len(twice) <= connections * batch  # the documented in-flight bound of one kill
    with world.engine().connect() as conn:
        issue = conn.execute(select(ledger.ISSUES).where(ledger.ISSUES.c.kind == "correction")).one()
        rows = conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.uncertain)
                            .where(ledger.DELIVERIES.c.issue_id == issue.id)).all()
    assert issue.state == "sent" and len(rows) == n
    uncertain = {r.email for r in rows if r.uncertain}
    assert twice <= uncertain  # every duplicate is a row the ledger knows may have gone twice


def test_a_retraction_stops_the_article_shows_the_notice_and_notifies_who_got_it(world, smtp_server):
    from pipeline.scheduling import calendar
    from pipeline.scheduling.plan import plan_day
    from pipeline.privacy import rights

    write_article(world.content, "second", "2023-01-01")
    settings = _outbox(world)
    ids = add_subscribers(world.engine(), settings, 12)
    send_issue_of(world, (SLUG,), settings=settings)
    _leave(world, ids[:1], "unsubscribe")
    _leave(world, ids[1:2], "bounce")
    _leave(world, ids[2:3], "complain")
    rights.erase(world.engine(), settings.replace(secret_key=SECRET), ids[3], method="cli")
    add_subscribers(world.engine(), settings, 3, start=100)  # never got it

    next_day = date(2099, 3, 3)
    calendar.add_entry(world.engine(), SLUG, next_day, None)
    calendar.add_entry(world.engine(), "second", next_day, None)
    out = world.invoke("retract", SLUG, "--note", "Withdrawn: the study it relied on was retracted.").output
    assert "refused from every future send" in out
    plan = plan_day(world.engine(), world.settings(), world.library(), next_day)
    assert plan.slugs == ("second",) and "retracted" in plan.describe()

    page = (world.public / "articles" / SLUG / "index.html").read_text("utf-8")
    assert "This article has been retracted" in page and "the study it relied on" in page
    issue_page = (world.public / "issues" / "2026-03-02" / "index.html").read_text("utf-8")
    assert "This article has been withdrawn" in issue_page

    world.smtp(smtp_server.port)
    world.run("send", "--correction", "1", "--no-progress")
    received = smtp_server.wait_for(8)
    time.sleep(0.3)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(f"sub{i}@example.com" for i in range(4, 12))
    message = received[0].message
    assert message["Subject"] == "Retraction: What Is Microneedling?"
    assert "Read the retraction notice" in " ".join(message.get_body(("html",)).get_content().split())
