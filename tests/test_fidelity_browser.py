"""Citation markers in headless Chromium at 375 px: a marker stays on the line of the word it
follows, never breaks inside, and each of its links is a 24x24 px tap target, in the email
and on the article page; a wide image fits the phone."""
from __future__ import annotations

import struct
import zlib
from datetime import date

import pytest

from pipeline.content.library import load_library
from pipeline.rendering.issue import Issue
from pipeline.rendering.render import render_issue
from pipeline.site.pages import build_site

from fixtures_site import write_article

pytestmark = pytest.mark.browser

# long words and many markers after punctuation: the cases that split at 375 px
SENTENCE = ("Microneedling helps with acne scars, enlarged pores and hyperhidrosis (excessive sweating).[^1,2] "
            "It can also improve hair regrowth in androgenetic alopecia for some patients.[^2] "
            "Prices range from £100–350 per session in the United Kingdom, café-side clinics included.[^1] ")
IMAGE = '![A dermaroller – 微针](https://images.example.org/roller.jpg "The roller"){width=1200 height=800}'
BODY = f"{SENTENCE * 4}\n\n{IMAGE}\n\n## Details – 微针\n\nMore detail with markers.[^1,2] {SENTENCE}\n"

MEASURE = """() => [...document.querySelectorAll('sup')].filter(sup => sup.querySelector('a[href*="#ref-"]')).map(sup => {
    // the page marks the word and its marker with a class; the email keeps their inline no-wrap only
    const group = sup.closest('.cite-group') || (sup.parentElement.style.whiteSpace === 'nowrap' ? sup.parentElement : null);
    return {
        supLines: sup.getClientRects().length,
        groupLines: group ? group.getClientRects().length : 0,
        links: [...sup.querySelectorAll('a')].map(a => { const r = a.getBoundingClientRect();
                                                       return [r.width, r.height]; }),
    };
})"""


def png(width: int, height: int) -> bytes:
    """A plain grey PNG of the given size, made here (nothing is downloaded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x99" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


ROLLER = png(1200, 800)


def serve_only_the_image(route):
    # the browser stands in for the reader's client: it fetches the image, and nothing else
    if route.request.url == "https://images.example.org/roller.jpg":
        route.fulfill(status=200, body=ROLLER, content_type="image/png")
    else:
        route.abort()


@pytest.fixture
def outputs(content_dir, tmp_path, frozen):
    write_article(content_dir, "markers", "2024-05-06", title="Markers – café 微针", body=BODY)
    library = load_library(content_dir)
    email = render_issue(Issue(date=date(2026, 3, 3), number=1, articles=(library.article("markers"),)),
                         library.settings).html
    build_site(library, tmp_path / "public")
    page = (tmp_path / "public/articles/markers/index.html").read_text(encoding="utf-8")
    return {"email": email, "page": page}


@pytest.mark.parametrize("which", ["email", "page"])
def test_markers_stay_with_their_word_and_are_big_enough_to_tap(browser, outputs, which):
    page = browser.new_page(viewport={"width": 375, "height": 800})
    try:
        page.route("**/*", serve_only_the_image)
        page.set_content(outputs[which], wait_until="load")
        markers = page.evaluate(MEASURE)
        assert len(markers) >= 14
        for marker in markers:
            assert marker["supLines"] == 1, marker  # "[2," / "4]" never split
            assert marker["groupLines"] == 1, marker  # the word and its marker share a line
            for width, height in marker["links"]:
                assert width >= 24 and height >= 24, marker
        # the 1200 px image fits the phone, keeping its ratio
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        box = page.locator("img[src='https://images.example.org/roller.jpg']").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375
        assert box["height"] == pytest.approx(box["width"] * 800 / 1200, abs=2)
    finally:
        page.close()
