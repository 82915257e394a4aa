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
