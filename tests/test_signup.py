"""Sign-up integrity, one-time data links and consent records (issue 10, sections 3, 7 and 8),
in process with Starlette's TestClient; mail is read from the outbox once the queue has drained."""
from __future__ import annotations

import re
import warnings
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from pipeline import web
from pipeline.database import open_database
from subscribers import store, tokens

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


def soup(response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def h1(response) -> str:
    return soup(response).h1.get_text(strip=True)


def path_of(url: str) -> str:
    return urlsplit(url).path


def form_fields(response, form_id: str) -> dict:
    form = soup(response).find("form", id=form_id)
    return {i["name"]: i.get("value", "") for i in form.find_all("input", attrs={"type": "hidden"})}


def sign_up(client, email="amy@example.com", **extra):
    """The form as a browser fills it: GET (csrf and its cookie), then POST."""
    data = {"email": email, "name": "Amy", "topics": ["hair-loss", "wellbeing"], "frequency": "weekly", **CONSENT,
            **form_fields(client.get("/subscribe"), "subscribe")}
    data.update(extra)
    return client.post("/subscribe", data=data)


def mails_to(wsettings, email):
    return [m for m in outbox_messages(wsettings) if m["To"].addresses[0].addr_spec == email]


def confirm_via_button(client, url):
    page = client.get(path_of(url))
    form = soup(page).find("form", id="confirm")
    return client.post(path_of(form["action"]), data=form_fields(page, "confirm"))


# -- section 3: sign-up integrity ---------------------------------------------------------------

def test_a_stranger_cannot_rewrite_a_pending_sign_up(client, wsettings, engine, frozen):
    sign_up(client, topics=["wellbeing"], frequency="weekly", name="Amy")
    (victims,) = mails_to(wsettings, "amy@example.com")
    frozen.advance(minutes=30)
    stranger = sign_up(client, topics=["mental-health", "hair-loss"], frequency="daily", name="Mallory")
    assert stranger.status_code == 200 and h1(stranger) == "Check your inbox"
    info = store.get_by_email(engine, "amy@example.com")
    assert (info.name, info.frequency, info.topics) == ("Amy", "weekly", ("wellbeing",))
    assert len(mails_to(wsettings, "amy@example.com")) == 1  # at most one confirmation a day per address
    confirm_via_button(client, link(victims, "confirm"))
    info = store.get_by_email(engine, "amy@example.com")
    assert (info.status, info.name, info.frequency, info.topics) == ("confirmed", "Amy", "weekly", ("wellbeing",))
    confirm = [r for r in store.consent_records(engine, info.id) if r["action"] == "confirm"]
    assert [r["detail"] for r in confirm] == [{"frequency": "weekly", "topics": ["wellbeing"]}]


def test_a_later_request_is_a_new_request_with_its_own_link(client, wsettings, engine, frozen):
    sign_up(client, topics=["wellbeing"], frequency="weekly")
    frozen.advance(days=1, minutes=1)
    sign_up(client, topics=["skin-care"], frequency="daily")
    first, second = mails_to(wsettings, "amy@example.com")
    assert link(first, "confirm") != link(second, "confirm")
    confirm_via_button(client, link(second, "confirm"))
    assert store.get_by_email(engine, "amy@example.com").topics == ("skin-care",)
    # the older link confirms only its own request, and the person is already subscribed
    assert h1(client.get(path_of(link(first, "confirm")))) == "You are subscribed"
    answer = client.post(path_of(link(first, "confirm")))
    assert answer.status_code == 200
    info = store.get_by_email(engine, "amy@example.com")
    assert (info.frequency, info.topics) == ("daily", ("skin-care",))


def test_a_link_scanner_get_does_not_confirm(client, wsettings, engine):
    sign_up(client)
    url = link(mails_to(wsettings, "amy@example.com")[0], "confirm")
    for _ in range(3):
        page = client.get(path_of(url))
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert client.head(path_of(url)).status_code == 200
    assert store.get_by_email(engine, "amy@example.com").status == "pending"
    form = soup(page).find("form", id="confirm")
    assert form["method"] == "post" and form["action"] == url  # absolute, from base_url
    assert form.find("button")
    # the page may name the topics chosen (the email never does)
    assert "Hair loss" in page.text and "once a week" in page.text.lower()
    done = client.post(path_of(url), follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == url
    assert h1(client.get(path_of(url))) == "You are subscribed"
    assert store.get_by_email(engine, "amy@example.com").status == "confirmed"


def test_bounced_and_complained_addresses_get_the_same_page_and_no_mail(client, wsettings, engine):
    b = store.add(engine, wsettings, "bounced@example.com", confirmed=True, consent="y")
    store.bounce(engine, wsettings, b.id)
    store.complain(engine, wsettings, "complained@example.com")
    pages = {sign_up(client, e).text for e in ("bounced@example.com", "complained@example.com", "new@example.com")}
    assert len(pages) == 1
    assert [m["To"].addresses[0].addr_spec for m in outbox_messages(wsettings)] == ["new@example.com"]
    assert store.get(engine, b.id).status == "bounced"


def test_erased_and_unsubscribed_addresses_get_one_confirmation_in_30_days(client, wsettings, engine, frozen):
    gone = store.add(engine, wsettings, "gone@example.com", confirmed=True, consent="y")
    rights.erase(engine, wsettings, gone.id)
    left = store.add(engine, wsettings, "left@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, wsettings, left.id)
    for day in range(3):
        for email in ("gone@example.com", "left@example.com"):
            assert h1(sign_up(client, email)) == "Check your inbox"
        frozen.advance(days=1, minutes=1)
    assert len(mails_to(wsettings, "gone@example.com")) == 1 and len(mails_to(wsettings, "left@example.com")) == 1
    frozen.advance(days=28)
    sign_up(client, "left@example.com")
    assert len(mails_to(wsettings, "left@example.com")) == 2


def test_one_confirmation_a_day_per_address(client, wsettings, engine, frozen):
    for _ in range(5):
        sign_up(client, "bomb@example.com")
        frozen.advance(minutes=11)
    assert len(mails_to(wsettings, "bomb@example.com")) == 1
    frozen.advance(days=1)
    sign_up(client, "bomb@example.com")
    assert len(mails_to(wsettings, "bomb@example.com")) == 2


def test_ip_limit_keys_on_the_ipv6_64_and_the_ipv4_address(wsettings, engine):
    from subscribers import limits

    assert limits.ip_bucket("2001:db8:1:2:aaaa::1") == limits.ip_bucket("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert limits.ip_bucket("2001:db8:1:2::1") != limits.ip_bucket("2001:db8:1:3::1")
    assert limits.ip_bucket("192.0.2.1") != limits.ip_bucket("192.0.2.2")
    assert limits.ip_bucket("::ffff:192.0.2.1") == limits.ip_bucket("192.0.2.1")
    codes = []
    for i in range(4):
        with TestClient(web.create_app(wsettings, engine, rate_per_minute=2), client=(f"2001:db8::{i + 1:x}", 5000)) as c:
            codes.append(sign_up(c, f"p{i}@example.com").status_code)
    assert codes == [200, 200, 429, 429]
    # the count is in the database: a second app (another process) shares it
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=2), client=("2001:db8::99", 1)) as c:
        assert sign_up(c, "p9@example.com").status_code == 429
    with TestClient(web.create_app(wsettings, engine, rate_per_minute=2), client=("2001:db8:0:1::1", 1)) as c:
        assert sign_up(c, "p9@example.com").status_code == 200


def test_sign_up_needs_the_form_token_and_a_matching_origin(client, wsettings, engine):
    data = {"email": "x@example.com", "frequency": "daily", **CONSENT}
    assert client.post("/subscribe", data=data).status_code == 403  # no csrf
    fields = form_fields(client.get("/subscribe"), "subscribe")
    evil = client.post("/subscribe", data={**data, **fields}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    referer = client.post("/subscribe", data={**data, **fields}, headers={"Referer": "https://evil.example/x"})
    assert referer.status_code == 403
    client.cookies.clear()  # the token is bound to the browser's cookie
    assert client.post("/subscribe", data={**data, **fields}).status_code == 403
    assert store.get_by_email(engine, "x@example.com") is None and outbox_messages(wsettings) == []
    ok = sign_up(client, "x@example.com", name="Zoë ’ 🙂")
    assert ok.status_code == 200 and store.get_by_email(engine, "x@example.com").status == "pending"
    same_origin = sign_up(client, "y@example.com")
    assert same_origin.status_code == 200


def test_sign_up_post_redirects_so_a_reload_does_not_resubmit(client, wsettings):
    data = {"email": "amy@example.com", "frequency": "daily", **CONSENT,
            **form_fields(client.get("/subscribe"), "subscribe")}
    answer = client.post("/subscribe", data=data, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/subscribe/sent"


# -- section 8: the confirmation email says what is being confirmed ------------------------------

def test_confirmation_email_says_frequency_and_topic_count_but_no_topic(client, wsettings):
    sign_up(client, topics=["hair-loss", "mental-health", "wellbeing"], frequency="weekly")
    (message,) = outbox_messages(wsettings)
    for part in (text_part(message), re.sub(r"<[^>]+>", " ", html_part(message))):
        flat = " ".join(part.split())
        assert "once a week" in flat and "3 topics" in flat
        for spec in wsettings.topics.values():
            assert spec["name"].lower() not in flat.lower()


# -- section 7: links that outlive their purpose ---------------------------------------------------

def confirmed(client, wsettings, engine, email="amy@example.com"):
    sign_up(client, email)
    confirm_via_button(client, link(mails_to(wsettings, email)[0], "confirm"))
    return store.get_by_email(engine, email)


def test_preferences_page_masks_the_address_and_has_no_export_or_erase(client, wsettings, engine):
    info = confirmed(client, wsettings, engine)
    page = client.get(path_of(tokens.preferences_url(wsettings, info.id)))
    assert "amy@example.com" not in page.text and "a•••@example.com" in page.text
    assert soup(page).find(id="export") is None and soup(page).find("form", id="erase") is None
    prefs = path_of(tokens.preferences_url(wsettings, info.id))
    assert client.get(prefs + "/export").status_code in (404, 405)
    assert client.post(prefs + "/erase", data={"confirm": "yes"}).status_code in (404, 405)
    assert store.get(engine, info.id) is not None


def data_link(client, wsettings, engine, info):
    prefs = tokens.preferences_url(wsettings, info.id)
    page = client.get(path_of(prefs))
    form = soup(page).find("form", id="data-link")
    assert form["action"] == prefs + "/data-link"
    answer = client.post(path_of(form["action"]), data=form_fields(page, "data-link"), follow_redirects=False)
    assert answer.status_code == 303
    mail = [m for m in mails_to(wsettings, info.email) if "/data/" in text_part(m)][-1]
    assert "hour" in text_part(mail)
    return link(mail, "data")


def test_export_and_erase_need_a_fresh_one_time_link(client, wsettings, engine, frozen):
    info = confirmed(client, wsettings, engine)
    url = data_link(client, wsettings, engine, info)
    page = client.get(path_of(url))
    assert page.status_code == 200 and "amy@example.com" not in page.text
    export_form = soup(page).find("form", id="export")
    assert export_form["action"] == url + "/export"
    data = client.post(path_of(export_form["action"]), data=form_fields(page, "export"))
    assert data.status_code == 200 and data.json()["subscriber"]["email"] == "amy@example.com"
    # used once, then dead
    again = client.post(path_of(export_form["action"]), data=form_fields(page, "export"))
    assert again.status_code == 400
    # a new link, an hour later, is dead too
    url2 = data_link(client, wsettings, engine, info)
    frozen.advance(minutes=61)
    page2 = client.get(path_of(url2))
    assert page2.status_code == 400 and "expired" in page2.text
    url3 = data_link(client, wsettings, engine, info)
    page3 = client.get(path_of(url3))
    erase = client.post(path_of(url3 + "/erase"), data={**form_fields(page3, "erase"), "confirm": "yes"})
    assert erase.status_code == 200 and h1(erase) == "Your data has been deleted"
    assert store.get(engine, info.id) is None
    assert client.get(path_of(url3)).status_code in (400, 404)


def test_erasure_deletes_queued_mail(client, wsettings, engine):
    from subscribers import mailqueue

    with TestClient(web.create_app(wsettings, engine, rate_per_minute=1000, mail_worker=False)) as c:
        sign_up(c, "queued@example.com")
        info = store.get_by_email(engine, "queued@example.com")
        assert mailqueue.counts(engine).get("queued") == 1
        rights.erase(engine, wsettings, info.id)
        assert mailqueue.counts(engine).get("queued") is None


# -- section 8: consent records ---------------------------------------------------------------------

def test_unsubscribe_button_is_recorded_as_web_and_one_click_as_one_click(client, wsettings, engine):
    a = store.add(engine, wsettings, "a@example.com", confirmed=True, consent="y")
    b = store.add(engine, wsettings, "b@example.com", confirmed=True, consent="y")
    path = path_of(tokens.unsubscribe_url(wsettings, a.id))
    page = client.get(path)
    form = soup(page).find("form")
    assert form["action"] == tokens.unsubscribe_url(wsettings, a.id)
    client.post(path, data=form_fields(page, form.get("id") or "unsubscribe"))
    assert store.consent_records(engine, a.id)[-1]["method"] == "web"
    client.cookies.clear()
    client.post(path_of(tokens.unsubscribe_url(wsettings, b.id)), content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert store.consent_records(engine, b.id)[-1]["method"] == "one-click"


def test_preferences_after_unsubscribing_record_no_opt_in_and_do_not_resubscribe(client, wsettings, engine):
    info = store.add(engine, wsettings, "a@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, wsettings, info.id)
    prefs = path_of(tokens.preferences_url(wsettings, info.id))
    page = client.get(prefs)
    client.post(prefs, data={**form_fields(page, "preferences"), "topics": ["wellbeing"],
                             "topics_consent": "yes", "frequency": "weekly"})
    assert store.get(engine, info.id).status == "unsubscribed"
    record = store.consent_records(engine, info.id)[-1]
    assert record["action"] == "preferences" and record["wording"] is None and record["wording_version"] is None
    assert store.suppression_reason(engine, wsettings, "a@example.com") == "unsubscribed"


def test_preference_save_redirects_and_a_reload_adds_nothing(client, wsettings, engine):
    info = confirmed(client, wsettings, engine)
    prefs = tokens.preferences_url(wsettings, info.id)
    page = client.get(path_of(prefs))
    answer = client.post(path_of(prefs), data={**form_fields(page, "preferences"), "topics": ["skin-care"],
                                               "topics_consent": "yes", "frequency": "daily"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == prefs + "?saved=1"
    before = len(store.consent_records(engine, info.id))
    reloaded = client.get(path_of(prefs) + "?saved=1")  # what a reload of the result does now
    assert soup(reloaded).find(id="notice").get_text(strip=True) == "Your preferences are saved."
    assert len(store.consent_records(engine, info.id)) == before
    # the same choices again record nothing new either
    client.post(path_of(prefs), data={**form_fields(page, "preferences"), "topics": ["skin-care"],
                                      "frequency": "daily"})
    assert len(store.consent_records(engine, info.id)) == before


def test_newsletter_status_shows_the_mail_queue(content_dir, tmp_path, wsettings, engine, frozen):
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.errors import DeliveryError
    from subscribers import mailqueue, signup

    signup.sign_up(engine, wsettings, "waiting@example.com")

    def down(settings, message):
        raise DeliveryError("relay 127.0.0.1:25 refused the connection")
    mailqueue.deliver_due(engine, wsettings, down)
    env = {"DATABASE_URL": wsettings.database_url, "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
           "NEWSLETTER_SECRET": SECRET}
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "status"], env=env)
    line = next(x for x in result.output.splitlines() if x.startswith("mail queue:"))
    assert line.startswith("mail queue: 1 waiting, 0 given up; oldest failure 2026-03-02 06:00 UTC: relay")
