"""The whole send path with real-world headers (issue 10, sections 1, 2 and 8):
a library article titled with a typographic apostrophe and dash, subscribers with
Unicode (and, stored before the name rule, hostile) names, ``newsletter send`` to a
real aiosmtpd server and ``run --once``; what arrives is parsed back.  A failure
while building the message is one line, recorded on the day's run and shown by
``status``.  Message-IDs are opaque."""
from __future__ import annotations

import base64
import logging
import re
from datetime import date
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from fixtures_delivery import add_subscribers
from pipeline.scheduling import calendar
from pipeline.delivery import ledger
from pipeline.cli import main
from pipeline.database import open_database
from pipeline.mail.transport import Outbox
from subscribers import store

SECRET = "send-headers-test-secret"
TITLE = "What’s Microneedling? – the facts"
PAYLOAD = ("Eve\r\nReply-To: attacker@evil.example\r\nContent-Type: text/html\r\n\r\n"
           "<h1>Account locked</h1><!--")
HOSTILE = "=?utf-8?b?" + base64.b64encode(PAYLOAD.encode()).decode() + "?="
OPAQUE = re.compile(r"<[a-z2-7]{24}@my\.klarity\.health>")


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def retitled(content_dir):
    article = content_dir / "articles" / "microneedling.md"
    article.write_text(article.read_text(encoding="utf-8").replace(
        "title: What Is Microneedling?", f"title: {TITLE}", 1), encoding="utf-8")
    return content_dir


@pytest.fixture
def env(monkeypatch, retitled, tmp_path, db_url):
    values = {"NEWSLETTER_CONTENT": str(retitled), "NEWSLETTER_SECRET": SECRET, "DATABASE_URL": db_url,
              "NEWSLETTER_TRANSPORT": "outbox", "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
              "NEWSLETTER_VAR_DIR": str(tmp_path / "var"), "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
              # nothing is on the calendar: the day sends the queue's head (a hand send on an empty day is refused)
              "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_newsletter_send_of_a_typographic_title_reaches_a_real_smtp_server(env, capsys, settings, smtp_server,
                                                                            monkeypatch):
    monkeypatch.setenv("NEWSLETTER_TRANSPORT", "smtp")
    monkeypatch.setenv("SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("SMTP_PORT", str(smtp_server.port))
    code, out, err = run(capsys, "subscribers", "add", "zoe@example.com", "--name", "Zoë O’Brien 山田 😀",
                         "--confirmed", "--consent", "Ticked the box – £0, no catch")
    assert code == 0, err
    engine = open_database(env["DATABASE_URL"])
    # a name stored before the name rule existed: it must never reach a header
    (eve_id,) = add_subscribers(engine, settings.replace(secret_key=SECRET), 1, start=1, name=HOSTILE)

    code, out, err = run(capsys, "send", "--date", "2026-03-02")
    assert code == 0, out + err
    assert "Traceback" not in err and "sent 2 " in out
    got = {r.rcpt_tos[0]: r for r in smtp_server.wait_for(2)}
    zoe, eve = (message_from_bytes(got[a].data, policy=policy.default) for a in ("zoe@example.com", "sub1@example.com"))
    for raw, msg in ((got["zoe@example.com"].data, zoe), (got["sub1@example.com"].data, eve)):
        assert raw.split(b"\r\n\r\n", 1)[0].isascii()
        assert msg["Subject"] == TITLE and not msg.defects
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert OPAQUE.fullmatch(msg["Message-ID"])
    assert [(a.display_name, a.addr_spec) for a in zoe["To"].addresses] == [("Zoë O’Brien 山田 😀", "zoe@example.com")]
    assert "Hello Zoë," in zoe.get_body(("plain",)).get_content()
    assert [(a.display_name, a.addr_spec) for a in eve["To"].addresses] == [("", "sub1@example.com")]
    assert eve["Reply-To"] is None and "Account locked" not in eve.get_body(("html",)).get_content()
    # the ledger keeps the Message-ID each message went out with
    with engine.connect() as conn:
        stored = {row.subscriber_id: row.message_id for row in conn.execute(
            select(ledger.DELIVERIES.c.subscriber_id, ledger.DELIVERIES.c.message_id))}
    zoe_id = store.get_by_email(engine, "zoe@example.com").id
    assert stored == {zoe_id: zoe["Message-ID"], eve_id: eve["Message-ID"]}


def test_message_ids_are_opaque_unique_and_stable_per_row(settings, db_url):
    from fixtures_delivery import small_rendered
    from pipeline.delivery.send_loop import message_id_for

    s = settings.replace(secret_key=SECRET)
    rendered = small_rendered()
    issue = ledger.record_issue(open_database(db_url), rendered.issue, rendered.subject)
    ids = [message_id_for(s, issue, row) for row in range(1, 2001)]
    assert len(set(ids)) == len(ids)
    assert all(OPAQUE.fullmatch(m) for m in ids)
    assert ids[6] == message_id_for(s, issue, 7)  # a resend of a row carries the same Message-ID
    for row, mid in ((1089, ids[1088]), (1234, ids[1233])):  # base32 has no 0, 1, 8 or 9: a row number would show
        local = mid[1:].split("@")[0]
        assert str(row) not in local and "2026" not in local and issue.key not in local
    assert message_id_for(s.replace(secret_key="another-secret"), issue, 7) != ids[6]  # keyed


def test_run_once_sends_the_typographic_title(env, capsys, settings):
    engine = open_database(env["DATABASE_URL"])
    store.add(engine, settings.replace(secret_key=SECRET), "amy@example.com", name="Amy – £", confirmed=True,
              consent="yes")
    calendar.add_entry(engine, "microneedling", date(2026, 3, 2), None)
    code, out, err = run(capsys, "run", "--once", "--date", "2026-03-02")
    assert code == 0, out + err
    assert "daily issue of 2026-03-02: sent" in out
    (data,) = Outbox(env["NEWSLETTER_OUTBOX_DIR"]).messages()
    assert message_from_bytes(data, policy=policy.default)["Subject"] == TITLE


def test_a_failure_building_the_message_is_one_line_recorded_and_shown_by_status(env, capsys, settings,
                                                                                 monkeypatch, caplog):
    import pipeline.delivery.message

    store.add(open_database(env["DATABASE_URL"]), settings.replace(secret_key=SECRET), "amy@example.com",
              confirmed=True, consent="yes")

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom in the template")

    monkeypatch.setattr(pipeline.delivery.message.MessageTemplate, "__init__", broken)
    code, out, err = run(capsys, "send", "--date", "2026-03-02")
    assert code == 1
    assert err == "error: cannot build the message of issue 2026-03-02: RuntimeError: boom in the template\n"

    calendar.add_entry(open_database(env["DATABASE_URL"]), "microneedling", date(2026, 3, 3), None)
    caplog.set_level(logging.INFO)
    code, out, err = run(capsys, "run", "--once", "--date", "2026-03-03")
    assert code == 1 and "Traceback" not in out + err
    assert ("daily issue of 2026-03-03: failed: cannot build the message of issue 2026-03-03: "
            "RuntimeError: boom in the template") in out
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    code, out, err = run(capsys, "status")
    assert code == 2
    assert "ALERT: daily issue of 2026-03-03 failed: cannot build the message" in err


def test_a_failure_building_the_test_copy_is_one_line(env, capsys, monkeypatch):
    import pipeline.delivery.send_test_copy

    def broken(*args, **kwargs):
        raise ValueError("boom in the reference builder")

    monkeypatch.setattr(pipeline.delivery.send_test_copy, "build_message", broken)
    code, out, err = run(capsys, "send-test", "--to", "editor@example.com", "--date", "2026-03-02")
    assert code == 1
    assert err == ("error: cannot build the test message of issue 2026-03-02: "
                   "ValueError: boom in the reference builder\n")
