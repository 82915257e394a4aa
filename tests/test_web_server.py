"""``newsletter serve`` as a real process: uvicorn on loopback, mail through SMTP to
aiosmtpd, on SQLite and on PostgreSQL."""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.database import open_database
from subscribers import store

from conftest import CONTENT, ROOT, free_port
from fixtures_subscribers import CONSENT, SECRET


@pytest.fixture
def server(store_url, content_dir, tmp_path, smtp_server):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NEWSLETTER_CONTENT": str(content_dir), "NEWSLETTER_SECRET": SECRET,
           "DATABASE_URL": store_url, "NEWSLETTER_TRANSPORT": "smtp", "SMTP_HOST": smtp_server.host,
           "SMTP_PORT": str(smtp_server.port), "NEWSLETTER_BASE_URL": base,
           "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var")}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"newsletter serve did not start:\n{log.read()}")
        time.sleep(0.1)
    try:
        yield base, store_url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_sign_up_confirm_and_one_click_over_real_http_and_smtp(server, smtp_server):
    base, url = server
    with httpx.Client(base_url=base, timeout=10, follow_redirects=False) as web_client:
        assert web_client.get("/readyz").text == "ready"
        form = web_client.get("/subscribe")
        assert form.status_code == 200 and 'name="consent"' in form.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        response = web_client.post("/subscribe", data={"email": "Reader@Example.com", "name": "Reader", "csrf": csrf,
                                                 "topics": ["mental-health"], "frequency": "daily", **CONSENT})
        assert response.status_code == 303 and response.headers["location"] == base + "/subscribe/sent"
        assert "Check your inbox" in web_client.get("/subscribe/sent").text
        (received,) = smtp_server.wait_for(1)
        # the envelope sender is the queue row's VERP return path; From stays the sender address
        assert received.mail_from.startswith("bounces+") and received.mail_from.endswith("@my.klarity.health")
        assert received.message["From"].addresses[0].addr_spec == "newsletter@my.klarity.health"
        assert received.rcpt_tos == ["Reader@example.com"]
        text = received.message.get_body(("plain",)).get_content()
        confirm = re.search(rf"{re.escape(base)}(/confirm/[A-Za-z0-9_-]+)", text).group(1)
        assert web_client.get(confirm).status_code == 200  # the page with the button
        assert web_client.post(confirm).status_code == 303
        welcome = smtp_server.wait_for(2)[1].message
        assert welcome["Subject"] == "Welcome to Klarity Health Library"
        unsubscribe = re.search(rf"<{re.escape(base)}(/unsubscribe/[^>]+)>", welcome["List-Unsubscribe"]).group(1)
        assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    engine = open_database(url)
    info = store.get_by_email(engine, "reader@example.com")
    assert info.status == "confirmed" and info.topics == ("mental-health",)
    assert [r for r in store.recipients(engine, store_settings(), "daily")][0].id == info.id

    # One-click exactly as a mail provider's server sends it: raw HTTP/1.1, no cookies.
    port = int(base.rsplit(":", 1)[1])
    for attempt in range(2):  # and again: idempotent
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = b"List-Unsubscribe=One-Click"
        conn.request("POST", unsubscribe, body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body)),
            "User-Agent": "Mozilla/5.0 (compatible; Google-Unsubscribe)"})
        answer = conn.getresponse()
        page = answer.read().decode()
        assert answer.status == 200 and answer.getheader("Location") is None, page
        assert answer.getheader("Set-Cookie") is None
        assert "You are unsubscribed" in page
        conn.close()
    info = store.get_by_email(engine, "reader@example.com")
    assert info.status == "unsubscribed"
    assert [r["method"] for r in store.consent_records(engine, info.id) if r["action"] == "unsubscribe"] == ["one-click"]
    assert list(store.recipients(engine, store_settings(), "daily")) == []
    assert len(smtp_server.received) == 2  # nothing else was mailed


def test_serve_refuses_to_start_without_a_secret_for_smtp(content_dir, tmp_path):
    env = {**os.environ, "NEWSLETTER_CONTENT": str(content_dir), "NEWSLETTER_TRANSPORT": "smtp",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    env.pop("NEWSLETTER_SECRET", None)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--port", str(free_port())], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith("error: NEWSLETTER_SECRET is not set") and done.stderr.count("\n") == 1


def store_settings():
    from pipeline.settings import load_settings

    return load_settings(CONTENT, env={"NEWSLETTER_SECRET": SECRET})
