"""DKIM (issue 14, "DKIM at full speed"): our relaxed/relaxed canonicalisation against RFC 6376 and dkimpy,
signatures made by OpenSSL that dkimpy verifies (both builders, RFC 2047 headers, long folded headers, bodies
with trailing whitespace), the optional Ed25519 second signature (RFC 8463), batches signed in worker processes
during a real SMTP send, and keys that cannot be used refused in one line before anything is sent."""
from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings as hsettings, strategies as st

from fixtures_delivery import add_subscribers, small_rendered
from pipeline.database import open_database
from pipeline.delivery.deliver import send_issue
from pipeline.delivery.message import MessageTemplate, build_message, recipient
from pipeline.errors import DeliveryError
from pipeline.mail.dkim import dkim_signer
from pipeline.mail.dkim_canon import relaxed_body, relaxed_header, split_message
from pipeline.rendering.issue import Personal

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "my.klarity.health"
UNSUB = "https://my.klarity.health/newsletter/unsubscribe/AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PREFS = "https://my.klarity.health/newsletter/preferences/AQBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


# -- keys and a DNS that answers with them ---------------------------------------------------------

def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(RSA-2048 PEM path, Ed25519 PEM path, dnsfunc answering for selectors 'news' and 'edge')."""
    folder = tmp_path_factory.mktemp("dkim-keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (folder / "rsa.pem").write_bytes(_pem(rsa_key))
    (folder / "ed.pem").write_bytes(_pem(ed_key))
    spki = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    records = {f"news._domainkey.{DOMAIN}.".encode(): b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki),
               f"edge._domainkey.{DOMAIN}.".encode(): b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)}

    def dns(name, timeout=5):
        return records.get(name)

    return folder / "rsa.pem", folder / "ed.pem", dns


def signing_settings(settings, keys, **more):
    rsa_path, ed_path, _ = keys
    return settings.replace(**({"dkim_selector": "news", "dkim_private_key_path": str(rsa_path),
                                "dkim_sign_processes": 0} | more))


def verify_all(data: bytes, dns) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``data``, in order."""
    count = sum(1 for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    verdicts = []
    for i in range(count):
        try:
            verdicts.append(dkim.DKIM(data).verify(idx=i, dnsfunc=dns))
        except dkim.DKIMException:  # e.g. "body hash mismatch"
            verdicts.append(False)
    return verdicts


def tags(data: bytes, index: int = 0) -> dict[str, str]:
    msg = message_from_bytes(data, policy=policy.compat32)
    value = "".join(msg.get_all("DKIM-Signature")[index].split())
    return dict(t.split("=", 1) for t in value.split(";") if t)


# -- canonicalisation -----------------------------------------------------------------------------

def test_the_rfc_6376_example_canonicalises_as_section_3_4_5_shows():
    message = (b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n"
               b" C \r\nD \t E\r\n\r\n\r\n")
    fields, body = split_message(message)
    assert [relaxed_header(n, v) for n, v in fields] == [b"a:X", b"b:Y Z"]
    assert relaxed_body(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize("body, expected", [
    (b"", b""),
    (b"\r\n", b""),
    (b"\r\n\r\n\r\n", b""),
    (b"x", b"x\r\n"),                        # a body without a final CRLF gets one
    (b"x \t \r\n", b"x\r\n"),
    (b"\t\tindented\r\n  \r\nend\r\n\r\n", b" indented\r\n\r\nend\r\n"),  # a blank-looking line stays a line
    ("£ – ’ 微针 🩺  x\r\n".encode(), "£ – ’ 微针 🩺 x\r\n".encode()),
])
def test_relaxed_body_edges(body, expected):
    assert relaxed_body(body) == expected


_line = st.lists(st.sampled_from([b"a", b"Z", b" ", b"\t", b"=", b".", "é".encode(), b"x" * 5]), max_size=12).map(b"".join)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(_line, max_size=12))
def test_relaxed_body_matches_dkimpy_on_crlf_bodies(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from([b"Subject", b"subject ", b"X-Long"]), st.lists(_line, min_size=1, max_size=4))
def test_relaxed_header_matches_dkimpy_on_folded_values(name, parts):
    value = b" " + b"\r\n\t".join(p or b"x" for p in parts)
    ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name, value) == cname + b":" + cvalue.rstrip(b"\r\n")


# -- signatures dkimpy verifies -------------------------------------------------------------------

NAMES = ["Zoë Brontë", 'Jo "JJ" Smith', "陳大文", "Amy 🩺 Murtagh", None]


@pytest.mark.parametrize("builder", ["template", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_both_builders_sign_and_verify_with_unicode_names_and_subjects(settings, keys, builder, name):
    s = signing_settings(settings, keys)
    subject = "Microneedling’s evidence – £100–350, 微针 and ✨: " + "a long subject that must fold " * 4
    rendered = small_rendered(subject=subject)
    to = recipient("reader@example.com", name)
    greeting = f"Hello {name}," if name else "Hello,"
    mid = "<2026-03-02.7.abc@my.klarity.health>"
    if builder == "template":
        data = MessageTemplate(rendered, s).render(to=to, personal=Personal(UNSUB, PREFS, greeting), message_id=mid)
    else:
        data = build_message(rendered, s, to=to, personal=Personal(UNSUB, PREFS, greeting), message_id=mid)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in head.lower() and b"\r\n " in head  # RFC 2047 words and folded lines are in play
    signed = dkim_signer(s).sign(data)
    assert verify_all(signed, keys[2]) == [True]
    t = tags(signed)
    assert (t["a"], t["c"], t["d"], t["s"]) == ("rsa-sha256", "relaxed/relaxed", DOMAIN, "news")
    covered = t["h"].lower().split(":")
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
            "list-id"} <= set(covered)
    assert covered.count("from") == 2 and covered.count("subject") == 2  # oversigned: a second one breaks it
    parsed = message_from_bytes(signed, policy=policy.default)
    assert parsed["Subject"] == subject.strip() and not parsed.defects
    assert all(len(line) <= 78 for line in signed.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[:8])


def test_tampering_with_a_covered_header_or_the_body_fails_verification(settings, keys):
    s = signing_settings(settings, keys)
    data = dkim_signer(s).sign(MessageTemplate(small_rendered(), s).render(
        to=recipient("reader@example.com", "Amy"), personal=Personal(UNSUB, PREFS, "Hello Amy,"),
        message_id="<a.1@my.klarity.health>"))
    dns = keys[2]
    assert verify_all(data, dns) == [True]
    for old, new in ((b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click"), (b"Hello Amy", b"Hello Eve"),
                     (b"To: Amy <reader@example.com>", b"To: Amy <eve@example.net>")):
        assert old in data
        assert verify_all(data.replace(old, new, 1), dns) == [False], old
    added = data.replace(b"\r\n\r\n", b"\r\nSubject: a second subject\r\n\r\n", 1)  # oversigning catches it
    assert verify_all(added, dns) == [False]


def test_crlf_bodies_with_trailing_whitespace_and_tabs_verify(settings, keys):
    signer = dkim_signer(signing_settings(settings, keys))
    raw = (b"From: Klarity <newsletter@my.klarity.health>\r\nTo: =?utf-8?q?Zo=C3=AB?= <z@example.com>\r\n"
           b"Subject: =?utf-8?b?wqMxMDAg4oCTIOKAmXRlc3TigJk=?=\r\n"
           b"Date: Mon, 02 Mar 2026 07:00:00 +0000\r\nMessage-ID: <x.1@my.klarity.health>\r\n"
           b"List-Id: a very long list description that the relay may refold at any point it likes\r\n"
           b"  <daily.my.klarity.health>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"Hello   there \t\r\n\tindented line\t\r\n\r\ntrailing spaces   \r\n\r\n\r\n")
    signed = signer.sign(raw)
    assert verify_all(signed, keys[2]) == [True]
    # relaxed canonicalisation survives a relay that trims trailing whitespace and squeezes spaces
    relayed = signed.replace(b"Hello   there \t\r\n", b"Hello there\r\n").replace(b"spaces   \r\n", b"spaces\r\n")
    assert verify_all(relayed, keys[2]) == [True]


def test_ed25519_dual_signature_verifies_alongside_rsa(settings, keys):
    rsa_path, ed_path, dns = keys
    s = signing_settings(settings, keys, dkim_ed25519_selector="edge", dkim_ed25519_private_key_path=str(ed_path))
    data = dkim_signer(s).sign(MessageTemplate(small_rendered(), s).render(
        to=recipient("reader@example.com", "Zoë"), personal=Personal(UNSUB, PREFS, "Hello Zoë,"),
        message_id="<a.2@my.klarity.health>"))
    assert verify_all(data, dns) == [True, True]
    assert (tags(data, 0)["a"], tags(data, 1)["a"]) == ("rsa-sha256", "ed25519-sha256")
    assert tags(data, 1)["s"] == "edge"
    # the key from the environment setting works the same
    env = s.replace(dkim_ed25519_private_key_path="", dkim_ed25519_private_key=ed_path.read_text())
    assert verify_all(dkim_signer(env).sign(b"From: a@my.klarity.health\r\n\r\nx\r\n"), dns) == [True, True]


def test_signing_never_runs_dkimpys_pure_python_rsa(settings, keys, monkeypatch):
    """The RSA arithmetic is OpenSSL's (through cryptography); dkimpy's Python RSA, 7-9.5 ms a message, is unused."""
    import dkim as dkimpy
    import dkim.crypto

    def refuse(*_args, **_kwargs):
        raise AssertionError("dkimpy's pure-Python RSA was used")

    monkeypatch.setattr(dkim.crypto, "RSASSA_PKCS1_v1_5_sign", refuse)
    monkeypatch.setattr(dkimpy, "RSASSA_PKCS1_v1_5_sign", refuse)
    s = signing_settings(settings, keys)
    data = dkim_signer(s).sign(MessageTemplate(small_rendered(), s).render(
        to=recipient("reader@example.com", "Amy"), personal=Personal(UNSUB, PREFS, "Hello Amy,"),
        message_id="<a.3@my.klarity.health>"))
    assert verify_all(data, keys[2]) == [True]


# -- batches across processes, in a real send ----------------------------------------------------------

def test_a_batch_signed_in_worker_processes_verifies_and_survives_a_dead_worker(settings, keys):
    s = signing_settings(settings, keys, dkim_sign_processes=2)
    signer = dkim_signer(s)
    template = MessageTemplate(small_rendered(), s)
    messages = [template.render_to(f"r{i}@example.com", "Zoë", personal=Personal(UNSUB, PREFS, "Hello Zoë,"),
                                   message_id=f"<b.{i}@my.klarity.health>") for i in range(6)]

    async def run():
        first = await signer.sign_batch(messages[:2])
        workers = signer._pool.processes()
        assert workers and all(p.pid != os.getpid() for p in workers)
        for p in workers:  # Ctrl-C at the terminal reaches the workers too: they leave stopping to the sender
            os.kill(p.pid, signal.SIGINT)
        first += await signer.sign_batch(messages[2:3])
        assert all(p.is_alive() for p in workers) and signer.processes == 2
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)
        second = await signer.sign_batch(messages[3:])  # the pool is broken: signed here instead
        return first + second

    try:
        signed = asyncio.run(run())
    finally:
        signer.close()
    assert signer.processes == 0
    assert [verify_all(m, keys[2]) for m in signed] == [[True]] * 6
    assert [m.endswith(o) for m, o in zip(signed, messages)] == [True] * 6


def test_a_signed_smtp_send_reaches_everyone_once_and_every_message_verifies(db_url, settings, keys, smtp_server):
    engine = open_database(db_url)
    s = signing_settings(settings, keys, dkim_sign_processes=1, transport="smtp", smtp_host="127.0.0.1",
                         smtp_port=smtp_server.port, secret_key="dkim-test-secret", smtp_timeout=5.0,
                         smtp_connections=3, delivery_batch_size=4, dkim_ed25519_selector="edge",
                         dkim_ed25519_private_key_path=str(keys[1]))
    add_subscribers(engine, s, 40, name="Zoë Brontë")
    summary = send_issue(engine, s, small_rendered(subject="Microneedling – what’s new 🩺"), progress=False)
    assert (summary.sent, summary.failed, summary.deferred) == (40, 0, 0)
    received = smtp_server.wait_for(40)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(f"sub{i}@example.com" for i in range(40))
    for r in received:
        data = r.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # aiosmtpd hands over the DATA as sent
        assert verify_all(data, keys[2]) == [True, True]
        assert message_from_bytes(data, policy=policy.default)["To"].addresses[0].addr_spec == r.rcpt_tos[0]
        assert r.mail_from.startswith("bounces+")  # signing in workers keeps each message's VERP sender


def test_a_signed_outbox_send_verifies_too(db_url, settings, keys, tmp_path):
    from pipeline.mail.transport import Outbox

    engine = open_database(db_url)
    s = signing_settings(settings, keys, transport="outbox", outbox_dir=str(tmp_path / "outbox"),
                         secret_key="dkim-test-secret", delivery_batch_size=4)
    add_subscribers(engine, s, 6, name="陳大文")
    summary = send_issue(engine, s, small_rendered(), progress=False)
    assert summary.sent == 6
    messages = Outbox(s.outbox_dir).messages()
    assert len(messages) == 6 and all(verify_all(m, keys[2]) == [True] for m in messages)


# -- keys that cannot be used: one line, before anything is sent ---------------------------------------

def test_unusable_keys_and_selectors_are_one_clear_error(settings, keys, tmp_path):
    rsa_path, ed_path, _ = keys
    short = tmp_path / "short.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(short), "512"], check=True, capture_output=True)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    cases = [
        (dict(dkim_private_key_path="", dkim_private_key="not a key"), "not a usable PEM private key"),
        (dict(dkim_private_key_path=str(tmp_path / "missing.pem")), "cannot read the DKIM key"),
        (dict(dkim_private_key_path=str(short)), "512 bits"),
        (dict(dkim_private_key_path=str(locked)), "encrypted"),
        (dict(dkim_private_key_path=str(ed_path)), "not an RSA private key"),
        (dict(dkim_private_key_path=str(ROOT / "pyproject.toml")), "outside the repository"),
        (dict(dkim_selector="news\r\nBcc: victim@example.net"), "not a plain DNS name"),
        (dict(dkim_domain="klarity.health;s=evil"), "not a plain DNS name"),
        (dict(dkim_ed25519_selector="edge"), "no Ed25519 key"),
        (dict(dkim_selector="", dkim_ed25519_selector="edge", dkim_ed25519_private_key_path=str(ed_path)),
         "RSA signing is off"),
        (dict(dkim_ed25519_selector="edge", dkim_ed25519_private_key_path=str(rsa_path)), "not an Ed25519"),
    ]
    for change, words in cases:
        with pytest.raises(DeliveryError, match=words) as caught:
            dkim_signer(signing_settings(settings, keys, **change))
        assert "\n" not in str(caught.value) and "-----BEGIN" not in str(caught.value)
    assert dkim_signer(settings.replace(dkim_selector="", dkim_private_key=rsa_path.read_text())) is None


def test_send_with_a_bad_key_prints_one_line_exits_non_zero_and_sends_nothing(content_dir, tmp_path, db_url, settings):
    from pipeline.delivery import ledger

    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key="dkim-test-secret"), 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DKIM_"))}
    env |= {"DATABASE_URL": db_url, "NEWSLETTER_SECRET": "dkim-test-secret", "NEWSLETTER_TRANSPORT": "outbox",
            "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var"),
            "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true", "NEWSLETTER_DKIM_SELECTOR": "news",
            "DKIM_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "send",
                             "--date", "2026-03-02"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and "DKIM key" in lines[0], lines
    assert "bm90IGEga2V5" not in result.stderr + result.stdout  # the key's text is never printed
    issue = ledger.find_issue(engine, "2026-03-02")
    assert issue is None or sum(ledger.state_counts(engine, issue.id).values()) == 0  # nobody queued or sent
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").rglob("*.eml"))
