"""A person in headless Chromium: sign up, confirm from the email (read from
aiosmtpd), change preferences, download their data, and leave."""
from __future__ import annotations

import json
import re

import pytest

from pipeline import web
from pipeline.database import open_database
from subscribers import store

from fixtures_subscribers import free_port, serve_on, subscriber_settings
from test_site_browser import axe_source  # noqa: F401  (a fixture: axe-core's source, or a skip)

pytestmark = pytest.mark.browser


@pytest.fixture
def site(settings, tmp_path, smtp_server):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    s = subscriber_settings(settings, tmp_path, base_url=base, transport="smtp", smtp_host=smtp_server.host,
                            smtp_port=smtp_server.port, database_url=f"sqlite:///{tmp_path / 'browser.db'}")
    engine = open_database(s.database_url)
    with serve_on(web.create_app(s, engine), port) as url:
        yield url, engine


def test_a_person_signs_up_confirms_changes_preferences_and_leaves(browser, site, smtp_server, tmp_path):
    base, engine = site
    context = browser.new_context(java_script_enabled=False, accept_downloads=True)  # works without JavaScript
    page = context.new_page()
    problems: list[str] = []
    failed: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "404" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    try:
        page.goto(f"{base}/subscribe")
        assert page.title().startswith("Subscribe")
        page.get_by_label("Email address").fill("reader@example.com")
        page.get_by_label("Your name").fill("Reader")
        page.get_by_label("Hair loss").check()
        page.get_by_label("Once a week").check()
        page.locator("input[name=topics_consent]").check()  # topic choices need their own tick
        page.locator("input[name=consent]").check()
        page.get_by_role("button", name="Subscribe").click()
        assert page.locator("h1").inner_text() == "Check your inbox"
        assert store.get_by_email(engine, "reader@example.com").status == "pending"

        # the confirmation email, as it arrived over SMTP
        (mail,) = smtp_server.wait_for(1)
        text = mail.message.get_body(("plain",)).get_content()
        confirm = re.search(rf"{re.escape(base)}/confirm/[A-Za-z0-9_-]+", text).group(0)
        page.goto(confirm)
        assert page.locator("h1").inner_text() == "Confirm your subscription"
        assert page.locator("#topics").inner_text() == "Hair loss"  # the page names them; the email never
        page.get_by_role("button", name="Confirm my subscription").click()
        assert page.locator("h1").inner_text() == "You are subscribed"
        welcome = smtp_server.wait_for(2)[1].message
        assert welcome["Subject"] == "Welcome to Klarity Health Library"

        page.get_by_role("link", name="Your preferences").click()
        assert page.locator("h1").inner_text() == "Your preferences"
        assert page.get_by_label("Hair loss").is_checked() and page.get_by_label("Once a week").is_checked()
        page.get_by_label("Your name").fill("Reader Two")
        page.get_by_label("Hair loss").uncheck()
        page.get_by_label("Everyday wellbeing").check()
        page.locator("input[name=topics_consent]").check()  # a newly chosen topic needs its own tick here too
        page.get_by_label("Every day").check()
        page.get_by_role("button", name="Save my preferences").click()
        assert page.locator("#notice").inner_text() == "Your preferences are saved."
        info = store.get_by_email(engine, "reader@example.com")
        assert (info.name, info.topics, info.frequency) == ("Reader Two", ("wellbeing",), "daily")

        assert page.locator("#address").inner_text() == "r•••@example.com"
        prefs = page.url

        # export needs a one-time link, emailed
        page.get_by_role("button", name="Email me a link to download or delete my data").click()
        assert "emailed you a link" in page.locator("#notice").inner_text()
        data_mail = smtp_server.wait_for(3)[2].message
        data_url = re.search(rf"{re.escape(base)}/data/[A-Za-z0-9_-]+", data_mail.get_body(("plain",)).get_content())
        page.goto(data_url.group(0))
        with page.expect_download() as download:
            page.get_by_role("button", name="Download everything we hold about me").click()
        data = json.loads(download.value.path().read_text())
        assert data["subscriber"]["name"] == "Reader Two"
        assert [r["action"] for r in data["consent_records"]] == ["subscribe", "confirm", "preferences"]

        page.goto(prefs)
        page.get_by_role("link", name="Unsubscribe").click()
        assert page.locator("h1").inner_text() == "Unsubscribe"
        page.get_by_role("button", name="Unsubscribe").click()
        assert page.locator("h1").inner_text() == "You are unsubscribed"
        info = store.get_by_email(engine, "reader@example.com")
        assert info.status == "unsubscribed"
        assert store.consent_records(engine, info.id)[-1]["method"] == "web"  # the button, not RFC 8058
        assert problems == []  # no CSP violations or other console errors
        assert [u for u in failed if not u.endswith("/favicon.ico")] == []  # the browser asks; public/ has none
    finally:
        context.close()


def test_the_whole_flow_stays_under_a_path_prefix(browser, settings, tmp_path, smtp_server):
    """base_url https://host/newsletter, as shipped: every page, form and redirect stays under /newsletter."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    s = subscriber_settings(settings, tmp_path, base_url=base, transport="smtp", smtp_host=smtp_server.host,
                            smtp_port=smtp_server.port, database_url=f"sqlite:///{tmp_path / 'prefix.db'}")
    engine = open_database(s.database_url)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    seen: list[tuple[int, str]] = []
    page.on("response", lambda r: seen.append((r.status, r.url)))
    try:
        with serve_on(web.create_app(s, engine), port):
            page.goto(f"{base}/subscribe")
            page.get_by_label("Email address").fill("zoe@example.com")
            page.get_by_label("Your name").fill("Zoë Ōsaka 🌿")
            page.get_by_label("Hair loss").check()
            page.locator("input[name=topics_consent]").check()
            page.locator("input[name=consent]").check()
            page.get_by_role("button", name="Subscribe").click()
            assert page.locator("h1").inner_text() == "Check your inbox"
            assert page.url.startswith(base + "/")

            (mail,) = smtp_server.wait_for(1)
            confirm = re.search(r"\S+/confirm/[A-Za-z0-9_-]+", mail.message.get_body(("plain",)).get_content())
            assert confirm.group(0).startswith(base + "/confirm/")
            page.goto(confirm.group(0))
            # a confirm page may ask for a button press (link scanners only GET); press it if so
            button = page.locator("main form button")
            if button.count():
                button.first.click()
            assert page.url.startswith(base + "/")
            assert store.get_by_email(engine, "zoe@example.com").status == "confirmed"

            welcome = smtp_server.wait_for(2)[1].message
            text = welcome.get_body(("plain",)).get_content()
            preferences = re.search(r"\S+/preferences/[A-Za-z0-9_-]+", text).group(0)
            assert preferences.startswith(base + "/preferences/")
            page.goto(preferences)
            assert page.locator("h1").inner_text() == "Your preferences"
            assert page.locator("#status").inner_text() == "subscribed"
            page.get_by_label("Once a week").check()
            page.get_by_role("button", name="Save my preferences").click()
            assert page.url.startswith(base + "/preferences/"), page.url  # not the main site's 404
            assert "saved" in page.locator("main").inner_text()
            assert store.get_by_email(engine, "zoe@example.com").frequency == "weekly"

            page.get_by_role("link", name="Unsubscribe").click()
            page.get_by_role("button", name="Unsubscribe").click()
            assert page.url.startswith(base + "/")
            assert page.locator("h1").inner_text() == "You are unsubscribed"
            assert store.get_by_email(engine, "zoe@example.com").status == "unsubscribed"
    finally:
        context.close()
    assert seen and all(url.startswith(base + "/") for _, url in seen if not url.endswith("/favicon.ico")), seen
    assert [(status, url) for status, url in seen if status >= 400 and not url.endswith("/favicon.ico")] == []


@pytest.mark.parametrize("width", (375, 1280))
def test_web_pages_pass_axe_core(browser, axe_source, settings, tmp_path, width):  # noqa: F811
    """The service's own pages (the form with an error, preferences, an error page), under a prefix."""
    from subscribers import tokens

    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    s = subscriber_settings(settings, tmp_path, base_url=base, database_url=f"sqlite:///{tmp_path / 'axe.db'}")
    engine = open_database(s.database_url)
    info = store.add(engine, s, "axe@example.com", name="Åsa", topics=["hair-loss"], confirmed=True, consent="y")
    # bypass_csp: only so that axe-core can be injected; the pages' own CSP forbids inline scripts
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    page = context.new_page()
    try:
        with serve_on(web.create_app(s, engine), port):
            visits = []
            page.goto(f"{base}/subscribe")
            page.get_by_label("Email address").fill("jane@gmail")
            page.get_by_label("Hair loss").check()
            page.locator("input[name=consent]").check()
            page.get_by_role("button", name="Subscribe").click()  # two problems; the form comes back with one
            visits.append(("subscribe with an error", page.locator("#error").count() == 1))
            _assert_accessible(page, axe_source, "subscribe with an error")
            for name, url in [("preferences", tokens.preferences_url(s, info.id)),
                              ("bad link", f"{base}/confirm/forged"), ("not found", f"{base}/nothing-here")]:
                page.goto(url)
                _assert_accessible(page, axe_source, name)
            assert visits == [("subscribe with an error", True)]
    finally:
        context.close()


def _assert_accessible(page, axe_source, name):
    overflow = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert overflow[0] <= overflow[1], f"{name}: horizontal scroll {overflow}"
    page.add_script_tag(content=axe_source)
    results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, name + ": " + "; ".join(f"{v['id']} ({v['impact']}): {v['help']}" for v in bad)
    assert results["passes"], "axe ran no rule"
