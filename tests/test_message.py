"""The message: checklist points 16-20 and 24 on the bytes, parsed back with the
email package; MessageTemplate gives what build_message gives; DKIM verifies."""
from __future__ import annotations

import base64
import re
import subprocess
from datetime import date
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from fixtures_delivery import small_rendered
from pipeline.errors import DeliveryError
from pipeline.rendering.issue import PLACEHOLDERS, Personal
from pipeline.delivery.message import MessageTemplate, build_message, dkim_signer, recipient

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).parent / "fixtures" / "library"  # the tests' own library
UNSUB = "https://my.klarity.health/newsletter/unsubscribe/AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PREFS = "https://my.klarity.health/newsletter/preferences/AQBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
SINGLE = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")


@pytest.fixture(scope="module")
def real():
    """The microneedling issue, rendered by the real render stage, and its settings."""
    from pipeline.rendering.compose import compose_issue
    from pipeline.content.library import load_library
    from pipeline.rendering.render import render_issue

    library = load_library(CONTENT)
    issue = compose_issue(library, date(2026, 3, 2), number=1)
    return render_issue(issue, library.settings), library.settings


def personal(greeting: str = "Hello,") -> Personal:
    return Personal(UNSUB, PREFS, greeting)


def parse(data: bytes):
    return message_from_bytes(data, policy=policy.default)


def both(rendered, settings, to, greeting="Hello,", mid="<2026-03-02.7.abc@my.klarity.health>"):
    a = build_message(rendered, settings, to=to, personal=personal(greeting), message_id=mid)
    b = MessageTemplate(rendered, settings).render(to=to, personal=personal(greeting), message_id=mid)
    return a, b


def lines_of(data: bytes) -> list[bytes]:
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF in the message"
    return data.split(b"\r\n")


@pytest.mark.parametrize("builder", ["reference", "template"])
def test_structure_and_headers_meet_checklist_16_to_19(real, builder):
    rendered, settings = real
    a, b = both(rendered, settings, recipient("reader@example.com", "Zoë Brontë"))
    data = a if builder == "reference" else b
    msg = parse(data)
    # 16: multipart/alternative, text first, HTML last, UTF-8, quoted-printable, short lines
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in lines_of(data)) <= 998
    # 17: each once; Message-ID on our domain
    for name in SINGLE:
        assert len(msg.get_all(name)) == 1, name
    assert data.count(b"\r\nMIME-Version:") + data.startswith(b"MIME-Version:") == 1
    assert msg["Message-ID"].strip("<>").endswith("@my.klarity.health")
    assert msg["From"].addresses[0].addr_spec == "newsletter@my.klarity.health"
    assert msg["Subject"] == "What Is Microneedling?"
    # 18: one https URI with the token plus a mailto, and one-click
    uris = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert uris == [UNSUB, "mailto:unsubscribe@my.klarity.health?subject=unsubscribe"]
    assert "reader" not in msg["List-Unsubscribe"] and "@example.com" not in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # 19: List-Id
    assert msg["List-Id"] == "Klarity Health Library <daily.my.klarity.health>"
    # the personal values landed in both parts, escaped in HTML, and no placeholder is left
    text, html = (p.get_content() for p in parts)
    for body in (text, html):
        assert UNSUB in body and PREFS in body
        assert not any(p in body for p in PLACEHOLDERS.values())


def test_template_body_lines_stay_within_76_and_never_start_with_a_dot(real):
    rendered, settings = real
    _, data = both(rendered, settings, "reader@example.com")
    body = data.split(b"\r\n\r\n", 1)[1]
    lines = lines_of(body)
    assert max(len(line) for line in lines) <= 76
    assert not any(line.startswith(b".") for line in lines)  # so the SMTP client needs no dot-stuffing


@pytest.mark.parametrize("name", [None, "Amy Murtagh", 'Jöhn "Q" Smith', "Zoë O'Brien-Smith, PhD", "Ünïcödé " * 20,
                                  'Back\\slash "quoted" name, with comma', "日本語の名前"])
def test_template_matches_reference_builder(real, name, frozen):  # frozen: both Dates in the same second
    rendered, settings = real
    to = recipient("reader@example.com", name)
    a, b = both(rendered, settings, to, greeting=f"Hello {name}," if name else "Hello,")
    ma, mb = parse(a), parse(b)
    assert sorted(ma.keys()) == sorted(mb.keys())
    for header in ma.keys():
        if header == "Content-Type":
            continue  # the boundary differs
        if header == "To":
            assert [(x.display_name, x.addr_spec) for x in ma[header].addresses] == \
                   [(x.display_name, x.addr_spec) for x in mb[header].addresses]
        else:
            assert str(ma[header]) == str(mb[header]), header
    if name and len(name) < 30:
        assert mb["To"].addresses[0].display_name == name
    assert [p.get_content_type() for p in ma.iter_parts()] == [p.get_content_type() for p in mb.iter_parts()]
    assert [p.get_content() for p in ma.iter_parts()] == [p.get_content() for p in mb.iter_parts()]
    assert mb.get_content_type() == "multipart/alternative" and not mb.defects


def test_test_copies_say_so_in_the_subject(real):
    rendered, settings = real
    data = build_message(rendered, settings, to="editor@example.com", personal=personal(), test=True)
    assert parse(data)["Subject"] == "[TEST] What Is Microneedling?"
    template = MessageTemplate(rendered, settings, test=True)
    data = template.render(to="editor@example.com", personal=personal(), message_id="<t@my.klarity.health>")
    assert parse(data)["Subject"] == "[TEST] What Is Microneedling?"


def test_optional_headers_reply_to_and_feedback_id(settings):
    s = settings.replace(reply_to="editors@my.klarity.health", feedback_id="daily:klarity")
    a, b = both(small_rendered(), s, "reader@example.com")
    for data in (a, b):
        msg = parse(data)
        assert msg["Reply-To"] == "editors@my.klarity.health"
        assert msg["Feedback-ID"] == "daily:klarity"
        assert "reader" not in msg["Feedback-ID"]


# -- 20: header injection ------------------------------------------------------------------

def test_subject_with_crlf_cannot_add_a_header(settings):
    rendered = small_rendered(subject="Hello\r\nBcc: victim@example.net\r\nX-Injected: yes")
    for data in both(rendered, settings, "reader@example.com"):
        msg = parse(data)
        assert msg["Bcc"] is None and msg["X-Injected"] is None
        assert msg["Subject"].startswith("Hello") and "\n" not in msg["Subject"]
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nBcc:" not in head and b"\r\nX-Injected:" not in head


@pytest.mark.parametrize("name", ["Eve\r\nBcc: victim@example.net", "Eve\nX-Injected: yes", "Eve\rX-Injected: yes",
                                  "Eve\u2028X-Injected: yes"])
def test_subscriber_name_with_line_breaks_cannot_add_a_header(settings, name):
    for data in both(small_rendered(), settings, recipient("eve@example.com", name), greeting=f"Hello {name},"):
        msg = parse(data)
        assert msg["Bcc"] is None and msg["X-Injected"] is None
        assert len(msg.get_all("To")) == 1
        assert msg["To"].addresses[0].addr_spec == "eve@example.com"
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nBcc:" not in head and b"\r\nX-Injected:" not in head


@pytest.mark.parametrize("address", ["eve@example.com\r\nBcc: victim@example.net", "eve@example.com>\r\nX: y",
                                     "Eve <eve@example.com>\nX: y", "eve@exa mple.com", "eve"])
def test_address_with_line_breaks_or_junk_is_refused(settings, address):
    with pytest.raises(DeliveryError):
        recipient(address)
    with pytest.raises(DeliveryError):
        build_message(small_rendered(), settings, to=address, personal=personal())
    with pytest.raises(DeliveryError):
        MessageTemplate(small_rendered(), settings).render(to=address, personal=personal(),
                                                           message_id="<a@my.klarity.health>")


@pytest.mark.parametrize("field", ["unsubscribe_url", "message_id"])
def test_per_recipient_values_with_line_breaks_are_refused(settings, field):
    bad_url = UNSUB + "\r\nBcc: victim@example.net"
    pers = Personal(bad_url if field == "unsubscribe_url" else UNSUB, PREFS, "Hi,")
    mid = "<a@my.klarity.health>\r\nBcc: v@x.y" if field == "message_id" else "<a@my.klarity.health>"
    with pytest.raises(DeliveryError):
        MessageTemplate(small_rendered(), settings).render(to="a@example.com", personal=pers, message_id=mid)
    with pytest.raises(DeliveryError):
        build_message(small_rendered(), settings, to="a@example.com", personal=pers, message_id=mid)


# -- 24: nothing about a sensitive audience in the headers ---------------------------------------

def test_headers_of_a_sensitive_topic_issue_do_not_name_the_topic(content_dir):
    from pipeline.rendering.compose import compose_issue
    from pipeline.content.library import load_library
    from pipeline.rendering.render import render_issue

    article = content_dir / "articles" / "microneedling.md"
    article.write_text(article.read_text().replace("  - skin-care\n", "  - skin-care\n  - skin-conditions\n"))
    library = load_library(content_dir)
    issue = compose_issue(library, date(2026, 3, 2), number=1, audience_topic="skin-conditions")
    rendered = render_issue(issue, library.settings)
    _, data = both(rendered, library.settings, recipient("reader@example.com", "Amy"))
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii").lower()
    for word in ("skin-conditions", "skin conditions", "eczema", "psoriasis", "acne"):
        assert word not in head


# -- 19: DKIM ---------------------------------------------------------------------------------------

def generate_key(tmp_path: Path) -> tuple[Path, bytes]:
    """A throwaway RSA key (made by openssl in the test's tmp folder) and its DNS TXT record."""
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_covers_the_required_headers_and_verifies(settings, tmp_path):
    import dkim

    key, record = generate_key(tmp_path)
    s = settings.replace(dkim_selector="news2026", dkim_private_key_path=str(key))
    signer = dkim_signer(s)
    data = signer.sign(MessageTemplate(small_rendered(), s).render(
        to=recipient("reader@example.com", "Zoë"), personal=personal(), message_id="<a.1@my.klarity.health>"))
    msg = parse(data)
    tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", str(msg["DKIM-Signature"])).split(";") if t)
    assert tags["d"] == "my.klarity.health" and tags["s"] == "news2026"
    signed = {h.lower() for h in tags["h"].split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
            "list-id"} <= signed

    def dns(name, timeout=5):
        assert name == b"news2026._domainkey.my.klarity.health."
        return record

    assert dkim.verify(data, dnsfunc=dns)
    tampered = data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                            b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_dkim_key_from_the_environment_setting_and_refused_inside_the_repo(settings, tmp_path):
    key, _ = generate_key(tmp_path)
    assert dkim_signer(settings.replace(dkim_selector="s", dkim_private_key=key.read_text())) is not None
    assert dkim_signer(settings.replace(dkim_selector="", dkim_private_key=key.read_text())) is None
    with pytest.raises(DeliveryError, match="outside the repository"):
        dkim_signer(settings.replace(dkim_selector="s", dkim_private_key_path=str(ROOT / "pyproject.toml")))


@pytest.mark.parametrize("name", [None, 'Jöhn "Q" Smith', "Eve\r\nBcc: victim@example.net"])
def test_render_to_gives_what_render_gives(real, name):
    rendered, settings = real
    template = MessageTemplate(rendered, settings)
    mid = "<2026-03-02.9.abc@my.klarity.health>"
    a = parse(template.render(to=recipient("reader@example.com", name), personal=personal(), message_id=mid))
    b = parse(template.render_to("reader@example.com", name, personal=personal(), message_id=mid))
    assert [(x.display_name, x.addr_spec) for x in a["To"].addresses] == \
           [(x.display_name, x.addr_spec) for x in b["To"].addresses]
    assert b["Bcc"] is None
    assert [p.get_content() for p in a.iter_parts()] == [p.get_content() for p in b.iter_parts()]
    with pytest.raises(DeliveryError):
        template.render_to("reader@example.com\r\nBcc: v@x.y", name, personal=personal(), message_id=mid)
