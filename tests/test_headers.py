"""Header values from the world (issue 10, sections 1, 2 and 8): typographic
quotes, currency, accents, CJK and emoji in subjects and names; hostile names;
the check of every finished message; opaque Message-IDs.  Every message is
parsed back with the email package (policy.default), as a receiver would."""
from __future__ import annotations

import base64
import re
from datetime import date
from email import message_from_bytes, policy

import pytest

from fixtures_delivery import small_rendered
from pipeline.errors import DeliveryError, SubscriberError
from pipeline.rendering.issue import Personal

UNSUB = "https://my.klarity.health/newsletter/unsubscribe/AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PREFS = "https://my.klarity.health/newsletter/preferences/AQBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
MID = "<b2s4tq3mzl5zgvvcx6ce3bxi@my.klarity.health>"
SUBJECTS = [
    "What’s Microneedling? – the facts",
    "Costs: £100–£350, and the café’s view (é, ü, ñ)",
    "皮肤针疗法：事实与误区",
    "Microneedling 🩺 at home? 😀 Think twice",
    "What’s the evidence for microneedling – a long look at acne scars, stretch marks, large pores, "
    "hair loss and what the £ buys you, from the clinic’s and the dermatologist’s point of view",
    "A long plain ASCII subject that certainly needs folding because it goes on and on about microneedling "
    "and collagen induction therapy for quite a while",
    "Literal =?utf-8?q?not_an_encoded_word?= in a subject",
]
NAMES = [None, "Zoë O’Brien – £", "山田 太郎", "Ana 😀 Lima", 'Jöhn "Q" Smith', "Ünïcödé Ñame " * 6]
# the attack of issue 10 section 2: an encoded word that decodes to headers and a body
PAYLOAD = ("Eve\r\nReply-To: attacker@evil.example\r\nContent-Type: text/html\r\n\r\n"
           "<h1>Account locked</h1><a href='https://evil.example'>Unlock</a><!--")
HOSTILE = [
    "=?utf-8?b?" + base64.b64encode(PAYLOAD.encode()).decode() + "?=",
    "=?utf-8?q?Eve=0D=0AReply-To:_attacker@evil.example?=",
    "Eve =?UTF-8?B?" + base64.b64encode(b"\r\nBcc: victim@example.net").decode() + "?= Smith",
    "Eve\r\nBcc: victim@example.net",
    "Eve\nX-Injected: yes",
    "Eve\u2028X-Injected: yes",
    "Eve\u2029X-Injected: yes",
    "Eve\u0085X-Injected: yes",
    "Eve\x00Null",
    "Eve\u202eesreveR",
    "x" * 101,
]


def personal(greeting: str = "Hello,") -> Personal:
    return Personal(UNSUB, PREFS, greeting)


def parse(data: bytes):
    return message_from_bytes(data, policy=policy.default)


def head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def header_lines(head: bytes, field: bytes) -> list[bytes]:
    """The physical lines of one header (its first line and its continuation lines)."""
    lines, out, inside = head.split(b"\r\n"), [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if inside:
                out.append(line)
            continue
        inside = line.lower().startswith(field.lower() + b":")
        if inside:
            out.append(line)
    assert out, field
    return out


def both_builders(rendered, settings, email, name):
    from pipeline.rendering.greeting import greeting
    from pipeline.delivery.message import MessageTemplate, build_message, recipient

    to = recipient(email, name)
    reference = build_message(rendered, settings, to=to, personal=personal(greeting(name)), message_id=MID)
    template = MessageTemplate(rendered, settings)
    fast = template.render(to=to, personal=personal(greeting(name)), message_id=MID)
    fast_to = template.render_to(email, name, personal=personal(greeting(name)), message_id=MID)
    return reference, fast, fast_to


# -- section 1: non-ASCII headers -----------------------------------------------------------

@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("name", NAMES)
def test_fast_and_reference_builders_agree_on_unicode_subjects_and_names(settings, subject, name):
    rendered = small_rendered(subject=subject)
    messages = both_builders(rendered, settings, "reader@example.com", name)
    decoded = []
    for data in messages:
        head = head_of(data)
        assert head.isascii(), "a header is not RFC 2047 encoded"
        assert max(len(line) for line in head.split(b"\r\n")) <= 998
        for field in (b"From", b"To", b"Subject", b"List-Id"):  # text we fold (URLs cannot be)
            assert max(len(line) for line in header_lines(head, field)) <= 78, f"{field} is not folded"
        msg = parse(data)
        assert not msg.defects
        assert msg["Subject"] == subject
        (to,) = msg["To"].addresses
        assert to.addr_spec == "reader@example.com"
        if name and len(name) < 20:
            assert to.display_name == name
        elif name:  # too long for one encoded word: shortened, never garbled
            assert to.display_name and " ".join(name.split()).startswith(to.display_name)
        decoded.append((str(msg["Subject"]), to.display_name, [p.get_content() for p in msg.iter_parts()],
                        sorted(k for k in msg.keys() if k != "Content-Type")))
    assert decoded[0] == decoded[1] == decoded[2]


def test_unicode_sender_and_publication_names_are_encoded_in_from_and_list_id(settings):
    s = settings.replace(sender_name="Bibliothèque Santé – Klarity ’s 😀", publication_name="Klarity Santé 日報")
    for data in both_builders(small_rendered(subject="What’s new – £"), s, "reader@example.com", "Zoë"):
        assert head_of(data).isascii()
        msg = parse(data)
        assert msg["From"].addresses[0].display_name == "Bibliothèque Santé – Klarity ’s 😀"
        assert msg["From"].addresses[0].addr_spec == "newsletter@my.klarity.health"
        assert msg["List-Id"] == "Klarity Santé 日報 <daily.my.klarity.health>"


def test_the_typographic_title_renders_and_builds_with_the_real_render_stage(content_dir):
    """The reproduction of section 1: the real microneedling article retitled."""
    from pipeline.rendering.compose import compose_issue
    from pipeline.content.library import load_library
    from pipeline.delivery.message import MessageTemplate
    from pipeline.rendering.render import render_issue

    article = content_dir / "articles" / "microneedling.md"
    article.write_text(article.read_text(encoding="utf-8").replace(
        "title: What Is Microneedling?", "title: What’s Microneedling? – the facts", 1), encoding="utf-8")
    library = load_library(content_dir)
    rendered = render_issue(compose_issue(library, date(2026, 3, 2), number=1), library.settings)
    data = MessageTemplate(rendered, library.settings).render_to(
        "reader@example.com", "Zoë O’Brien", personal=personal(), message_id=MID)
    msg = parse(data)
    assert msg["Subject"] == "What’s Microneedling? – the facts"
    assert msg["To"].addresses[0].display_name == "Zoë O’Brien"


# -- section 2: names are display text --------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_refused_where_it_comes_in(name):
    from subscribers.store import clean_name

    with pytest.raises(SubscriberError) as caught:
        clean_name(name)
    assert "\n" not in str(caught.value) and "name" in str(caught.value)


@pytest.mark.parametrize("name, kept", [("  Zoë   O’Brien ", "Zoë O’Brien"), ("山田\t太郎", "山田 太郎"),
                                        ("Ana 😀", "Ana 😀"), ("=Bob+", "=Bob+"), ("x" * 100, "x" * 100),
                                        ("Price? = £5", "Price? = £5")])
def test_real_names_pass_the_rule(name, kept):
    from subscribers.store import clean_name
    assert clean_name(name) == kept


@pytest.mark.parametrize("name", HOSTILE)
def test_a_stored_hostile_name_never_reaches_a_header_or_the_greeting(settings, name):
    """A name stored before the rule is treated as no name by every builder."""
    for data in both_builders(small_rendered(), settings, "eve@example.com", name):
        msg = parse(data)
        assert msg["Reply-To"] is None and msg["Bcc"] is None and msg["X-Injected"] is None
        assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [("", "eve@example.com")]
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        text, html = (p.get_content() for p in msg.iter_parts())
        assert "Account locked" not in html and "Hello,\n" in text.replace("\r\n", "\n")


def test_the_encoded_word_attack_cannot_write_headers_into_transactional_mail(settings):
    """Section 2 as reported: the welcome email to a stored name that is an encoded word."""
    from subscribers.messages import welcome_message

    s = settings.replace(secret_key="headers-test-secret")
    info = subscriber("eve@example.com", HOSTILE[0])
    msg = parse(welcome_message(s, info, "https://my.klarity.health/newsletter/").as_bytes())
    assert msg["Reply-To"] is None
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert "Account locked" not in msg.get_body(("html",)).get_content()
    assert msg["To"].addresses[0].display_name == "" and msg["To"].addresses[0].addr_spec == "eve@example.com"


def subscriber(email: str, name: str | None):
    from datetime import datetime, timezone
    from subscribers.store import SubscriberInfo
    now = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)
    return SubscriberInfo(id=7, email=email, name=name, status="confirmed", frequency="daily", topics=(),
                          created_at=now, updated_at=now, pending_at=now, confirmed_at=now, unsubscribed_at=None,
                          bounced_at=None, complained_at=None)


def test_confirmation_email_carries_no_name_and_welcome_carries_a_unicode_one(settings):
    from subscribers.messages import confirmation_message, welcome_message

    s = settings.replace(secret_key="headers-test-secret", sender_name="Klarity – Santé")
    info = subscriber("zoe@example.com", "Zoë 山田 😀")
    from types import SimpleNamespace
    request = SimpleNamespace(id=7, frequency="weekly", topics='["skin-care"]')  # a sign-up request row's fields
    for already in (False, True):
        msg = parse(confirmation_message(s, info, request=request, already=already).as_bytes())
        assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [("", "zoe@example.com")]
        for part in msg.iter_parts():
            assert "Zoë" not in part.get_content() and "山田" not in part.get_content()
    data = welcome_message(s, info, "https://my.klarity.health/newsletter/").as_bytes()
    assert head_of(data).isascii()
    msg = parse(data)
    assert msg["To"].addresses[0].display_name == "Zoë 山田 😀"
    assert msg["From"].addresses[0].display_name == "Klarity – Santé"
    assert "Zoë 山田 😀" in msg.get_body(("plain",)).get_content()


# -- the finished-bytes check -----------------------------------------------------------------

def test_check_finished_refuses_anything_we_did_not_build(settings):
    from pipeline.mail.headers import check_finished
    from pipeline.delivery.message import build_message, expected_headers, static_headers

    rendered = small_rendered()
    good = build_message(rendered, settings, to="eve@example.com", personal=personal(), message_id=MID)
    expected = expected_headers(settings, static_headers(rendered, settings), ("", "eve@example.com"), MID, UNSUB)
    check_finished(good, expected)  # what we built passes
    head, body = good.split(b"\r\n\r\n", 1)
    boundary = re.search(rb'boundary="([^"]+)"', head).group(1)
    bad = {
        "an extra header": head + b"\r\nReply-To: attacker@evil.example\r\n\r\n" + body,
        "a header twice": head + b"\r\nSubject: again\r\n\r\n" + body,
        "a changed To": head.replace(b"To: eve@example.com", b"To: eve@example.com, v@x.example") + b"\r\n\r\n" + body,
        "a third part": head + b"\r\n\r\n" + body.replace(
            b"--" + boundary + b"--", b"--" + boundary + b"\r\nContent-Type: text/html\r\n\r\n<h1>x</h1>\r\n--"
            + boundary + b"--"),
        "an HTML-only body": head.replace(b"multipart/alternative", b"text/html") + b"\r\n\r\n<h1>Account locked</h1>",
        "text after the parts": head + b"\r\n\r\n" + body + b"<h1>Account locked</h1>\r\n",
    }
    for what, data in bad.items():
        with pytest.raises(DeliveryError, match="refusing"):
            check_finished(data, expected)
            pytest.fail(f"{what} was not refused")


def test_builders_refuse_a_to_line_that_reads_back_as_something_else(settings, monkeypatch):
    """Whatever writes the To value (an interpreter's folder, a future change), the bytes
    are checked: a To value that carries a header is refused by both builders."""
    import pipeline.delivery.message as message

    template = message.MessageTemplate(small_rendered(), settings)
    monkeypatch.setattr(message, "mailbox", lambda name, addr, header="To": (
        f"Eve <{addr}>\r\nReply-To: attacker@evil.example", name))
    with pytest.raises(DeliveryError):
        template.render_to("eve@example.com", "Eve", personal=personal(), message_id=MID)
    with pytest.raises(DeliveryError):
        message.build_message(small_rendered(), settings, to="Eve <eve@example.com>", personal=personal(),
                              message_id=MID)


def test_transactional_messages_are_checked_before_they_leave(settings, monkeypatch):
    import subscribers.messages as messages

    s = settings.replace(secret_key="headers-test-secret")
    monkeypatch.setattr(messages, "mailbox", lambda name, addr, header="To": (
        f"<{addr}>\r\nReply-To: attacker@evil.example" if header == "To" else addr, name))
    from types import SimpleNamespace
    request = SimpleNamespace(id=7, frequency="daily", topics="[]")
    for build in (lambda: messages.confirmation_message(s, subscriber("eve@example.com", None), request=request),
                  lambda: messages.data_link_message(s, subscriber("eve@example.com", None), 7, 60),
                  lambda: messages.welcome_message(s, subscriber("eve@example.com", "Eve"), "https://x.example/")):
        with pytest.raises(DeliveryError, match="refusing"):
            build()


def test_send_test_copy_is_checked_and_encoded(settings, tmp_path):
    from pipeline.delivery.send_test_copy import send_test
    from pipeline.mail.transport import Outbox

    s = settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"))
    send_test(s, small_rendered(subject="What’s Microneedling? – the facts"), "editor@example.com")
    (data,) = Outbox(tmp_path / "outbox").messages()
    assert head_of(data).isascii()
    assert parse(data)["Subject"] == "[TEST] What’s Microneedling? – the facts"
