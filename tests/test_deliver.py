"""send_issue end to end: a real SQLite file, the Maildir outbox, and aiosmtpd on
loopback.  Faults are in test_deliver_faults.py, kills in test_deliver_kill.py."""
from __future__ import annotations

import re
import subprocess
import time
from datetime import date
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, small_rendered, start_scripted_server
from pipeline.delivery import ledger
from pipeline.database import open_database
from pipeline.delivery.deliver import send_issue
from pipeline.mail.transport import Outbox
from subscribers.tokens import UNSUBSCRIBE, read_token

SECRET = "deliver-test-secret"


@pytest.fixture
def engine(db_url):
    return open_database(db_url)


@pytest.fixture
def outbox_settings(settings, tmp_path):
    return settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"), secret_key=SECRET,
                            delivery_batch_size=4)


def smtp_settings(settings, port: int, **more):
    values = dict(transport="smtp", smtp_host="127.0.0.1", smtp_port=port, secret_key=SECRET, smtp_timeout=2.0,
                  smtp_retry_delay=0.05, smtp_connections=3, delivery_batch_size=4)
    return settings.replace(**(values | more))


def token_of(url_header: str) -> str:
    return re.search(r"/unsubscribe/([A-Za-z0-9_-]+)>", url_header).group(1)


def test_outbox_gets_one_personalised_message_per_recipient_and_a_rerun_sends_nothing(engine, outbox_settings):
    ids = add_subscribers(engine, outbox_settings, 30, name="Reader")
    summary = send_issue(engine, outbox_settings, small_rendered(), progress=False)
    assert (summary.sent, summary.deferred, summary.failed, summary.uncertain, summary.state) == (30, 0, 0, 0, "sent")
    messages = [message_from_bytes(m, policy=policy.default) for m in Outbox(outbox_settings.outbox_dir).messages()]
    assert len(messages) == 30
    by_address = {m["To"].addresses[0].addr_spec: m for m in messages}
    assert len(by_address) == 30
    for sid in ids:
        msg = by_address[f"sub{sid - ids[0]}@example.com"]
        # the unsubscribe token in the header and in both parts names this subscriber
        token = token_of(msg["List-Unsubscribe"])
        assert read_token(SECRET, UNSUBSCRIBE, token) == sid
        text, html = (p.get_content() for p in msg.iter_parts())
        assert token in text and token in html
        assert "Hello Reader," in text
    assert len({m["Message-ID"] for m in messages}) == 30
    again = send_issue(engine, outbox_settings, small_rendered(), progress=False)
    assert (again.sent, again.previously_sent) == (0, 30)
    assert len(Outbox(outbox_settings.outbox_dir).messages()) == 30


def test_smtp_send_reaches_everyone_once_and_the_ledger_records_it(engine, settings, smtp_server):
    s = smtp_settings(settings, smtp_server.port)
    add_subscribers(engine, s, 50)
    summary = send_issue(engine, s, small_rendered(), progress=False)
    assert summary.sent == 50 and summary.state == "sent" and summary.rate > 0
    received = smtp_server.wait_for(50)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(f"sub{i}@example.com" for i in range(50))
    # the envelope sender is each row's VERP return path (tests/test_bounces.py); From is the sender address
    assert all(r.mail_from.startswith("bounces+") and r.mail_from.endswith("@my.klarity.health") for r in received)
    with engine.connect() as conn:
        rows = conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.message_id,
                                   ledger.DELIVERIES.c.state, ledger.DELIVERIES.c.attempts,
                                   ledger.DELIVERIES.c.last_reply)).all()
    assert {r.state for r in rows} == {"sent"} and {r.attempts for r in rows} == {1}
    assert all(r.last_reply.startswith("250") for r in rows)
    recorded = {r.email: r.message_id for r in rows}
    assert {r.rcpt_tos[0]: r.message["Message-ID"] for r in received} == recorded
    # twice, and with --resume: nobody gets a second copy
    assert send_issue(engine, s, small_rendered(), progress=False).sent == 0
    assert send_issue(engine, s, small_rendered(), resume=True, progress=False).sent == 0
    time.sleep(0.2)
    assert len(smtp_server.received) == 50


def test_send_issue_works_when_the_caller_runs_an_event_loop(engine, outbox_settings):
    """A caller inside an event loop (an ASGI handler, Playwright's sync API) still sends."""
    import asyncio

    add_subscribers(engine, outbox_settings, 3)

    async def inside_a_loop():
        return send_issue(engine, outbox_settings, small_rendered(), progress=False)

    assert asyncio.run(inside_a_loop()).sent == 3
    assert len(Outbox(outbox_settings.outbox_dir).messages()) == 3


def test_a_real_issue_reaches_its_topics_subscribers_and_those_who_chose_none(engine, outbox_settings, library):
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue

    skin = add_subscribers(engine, outbox_settings, 2, start=0, topics=("skin-care",))
    add_subscribers(engine, outbox_settings, 2, start=10, topics=("hair-loss",))
    everything = add_subscribers(engine, outbox_settings, 1, start=20)
    rendered = render_issue(compose_issue(library, date(2026, 3, 2), number=1, scheduled=["microneedling"]),
                            outbox_settings)
    assert rendered.issue.topics == ("skin-care",)
    summary = send_issue(engine, outbox_settings, rendered, progress=False)
    assert summary.sent == 3
    got = {message_from_bytes(m, policy=policy.default)["To"].addresses[0].addr_spec
           for m in Outbox(outbox_settings.outbox_dir).messages()}
    assert got == {f"sub{i}@example.com" for i in (0, 1, 20)} and len(skin + everything) == 3


def test_subscriber_who_leaves_after_the_ledger_was_written_is_skipped(engine, outbox_settings):
    from subscribers import store

    ids = add_subscribers(engine, outbox_settings, 5)
    rendered = small_rendered()
    iid = ledger.record_issue(engine, rendered.issue, rendered.subject).id
    ledger.write_recipients(engine, iid, "daily")
    store.unsubscribe(engine, outbox_settings, ids[2], method="web")
    summary = send_issue(engine, outbox_settings, rendered, progress=False)
    assert (summary.sent, summary.skipped) == (4, 1)
    assert ledger.state_counts(engine, iid)["skipped"] == 1
    recipients = {message_from_bytes(m, policy=policy.default)["To"].addresses[0].addr_spec
                  for m in Outbox(outbox_settings.outbox_dir).messages()}
    assert "sub2@example.com" not in recipients and len(recipients) == 4


@pytest.mark.parametrize("policy_name", ["skip", "resend"])
def test_rows_in_flight_at_a_crash_follow_the_uncertain_policy(engine, outbox_settings, policy_name):
    s = outbox_settings.replace(uncertain_policy=policy_name)
    add_subscribers(engine, s, 10)
    rendered = small_rendered()
    iid = ledger.record_issue(engine, rendered.issue, rendered.subject).id
    ledger.write_recipients(engine, iid, "daily")
    with engine.begin() as conn:  # what a SIGKILL between "sending" and "sent" leaves behind
        conn.execute(update(ledger.DELIVERIES).where(ledger.DELIVERIES.c.id <= 3).values(state="sending"))
    summary = send_issue(engine, s, rendered, progress=False)
    assert (summary.recovered, summary.in_doubt) == (3, 3)
    mailed = len(Outbox(s.outbox_dir).messages())
    counts = ledger.state_counts(engine, iid)
    if policy_name == "skip":
        # left uncertain, counted from the ledger, and the issue is not "sent" while they are open
        assert (summary.sent, mailed, counts["uncertain"], counts["sent"]) == (7, 7, 3, 7)
        assert (summary.uncertain, summary.state) == (3, "unfinished")
        assert "uncertain 3" in "\n".join(summary.lines())
        # the operator decides: --uncertain skip closes them, without mailing anyone
        closed = send_issue(engine, s, rendered, progress=False, resume=True, uncertain="skip")
        assert (closed.decided, closed.sent, closed.uncertain, closed.state) == (3, 0, 0, "sent")
        assert len(Outbox(s.outbox_dir).messages()) == 7 and ledger.state_counts(engine, iid)["skipped"] == 3
    else:
        assert (summary.sent, mailed, counts["uncertain"], counts["sent"]) == (10, 10, 0, 10)
        assert (summary.uncertain, summary.state) == (0, "sent")
        assert "3 found in flight" in "\n".join(summary.lines())


def test_dry_run_counts_and_writes_nothing(engine, outbox_settings):
    add_subscribers(engine, outbox_settings, 7)
    add_subscribers(engine, outbox_settings, 2, start=50, status="pending")
    summary = send_issue(engine, outbox_settings, small_rendered(), dry_run=True, progress=False)
    assert summary.dry_run and summary.recipients == 7 and summary.sent == 0
    assert ledger.find_issue(engine, "2026-03-02") is None
    assert not Path(outbox_settings.outbox_dir).exists() or not Outbox(outbox_settings.outbox_dir).messages()


def test_per_connection_cap_reconnects_and_rate_limit_paces(engine, settings):
    port = free_port()
    controller, server = start_scripted_server(Script(), port)
    try:
        s = smtp_settings(settings, port, smtp_connections=1, smtp_messages_per_connection=5, smtp_rate_limit=40.0)
        add_subscribers(engine, s, 20)
        started = time.monotonic()
        summary = send_issue(engine, s, small_rendered(), progress=False)
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
    assert summary.sent == 20
    assert len(server.peers) >= 4  # a new connection (new client port) every 5 messages
    assert max(server.peers.values()) <= 5
    assert elapsed >= 19 / 40 * 0.9  # 20 messages at 40/s cannot take less than about 0.5 s


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_auth(engine, settings, tmp_path, monkeypatch, security):
    import ssl
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    got, logins = [], []

    class Handler:
        async def handle_DATA(self, server, _session, envelope):
            got.append((envelope.rcpt_tos[0], server.transport.get_extra_info("ssl_object") is not None))
            return "250 OK"

    def authenticator(_server, _session, _envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"sender" and auth_data.password == b"s3cret")

    port = free_port()
    # aiosmtpd advertises AUTH under auth_require_tls only after its own STARTTLS, so with
    # implicit TLS the test checks the session's encryption in the handler instead
    tls_args = ({"tls_context": context, "require_starttls": True, "auth_require_tls": True}
                if security == "starttls" else {"ssl_context": context, "auth_require_tls": False})
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator, **tls_args)
    controller.start()
    try:
        monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
        s = smtp_settings(settings, port, smtp_security=security, smtp_username="sender", smtp_ca_file=str(cert))
        add_subscribers(engine, s, 6)
        summary = send_issue(engine, s, small_rendered(), progress=False)
    finally:
        controller.stop()
    assert summary.sent == 6
    assert len(got) == 6 and all(encrypted for _, encrypted in got)
    assert logins and all(login == (b"sender") for _, login, _ in logins)


# -- the commands -------------------------------------------------------------------------------

def cli_env(tmp_path: Path, db_url: str, **more) -> dict:
    # these hand sends mail the head of the queue: a day with nothing scheduled sends
    # only with send_when_nothing_due on (otherwise `newsletter send` refuses the day)
    return {"DATABASE_URL": db_url, "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_TRANSPORT": "outbox",
            "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var"),
            "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true", **more}


def test_send_command_sends_once_and_send_test_leaves_the_ledger_alone(content_dir, tmp_path, db_url, settings):
    from pipeline.cli import cli

    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key=SECRET), 3)
    runner = CliRunner()
    env = cli_env(tmp_path, db_url)
    base = ["--content", str(content_dir)]

    result = runner.invoke(cli, base + ["send-test", "--to", "editor@example.com", "--date", "2026-03-02"], env=env)
    assert result.exit_code == 0, result.output
    (test_copy,) = [message_from_bytes(m, policy=policy.default) for m in Outbox(tmp_path / "outbox").messages()]
    assert test_copy["Subject"] == "[TEST] What Is Microneedling?"
    assert test_copy["To"].addresses[0].addr_spec == "editor@example.com"
    assert ledger.issue_count(engine) == 0

    result = runner.invoke(cli, base + ["send", "--date", "2026-03-02", "--dry-run"], env=env)
    assert result.exit_code == 0 and "3 recipient(s)" in result.output
    assert ledger.issue_count(engine) == 0

    result = runner.invoke(cli, base + ["send", "--date", "2026-03-02"], env=env)
    assert result.exit_code == 0, result.output
    assert "sent 3 " in result.output and "issue 2026-03-02: sent" in result.output
    issue = ledger.find_issue(engine, "2026-03-02")
    assert (issue.number, issue.articles, issue.state) == (1, ("microneedling",), "sent")
    assert len(Outbox(tmp_path / "outbox").messages()) == 4

    result = runner.invoke(cli, base + ["send", "--date", "2026-03-02"], env=env)
    assert result.exit_code == 0 and "sent 0 " in result.output
    assert len(Outbox(tmp_path / "outbox").messages()) == 4


def test_send_command_sends_what_the_calendar_has_for_the_day(content_dir, tmp_path, db_url, settings):
    """A manual send (after a content error, say) sends the editors' choice for the
    day, not the head of the queue, and numbers it like the daemon would."""
    from pipeline.scheduling import calendar
    from pipeline.cli import cli

    source = (content_dir / "articles" / "microneedling.md").read_text(encoding="utf-8")
    (content_dir / "articles" / "later.md").write_text(
        source.replace("slug: microneedling\n", "slug: later\n", 1)
        .replace("title: What Is Microneedling?", "title: A later article", 1)
        .replace("published: 2023-02-17", "published: 2023-03-01", 1), encoding="utf-8")
    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key=SECRET), 2)
    calendar.add_entry(engine, "later", date(2026, 3, 2), None)

    result = CliRunner().invoke(cli, ["--content", str(content_dir), "send", "--date", "2026-03-02"],
                                env=cli_env(tmp_path, db_url))
    assert result.exit_code == 0, result.output
    issue = ledger.find_issue(engine, "2026-03-02")
    assert (issue.number, issue.articles) == (1, ("later",))
    subjects = {message_from_bytes(m, policy=policy.default)["Subject"] for m in Outbox(tmp_path / "outbox").messages()}
    assert subjects == {"A later article"}


def test_send_to_one_topics_audience_is_its_own_issue_and_names_no_topic(content_dir, tmp_path, db_url, settings):
    from pipeline.scheduling import calendar
    from pipeline.cli import cli

    engine = open_database(db_url)
    s = settings.replace(secret_key=SECRET)
    hair = add_subscribers(engine, s, 2, start=0, topics=("hair-loss",))
    add_subscribers(engine, s, 2, start=10, topics=("skin-care",))
    add_subscribers(engine, s, 1, start=20)
    calendar.add_entry(engine, "microneedling", date(2026, 3, 2), None)
    runner, env, base = CliRunner(), cli_env(tmp_path, db_url), ["--content", str(content_dir)]

    result = runner.invoke(cli, base + ["send", "--date", "2026-03-02", "--topic", "hair-loss"], env=env)
    assert result.exit_code == 0, result.output
    topic_mail = [message_from_bytes(m, policy=policy.default) for m in Outbox(tmp_path / "outbox").messages()]
    assert {m["To"].addresses[0].addr_spec for m in topic_mail} == {f"sub{i}@example.com" for i in range(len(hair))}
    assert {m["Subject"] for m in topic_mail} == {settings.neutral_subject}
    for message in topic_mail:  # no header, and no link we built, names the topic
        assert not any("hair" in str(v).lower() for _, v in message.items())

    # the day's general issue is another issue: its own key and ledger, its own readers
    result = runner.invoke(cli, base + ["send", "--date", "2026-03-02"], env=env)
    assert result.exit_code == 0, result.output
    general = ledger.find_issue(engine, "2026-03-02")
    assert general is not None and general.audience_topic is None and general.state == "sent"
    all_mail = [message_from_bytes(m, policy=policy.default) for m in Outbox(tmp_path / "outbox").messages()]
    assert len(all_mail) == 2 + 3 and sum(m["Subject"] == "What Is Microneedling?" for m in all_mail) == 3
    with engine.connect() as conn:
        keys = [k for (k,) in conn.execute(select(ledger.ISSUES.c.key))]
    assert len(keys) == 2 and "2026-03-02" in keys
    (topic_key,) = [k for k in keys if k != "2026-03-02"]
    assert topic_key.startswith("2026-03-02-") and "hair" not in topic_key


def test_send_command_reports_a_refusing_relay_as_one_line_and_loses_nobody(content_dir, tmp_path, db_url, settings):
    """The relay refuses our sender (5xx to MAIL FROM): the run stops, nobody is marked
    failed or bounced, and the CLI says so in one line with a non-zero exit."""
    port = free_port()
    controller, server = start_scripted_server(Script(reject_sender=True), port)
    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key=SECRET), 5)
    env = cli_env(tmp_path, db_url, NEWSLETTER_TRANSPORT="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(port),
                  NEWSLETTER_SMTP_RETRY_DELAY="0.05")
    try:
        result = subprocess.run([str(Path(__file__).resolve().parent.parent / ".venv/bin/newsletter"),
                                 "--content", str(content_dir), "send", "--date", "2026-03-02"],
                                env=env | {"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    finally:
        controller.stop()
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: send stopped early") and "Traceback" not in result.stderr
    assert "--resume" in result.stderr
    counts = ledger.state_counts(engine, ledger.find_issue(engine, "2026-03-02").id)
    assert counts["failed"] == counts["bounced"] == counts["sent"] == 0
    assert counts["queued"] + counts["deferred"] == 5


def test_send_test_over_smtp_mails_one_marked_copy_and_no_ledger(engine, settings, smtp_server):
    from pipeline.delivery.send_test_copy import send_test

    s = smtp_settings(settings, smtp_server.port)
    receipt = send_test(s, small_rendered(), "editor@example.com")
    (got,) = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["editor@example.com"] and receipt.startswith("smtp:127.0.0.1")
    assert got.message["Subject"] == "[TEST] What Is Microneedling?"
    assert ledger.find_issue(engine, "2026-03-02") is None
