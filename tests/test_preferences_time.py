"""Issue 15, delivery at each reader's local time, on the preferences page: a time zone
select (the saved zone, else the editors'; the browser's zone when JavaScript runs and
nothing is saved) and a delivery hour select, under the shipped base_url's path prefix.
In process, against a real uvicorn with 50 parallel clients, and in headless Chromium
emulating Asia/Kolkata with and without JavaScript."""
from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from bs4 import BeautifulSoup
from sqlalchemy import text

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from pipeline import web
from pipeline.database import open_database
from subscribers import store, tokens

from fixtures_subscribers import free_port, serve_on, subscriber_settings

BASE = "https://my.klarity.health/newsletter"
ORIGIN = "https://my.klarity.health"
NAME = "Zoë O’Brien – £5 café 山田 🌿"


@pytest.fixture
def psettings(settings, tmp_path):
    assert settings.base_url == BASE
    return subscriber_settings(settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'times.db'}")


@pytest.fixture
def engine(psettings):
    return open_database(psettings.database_url)


@pytest.fixture
def client(psettings, engine):
    with TestClient(web.create_app(psettings, engine, mail_worker=False), base_url=ORIGIN) as c:
        yield c


def reader(engine, settings, address="zoe@example.com") -> store.SubscriberInfo:
    return store.add(engine, settings, address, name=NAME, topics=("wellbeing",), confirmed=True, consent="Ticked")


def path_of(settings, sid: int) -> str:
    url = tokens.preferences_url(settings, sid)
    assert url.startswith(BASE + "/preferences/")
    return url.removeprefix(ORIGIN)


def form_of(response) -> tuple[BeautifulSoup, dict]:
    page = BeautifulSoup(response.text, "html.parser")
    form = page.find("form", id="preferences")
    data = {i["name"]: i.get("value", "") for i in form.find_all("input")
            if i.get("type") in ("hidden", "text") or i.has_attr("checked")}
    for select in form.find_all("select"):
        chosen = select.find("option", selected=True) or select.find("option")
        data[select["name"]] = chosen.get("value", "")
    return page, data


def selected(page: BeautifulSoup, name: str) -> str:
    options = page.find("select", attrs={"name": name}).find_all("option", selected=True)
    assert len(options) == 1, options
    return options[0]["value"]


def test_the_page_offers_zones_and_hours_and_defaults_to_the_editors(client, psettings, engine):
    info = reader(engine, psettings)
    response = client.get(path_of(psettings, info.id))
    assert response.status_code == 200
    page, _ = form_of(response)
    zone = page.find("select", id="time_zone")
    assert page.find("label", attrs={"for": "time_zone"}).get_text(strip=True) == "Your time zone"
    values = [o["value"] for o in zone.find_all("option")]
    assert {"Europe/London", "America/New_York", "Asia/Kolkata", "Pacific/Auckland", "UTC"} <= set(values)
    assert len(values) == len(set(values)) > 400 and "EST5EDT" not in values
    assert selected(page, "time_zone") == "Europe/London" and zone["data-saved"] == "no"
    assert zone.find("option", value="America/New_York").get_text() == "America / New York"
    hours = page.find("select", id="delivery_hour").find_all("option")
    assert [(o["value"], o.get_text()) for o in hours[:2]] == [("", "The editors' time (07:00 UK time)"), ("0", "00:00")]
    assert [o.get_text() for o in hours[1:]] == [f"{h:02d}:00" for h in range(24)]
    assert selected(page, "delivery_hour") == ""
    # the script is our own, under base_url's path, and deferred (the page works without it)
    (script,) = page.find_all("script")
    assert script["src"] == BASE + "/assets/preferences.js" and script.has_attr("defer") and not script.string
    # a zone stored before it left the tz database (or by hand) shows the editors', not the list's first
    with engine.begin() as conn:
        conn.execute(text("UPDATE subscribers SET time_zone = 'Mars/Olympus_Mons' WHERE id = :id"), {"id": info.id})
    assert selected(BeautifulSoup(client.get(path_of(psettings, info.id)).text, "html.parser"),
                    "time_zone") == "Europe/London"


def test_the_script_is_served_from_our_origin_under_the_csp(client):
    response = client.get("/newsletter/assets/preferences.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src" not in csp and "unsafe-inline" not in csp.split("style-src")[0]
    assert "resolvedOptions().timeZone" in response.text
    assert client.head("/newsletter/assets/preferences.js").status_code == 200
    assert client.get("/newsletter/assets/secret.py").status_code == 404
    assert client.get("/newsletter/assets/..%2Fpreferences.html").status_code == 404
    assert client.get("/assets/preferences.js").status_code == 404  # outside the prefix
    assert client.post("/newsletter/assets/preferences.js").status_code == 405


def test_saving_a_zone_and_an_hour(client, psettings, engine):
    info = reader(engine, psettings)
    here = path_of(psettings, info.id)
    _, data = form_of(client.get(here))
    response = client.post(here, follow_redirects=False, data={**data, "time_zone": "Asia/Kolkata", "delivery_hour": "6"})
    assert response.status_code == 303 and response.headers["location"] == BASE + here.removeprefix("/newsletter") \
        + "?saved=1"
    held = store.get(engine, info.id)
    assert (held.time_zone, held.delivery_hour, held.name, held.topics) == ("Asia/Kolkata", 6, NAME, ("wellbeing",))
    page, _ = form_of(client.get(here))
    assert (selected(page, "time_zone"), selected(page, "delivery_hour")) == ("Asia/Kolkata", "6")
    assert page.find("select", id="time_zone")["data-saved"] == "yes"
    record = store.consent_records(engine, info.id)[-1]
    assert record["wording"] is None and record["detail"]["time_zone"] == "Asia/Kolkata"
    # the page as it loads, saved again: nothing changes, nothing is recorded
    count = len(store.consent_records(engine, info.id))
    _, data = form_of(client.get(here))
    assert client.post(here, follow_redirects=False, data=data).status_code == 303
    assert len(store.consent_records(engine, info.id)) == count
    # a post without the selects (a page from before them) keeps the time
    data.pop("time_zone"), data.pop("delivery_hour")
    client.post(here, follow_redirects=False, data={**data, "frequency": "weekly"})
    held = store.get(engine, info.id)
    assert (held.frequency, held.time_zone, held.delivery_hour) == ("weekly", "Asia/Kolkata", 6)


@pytest.mark.parametrize("field, value, words", [
    ("time_zone", "EST5EDT", "is not one we offer"),
    ("time_zone", "Asia/Kolkata\r\nX-Evil: 1", "is not one we offer"),
    ("time_zone", "🌍" * 5000, "is not one we offer"),
    ("delivery_hour", "24", "whole hour from 0 to 23"),
    ("delivery_hour", "7:30", "whole hour from 0 to 23"),
    ("delivery_hour", "=1+1", "whole hour from 0 to 23"),
])
def test_a_bad_value_is_a_400_form_error_and_changes_nothing(client, psettings, engine, field, value, words):
    info = reader(engine, psettings)
    here = path_of(psettings, info.id)
    _, data = form_of(client.get(here))
    before = len(store.consent_records(engine, info.id))
    response = client.post(here, follow_redirects=False, data={**data, field: value, "frequency": "weekly"})
    assert response.status_code == 400
    page = BeautifulSoup(response.text, "html.parser")
    error = page.find(id="error").get_text()
    assert words in error and "Traceback" not in response.text and "\n" not in error
    assert page.find("form", id="preferences") is not None  # the form again, to correct
    held = store.get(engine, info.id)
    assert (held.frequency, held.time_zone, held.delivery_hour) == ("daily", None, None)
    assert len(store.consent_records(engine, info.id)) == before


def test_fifty_parallel_saves_against_a_real_server(psettings, engine):
    info = reader(engine, psettings)
    port = free_port()
    local = psettings.replace(base_url=f"http://127.0.0.1:{port}/newsletter")
    here = tokens.preferences_url(local, info.id)
    zones = ["Asia/Kolkata", "America/New_York", "Pacific/Auckland", "Europe/London", "Asia/Tokyo"]
    with serve_on(web.create_app(local, engine, mail_worker=False), port):
        with httpx.Client() as c:
            _, data = form_of(c.get(here))
        barrier = threading.Barrier(50)

        def save(n: int) -> int:
            with httpx.Client(timeout=30) as c:
                barrier.wait()
                return c.post(here, data={**data, "time_zone": zones[n % 5], "delivery_hour": str(n % 24)}).status_code

        with ThreadPoolExecutor(50) as pool:
            codes = list(pool.map(save, range(50)))
    assert codes == [303] * 50
    held = store.get(engine, info.id)
    posted = {(None if zones[n % 5] == "Europe/London" else zones[n % 5], n % 24) for n in range(50)}
    assert (held.time_zone, held.delivery_hour) in posted
    records = [r for r in store.consent_records(engine, info.id) if r["action"] == "preferences"]
    assert 1 <= len(records) <= 50
    assert all((r["detail"]["time_zone"], r["detail"]["delivery_hour"]) in posted for r in records)
    last = records[-1]["detail"]
    assert (last["time_zone"], last["delivery_hour"]) == (held.time_zone, held.delivery_hour)  # the record is the truth


# -- in Chromium ----------------------------------------------------------------------------------------

@pytest.fixture
def served(settings, tmp_path):
    """The service under a path prefix on a real uvicorn, as the shipped base_url has it."""
    port = free_port()
    s = subscriber_settings(settings, tmp_path, base_url=f"http://127.0.0.1:{port}/newsletter",
                            database_url=f"sqlite:///{tmp_path / 'browser.db'}")
    engine = open_database(s.database_url)
    with serve_on(web.create_app(s, engine, mail_worker=False), port):
        yield s, engine


def open_page(browser, url: str, *, javascript: bool):
    context = browser.new_context(timezone_id="Asia/Kolkata", java_script_enabled=javascript)
    page = context.new_page()
    problems: list[str] = []
    # Chromium's complaints about Permissions-Policy features it does not know are not ours to fix here;
    # a failed load is counted by its response below (the browser asks for a favicon public/ does not have)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "Permissions-Policy" not in m.text
            and "Failed to load resource" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.goto(url)
    return context, page, problems


@pytest.mark.browser
def test_chromium_in_kolkata_preselects_its_zone_and_saving_stores_it(browser, served):
    s, engine = served
    info = reader(engine, s)
    context, page, problems = open_page(browser, tokens.preferences_url(s, info.id), javascript=True)
    try:
        assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") in ("Asia/Kolkata", "Asia/Calcutta")
        # the script is deferred: it has run by the "load" event goto waits for
        assert page.get_by_label("Your time zone").input_value() == "Asia/Kolkata"
        assert page.locator("#time_zone_note").is_visible()
        page.get_by_label("Delivery time").select_option(label="06:00")
        page.get_by_role("button", name="Save my preferences").click()
        assert page.locator("#notice").inner_text() == "Your preferences are saved."
        assert page.url.startswith(s.base_url + "/preferences/")
        held = store.get(engine, info.id)
        assert (held.time_zone, held.delivery_hour) == ("Asia/Kolkata", 6)
        # saved: the script leaves the saved zone alone, even if the browser moves
        assert page.get_by_label("Your time zone").input_value() == "Asia/Kolkata"
        assert not page.locator("#time_zone_note").is_visible()
        assert problems == [], problems  # the script ran under the CSP, nothing refused or missing
    finally:
        context.close()


@pytest.mark.browser
def test_chromium_without_javascript_shows_the_editors_zone_and_a_saved_zone_wins_over_the_browser(browser, served):
    s, engine = served
    info = reader(engine, s)
    context, page, problems = open_page(browser, tokens.preferences_url(s, info.id), javascript=False)
    try:
        assert page.get_by_label("Your time zone").input_value() == "Europe/London"
        assert page.get_by_label("Delivery time").input_value() == ""
        page.get_by_label("Delivery time").select_option(label="05:00")
        page.get_by_role("button", name="Save my preferences").click()
        assert page.locator("#notice").inner_text() == "Your preferences are saved."
        held = store.get(engine, info.id)
        assert (held.time_zone, held.delivery_hour) == (None, 5)  # the editors' zone, at 05:00
        assert problems == [], problems
    finally:
        context.close()
    other = reader(engine, s, "ny@example.com")
    store.update_preferences(engine, s, other.id, name=other.name, topics=other.topics, frequency="daily",
                             time_zone="America/New_York")
    context, page, problems = open_page(browser, tokens.preferences_url(s, other.id), javascript=True)
    try:
        page.wait_for_load_state("load")
        assert page.get_by_label("Your time zone").input_value() == "America/New_York"
        assert problems == [], problems
    finally:
        context.close()
