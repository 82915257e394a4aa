"""The subscriber store and its tokens.  Every store test runs on SQLite and on a
real PostgreSQL server (``store_url``)."""
from __future__ import annotations

import base64
import json
import os
import stat
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text

from pipeline import keys
from pipeline.database import open_database
from pipeline.errors import SubscriberError
from subscribers import signup, store, tokens
from subscribers.models import ConsentRecord, Subscriber, SubscriberTopic, Suppression

from fixtures_subscribers import SECRET, sub_settings  # noqa: F401
from pipeline.privacy import rights


@pytest.fixture
def engine(store_url):
    return open_database(store_url)


def sign_up(engine, settings, address, **kw) -> tuple[store.SubscriberInfo, signup.SignUpOutcome]:
    """``signup.sign_up``, then the subscriber row and what was done."""
    outcome = signup.sign_up(engine, settings, address, **kw)
    return store.get(engine, outcome.subscriber_id), outcome


def all_text(engine) -> str:
    """Every value of every table, as one string: to prove what is (not) stored."""
    parts = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


# -- tokens -------------------------------------------------------------------------------

def test_token_round_trip_and_opacity(frozen):
    token = tokens.make_token(SECRET, tokens.UNSUBSCRIBE, 4242)
    assert tokens.read_token(SECRET, tokens.UNSUBSCRIBE, token) == 4242
    assert len(token) == 39 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=")
    # the id is encrypted: neither its bytes nor its digits appear
    assert (4242).to_bytes(8, "big") not in raw and b"4242" not in raw and "4242" not in token
    # two subscribers' tokens share nothing but the version byte
    other = base64.urlsafe_b64decode(tokens.make_token(SECRET, tokens.UNSUBSCRIBE, 4243) + "=")
    assert sum(a == b for a, b in zip(raw[1:], other[1:])) < 6


@pytest.mark.parametrize("purpose", [tokens.PREFERENCES, tokens.CONFIRM])
def test_token_for_one_purpose_is_refused_for_another(purpose):
    token = tokens.make_token(SECRET, tokens.UNSUBSCRIBE, 7)
    with pytest.raises(SubscriberError, match="not valid"):
        tokens.read_token(SECRET, purpose, token)


def test_changing_the_secret_invalidates_tokens():
    token = tokens.make_token(SECRET, tokens.UNSUBSCRIBE, 7)
    with pytest.raises(SubscriberError, match="bad signature"):
        tokens.read_token(SECRET + "x", tokens.UNSUBSCRIBE, token)


def test_every_single_character_change_is_detected():
    token = tokens.make_token(SECRET, tokens.PREFERENCES, 99)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        tampered = token[:i] + alphabet[(alphabet.index(ch) + 1) % 64] + token[i + 1:]
        with pytest.raises(SubscriberError):
            tokens.read_token(SECRET, tokens.PREFERENCES, tampered)
    for bad in ["", "x", token + "A", token[:-1], "A" * 39, "é" * 39, "../" * 13, token.upper()]:
        with pytest.raises(SubscriberError):
            tokens.read_token(SECRET, tokens.PREFERENCES, bad)


def test_confirm_token_expires(frozen):
    token = tokens.make_token(SECRET, tokens.CONFIRM, 5)
    frozen.advance(days=7)
    assert tokens.read_token(SECRET, tokens.CONFIRM, token, max_age=7 * 86400) == 5
    frozen.advance(seconds=1)
    with pytest.raises(SubscriberError, match="expired"):
        tokens.read_token(SECRET, tokens.CONFIRM, token, max_age=7 * 86400)
    # links without an age limit (unsubscribe, preferences) keep working
    assert tokens.read_token(SECRET, tokens.CONFIRM, token) == 5


def test_urls_and_email_hash(sub_settings):
    url = tokens.unsubscribe_url(sub_settings, 12)
    assert url.startswith(sub_settings.base_url + "/unsubscribe/")
    assert tokens.read_token(SECRET, tokens.UNSUBSCRIBE, url.rsplit("/", 1)[1]) == 12
    assert tokens.preferences_url(sub_settings, 12).startswith(sub_settings.base_url + "/preferences/")
    h = tokens.email_hash(sub_settings, "Amy@Example.com")
    assert h == tokens.email_hash(sub_settings, "amy@example.com") and len(h) == 64
    assert h != tokens.email_hash(sub_settings.replace(secret_key="another"), "amy@example.com")


def test_missing_secret_is_an_error_for_real_mail(sub_settings):
    with pytest.raises(SubscriberError, match="NEWSLETTER_SECRET"):
        tokens.unsubscribe_url(sub_settings.replace(secret_key="", transport="smtp"), 1)


def test_demo_secret_is_generated_once_private_and_outside_the_repo(sub_settings, tmp_path):
    demo = sub_settings.replace(secret_key="", transport="outbox", var_dir=str(tmp_path / "demo-var"))
    first = keys.secret(demo)
    path = tmp_path / "demo-var" / "secret_key"
    assert path.read_text().strip() == first and len(first) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys._dev_secret.cache_clear()
    assert keys.secret(demo) == first  # read back, not regenerated


def test_form_token_is_bound_to_the_link_and_expires(sub_settings, frozen):
    value = tokens.form_token(sub_settings, "link-a")
    assert tokens.check_form_token(sub_settings, "link-a", value)
    assert not tokens.check_form_token(sub_settings, "link-b", value)
    assert not tokens.check_form_token(sub_settings, "link-a", value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert not tokens.check_form_token(sub_settings, "link-a", "")
    frozen.advance(hours=3)
    assert not tokens.check_form_token(sub_settings, "link-a", value, max_age=2 * 3600)


# -- the store -----------------------------------------------------------------------------

def test_sign_up_confirm_records_status_times_and_consent(engine, sub_settings, frozen):
    start = frozen.now()
    sub, result = sign_up(engine, sub_settings, "  Amy@Example.COM ", name=" Amy 	 Bcc: x@evil.example",
                          topics=["hair-loss", "wellbeing"], frequency="weekly", ip="192.0.2.1")
    assert result.mailed == "confirm" and result.request_id
    assert (sub.email, sub.status, sub.frequency, sub.topics) == ("Amy@example.com", "pending", "weekly",
                                                                   ("hair-loss", "wellbeing"))
    assert sub.name == "Amy Bcc: x@evil.example"  # spaces collapsed (CR/LF are refused: test_headers.py)
    assert sub.pending_at == start and sub.confirmed_at is None
    frozen.advance(minutes=5)
    info, changed = signup.confirm(engine, sub_settings, result.request_id, ip="192.0.2.2")
    assert changed and info.status == "confirmed" and info.confirmed_at == start + timedelta(minutes=5)
    records = store.consent_records(engine, sub.id)
    wording, version = store.consent_wording(sub_settings)
    assert [(r["action"], r["method"], r["ip"]) for r in records] == [("subscribe", "web", "192.0.2.1"),
                                                                      ("confirm", "web", "192.0.2.2")]
    assert all(r["wording"] == wording and r["wording_version"] == version for r in records)
    assert "Klarity Health Library" in wording and "{publication_name}" not in wording
    assert records[1]["detail"] == {"frequency": "weekly", "topics": ["hair-loss", "wellbeing"]}
    # confirming again changes nothing and records nothing
    assert signup.confirm(engine, sub_settings, result.request_id) == (info, False)
    assert len(store.consent_records(engine, sub.id)) == 2


def test_addresses_are_unique_case_insensitively(engine, sub_settings, frozen):
    first, _ = sign_up(engine, sub_settings, "Amy@Example.com")
    frozen.advance(days=2)
    second, again = sign_up(engine, sub_settings, "AMY@EXAMPLE.COM")
    assert first.id == second.id and again.mailed == "confirm"
    assert store.get_by_email(engine, "amy@example.com").id == first.id
    with pytest.raises(SubscriberError, match="already in the store"):
        store.add(engine, sub_settings, "amy@EXAMPLE.com")


@pytest.mark.parametrize("bad, reason", [("", "enter your email address"), ("not-an-address", "needs an @"),
                                         ("a@localhost", "full domain name"), ("a" * 330 + "@x.org", "320")])
def test_invalid_addresses_are_refused(engine, sub_settings, bad, reason):
    with pytest.raises(SubscriberError, match=reason):
        signup.sign_up(engine, sub_settings, bad)
    assert store.counts(engine) == {}


def test_topics_and_frequency_are_validated(engine, sub_settings):
    with pytest.raises(SubscriberError, match="unknown topic 'cancer'"):
        signup.sign_up(engine, sub_settings, "a@example.com", topics=["cancer"])
    with pytest.raises(SubscriberError, match="daily or weekly"):
        signup.sign_up(engine, sub_settings, "a@example.com", frequency="hourly")
    info = store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="yes")
    with pytest.raises(SubscriberError, match="unknown topic"):
        store.update_preferences(engine, sub_settings, info.id, name=None, topics=["x"], frequency="daily")
    assert store.get(engine, info.id).topics == ()


def test_confirmed_subscriber_signing_up_again_is_left_alone(engine, sub_settings, frozen):
    info = store.add(engine, sub_settings, "a@example.com", topics=["wellbeing"], confirmed=True, consent="clinic form")
    frozen.advance(minutes=1)
    _, again = sign_up(engine, sub_settings, "a@example.com", topics=["hair-loss"], name="Mallory")
    assert again.mailed == "already" and again.request_id is None
    assert store.get(engine, info.id) == info  # nobody can change a confirmed person's choices from the form


def test_one_confirmation_email_a_day_per_address(engine, sub_settings, frozen):
    assert signup.sign_up(engine, sub_settings, "a@example.com").mailed == "confirm"
    frozen.advance(hours=23)
    assert signup.sign_up(engine, sub_settings, "A@example.com").mailed == "none"
    frozen.advance(hours=1, seconds=1)
    assert signup.sign_up(engine, sub_settings, "a@example.com").mailed == "confirm"


def test_unsubscribe_is_idempotent_and_suppresses(engine, sub_settings, frozen):
    info = store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="yes")
    frozen.advance(hours=1)
    left = store.unsubscribe(engine, sub_settings, info.id, method="one-click")
    assert left.status == "unsubscribed" and left.unsubscribed_at == frozen.now()
    frozen.advance(hours=1)
    assert store.unsubscribe(engine, sub_settings, info.id, method="one-click").unsubscribed_at == left.unsubscribed_at
    assert [r["action"] for r in store.consent_records(engine, info.id)] == ["subscribe", "unsubscribe"]
    assert store.suppression_reason(engine, sub_settings, "A@example.com") == "unsubscribed"
    assert list(store.recipients(engine, sub_settings, "daily")) == []


def test_old_confirmation_link_cannot_undo_an_unsubscribe(engine, sub_settings, frozen):
    sub, first = sign_up(engine, sub_settings, "a@example.com")
    _, second = sign_up(engine, sub_settings, "a@example.com")  # limited: no request, no link
    assert second.mailed == "none" and second.request_id is None
    signup.confirm(engine, sub_settings, first.request_id)
    store.unsubscribe(engine, sub_settings, sub.id)
    assert signup.confirm(engine, sub_settings, first.request_id)[1] is False  # used: nothing happens
    # a request never confirmed, made before the person left, is refused
    frozen.advance(days=31)
    _, third = sign_up(engine, sub_settings, "a@example.com")
    other, fourth = sign_up(engine, sub_settings, "b@example.com")
    store.unsubscribe(engine, sub_settings, other.id)
    with pytest.raises(SubscriberError, match="no longer valid"):
        signup.confirm(engine, sub_settings, fourth.request_id)
    assert store.get(engine, other.id).status == "unsubscribed"
    assert store.get(engine, sub.id).status == "unsubscribed"


def test_suppressed_address_comes_back_only_by_fresh_double_opt_in(engine, sub_settings):
    info = store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="yes")
    store.unsubscribe(engine, sub_settings, info.id)
    with pytest.raises(SubscriberError, match="suppression list"):
        store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="yes")
    _, again = sign_up(engine, sub_settings, "a@example.com", ip="192.0.2.9", topics=["wellbeing"])
    # the record stays as the person left it (anyone can type an address into the form)
    # and still suppressed: not mailed until the person clicks
    assert store.suppression_reason(engine, sub_settings, "a@example.com") == "unsubscribed"
    assert list(store.recipients(engine, sub_settings, "daily")) == []
    assert again.mailed == "confirm" and store.get(engine, info.id).status == "unsubscribed"
    assert store.get(engine, info.id).topics == ()
    signup.confirm(engine, sub_settings, again.request_id, ip="192.0.2.9")
    assert store.suppression_reason(engine, sub_settings, "a@example.com") is None
    assert [r.email for r in store.recipients(engine, sub_settings, "daily")] == ["a@example.com"]
    # the choices of the sign-up the person confirmed now apply
    assert store.get(engine, info.id).topics == ("wellbeing",)


def test_bounce_and_complaint(engine, sub_settings, frozen):
    a = store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="yes")
    store.add(engine, sub_settings, "b@example.com", confirmed=True, consent="yes")
    assert store.bounce(engine, sub_settings, a.id).bounced_at == frozen.now()
    assert store.complain(engine, sub_settings, "B@example.com").status == "complained"
    # an address we do not hold is still suppressed
    assert store.bounce(engine, sub_settings, "stranger@example.com") is None
    assert [store.suppression_reason(engine, sub_settings, x) for x in
            ("a@example.com", "b@example.com", "stranger@example.com")] == ["bounced", "complained", "bounced"]
    assert list(store.recipients(engine, sub_settings, "daily")) == []


def test_erase_keeps_only_the_suppression_hash(engine, sub_settings):
    sub, request = sign_up(engine, sub_settings, "erase.me@example.com", name="Erin Private",
                           topics=["mental-health"], ip="198.51.100.7")
    signup.confirm(engine, sub_settings, request.request_id, ip="198.51.100.8")
    assert "erase.me" in all_text(engine)  # queued mail, the request
    other = store.add(engine, sub_settings, "keep@example.com", topics=["mental-health"], confirmed=True, consent="y")
    assert rights.erase(engine, sub_settings, sub.id, method="web")
    assert store.get(engine, sub.id) is None
    everything = all_text(engine)
    for personal in ("erase.me", "Erin Private", "198.51.100", "ERASE.ME"):
        assert personal.lower() not in everything.lower()
    with engine.connect() as conn:
        records = conn.execute(select(ConsentRecord.subscriber_id, ConsentRecord.action, ConsentRecord.ip,
                                      ConsentRecord.detail).order_by(ConsentRecord.id)).all()
        topics = conn.execute(select(SubscriberTopic.subscriber_id)).scalars().all()
    # the erased person's rows keep action and time only; the other person's are untouched
    assert [(r.action, r.ip, r.detail) for r in records if r.subscriber_id is None] == [
        ("subscribe", None, None), ("confirm", None, None), ("erase", None, None)]
    assert topics == [other.id]
    assert store.suppression_reason(engine, sub_settings, "Erase.Me@example.com") == "erased"
    assert rights.erase(engine, sub_settings, sub.id) is False  # twice is harmless
    # an erased person can still leave with an old link: nothing to do, no error
    assert store.unsubscribe(engine, sub_settings, sub.id) is None


def test_an_erased_persons_id_is_never_given_to_someone_new(engine, sub_settings):
    first = store.add(engine, sub_settings, "first@example.com", confirmed=True, consent="y")
    old_link = tokens.make_token(SECRET, tokens.UNSUBSCRIBE, first.id)
    rights.erase(engine, sub_settings, first.id)
    second = store.add(engine, sub_settings, "second@example.com", confirmed=True, consent="y")
    assert second.id != first.id
    assert store.unsubscribe(engine, sub_settings, tokens.read_token(SECRET, tokens.UNSUBSCRIBE, old_link)) is None
    assert store.get(engine, second.id).status == "confirmed"


def test_recipients_streams_confirmed_unsuppressed_in_id_order(engine, sub_settings):
    ids = {}
    for i, (freq, topics) in enumerate([("daily", ["hair-loss"]), ("daily", []), ("weekly", ["hair-loss"]),
                                        ("daily", ["hair-loss", "wellbeing"]), ("daily", ["wellbeing"]),
                                        ("daily", ["hair-loss"]), ("daily", [])]):
        ids[i] = store.add(engine, sub_settings, f"p{i}@example.com", topics=topics, frequency=freq,
                           confirmed=True, consent="y").id
    signup.sign_up(engine, sub_settings, "pending@example.com", topics=["hair-loss"])
    store.unsubscribe(engine, sub_settings, ids[6])
    # a confirmed row whose address is on the suppression list (e.g. a bounce recorded by hash) is excluded too
    with engine.begin() as conn:
        conn.execute(Suppression.__table__.insert().values(
            email_hash=tokens.email_hash(sub_settings, "p5@example.com"), reason="bounced", at=store.clock.now()))
    daily = [r.id for r in store.recipients(engine, sub_settings, "daily", chunk=2)]
    assert daily == [ids[0], ids[1], ids[3], ids[4]]
    assert [r.email for r in store.recipients(engine, sub_settings, "daily", topic="hair-loss", chunk=1)] == [
        "p0@example.com", "p3@example.com"]
    assert [r.id for r in store.recipients(engine, sub_settings, "weekly")] == [ids[2]]
    with pytest.raises(SubscriberError, match="unknown topic"):
        list(store.recipients(engine, sub_settings, "daily", topic="cancer"))


def test_preferences_update_and_export(engine, sub_settings, frozen):
    sub, request = sign_up(engine, sub_settings, "a@example.com", name="A", topics=["wellbeing"], ip="192.0.2.1")
    signup.confirm(engine, sub_settings, request.request_id)
    frozen.advance(days=1)
    info, changed = store.update_preferences(engine, sub_settings, sub.id, name="  Ann  ", topics=["skin-care", "hair-loss"],
                                    frequency="weekly", ip="192.0.2.3")
    assert (info.name, info.topics, info.frequency, info.updated_at) == ("Ann", ("hair-loss", "skin-care"), "weekly",
                                                                         frozen.now())
    data = rights.export_data(engine, sub_settings, sub.id)
    json.dumps(data)  # JSON-ready
    assert data["subscriber"]["email"] == "a@example.com" and data["subscriber"]["status"] == "confirmed"
    assert data["topics"] == [{"id": "hair-loss", "name": "Hair loss"}, {"id": "skin-care", "name": "Skin care and treatments"}]
    assert [r["action"] for r in data["consent_records"]] == ["subscribe", "confirm", "preferences"]
    assert data["consent_records"][2]["ip"] == "192.0.2.3"
    assert rights.export_data(engine, sub_settings, 999) is None


def test_import_rows_adds_updates_and_skips_suppressed(engine, sub_settings, frozen):
    confirmed = store.add(engine, sub_settings, "conf@example.com", name="Old", topics=["wellbeing"],
                          confirmed=True, consent="y")
    pending, _ = sign_up(engine, sub_settings, "pend@example.com")
    left = store.add(engine, sub_settings, "left@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, sub_settings, left.id)
    frozen.advance(days=1)

    def row(line, email, **kw):
        address, key = store.normalise_email(email)
        values = dict(name=None, topics=None, frequency=None, consent="Ticked at the clinic", consent_version="v2",
                      consented_at=None)
        values.update(kw)
        return store.ImportRow(line=line, email=address, email_key=key, **values)

    outcome = store.import_rows(engine, sub_settings, [
        row(2, "new@example.com", name="New", topics=("hair-loss",), frequency="weekly"),
        row(3, "conf@example.com", topics=("skin-care",)),
        row(4, "pend@example.com", name="Pen"),
        row(5, "left@example.com"),
    ])
    assert (outcome.added, outcome.updated) == (1, 2)
    assert outcome.skipped == ((5, "left@example.com is suppressed (unsubscribed); not re-subscribed"),)
    new = store.get_by_email(engine, "new@example.com")
    assert (new.status, new.name, new.topics, new.frequency) == ("confirmed", "New", ("hair-loss",), "weekly")
    conf = store.get(engine, confirmed.id)
    assert (conf.name, conf.topics, conf.confirmed_at) == ("Old", ("skin-care",), confirmed.confirmed_at)
    pend = store.get(engine, pending.id)
    assert (pend.status, pend.name, pend.confirmed_at) == ("confirmed", "Pen", frozen.now())
    assert store.get(engine, left.id).status == "unsubscribed"
    record = store.consent_records(engine, new.id)[-1]
    assert (record["action"], record["method"], record["wording"], record["wording_version"]) == (
        "import", "import", "Ticked at the clinic", "v2")


def test_rehash_after_the_secret_changes(engine, sub_settings):
    a = store.add(engine, sub_settings, "a@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, sub_settings, a.id)
    rotated = sub_settings.replace(secret_key="a-new-secret-for-rotation-tests")
    assert store.suppression_reason(engine, rotated, "a@example.com") is None  # the old hash no longer matches
    assert store.rehash(engine, rotated) == 1
    assert store.suppression_reason(engine, rotated, "a@example.com") == "unsubscribed"


def test_schema_on_this_database(engine):
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        columns = {c["name"] for c in inspect(conn).get_columns("subscribers")}
    assert {"subscribers", "subscriber_topics", "consent_records", "suppressions"} <= names
    assert {"email_hash", "pending_at", "confirm_sent_at"} <= columns
    assert Subscriber.__table__.c.keys() and set(Subscriber.__table__.c.keys()) == columns


def test_erase_also_clears_the_address_from_the_send_ledger(engine, sub_settings, tmp_path, frozen):
    from fixtures_delivery import small_rendered
    from pipeline.delivery.deliver import send_issue

    sub = store.add(engine, sub_settings, "ledger.person@example.com", name="Lee Ledger", confirmed=True, consent="y")
    settings = sub_settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"))
    summary = send_issue(engine, settings, small_rendered(), progress=False)
    assert summary.sent == 1
    assert "ledger.person" in all_text(engine)  # the ledger snapshot exists before erasure
    # the right of access covers the emails sent, too
    (sent,) = rights.export_data(engine, sub_settings, sub.id)["emails_sent"]
    assert sent["issue"] == "2026-03-02" and sent["state"] == "sent" and sent["message_id"]
    assert rights.erase(engine, sub_settings, sub.id)
    assert "ledger.person" not in all_text(engine).lower()


def test_an_internationalised_domain_is_kept_in_its_wire_form_and_is_one_address(engine, sub_settings):
    """Found by two nodes' sign-up test: a valid address at an IDN domain made the confirmation's To header fail
    (a server error). It is stored in the IDNA form headers and RCPT TO carry, so both spellings are one person."""
    info, _ = sign_up(engine, sub_settings, "Zoe.OHara@Bücher.Example")
    assert info.email == "Zoe.OHara@xn--bcher-kva.example"
    again, _ = sign_up(engine, sub_settings, "zoe.ohara@xn--BCHER-kva.example")
    assert again.id == info.id
    with pytest.raises(SubscriberError):
        sign_up(engine, sub_settings, "zoë@example.org")  # a non-ASCII local part needs SMTPUTF8
