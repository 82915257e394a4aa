"""Ways in by mail, with real servers on loopback: `newsletter bounces serve` (SMTP, and LMTP),
the IMAP poller against a throwaway Dovecot, and a private Postfix instance that accepts an
issue, meets a recipient its next hop refuses, and sends a real DSN to the VERP address."""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import fixtures_bounces as fb
from conftest import free_port, missing
from fixtures_delivery import add_subscribers, small_rendered, wait_until
from pipeline.bounces import receive
from pipeline.database import open_database
from pipeline.delivery import ledger
from pipeline.delivery.deliver import send_issue
from pipeline.mail import verp
from subscribers import store

SECRET = "bounces-mta-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(settings, tmp_path, db_url):
    s = settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"), secret_key=SECRET,
                         database_url=db_url, var_dir=str(tmp_path / "var"))
    engine = open_database(db_url)
    return s, engine


def sent(engine, s, n=5) -> dict[str, int]:
    add_subscribers(engine, s, n)
    assert send_issue(engine, s, small_rendered(), progress=False).sent == n
    with engine.connect() as conn:
        return dict(conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.id)).all())


def test_serve_over_smtp_takes_each_layout_and_acknowledges_only_what_it_recorded(world, content_dir):
    s, engine = world
    rows = sent(engine, s, 5)
    port = free_port()
    env = {**os.environ, "NEWSLETTER_SECRET": SECRET, "DATABASE_URL": s.database_url,
           "NEWSLETTER_TRANSPORT": "outbox", "NEWSLETTER_VAR_DIR": s.var_dir}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "bounces", "serve",
                             "--port", str(port)], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "bounces serve did not start"
                time.sleep(0.1)
        targets = dict(zip(sorted(fb.LAYOUTS), ["sub0@example.com", "sub1@example.com", "sub2@example.com",
                                                "sub3@example.com"]))
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for layout, who in targets.items():
                address = verp.return_path(s, "d", rows[who])
                client.sendmail("", [address], fb.LAYOUTS[layout](address, who))
            # an auto-reply over the same connection changes nothing
            address = verp.return_path(s, "d", rows["sub4@example.com"])
            client.sendmail("zoe@example.org", [address], fb.auto_reply(address, style="exchange"))
        for who in targets.values():
            assert store.get_by_email(engine, who).status == "bounced"
        assert store.get_by_email(engine, "sub4@example.com").status == "confirmed"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "5 message(s) recorded" in err


def test_lmtp_answers_per_recipient_and_asks_to_retry_when_the_database_is_gone(world, tmp_path):
    s, engine = world
    rows = sent(engine, s, 3)
    port = free_port()
    server = receive.controller(engine, s, "127.0.0.1", port, lmtp=True)
    server.start()
    try:
        a, b = (verp.return_path(s, "d", rows[w]) for w in ("sub1@example.com", "sub2@example.com"))
        with smtplib.LMTP("127.0.0.1", port) as client:
            # two recipients: RFC 2033 wants one reply to DATA per recipient (smtplib reads only the first)
            client.ehlo()
            client.mail("")
            client.rcpt(a)
            client.rcpt(b)
            first = client.data(fb.gmail_dsn(a, "sub1@example.com"))
            second = client.getreply()
        assert first[0] == 250 and second[0] == 250
        assert store.get_by_email(engine, "sub1@example.com").status == "bounced"
        # the database goes away: the MTA is told 451 (keep it, retry), never 250
        server.handler.engine = _broken_engine(tmp_path)
        with smtplib.LMTP("127.0.0.1", port) as client:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail("", [b], fb.postfix_dsn(b, "sub2@example.com"))
        assert caught.value.smtp_code == 451
        assert store.get_by_email(engine, "sub2@example.com").status == "confirmed"
    finally:
        server.stop()


def _broken_engine(tmp_path):
    from sqlalchemy import create_engine
    folder = tmp_path / "gone"
    folder.mkdir()
    engine = create_engine(f"sqlite:///{folder / 'db.sqlite'}")  # no tables: every write fails
    return engine


# -- Dovecot IMAP --------------------------------------------------------------------------------------

@pytest.fixture
def dovecot():
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(binary) or os.geteuid() != 0:
        missing("dovecot (Debian dovecot-imapd) is not installed, or the tests are not root")
    home = Path(tempfile.mkdtemp(prefix="dovecot-"))
    home.chmod(0o755)
    port = free_port()
    for sub in ("run", "state", "mail/bounce/Maildir/new", "mail/bounce/Maildir/cur", "mail/bounce/Maildir/tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "passwd").write_text("bounce:{PLAIN}pässword-£\n", encoding="utf-8")
    (home / "dovecot.conf").write_text(f"""base_dir = {home}/run
state_dir = {home}/state
log_path = {home}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {home}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
    shutil.chown(home / "mail", "nobody", "nogroup")
    for path in (home / "mail").rglob("*"):
        shutil.chown(path, "nobody", "nogroup")
    proc = subprocess.Popen([binary, "-F", "-c", str(home / "dovecot.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(port), timeout=15)
        yield port, home / "mail" / "bounce" / "Maildir"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(home, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_imap_poller_processes_and_deletes_what_it_recorded(world, dovecot):
    import imaplib
    s, engine = world
    port, _maildir = dovecot
    rows = sent(engine, s, 4)
    s = s.replace(bounce_imap_host="127.0.0.1", bounce_imap_port=port, bounce_imap_security="none",
                  bounce_imap_username="bounce", bounce_imap_password="pässword-£")
    client = imaplib.IMAP4("127.0.0.1", port)
    client.authenticate("PLAIN", lambda _: "\0bounce\0pässword-£".encode("utf-8"))
    a = verp.return_path(s, "d", rows["sub1@example.com"])
    b = verp.return_path(s, "d", rows["sub2@example.com"])
    for raw in (fb.microsoft_ndr(a, "sub1@example.com"), fb.arf_report(b, "sub2@example.com"),
                fb.auto_reply(a, style="french")):
        client.append("INBOX", None, None, raw)
    client.logout()
    result = receive.poll_imap(engine, s)
    assert (result.processed, result.failed) == (3, 0)
    assert store.get_by_email(engine, "sub1@example.com").status == "bounced"
    assert store.get_by_email(engine, "sub2@example.com").status == "complained"
    assert receive.poll_imap(engine, s).processed == 0  # deleted once recorded
    with pytest.raises(Exception) as caught:
        receive.poll_imap(engine, s.replace(bounce_imap_password="wrong"))
    assert "cannot log in" in str(caught.value)


# -- Postfix ----------------------------------------------------------------------------------------------

MASTER_CF = """{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


@pytest.fixture
def postfix():
    """A private Postfix (its own config, queue and log under a temp folder) on a loopback port.
    Yields (start(transport lines) -> port, log path)."""
    binary = shutil.which("postfix") or "/usr/sbin/postfix"
    if not os.path.exists(binary) or os.geteuid() != 0:
        missing("postfix is not installed (scripts/system-deps.sh installs it), or the tests are not root")
    home = Path(tempfile.mkdtemp(prefix="postfix-"))
    home.chmod(0o755)
    etc, queue, data = home / "etc", home / "queue", home / "data"
    for folder in (etc, queue, data):
        folder.mkdir()
    shutil.chown(data, "postfix")
    started = []

    def start(transport: str) -> int:
        port = free_port()
        (etc / "transport").write_text(transport)
        (etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{port}"))
        (etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains = example.com
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
transport_maps = texthash:{etc}/transport
alias_maps =
alias_database =
smtputf8_enable = no
smtp_dns_support_level = disabled
maillog_file_prefixes = {home}
maillog_file = {home}/maillog
delay_warning_time = 0
biff = no
""")
        done = subprocess.run([binary, "-c", str(etc), "start"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr + _tail(home / "maillog")
        started.append(True)
        wait_until(lambda: _listening(port), timeout=20)
        return port

    try:
        yield start, home / "maillog"
    finally:
        if started:
            subprocess.run([binary, "-c", str(etc), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def test_postfix_turns_a_refused_recipient_into_a_real_dsn_that_suppresses_that_subscriber(world, postfix):
    from aiosmtpd.controller import Controller

    s, engine = world
    start, maillog = postfix
    refused_at_next_hop = []

    class NextHop:  # the recipient's MX: knows no such user
        async def handle_RCPT(self, server, session, envelope, address, options):
            refused_at_next_hop.append(address)
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"

    hop_port, bounce_port = free_port(), free_port()
    hop = Controller(NextHop(), hostname="127.0.0.1", port=hop_port)
    receiver = receive.controller(engine, s, "127.0.0.1", bounce_port)  # what `newsletter bounces serve` runs
    hop.start()
    receiver.start()
    try:
        port = start(f"sub3@example.com smtp:[127.0.0.1]:{hop_port}\n"
                     "example.com discard:\n"
                     f"my.klarity.health smtp:[127.0.0.1]:{bounce_port}\n")
        smtp = s.replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=10.0)
        add_subscribers(engine, smtp, 6)
        summary = send_issue(engine, smtp, small_rendered(), progress=False)
        assert summary.sent == 6  # Postfix accepted every message: the refusal comes later, as a DSN
        wait_until(lambda: store.get_by_email(engine, "sub3@example.com").status == "bounced", timeout=30)
    finally:
        receiver.stop()
        hop.stop()
    assert refused_at_next_hop == ["sub3@example.com"]
    assert [store.get_by_email(engine, f"sub{i}@example.com").status for i in range(6)] == [
        "confirmed", "confirmed", "confirmed", "bounced", "confirmed", "confirmed"]
    log = maillog.read_text(errors="replace")
    assert "to=<bounces+" in log and "status=sent" in log, _tail(maillog)
    from pipeline.bounces import evidence
    (event,) = evidence.events(engine, s)
    assert (event["kind"], event["status"], event["source"]) == ("hard", "5.1.1", "smtp")
    assert "mx.postfix.test" in evidence.show(engine, s, event["id"])["raw"]  # Postfix wrote it
