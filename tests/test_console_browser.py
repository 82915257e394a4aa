"""The console end to end: Chromium (Playwright) against a real ``newsletter serve`` under a
base_url path prefix, on SQLite and PostgreSQL, mail through aiosmtpd.  A reviewer signs in
and approves; an editor schedules, previews, sends a test (read back from the relay) and
watches the real send (``newsletter send`` in another process) to completion in the live
view; the admin's audit log shows each step.  axe-core finds no serious or critical
violation on any console page at 375 and 1280 px."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from conftest import CHROMIUM, ROOT, free_port
from fixtures_console import PASSWORD, add_staff, cheap_hashing
from fixtures_subscribers import SECRET

pytestmark = [pytest.mark.browser, pytest.mark.slow]
AXE_JS = Path(os.environ.get("AXE_CORE_JS", ROOT / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"))
READERS = 8
PUBLIC = "https://my.klarity.health"


class TLSFront:
    """https://my.klarity.health for the browser: a TLS listener on loopback (a throwaway
    self-signed certificate) piping each connection to ``newsletter serve``, and a Chromium
    of its own that resolves the host to it.  So the shipped https base_url, Secure cookies
    and every redirect are real, end to end."""

    def __init__(self, folder: Path, upstream_port: int):
        import socket
        import ssl
        import threading

        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=my.klarity.health",
                        "-addext", "subjectAltName=DNS:my.klarity.health"], check=True, capture_output=True)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    raw, _ = self.listener.accept()
                except OSError:
                    return
                def one(raw=raw):
                    try:
                        client = tls.wrap_socket(raw, server_side=True)
                    except (OSError, ssl.SSLError):
                        raw.close()
                        return
                    upstream = socket.create_connection(("127.0.0.1", upstream_port))
                    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
                    pipe(client, upstream)
                threading.Thread(target=one, daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def browser(self, playwright):
        return playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--host-resolver-rules=MAP my.klarity.health:443 127.0.0.1:{self.port}"])

    def close(self):
        self.listener.close()


def guard(context) -> list[str]:
    """Refuse and list any request that is not for the site."""
    outside: list[str] = []

    def handle(route):
        if route.request.url.startswith(PUBLIC + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", handle)
    return outside


@pytest.fixture
def chromium(console_server):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = console_server.front.browser(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def console_server(store_url, content_dir, tmp_path, smtp_server, monkeypatch):
    from pipeline import clock
    from pipeline.database import open_database
    from pipeline.settings import load_settings
    from subscribers import store

    port = free_port()
    server = f"http://127.0.0.1:{port}"
    base = PUBLIC + "/newsletter"  # the shipped base_url; the browser reaches it through TLSFront
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"},
           "NEWSLETTER_CONTENT": str(content_dir), "NEWSLETTER_SECRET": SECRET, "DATABASE_URL": store_url,
           "NEWSLETTER_TRANSPORT": "smtp", "SMTP_HOST": smtp_server.host, "SMTP_PORT": str(smtp_server.port),
           "NEWSLETTER_BASE_URL": base, "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
           "NEWSLETTER_VAR_DIR": str(tmp_path / "var"), "NEWSLETTER_REVIEW_REQUIRED": "true",
           "NEWSLETTER_SMTP_CONNECTIONS": "1", "NEWSLETTER_SMTP_RATE_LIMIT": "4"}
    engine = open_database(store_url)
    settings = load_settings(content_dir, env=env)
    cheap_hashing(monkeypatch)  # the accounts made here; the server checks whatever cost a hash names
    add_staff(engine, "rev@example.org", "reviewer")
    add_staff(engine, "ed@example.org", "editor", name="Ed Itor", credentials="")
    add_staff(engine, "boss@example.org", "admin", "editor", name="Zoë Boss", credentials="")
    for n in range(READERS):
        store.add(engine, settings, f"reader{n}@example.com", confirmed=True, consent="yes (test)")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(server + "/newsletter/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"newsletter serve did not start:\n{log.read()}")
        time.sleep(0.1)
    front = TLSFront(tmp_path, port)
    tomorrow = (clock.now().astimezone(ZoneInfo(settings.timezone)) + timedelta(days=1)).date()
    try:
        yield type("Server", (), dict(base=base, server=server, env=env, tmp=tmp_path, day=tomorrow,
                                      engine=engine, log=log, front=front))
    finally:
        front.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        assert "Traceback" not in log.read()
        log.close()


def sign_in(page, s, email: str) -> None:
    page.goto(f"{s.base}/admin/library")
    assert page.url == f"{s.base}/admin/login"  # signed out: the sign-in page
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == f"{s.base}/admin/library", (page.url, page.inner_text("main")[:300], page.context.cookies())


def sign_out(page) -> None:
    page.click("header form button")
    page.wait_for_url(re.compile(r".*/admin/login$"))


def test_sign_in_approve_schedule_preview_test_send_and_watch_the_send(chromium, console_server, smtp_server):
    s = console_server
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    outside = guard(context)
    page = context.new_page()
    try:
        # the reviewer signs the article off
        sign_in(page, s, "rev@example.org")
        assert "awaiting review" in page.inner_text("main")
        page.click("button[aria-label='Approve What Is Microneedling?']")
        page.wait_for_url(re.compile(r".*/admin/library\?done=approved$"))
        assert "approved by Dr Siân O’Connor-Müller, MBBS, MRCGP" in page.inner_text("main")
        cookie = next(c for c in context.cookies() if c["name"] == "nl_console")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/newsletter/admin" and cookie["domain"] == "my.klarity.health"
        sign_out(page)

        # the editor plans it for tomorrow, previews it and sends a test to themself
        sign_in(page, s, "ed@example.org")
        page.goto(f"{s.base}/admin/calendar")
        page.select_option("#add-slug", "microneedling")
        page.fill("#add-day", s.day.isoformat())
        page.click("form[action$='/calendar/add'] button")
        page.wait_for_url(re.compile(r".*/admin/calendar\?done=add$"))
        row = page.locator("tbody tr", has_text=s.day.isoformat()).first
        assert "microneedling" in row.inner_text() and "scheduled" in row.inner_text()
        row.locator("a", has_text="Preview").click()
        page.wait_for_url(re.compile(r".*/admin/preview\?date=.*"))
        assert "What Is Microneedling?" in page.inner_text("dl")
        frames = page.locator("iframe")
        assert frames.count() == 2
        assert [round(b["width"]) for b in (frames.nth(0).bounding_box(), frames.nth(1).bounding_box())] == [375, 600]
        page.click("form[action$='/preview/test'] button")
        page.wait_for_url(re.compile(r".*done=test-sent$"))
        (test,) = smtp_server.wait_for(1)
        assert test.rcpt_tos == ["ed@example.org"] and test.message["Subject"].startswith("[TEST]")
        assert "Medically reviewed by Dr Siân O’Connor-Müller, MBBS, MRCGP" in \
            test.message.get_body(("plain",)).get_content()

        # the real send, started by `newsletter send`, watched in the live view to the end
        sender = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "send", "--date", s.day.isoformat(),
                                   "--no-progress"], cwd=s.tmp, env=s.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while page.goto(f"{s.base}/admin/sends/{s.day.isoformat()}").status != 200:
            assert time.monotonic() < deadline and sender.poll() in (None, 0)
            time.sleep(0.2)
        from playwright.sync_api import expect
        # updated in place by the page's script polling the figures (no reload: the URL and the
        # page's own marker stay)
        first = page.inner_text("[data-figure=state]")
        page.evaluate("() => { document.body.dataset.marker = 'kept'; }")
        expect(page.locator("[data-figure=state]")).to_have_text("sent", timeout=30000)
        assert page.locator("body[data-marker=kept]").count() == 1, first  # the same page, updated in place
        assert page.inner_text("[data-count=sent]") == str(READERS)
        assert sender.wait(timeout=30) == 0, sender.stdout.read()
        assert len(smtp_server.wait_for(1 + READERS)) == 1 + READERS
        page.goto(f"{s.base}/admin/sends")
        assert s.day.isoformat() in page.inner_text("main")
        sign_out(page)

        # the admin reads every step in the audit log
        sign_in(page, s, "boss@example.org")
        page.goto(f"{s.base}/admin/audit")
        actions = page.locator("tbody tr td:nth-child(3)").all_inner_texts()
        for action in ("signin", "review.approve", "signout", "calendar.add", "send.test", "send"):
            assert action in actions, (action, actions)
        assert outside == []
    finally:
        context.close()


PAGES = ["/login", "/library", "/calendar", "/calendar?view=month", "/preview", "/sends", "/subscribers", "/audit",
         "/staff", "/settings", "/corrections"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_every_console_page_passes_axe_at_375_and_1280(chromium, console_server):
    if not AXE_JS.is_file():
        pytest.skip(f"axe-core not found at {AXE_JS}: run `make system-deps` or set AXE_CORE_JS")
    s = console_server
    axe = AXE_JS.read_text(encoding="utf-8")
    from pipeline.scheduling import calendar
    calendar.add_entry(s.engine, "microneedling", s.day, None)
    found = []
    # bypass_csp: only so axe (an inline script) can be injected; the pages themselves run under it
    context = chromium.new_context(viewport={"width": 375, "height": 900}, ignore_https_errors=True, bypass_csp=True)
    page = context.new_page()
    outside = guard(context)
    try:
        page.goto(f"{s.base}/admin/login")
        _check(page, axe, "/login", found)
        sign_in(page, s, "boss@example.org")
        for path in PAGES[1:] + [f"/preview?date={s.day.isoformat()}", f"/sends/{s.day.isoformat()}"]:
            if path.startswith("/sends/2"):
                from pipeline.delivery import ledger
                from pipeline.rendering.compose import compose_issue
                from pipeline.content.library import load_library
                from pipeline.settings import load_settings
                library = load_library(s.env["NEWSLETTER_CONTENT"], load_settings(s.env["NEWSLETTER_CONTENT"], env=s.env))
                issue = ledger.record_issue(s.engine, compose_issue(library, s.day, number=1,
                                                                    scheduled=["microneedling"]), "What Is Microneedling?")
                owner = ledger.acquire_lease(s.engine, issue.id)  # a deferred row: the page offers the retry
                ledger.write_recipients(s.engine, issue.id, "daily", owner=owner)
                ledger.release_lease(s.engine, issue.id, owner)
                with s.engine.begin() as conn:
                    first = conn.execute(ledger.DELIVERIES.select().limit(1)).first()
                    conn.execute(ledger.DELIVERIES.update().where(ledger.DELIVERIES.c.id == first.id)
                                 .values(state=ledger.DEFERRED, last_reply="421 try later"))
            page.set_viewport_size({"width": 375, "height": 900})
            assert page.goto(f"{s.base}/admin{path}").status == 200, path
            if path.startswith("/sends/2"):
                assert page.locator("form[action$='/retry'] button").count() == 1
            _check(page, axe, path, found)
        assert outside == []
    finally:
        context.close()
    assert not found, "\n".join(found)


def _check(page, axe, path, found) -> None:
    """axe at 375 px, then at 1280 px (the same page, resized), and no sideways scroll of the page."""
    page.add_script_tag(content=axe)
    for width in (375, 1280):
        page.set_viewport_size({"width": width, "height": 900})
        results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        assert results["passes"], "axe ran no rule"
        for v in results["violations"]:
            if v["impact"] in ("serious", "critical"):
                found.append(f"{path} at {width}px: {v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:4]}")
        sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        if sizes[0] > sizes[1]:
            found.append(f"{path} at {width}px: the page scrolls sideways {sizes}")
        shots = os.environ.get("CONSOLE_SCREENSHOTS")  # a folder: keep a picture of each page to look at
        if shots:
            name = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "home"
            page.screenshot(path=str(Path(shots) / f"{name}-{width}.png"), full_page=True)
