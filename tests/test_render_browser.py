"""The rendered microneedling email in headless Chromium (the session ``browser``
fixture): no horizontal scrolling on a phone, a 600 px column on desktop, and every
citation and reference link visible and pointing where it should."""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from pipeline.rendering.compose import compose_issue
from pipeline.content.library import load_library
from pipeline.rendering.issue import Personal, personalise
from pipeline.rendering.render import render_issue
from pipeline.settings import load_settings

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).parent / "fixtures" / "library"  # the tests' own library
BASE = "https://my.klarity.health/newsletter"
ARTICLE_URL = f"{BASE}/articles/microneedling/"


@pytest.fixture(scope="module")
def email():
    settings = load_settings(CONTENT, env={})
    library = load_library(CONTENT, settings)
    rendered = render_issue(compose_issue(library, date(2026, 3, 3), number=7, scheduled=["microneedling"]), settings)
    html, _ = personalise(rendered, Personal(f"{BASE}/unsubscribe/TOKEN", f"{BASE}/preferences/TOKEN", "Hello Jo,"))
    return html, library.article("microneedling")


@pytest.fixture
def open_email(browser, email):
    pages = []

    def open_at(width: int):
        page = browser.new_page(viewport={"width": width, "height": 900})
        # loopback-only rule: the email must render with every request refused
        requests = []
        page.route("**/*", lambda route: (requests.append(route.request.url), route.abort()))
        page.set_content(email[0], wait_until="load")
        page.requests = requests
        pages.append(page)
        return page

    yield open_at
    for page in pages:
        page.close()


def test_phone_width_does_not_scroll_sideways(open_email):
    page = open_email(375)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # and the text really is one column: the h1 and the references list fit the screen
    for selector in ("h1", "li#ref-3", "text=Registered office"):
        box = page.locator(selector).first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, (selector, box)
    assert page.requests == []  # nothing was fetched


@pytest.mark.parametrize("width", [600, 1024])
def test_desktop_content_column_is_600px(open_email, width):
    page = open_email(width)
    column = page.evaluate("""() => {
        const h1 = document.querySelector('h1');
        let el = h1;
        while (el && !(el.tagName === 'DIV' && (el.getAttribute('style') || '').replace(/ /g, '').includes('max-width:600px')))
            el = el.parentElement;
        const r = el.getBoundingClientRect();
        return {left: r.left, width: r.width};
    }""")
    assert column["width"] == 600
    assert column["left"] == pytest.approx((width - 600) / 2, abs=1)  # centred
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", [375, 600])
def test_citation_and_reference_links_are_visible_and_point_where_they_should(open_email, email, width):
    page = open_email(width)
    article = email[1]
    cites = page.locator("sup a")  # the markers (their classes only served the CSS inliner)
    count = cites.count()
    assert count >= 30
    seen = set()
    for i in range(count):
        link = cites.nth(i)
        assert link.is_visible()
        box = link.bounding_box()
        assert box["width"] > 0 and box["height"] > 0 and box["x"] + box["width"] <= width
        href = link.get_attribute("href")
        match = re.fullmatch(re.escape(ARTICLE_URL) + r"#ref-(\d+)", href)
        assert match and link.inner_text() == match.group(1)
        number = int(match.group(1))
        seen.add(number)
        # the anchor it names exists in the email's reference list too
        assert page.locator(f"li#ref-{number}").count() == 1
    assert seen == {r.number for r in article.references}
    for ref in article.references:
        link = page.locator(f"li#ref-{ref.number} a")
        assert link.count() == 1 and link.is_visible()
        assert link.get_attribute("href") == ref.url and link.inner_text().replace("\n", "") == ref.url
        box = link.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        assert ref.text.split()[0] in page.locator(f"li#ref-{ref.number}").inner_text()


def test_footer_links_are_visible(open_email):
    page = open_email(375)
    for name, href in (("Unsubscribe", f"{BASE}/unsubscribe/TOKEN"), ("Manage your preferences", f"{BASE}/preferences/TOKEN"),
                       ("View this email in your browser", f"{BASE}/issues/2026-03-03/")):
        link = page.get_by_role("link", name=name, exact=True)
        assert link.count() == 1 and link.is_visible() and link.get_attribute("href") == href
    assert page.get_by_text("Hello Jo,", exact=True).is_visible()


def test_preview_screenshots_are_pngs_375_and_600_wide(content_dir, tmp_path):
    import struct
    import subprocess
    import sys

    # the real command in its own process (the session's Playwright already runs in this one)
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "preview",
                             "--article", "microneedling", "--out", str(tmp_path), "--screenshots"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'issue-375.png'}" in result.stdout
    for width in (375, 600):
        data = (tmp_path / f"issue-{width}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        png_width, png_height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert png_width == width and png_height > 3000  # the whole email, not one screen
