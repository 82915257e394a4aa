"""The web service deployed under a path prefix (the shipped base_url is
https://my.klarity.health/newsletter), in process: every link and form action comes
from base_url, redirects never come from the Host header, errors are the HTML page
with the methods a route really takes, and every response carries the headers."""
from __future__ import annotations

import re
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from bs4 import BeautifulSoup

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from pipeline import web
from pipeline.database import open_database
from subscribers import store, tokens

from conftest import free_port
from fixtures_subscribers import CONSENT, outbox_messages, subscriber_settings, text_part

BASE = "https://my.klarity.health/newsletter"
ORIGIN = "https://my.klarity.health"
FORGED = "evil.example"
HEALTH = {"topics_consent": "yes"}


@pytest.fixture
def psettings(settings, tmp_path):
    assert settings.base_url == BASE  # the shipped setting, path and all
    return subscriber_settings(settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'prefix.db'}")


@pytest.fixture
def engine(psettings):
    return open_database(psettings.database_url)


@pytest.fixture
def client(psettings, engine):
    with TestClient(web.create_app(psettings, engine, rate_per_minute=1000), base_url=ORIGIN) as c:
        yield c


def soup(response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def h1(response) -> str:
    return soup(response).h1.get_text(strip=True)


def local(url: str) -> str:
    """The path and query of an absolute URL under ORIGIN."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == ORIGIN, url
    return parts.path + (f"?{parts.query}" if parts.query else "")


def submit(client, response, form_selector: dict | None = None, **values):
    """Post the page's form (its hidden fields plus ``values``) where its action says,
    or to the page itself when it has none, following redirects."""
    page = soup(response)
    form = page.find("form", **(form_selector or {}))
    data = {i["name"]: i.get("value", "") for i in form.find_all("input")
            if i.get("type") == "hidden" and i.has_attr("name")}
    data.update(values)
    action = form.get("action") or str(response.url)
    return client.post(local(action), data=data, follow_redirects=True)


def confirm_from(client, url: str):
    """Open a confirmation link and, if the page asks for a button press, press it."""
    response = client.get(local(url), follow_redirects=True)
    form = soup(response).find("main").find("form") if soup(response).find("main") else None
    if form is not None and (form.get("method") or "").lower() == "post":
        response = submit(client, response)
    return response


def generated_urls(response) -> list[str]:
    page = soup(response)
    urls = [a["href"] for a in page.find_all("a", href=True)]
    urls += [f["action"] for f in page.find_all("form", action=True)]
    urls += [link["href"] for link in page.find_all("link", href=True)]
    return [u for u in urls if not u.startswith(("mailto:", "tel:", "#"))]


def sign_up(client, email="amy@example.com", **extra):
    """As a browser does it: load the form (its CSRF token and cookie), then post it."""
    form = soup(client.get("/newsletter/subscribe")).find("form", id="subscribe")
    data = {"email": email, "name": "Amy", "topics": ["hair-loss", "wellbeing"], "frequency": "weekly",
            **CONSENT, **HEALTH, **{i["name"]: i.get("value", "") for i in form.find_all("input", attrs={"type": "hidden"})}}
    data.update(extra)
    return client.post("/newsletter/subscribe", data=data)


# -- §6: everything answers under the prefix, every URL comes from base_url --------------------

def test_the_whole_flow_answers_under_the_prefix_and_every_url_comes_from_base_url(client, psettings, engine):
    assert client.get("/newsletter/healthz").text == "ok"
    form = client.get("/newsletter/subscribe")
    assert form.status_code == 200 and h1(form).startswith("Subscribe")
    assert client.get("/subscribe").status_code == 404  # outside the prefix: not ours
    assert sign_up(client).status_code == 200
    (confirmation,) = outbox_messages(psettings)
    confirm = re.search(r"\S+/confirm/[A-Za-z0-9_-]+", text_part(confirmation)).group(0)
    assert confirm.startswith(BASE + "/confirm/")
    done = confirm_from(client, confirm)
    assert done.status_code == 200 and urlsplit(str(done.url)).path.startswith("/newsletter/")
    info = store.get_by_email(engine, "amy@example.com")
    assert info.status == "confirmed"
    welcome = outbox_messages(psettings)[-1]
    prefs = re.search(r"\S+/preferences/[A-Za-z0-9_-]+", text_part(welcome)).group(0)
    assert prefs.startswith(BASE + "/preferences/")

    page = client.get(local(prefs))
    assert page.status_code == 200 and h1(page) == "Your preferences"
    urls = generated_urls(page)
    assert urls and all(u.startswith(BASE + "/") or u == psettings.privacy_policy_url for u in urls), urls
    actions = {f.get("id"): f["action"] for f in soup(page).find_all("form")}
    assert actions["preferences"].startswith(BASE + "/preferences/")
    assert actions["data-link"].startswith(BASE + "/preferences/")
    saved = submit(client, page, {"id": "preferences"}, name="Amy B", topics="wellbeing", frequency="daily")
    assert saved.status_code == 200 and urlsplit(str(saved.url)).path.startswith("/newsletter/preferences/")
    assert "saved" in saved.text
    assert store.get(engine, info.id).name == "Amy B"
    # export and erase: a one-time link, emailed, under the prefix too
    asked = submit(client, client.get(local(prefs)), {"id": "data-link"})
    assert asked.status_code == 200 and urlsplit(str(asked.url)).path.startswith("/newsletter/")
    data_url = re.search(r"\S+/data/[A-Za-z0-9_-]+", text_part(outbox_messages(psettings)[-1])).group(0)
    assert data_url.startswith(BASE + "/data/")
    data_page = client.get(local(data_url))
    forms = {f.get("id"): f["action"] for f in soup(data_page).find_all("form")}
    assert forms["export"].startswith(BASE + "/data/") and forms["erase"].startswith(BASE + "/data/")
    exported = submit(client, data_page, {"id": "export"})
    assert exported.json()["subscriber"]["name"] == "Amy B"


def test_pages_link_to_the_archive_and_form_under_the_prefix(client, psettings):
    for path in ["/newsletter/subscribe", "/newsletter/confirm/forged", "/newsletter/no-such-page"]:
        urls = generated_urls(client.get(path))
        assert f"{BASE}/" in urls, (path, urls)
        assert all(u.startswith(BASE + "/") or u == psettings.privacy_policy_url for u in urls), (path, urls)


def test_a_proxy_that_strips_the_prefix_is_told_with_root_path(psettings, engine):
    """uvicorn --root-path /newsletter: the proxy sends /subscribe, links still carry the prefix."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web.create_app(psettings, engine, rate_per_minute=1000),
                                           host="127.0.0.1", port=port, root_path="/newsletter",
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert c.get("/healthz").text == "ok"
            page = c.get("/subscribe")
            assert page.status_code == 200 and BeautifulSoup(page.text, "html.parser").h1
            sid = store.add(engine, psettings, "p@example.com", confirmed=True, consent="y").id
            prefs = c.get(urlsplit(tokens.preferences_url(psettings, sid)).path.removeprefix("/newsletter"))
            assert prefs.status_code == 200
            action = BeautifulSoup(prefs.text, "html.parser").find("form", id="preferences")["action"]
            assert action.startswith(BASE + "/preferences/")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- §8 redirects: from base_url, never from Host -----------------------------------------------

def test_no_redirect_or_page_ever_names_a_forged_host(client, psettings):
    folder = Path(psettings.public_dir) / "articles" / "what-s-new"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<!DOCTYPE html><title>x</title><h1>x</h1>")
    forged = {"host": FORGED}
    answered = {}
    for path in ["/newsletter/x%0A/", "/newsletter/subscribe/", "/newsletter/articles/what-s-new",
                 "/newsletter/articles", "/newsletter//articles", "/newsletter/healthz/", "/x%0A/",
                 "/newsletter/preferences/abc/", "/newsletter/confirm/abc/", "/newsletter/"]:
        response = client.get(path, headers=forged, follow_redirects=False)
        answered[path] = response
        assert FORGED not in " ".join(f"{k}: {v}" for k, v in response.headers.items()), (path, response.headers)
        assert FORGED not in response.text, path
        if 300 <= response.status_code < 400:
            assert response.headers["location"].startswith(BASE + "/"), (path, response.headers["location"])
    folder_redirect = answered["/newsletter/articles/what-s-new"]
    assert folder_redirect.status_code == 301
    assert folder_redirect.headers["location"] == f"{BASE}/articles/what-s-new/"
    assert "\n" not in answered["/newsletter/x%0A/"].headers.get("location", "")


# -- §8 malformed requests: 405 and 413 in process (the raw-socket log test is in test_web_process.py)

@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/newsletter/subscribe", {"GET", "HEAD", "POST"}),
    ("DELETE", "/newsletter/subscribe", {"GET", "HEAD", "POST"}),
    ("GET", "/newsletter/data/abc/erase", {"POST"}),
    ("PUT", "/newsletter/unsubscribe/abc", {"GET", "HEAD", "POST"}),
    ("POST", "/newsletter/healthz", {"GET", "HEAD"}),
    ("POST", "/newsletter/feed.xml", {"GET", "HEAD"}),
])
def test_405_lists_the_methods_the_route_takes(client, method, path, allowed):
    response = client.request(method, path)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    assert response.headers["content-type"].startswith("text/html") and h1(response) == "Method not allowed"


def test_413_is_the_html_error_page_with_or_without_content_length(client, engine):
    big = b"email=" + b"a" * 70_000
    form = {"content-type": "application/x-www-form-urlencoded"}
    with_length = client.post("/newsletter/subscribe", content=big, headers=form)

    def chunks():
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    chunked = client.post("/newsletter/subscribe", content=chunks(), headers=form)
    assert "content-length" not in chunked.request.headers  # really sent chunked
    for response in (with_length, chunked):
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("text/html")
        assert h1(response) == "Request too large"
        assert response.headers["content-security-policy"] and response.headers["permissions-policy"]
    assert store.counts(engine) == {}


# -- §8 headers ----------------------------------------------------------------------------------

PATHS = ["/newsletter/subscribe", "/newsletter/healthz", "/newsletter/confirm/forged", "/newsletter/nothing-here",
         "/newsletter/", "/elsewhere"]


def test_hsts_and_permissions_policy_on_every_response(client):
    responses = [client.get(p) for p in PATHS] + [client.put("/newsletter/subscribe"),
                                                   client.post("/newsletter/feed.xml")]
    for response in responses:
        assert response.headers["strict-transport-security"] == "max-age=31536000", response.url
        policy = response.headers["permissions-policy"]
        for feature in ("camera", "microphone", "geolocation", "payment", "usb", "browsing-topics"):
            assert f"{feature}=()" in policy, (feature, policy)
        assert "server" not in response.headers


def test_no_hsts_when_base_url_is_plain_http(psettings, engine):
    local_settings = psettings.replace(base_url="http://127.0.0.1:8000")
    with TestClient(web.create_app(local_settings, engine), base_url="http://127.0.0.1:8000") as c:
        response = c.get("/subscribe")
    assert response.status_code == 200 and "strict-transport-security" not in response.headers
    assert "camera=()" in response.headers["permissions-policy"]


# -- §8 words people see -----------------------------------------------------------------------------

@pytest.mark.parametrize("email, words", [
    ("jane@gmail", "That email address looks incomplete"),
    ("jane.gmail.com", "That email address looks incomplete"),
    ("jane@@gmail.com", "That email address does not look right"),
    ("", "Please enter your email address"),
])
def test_sign_up_errors_are_plain_words(client, engine, email, words):
    response = sign_up(client, email)
    assert response.status_code == 400
    error = soup(response).find(id="error").get_text(" ", strip=True)
    assert error.startswith(words), error
    assert "'" not in error and '"' not in error and "invalid email" not in error.lower(), error
    assert store.counts(engine) == {}


def test_error_pages_lead_somewhere(client, psettings):
    for response in [client.get("/newsletter/confirm/forged"), client.get("/newsletter/unsubscribe/forged"),
                     client.get("/newsletter/preferences/forged"), client.get("/newsletter/preferences/x/erase"),
                     client.post("/newsletter/subscribe", content=b"x" * 70_000,
                                 headers={"content-type": "application/x-www-form-urlencoded"})]:
        assert response.status_code >= 400
        links = {a["href"] for a in soup(response).find("main").find_all("a", href=True)}
        assert {f"{BASE}/subscribe", f"{BASE}/"} <= links, (response.url, links)


def test_statuses_show_in_plain_words(client, psettings, engine):
    words = {}
    for status in ("pending", "confirmed", "unsubscribed", "bounced", "complained"):
        info = store.add(engine, psettings, f"{status}@example.com", confirmed=status != "pending", consent="y")
        if status == "unsubscribed":
            store.unsubscribe(engine, psettings, info.id)
        elif status == "bounced":
            store.bounce(engine, psettings, info.id)
        elif status == "complained":
            store.complain(engine, psettings, info.id)
        assert store.get(engine, info.id).status == status
        page = soup(client.get(local(tokens.preferences_url(psettings, info.id))))
        shown = page.find(id="status").get_text(" ", strip=True)
        assert shown != status and status not in shown.split(), (status, shown)
        words[status] = shown
    assert words["confirmed"] == "subscribed"
    assert len(set(words.values())) == 5


def test_privacy_policy_linked_and_health_topics_need_their_own_consent(client, psettings, engine):
    page = soup(client.get("/newsletter/subscribe"))
    policy = page.find("a", string=re.compile("privacy policy", re.I))
    assert policy is not None and policy["href"] == psettings.privacy_policy_url == f"{ORIGIN}/privacy-policy"
    box = page.find("input", attrs={"name": "topics_consent"})
    assert box["type"] == "checkbox" and not box.has_attr("required")  # only needed with topics
    label = page.find("label", attrs={"for": box["id"]}) or box.find_parent("label")
    assert "health" in label.get_text().lower()
    consent_box = page.find("input", attrs={"name": "consent"})
    assert consent_box.find_parent("label") is not label  # a separate, explicit question

    refused = sign_up(client, topics_consent="")
    assert refused.status_code == 400
    error = soup(refused).find(id="error").get_text()
    assert "topic" in error.lower() and "tick" in error.lower()
    assert store.counts(engine) == {} and outbox_messages(psettings) == []  # nothing stored, nothing sent
    # the choices come back ticked, so the person only adds the tick
    assert {i["value"] for i in soup(refused).find_all("input", attrs={"name": "topics"}) if i.has_attr("checked")} \
        == {"hair-loss", "wellbeing"}

    assert sign_up(client, "no-topics@example.com", topics=[], topics_consent="").status_code == 200
    assert sign_up(client).status_code == 200
    info = store.get_by_email(engine, "amy@example.com")
    assert info.topics == ("hair-loss", "wellbeing")
    (record,) = store.consent_records(engine, info.id)
    explicit = store.topics_consent_wording(psettings)
    assert explicit.startswith("I agree that Klarity Health Library keeps the topics")
    assert soup(refused).find(id="topics-wording").get_text() == explicit
    assert explicit in record["wording"] and record["detail"]["topics_consent"] == explicit
    plain = store.consent_records(engine, store.get_by_email(engine, "no-topics@example.com").id)[0]
    assert explicit not in plain["wording"] and "topics_consent" not in plain["detail"]
