"""The web service in process (Starlette's TestClient): every page, every bad input."""
from __future__ import annotations

import json
from datetime import timedelta
import re
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from bs4 import BeautifulSoup
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import create_engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2
    from starlette.testclient import TestClient

from pipeline import web
from pipeline.database import open_database
from pipeline.errors import DeliveryError
from pipeline.privacy import access
from subscribers import mailqueue, signup, store, tokens

from fixtures_subscribers import CONSENT, SECRET, html_part, link, outbox_messages, subscriber_settings, text_part
from pipeline.privacy import rights

BASE = "http://testserver"


@pytest.fixture
def wsettings(settings, tmp_path):
    return subscriber_settings(settings, tmp_path, base_url=BASE, database_url=f"sqlite:///{tmp_path / 'web.db'}")


@pytest.fixture
def engine(wsettings):
    return open_database(wsettings.database_url)


@pytest.fixture
def client(wsettings, engine):
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=1000)) as c:
        yield c


def path_of(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE, url
    return parts.path


def soup(response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def h1(response) -> str:
    return soup(response).h1.get_text(strip=True)


def hidden(response, form_id: str) -> dict:
    form = soup(response).find("form", id=form_id)
    return {i["name"]: i.get("value", "") for i in form.find_all("input", attrs={"type": "hidden"})}


def sign_up(client, email="amy@example.com", **extra):
    """As a browser does it: load the form (its CSRF token and cookie), then post it."""
    data = {"email": email, "name": "Amy", "topics": ["hair-loss", "wellbeing"], "frequency": "weekly", **CONSENT,
            **hidden(client.get("/subscribe"), "subscribe")}
    data.update(extra)
    return client.post("/subscribe", data=data)


def confirmed_subscriber(client, wsettings, engine, email="amy@example.com") -> store.SubscriberInfo:
    sign_up(client, email)
    confirm = [m for m in outbox_messages(wsettings) if m["To"].addresses[0].addr_spec == email][-1]
    assert client.post(path_of(link(confirm, "confirm"))).status_code == 200
    return store.get_by_email(engine, email)


def preferences_path(wsettings, sid: int) -> str:
    return path_of(tokens.preferences_url(wsettings, sid))


def unsubscribe_path(wsettings, sid: int) -> str:
    return path_of(tokens.unsubscribe_url(wsettings, sid))


# -- sign-up -----------------------------------------------------------------------------

def test_subscribe_form_has_every_field_and_the_consent_wording(client, wsettings):
    response = client.get("/subscribe")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = soup(response)
    form = page.find("form", id="subscribe")
    assert form["method"] == "post" and form["action"] == BASE + "/subscribe"  # from base_url
    assert form.find("input", attrs={"name": "email"})["type"] == "email"
    assert form.find("input", attrs={"name": "name"})
    assert sorted(i["value"] for i in form.find_all("input", attrs={"name": "topics"})) == sorted(wsettings.topics)
    assert [i["value"] for i in form.find_all("input", attrs={"name": "frequency"})] == ["daily", "weekly"]
    consent = form.find("input", attrs={"name": "consent"})
    assert consent["type"] == "checkbox" and consent.has_attr("required")
    wording, version = store.consent_wording(wsettings)
    assert page.find(id="wording").get_text() == wording
    assert form.find("input", attrs={"name": "consent_version"})["value"] == version
    for spec in wsettings.topics.values():
        assert spec["name"] in response.text
    assert page.find("script") is None and page.find(attrs={"onclick": True}) is None


def test_security_headers_everywhere(client):
    for path in ["/subscribe", "/healthz", "/confirm/forged", "/nothing-here", "/unsubscribe/x"]:
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp or "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert headers["x-content-type-options"] == "nosniff"
        # the sign-up form's own page sends its origin back with the post (the Origin check needs it)
        assert headers["referrer-policy"] == ("same-origin" if path == "/subscribe" else "no-referrer")


def test_sign_up_sends_a_confirmation_email_and_makes_a_pending_subscriber(client, wsettings, engine):
    response = sign_up(client)
    assert response.status_code == 200 and h1(response) == "Check your inbox"
    info = store.get_by_email(engine, "amy@example.com")
    assert (info.status, info.frequency, info.topics, info.name) == ("pending", "weekly", ("hair-loss", "wellbeing"),
                                                                     "Amy")
    (message,) = outbox_messages(wsettings)
    assert message["Subject"] == "Please confirm your subscription to Klarity Health Library"
    assert message["To"].addresses[0].addr_spec == "amy@example.com"
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"].endswith("@my.klarity.health>")
    url = link(message, "confirm")
    assert url in html_part(message) and url.startswith(BASE + "/confirm/")
    wording, version = store.consent_wording(wsettings)
    assert wording in " ".join(text_part(message).split()) and version in text_part(message)
    record = store.consent_records(engine, info.id)[0]
    assert (record["action"], record["method"], record["ip"], record["wording_version"]) == (
        "subscribe", "web", "testclient", version)


def test_no_topic_ever_shows_in_headers_subjects_or_links(client, wsettings, engine):
    sign_up(client, topics=list(wsettings.topics))
    client.post(path_of(link(outbox_messages(wsettings)[0], "confirm")))
    messages = outbox_messages(wsettings)
    assert [m["Subject"] for m in messages][-1] == "Welcome to Klarity Health Library"
    words = set()
    for topic_id, spec in wsettings.topics.items():
        words |= {topic_id.lower(), spec["name"].lower()} | {w.lower() for w in re.findall(r"[A-Za-z]{5,}", spec["name"])}
    # plain words that say nothing about anyone's health (and the publication's own name)
    words -= {"treatments", "everyday", "health", "library"}
    for message in messages:
        headers = " ".join(f"{k}: {v}" for k, v in message.items()).lower()
        urls = " ".join(re.findall(r"https?://\S+", text_part(message) + html_part(message))).lower()
        for word in words:
            assert word not in headers and word not in urls, (word, message["Subject"])
        # the body does not list them either (bodies show in previews and on shared screens)
        for spec in wsettings.topics.values():
            assert spec["name"].lower() not in text_part(message).lower()


def test_the_answer_is_the_same_whoever_the_address_belongs_to(client, wsettings, engine, frozen):
    confirmed_subscriber(client, wsettings, engine, "known@example.com")
    frozen.advance(days=1, minutes=1)  # past the one-a-day limit of the confirmation email
    left = store.add(engine, wsettings, "left@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, wsettings, left.id)
    signup.sign_up(engine, wsettings, "pending@example.com")
    bodies = {email: sign_up(client, email).text for email in
              ["new@example.com", "known@example.com", "left@example.com", "pending@example.com"]}
    statuses = {sign_up(client, email).status_code for email in bodies}
    assert len(set(bodies.values())) == 1 and statuses == {200}
    # the confirmed person got a note with their preferences link, not a new confirmation
    note = [m for m in outbox_messages(wsettings) if m["Subject"].startswith("You are already subscribed")]
    assert len(note) == 1 and note[0]["To"].addresses[0].addr_spec == "known@example.com"
    assert "/preferences/" in text_part(note[0]) and "/confirm/" not in text_part(note[0])
    assert store.get_by_email(engine, "known@example.com").status == "confirmed"


@pytest.mark.parametrize("name", ["Eve\r\nBcc: victim@example.com\r\nX-Evil: 1", "Eve\u2028X-Evil: 1",
                                  "=?utf-8?b?RXZlDQpSZXBseS1UbzogYUBldmlsLmV4YW1wbGU=?="])
def test_a_name_that_could_add_a_header_is_refused(client, wsettings, engine, name):
    response = sign_up(client, "eve@example.com", name=name)
    assert response.status_code == 400
    assert "name" in soup(response).find(id="error").get_text().lower()
    assert store.counts(engine) == {} and outbox_messages(wsettings) == []


def test_a_unicode_name_signs_up_and_the_confirmation_names_nobody(client, wsettings, engine):
    sign_up(client, "zoe@example.com", name="Zoë O’Brien 山田 😀")
    assert store.get_by_email(engine, "zoe@example.com").name == "Zoë O’Brien 山田 😀"
    (message,) = outbox_messages(wsettings)
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [("", "zoe@example.com")]
    assert "Zoë" not in text_part(message) and "Zoë" not in html_part(message)


@pytest.mark.parametrize("changes, error", [
    ({"email": "not-an-address"}, "that email address looks incomplete"),
    ({"email": ""}, "enter your email address"),
    ({"consent": ""}, "tick the box"),
    ({"consent_version": "1999-01-01"}, "wording has changed"),
    ({"topics": ["cancer"]}, "unknown topic"),
    ({"frequency": "hourly"}, "daily or weekly"),
    ({"name": "x" * 101}, "longer than 100"),
])
def test_bad_sign_up_input_gets_the_form_back_with_the_reason(client, wsettings, engine, changes, error):
    response = sign_up(client, **changes)
    assert response.status_code == 400
    page = soup(response)
    assert error.lower() in page.find(id="error").get_text().lower()
    if changes.get("email", "amy@example.com"):
        assert page.find("input", attrs={"name": "email"})["value"] == changes.get("email", "amy@example.com")
    assert store.counts(engine) == {} and outbox_messages(wsettings) == []


def test_an_address_we_cannot_mail_is_refused_not_a_server_error(wsettings, engine):
    # A non-ASCII local part needs SMTPUTF8, which our messages and transport do not
    # speak: the confirmation email could not be built (a 500, with a pending row left).
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=1000), raise_server_exceptions=False) as c:
        response = sign_up(c, "josé@example.com")
    assert response.status_code == 400
    assert "before the @" in soup(response).find(id="error").get_text()
    assert store.counts(engine) == {} and outbox_messages(wsettings) == []


def test_sign_up_is_rate_limited_per_ip(wsettings, engine):
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=2)) as c:
        assert [sign_up(c, f"p{i}@example.com").status_code for i in range(3)] == [200, 200, 429]
        limited = sign_up(c, "p9@example.com")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
        assert h1(limited) == "Too many requests"
        assert c.get("/subscribe").status_code == 200  # reading the form is never limited
    assert store.get_by_email(engine, "p9@example.com") is None


def test_a_relay_failure_keeps_the_mail_queued_and_a_later_pass_sends_it(wsettings, engine):
    def broken(settings, message):
        raise DeliveryError("relay down")

    with TestClient(web.create_app(wsettings, engine, send=broken)) as c:
        response = sign_up(c)
        assert response.status_code == 200 and h1(response) == "Check your inbox"
        mailqueue.drain(engine, wsettings, send=broken)
    assert mailqueue.counts(engine) == {"queued": 1}
    assert "relay down" in mailqueue.status_line(engine) and "1 waiting" in mailqueue.status_line(engine)
    with TestClient(web.create_app(wsettings, engine)):
        pass
    engine_rows = mailqueue.counts(engine)
    assert engine_rows == {"queued": 1}  # not due yet: it waits out its backoff
    from pipeline.clock import frozen_clock, now
    with frozen_clock(now() + timedelta(minutes=5)):
        assert len(outbox_messages(wsettings)) == 1
    assert mailqueue.counts(engine) == {"sent": 1} and mailqueue.pending(engine) == 0
    assert len(outbox_messages(wsettings)) == 1  # exactly once


# -- confirmation --------------------------------------------------------------------------

def test_confirm_sends_a_welcome_with_the_latest_issue(client, wsettings, engine):
    issues = wsettings.public_dir + "/issues"
    for key in ["2026-02-27", "2026-03-02", "2026-03-01"]:
        folder = Path(issues) / key
        folder.mkdir(parents=True)
        (folder / "issue.json").write_text(json.dumps({"key": key}))
    sign_up(client)
    response = client.post(path_of(link(outbox_messages(wsettings)[0], "confirm")))
    assert response.status_code == 200 and h1(response) == "You are subscribed"
    assert response.headers["cache-control"] == "no-store"
    info = store.get_by_email(engine, "amy@example.com")
    assert info.status == "confirmed"
    assert [r["action"] for r in store.consent_records(engine, info.id)] == ["subscribe", "confirm"]
    welcome = outbox_messages(wsettings)[-1]
    assert welcome["Subject"] == "Welcome to Klarity Health Library"
    assert f"{BASE}/issues/2026-03-02/" in text_part(welcome)
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.search(r"<(https?://[^>]+)>", welcome["List-Unsubscribe"]).group(1)
    assert tokens.read_token(SECRET, tokens.UNSUBSCRIBE, unsubscribe.rsplit("/", 1)[1]) == info.id
    assert "<mailto:unsubscribe@my.klarity.health>" in welcome["List-Unsubscribe"]
    # the page links to the preferences
    prefs = [a["href"] for a in soup(response).find_all("a") if "/preferences/" in a["href"]]
    assert prefs == [tokens.preferences_url(wsettings, info.id)]


def test_confirming_twice_sends_one_welcome_and_get_and_head_change_nothing(client, wsettings, engine):
    sign_up(client)
    path = path_of(link(outbox_messages(wsettings)[0], "confirm"))
    assert client.head(path).status_code == 200 and client.get(path).status_code == 200
    assert store.get_by_email(engine, "amy@example.com").status == "pending"
    assert h1(client.post(path)) == "You are subscribed"
    again = client.post(path)
    assert again.status_code == 200 and h1(again) == "You are subscribed"
    assert [m["Subject"] for m in outbox_messages(wsettings)].count("Welcome to Klarity Health Library") == 1
    info = store.get_by_email(engine, "amy@example.com")
    assert [r["action"] for r in store.consent_records(engine, info.id)] == ["subscribe", "confirm"]
    # without any issue published, the welcome links to the archive
    assert f"{BASE}/\n" in text_part(outbox_messages(wsettings)[-1])


def test_expired_forged_and_misused_confirm_links_change_nothing(client, wsettings, engine, frozen):
    sign_up(client)
    good = path_of(link(outbox_messages(wsettings)[0], "confirm"))
    sid = store.get_by_email(engine, "amy@example.com").id
    token = good.rsplit("/", 1)[1]
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for bad in [f"/confirm/{flipped}", "/confirm/forged", "/confirm/" + "A" * 39,
                "/confirm/" + tokens.make_token(SECRET, tokens.UNSUBSCRIBE, sid),
                "/confirm/" + tokens.make_token(SECRET, "confirm", sid),  # the old kind, naming a subscriber
                "/confirm/" + tokens.make_token(SECRET, tokens.CONFIRM, 999),
                "/confirm/" + tokens.make_token("another-secret", tokens.CONFIRM, sid)]:
        for method in ("GET", "POST"):
            response = client.request(method, bad)
            assert response.status_code == 400 and h1(response) == "This link does not work", bad
            assert "Nothing has been changed" in response.text
    frozen.advance(days=7, seconds=1)
    expired = client.post(good)
    assert expired.status_code == 400 and "expired" in expired.text
    assert store.get(engine, sid).status == "pending"
    assert len(outbox_messages(wsettings)) == 1  # no welcome


# -- unsubscribe -----------------------------------------------------------------------------

GMAIL_ONE_CLICK_HEADERS = {
    # what Gmail's servers send (RFC 8058 section 3.1): no cookies, no Referer, no login
    "Content-Type": "application/x-www-form-urlencoded",
    "User-Agent": "Mozilla/5.0 (compatible; Google-Unsubscribe)",
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate, br",
}


def test_unsubscribe_page_has_one_button(client, wsettings, engine):
    info = confirmed_subscriber(client, wsettings, engine)
    response = client.get(unsubscribe_path(wsettings, info.id))
    assert response.status_code == 200
    page = soup(response)
    assert len(page.find_all("button")) == 1 and len(page.find_all("form")) == 1
    assert page.form["method"] == "post"
    assert store.get(engine, info.id).status == "confirmed"  # a GET (or a link scanner) changes nothing


def test_one_click_exactly_as_gmail_sends_it(client, wsettings, engine, frozen):
    info = confirmed_subscriber(client, wsettings, engine)
    path = unsubscribe_path(wsettings, info.id)
    client.cookies.clear()
    response = client.post(path, content=b"List-Unsubscribe=One-Click", headers=GMAIL_ONE_CLICK_HEADERS,
                           follow_redirects=False)
    assert response.status_code == 200 and "location" not in response.headers
    left = store.get(engine, info.id)
    assert left.status == "unsubscribed" and left.unsubscribed_at == frozen.now()
    assert store.consent_records(engine, info.id)[-1]["method"] == "one-click"
    # repeated, and in the multipart form some providers use: still 200, nothing new recorded
    frozen.advance(minutes=5)
    again = client.post(path, files={"List-Unsubscribe": (None, "One-Click")}, follow_redirects=False)
    assert again.status_code == 200
    assert again.request.headers["content-type"].startswith("multipart/form-data")
    assert store.get(engine, info.id).unsubscribed_at == left.unsubscribed_at
    assert [r["action"] for r in store.consent_records(engine, info.id)].count("unsubscribe") == 1
    assert store.suppression_reason(engine, wsettings, "amy@example.com") == "unsubscribed"


def test_unsubscribe_button_and_odd_bodies(client, wsettings, engine):
    a = store.add(engine, wsettings, "a@example.com", confirmed=True, consent="y")
    b = store.add(engine, wsettings, "b@example.com", confirmed=True, consent="y")
    page = soup(client.get(unsubscribe_path(wsettings, a.id)))
    fields = {i["name"]: i["value"] for i in page.form.find_all("input")}
    assert client.post(unsubscribe_path(wsettings, a.id), data=fields).status_code == 200
    assert store.get(engine, a.id).status == "unsubscribed"
    # a POST with no body, or a body that is not a form, still unsubscribes (the URL is the proof)
    response = client.post(unsubscribe_path(wsettings, b.id), content=b"\xff\xfe garbage",
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 200 and store.get(engine, b.id).status == "unsubscribed"
    assert store.consent_records(engine, b.id)[-1]["method"] == "web"


def test_bad_unsubscribe_links_are_400_and_erased_people_get_200(client, wsettings, engine):
    info = store.add(engine, wsettings, "a@example.com", confirmed=True, consent="y")
    for path in ["/unsubscribe/forged", "/unsubscribe/" + tokens.make_token(SECRET, tokens.PREFERENCES, info.id)]:
        for method in ("GET", "POST"):
            response = client.request(method, path, content=b"List-Unsubscribe=One-Click",
                                      headers=GMAIL_ONE_CLICK_HEADERS)
            assert response.status_code == 400
    assert store.get(engine, info.id).status == "confirmed"
    rights.erase(engine, wsettings, info.id)
    gone = client.post(unsubscribe_path(wsettings, info.id), content=b"List-Unsubscribe=One-Click",
                       headers=GMAIL_ONE_CLICK_HEADERS)
    assert gone.status_code == 200 and "We hold no subscription" in gone.text


# -- preferences, export, erase -----------------------------------------------------------------

def csrf_of(response) -> str:
    return soup(response).find("form", id="preferences").find("input", attrs={"name": "csrf"})["value"]


def test_preferences_change_with_csrf(client, wsettings, engine):
    info = confirmed_subscriber(client, wsettings, engine)
    path = preferences_path(wsettings, info.id)
    page = client.get(path)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    form = soup(page).find("form", id="preferences")
    assert form["action"] == BASE + path
    assert sorted(i["value"] for i in form.find_all("input", attrs={"name": "topics"}) if i.has_attr("checked")) == [
        "hair-loss", "wellbeing"]
    # a newly chosen topic is health data: without its own tick nothing is saved
    refused = client.post(path, data={"csrf": csrf_of(page), "name": "Amy B", "topics": ["skin-care"],
                                      "frequency": "daily"})
    assert refused.status_code == 400 and "new topic" in soup(refused).find(id="error").get_text()
    assert store.get(engine, info.id).topics == ("hair-loss", "wellbeing")
    assert soup(refused).find("input", id="topics_consent") is not None
    response = client.post(path, data={"csrf": csrf_of(page), "name": "Amy B", "topics": ["skin-care"],
                                       "topics_consent": "yes", "frequency": "daily"})
    assert response.status_code == 200 and soup(response).find(id="notice")
    now = store.get(engine, info.id)
    assert (now.name, now.topics, now.frequency) == ("Amy B", ("skin-care",), "daily")
    record = store.consent_records(engine, info.id)[-1]
    wording = store.topics_consent_wording(wsettings)
    assert (record["action"], record["detail"]) == ("preferences", {"frequency": "daily", "topics": ["skin-care"],
                                                                    "topics_consent": wording})
    assert record["wording"].endswith(wording)
    # dropping a topic needs no new consent
    dropped = client.post(path, data={"csrf": csrf_of(page), "name": "Amy B", "frequency": "daily"})
    assert dropped.status_code == 200 and store.get(engine, info.id).topics == ()


def test_preferences_refuse_missing_foreign_and_stale_csrf(client, wsettings, engine, frozen):
    info = confirmed_subscriber(client, wsettings, engine)
    other = store.add(engine, wsettings, "other@example.com", confirmed=True, consent="y")
    path = preferences_path(wsettings, info.id)
    foreign = csrf_of(client.get(preferences_path(wsettings, other.id)))
    fresh = csrf_of(client.get(path))
    for csrf in ["", "123.abc", foreign, fresh[:-2] + "00"]:
        response = client.post(path, data={"csrf": csrf, "name": "Mallory", "frequency": "daily"})
        assert response.status_code == 400 and "expired" in soup(response).find(id="error").get_text()
    frozen.advance(hours=2, seconds=1)
    assert client.post(path, data={"csrf": fresh, "name": "Mallory", "frequency": "daily"}).status_code == 400
    assert store.get(engine, info.id).name == "Amy"
    response = client.post(path, data={"csrf": csrf_of(client.get(path)), "topics": ["nope"], "frequency": "daily"})
    assert response.status_code == 400 and "unknown topic" in response.text
    assert store.get(engine, info.id).topics == ("hair-loss", "wellbeing")


def data_link_path(client, wsettings, info) -> str:
    """Ask for the one-time link on the preferences page; the path of the link emailed."""
    page = client.get(preferences_path(wsettings, info.id))
    client.post(path_of(soup(page).find("form", id="data-link")["action"]), data=hidden(page, "data-link"))
    mail = [m for m in outbox_messages(wsettings) if "/data/" in text_part(m)][-1]
    assert mail["To"].addresses[0].addr_spec == info.email
    return path_of(link(mail, "data"))


def test_export_downloads_everything_held(client, wsettings, engine):
    info = confirmed_subscriber(client, wsettings, engine)
    path = data_link_path(client, wsettings, info)
    page = client.get(path)
    assert soup(page).find("form", id="export")["action"] == BASE + path + "/export"
    response = client.post(path + "/export", data=hidden(page, "export"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="newsletter-data.json"'
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["subscriber"]["email"] == "amy@example.com" and data["subscriber"]["name"] == "Amy"
    assert [t["id"] for t in data["topics"]] == ["hair-loss", "wellbeing"]
    assert [r["action"] for r in data["consent_records"]] == ["subscribe", "confirm"]
    assert data["consent_records"][0]["ip"] == "testclient"


def test_erase_with_a_one_time_link(client, wsettings, engine):
    info = confirmed_subscriber(client, wsettings, engine)
    path = data_link_path(client, wsettings, info)
    page = client.get(path)
    erase_form = soup(page).find("form", id="erase")
    assert erase_form["action"] == BASE + path + "/erase"
    refused = client.post(path + "/erase", data=hidden(page, "erase"))
    assert refused.status_code == 400 and store.get(engine, info.id) is not None
    assert client.post(path + "/erase", data={"csrf": "", "confirm": "yes"}).status_code == 400
    done = client.post(path + "/erase", data={**hidden(page, "erase"), "confirm": "yes"})
    assert done.status_code == 200 and h1(done) == "Your data has been deleted"
    assert store.get(engine, info.id) is None
    assert store.suppression_reason(engine, wsettings, "amy@example.com") == "erased"
    prefs = preferences_path(wsettings, info.id)
    assert client.get(prefs).status_code == 404
    for method, suffix in [("GET", ""), ("POST", "/export"), ("POST", "/erase")]:
        assert client.request(method, path + suffix).status_code == 400


def test_forged_preferences_and_data_links(client, wsettings, engine):
    info = store.add(engine, wsettings, "a@example.com", confirmed=True, consent="y")
    wrong_purpose = "/preferences/" + tokens.make_token(SECRET, tokens.UNSUBSCRIBE, info.id)
    for path in ["/preferences/forged", wrong_purpose]:
        assert client.get(path).status_code == 400
    assert client.post(wrong_purpose + "/data-link", data={"csrf": "x"}).status_code == 400
    # a data token needs a link row: a subscriber id, or another purpose's token, is refused
    for token in [tokens.make_token(SECRET, tokens.DATA, info.id), tokens.make_token(SECRET, tokens.PREFERENCES, 1)]:
        assert client.get(f"/data/{token}").status_code == 400
        assert client.post(f"/data/{token}/erase", data={"confirm": "yes"}).status_code == 400
    assert store.get(engine, info.id) is not None


# -- operations, fallback --------------------------------------------------------------------------

def test_health_and_readiness(client, wsettings, tmp_path):
    assert (client.get("/healthz").status_code, client.get("/healthz").text) == (200, "ok")
    assert (client.get("/readyz").status_code, client.get("/readyz").text) == (200, "ready")
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'folder' / 'x.db'}")
    with TestClient(web.create_app(wsettings, broken)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503


def test_everything_else_is_served_from_public(client, wsettings):
    public = Path(wsettings.public_dir)
    public.mkdir(parents=True, exist_ok=True)
    (public / "index.html").write_text("<!DOCTYPE html><title>Archive</title><h1>Archive</h1>")
    response = client.get("/")
    assert response.status_code == 200 and h1(response) == "Archive" and response.headers["etag"]
    assert client.get("/", headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    assert client.get("/no/such/page").status_code == 404
    assert client.post("/no/such/page").status_code == 405
    assert client.put("/subscribe").status_code == 405


def test_missing_secret_stops_the_app_at_start(wsettings, engine):
    with pytest.raises(Exception, match="NEWSLETTER_SECRET"):
        web.create_app(wsettings.replace(secret_key="", transport="smtp"), engine)


# -- property: nothing is a server error -------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
SEGMENT = st.one_of(st.text(min_size=0, max_size=60),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=38,
                            max_size=40))
CONTENT_TYPES = st.sampled_from([None, "application/x-www-form-urlencoded", "multipart/form-data",
                                 "multipart/form-data; boundary=----x", "application/json", "text/plain",
                                 "multipart/form-data; boundary=", "application/x-www-form-urlencoded; charset=latin-1"])
BODIES = st.one_of(st.binary(max_size=400), st.just(b"List-Unsubscribe=One-Click"),
                   st.builds(lambda a, b: f"email={a}&consent=yes&consent_version={b}&topics={a}".encode(),
                             st.text(max_size=40), st.text(max_size=20)),
                   st.builds(lambda v: b"------x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n" + v
                             + b"\r\n------x--\r\n", st.binary(max_size=60)))


@pytest.fixture
def fuzz_app(wsettings, engine):
    info = store.add(engine, wsettings, "fuzz@example.com", confirmed=True, consent="y")
    valid = {purpose: tokens.make_token(SECRET, purpose, info.id)
             for purpose in (tokens.CONFIRM, tokens.UNSUBSCRIBE, tokens.PREFERENCES, tokens.DATA)}
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=0)) as c:
        yield c, valid


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, route=st.sampled_from(["/subscribe", "/confirm/{}", "/unsubscribe/{}", "/preferences/{}",
                                              "/preferences/{}/data-link", "/data/{}", "/data/{}/export",
                                              "/data/{}/erase", "/healthz",
                                              "/readyz", "/{}", "/{}/{}"]),
       segment=SEGMENT, use_valid=st.booleans(), content_type=CONTENT_TYPES, body=BODIES)
def test_random_requests_never_get_a_server_error(fuzz_app, method, route, segment, use_valid, content_type, body):
    client, valid = fuzz_app
    if use_valid and "{}" in route:
        purpose = route.split("/")[1]
        segment = valid.get(purpose, segment)
    path = route.replace("{}", quote(segment, safe=""))  # any text reaches the app, percent-encoded
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.request(method, path, content=body if method not in ("GET", "HEAD") else None,
                              headers=headers)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
