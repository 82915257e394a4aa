"""The archive pages in headless Chromium, served by the static app under uvicorn:
no horizontal scroll at 375 px and 1280 px, every internal link answers 200, and
axe-core finds no serious or critical accessibility violation.  Nothing but
127.0.0.1 may be contacted: any other request fails the test (no third-party
fonts, scripts or images)."""
from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path
from urllib.parse import urldefrag

import httpx
import pytest

from pipeline.content.library import load_library
from pipeline.site.cli import render_issue_for
from pipeline.site.pages import build_site, publish_issue
from pipeline.site.static_files import StaticSite

from conftest import ROOT, missing
from fixtures_site import sample_issue, serve, write_article
from test_site_meta import signed_off

pytestmark = pytest.mark.browser

AXE_JS = Path(os.environ.get("AXE_CORE_JS", ROOT / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"))
WIDTHS = (375, 1280)
# the archive, an article (with a review), a topic's archive, and an issue page from a real render
PAGES = ("/", "/articles/microneedling/", "/articles/sleep-basics/", "/topics/wellbeing/", "/issues/2026-03-03/")
# Routes of the web service (pipeline/web/), not files of public/: the static server alone answers 404.
WEB_SERVICE_PATHS = {"/subscribe", "/preferences", "/unsubscribe"}


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE_JS.is_file():
        missing(f"axe-core not found at {AXE_JS}: run `make system-deps` (npm install axe-core into .venv/node) "
                    "or set AXE_CORE_JS")
    return AXE_JS.read_text(encoding="utf-8")


@pytest.fixture
def site(content_dir, tmp_path, frozen, monkeypatch):
    # a table in an article body, and a second article, so the archive has a list
    write_article(content_dir, "sleep-basics", "2024-05-20", title="Sleep basics",
                  body="Sleep matters.[^1]\n\n## How long\n\n| Age | Hours a night, as recommended by sleep researchers |\n"
                       "| --- | --- |\n| Adults | 7 to 9 hours, every night of the week, including weekends |\n\n"
                       "More detail.[^2]\n")
    # a reviewed article: a reviewer's sign-off, as the build reads it from the database
    library = signed_off(load_library(content_dir), tmp_path, monkeypatch, "sleep-basics",
                         datetime(2026, 1, 10, 9, 0, tzinfo=timezone.utc))
    out = tmp_path / "public"
    publish_issue(sample_issue(library, date(2026, 3, 2), 1, ("microneedling",)), out, settings=library.settings)
    rendered = render_issue_for(library, date(2026, 3, 3), out)  # the real email, made a web page
    publish_issue(rendered, out, settings=library.settings)
    build_site(library, out)
    with serve(StaticSite(out)) as url:
        yield library, url


def local(url: str, base_url: str, server: str) -> str | None:
    """The server URL for a link into the site, or None for an external link."""
    base = base_url.rstrip("/")
    if url == base or url.startswith(base + "/"):
        return server + (url[len(base):] or "/")
    return None


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", PAGES)
def test_page_in_chromium(browser, axe_source, site, path, width):
    library, server = site
    base_url = library.settings.base_url
    context = browser.new_context(viewport={"width": width, "height": 900})
    outside: list[str] = []

    def guard(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    try:
        response = page.goto(server + path, wait_until="load")
        assert response.status == 200
        assert outside == [], f"the page fetched from outside 127.0.0.1: {outside}"

        overflow = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert overflow[0] <= overflow[1], f"horizontal scroll at {width}px: {overflow}"

        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        ids = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
        assert hrefs
        checked = 0
        with httpx.Client() as client:
            for href in hrefs:
                if href.startswith("#"):
                    assert href[1:] in ids, f"in-page link {href} has no target"
                    continue
                target = local(href, base_url, server)
                if target is None:
                    assert href.startswith(("https://", "mailto:", "tel:")), href
                    continue
                address, fragment = urldefrag(target)
                if address.removeprefix(server) in WEB_SERVICE_PATHS:
                    continue
                answer = client.get(address)
                assert answer.status_code == 200, f"{href} -> {answer.status_code}"
                if fragment:
                    assert f'id="{fragment}"' in answer.text, f"{href}: no element with id {fragment}"
                checked += 1
        assert checked >= 3

        page.add_script_tag(content=axe_source)
        results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, "\n".join(f"{v['id']} ({v['impact']}): {v['help']} - "
                                  f"{[n['target'] for n in v['nodes']][:5]}" for v in bad)
        assert results["passes"], "axe ran no rule: it did not load"
    finally:
        context.close()
