"""Issue 11, "The web archive": what an article page tells machines (Open Graph, Twitter
card, canonical URL, schema.org MedicalWebPage JSON-LD with its review), the favicon and
the feeds' icon, logo and rights line. Every page and feed is parsed, never grepped."""
from __future__ import annotations

import json
import struct
from datetime import date, datetime, timezone
from pathlib import Path

import feedparser
import lxml.etree
import lxml.html
import pytest

from pipeline.content.library import check_library, load_library
from pipeline.site.pages import build_site

from fixtures_site import write_article

BASE = "https://my.klarity.health/newsletter"  # the fixture's base_url: it has a path prefix
REVIEWER = "Dr Siân O’Connor – 王医生 😊"
HOSTILE = "Café </script><script>alert(1)</script> & “quotes” \u2028 £5 – 微针"
TITLE = " ".join(f"Sun care: {HOSTILE}".split())  # the library folds whitespace (U+2028 too) in titles


CREDENTIALS = "MBBS, MRCP (Dermatology) – Royal College of Physicians"


def signed_off(library, tmp_path: Path, monkeypatch, slug: str, on: datetime):
    """``library`` as the build sees it after a reviewer approved ``slug``'s current version on ``on``
    (pipeline.review: the one source of a review; front matter cannot claim one)."""
    from fixtures_console import add_staff, cheap_hashing
    from pipeline.clock import frozen_clock
    from pipeline.database import open_database
    from pipeline.review import reviews

    cheap_hashing(monkeypatch)
    engine = open_database(f"sqlite:///{tmp_path / 'reviews.db'}")
    reviewer = add_staff(engine, "sian@example.org", "reviewer", name=REVIEWER, credentials=CREDENTIALS)
    with frozen_clock(on):
        reviews.decide(engine, reviewer, library.article(slug), reviews.APPROVED)
    return reviews.attach(engine, library)


def page(path: Path) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(path.read_bytes())


def jsonld(doc) -> dict:
    scripts = doc.xpath("//script[@type='application/ld+json']")
    assert len(scripts) == 1 and not doc.xpath("//script[not(@type='application/ld+json')]")
    return json.loads(scripts[0].text)


def meta(doc) -> dict[str, str]:
    return {m.get("property") or m.get("name"): m.get("content") for m in doc.xpath("//head/meta[@content]")}


def aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


@pytest.fixture
def built(content_dir, tmp_path, frozen, monkeypatch):
    write_article(content_dir, "sun-care", "2025-06-01", title=json.dumps(f"Sun care: {HOSTILE}"),
                  topics=("skin-care",), updated="2025-07-01",
                  body="![A tube of sun cream on a towel](https://images.example.org/sun.jpg \"Sun cream\"){width=1200 "
                       "height=800}\n\nSun cream protects the skin.[^1]\n\n## How much\n\nA teaspoon.[^2]\n")
    library = signed_off(load_library(content_dir), tmp_path, monkeypatch, "sun-care",
                         datetime(2026, 2, 20, 10, 0, tzinfo=timezone.utc))
    out = tmp_path / "public"
    build_site(library, out)
    return out


def test_article_page_has_open_graph_twitter_card_and_an_absolute_canonical_url(built):
    doc = page(built / "articles" / "microneedling" / "index.html")
    url = f"{BASE}/articles/microneedling/"
    assert doc.xpath("//head/link[@rel='canonical']/@href") == [url]
    tags = meta(doc)
    assert tags["og:type"] == "article" and tags["og:url"] == url and tags["og:locale"] == "en_GB"
    assert tags["og:title"] == tags["twitter:title"] == "What Is Microneedling?"
    assert tags["og:site_name"] == "Klarity Health Library"
    assert tags["og:description"].startswith("Microneedling uses small")
    # no lead image: the site icon, absolute and under the prefix, and a plain summary card
    assert tags["og:image"] == tags["twitter:image"] == f"{BASE}/icon-512.png" and tags["twitter:card"] == "summary"
    assert (built / "icon-512.png").is_file()
    assert aware(tags["article:published_time"]) == aware("2023-02-17T07:00:00+00:00")

    sun = meta(page(built / "articles" / "sun-care" / "index.html"))
    assert sun["og:title"] == TITLE  # parsed back exactly: attributes are escaped
    assert sun["og:image"] == "https://images.example.org/sun.jpg" and sun["twitter:card"] == "summary_large_image"
    assert (sun["og:image:width"], sun["og:image:height"]) == ("1200", "800")
    assert sun["og:image:alt"] == "A tube of sun cream on a towel"
    assert aware(sun["article:modified_time"]).date() == date(2025, 7, 1)


def test_article_json_ld_is_a_medical_web_page_with_its_author_and_dates(built, library):
    doc = page(built / "articles" / "microneedling" / "index.html")
    data = jsonld(doc)
    article = library.article("microneedling")
    assert data["@context"] == "https://schema.org" and data["@type"] == "MedicalWebPage"
    assert data["url"] == data["@id"] == f"{BASE}/articles/microneedling/"
    assert data["headline"] == article.title and data["inLanguage"] == "en-GB"
    author = data["author"]
    assert author["@type"] == "Person" and author["name"] == "Amy Murtagh"
    assert author["hasCredential"] == {"@type": "EducationalOccupationalCredential",
                                       "name": article.author.credentials}
    assert author["url"] == f"{BASE}/articles/microneedling/#section-author"
    assert aware(data["datePublished"]) == aware(data["dateModified"]) == aware("2023-02-17T07:00:00+00:00")
    assert data["publisher"]["name"] == "Klarity / Managed Self Ltd"
    assert data["publisher"]["logo"]["url"] == f"{BASE}/icon-512.png"
    # no review yet: neither field, rather than an empty one
    assert "lastReviewed" not in data and "reviewedBy" not in data


def test_a_review_gives_last_reviewed_and_reviewed_by_with_credentials(built):
    doc = page(built / "articles" / "sun-care" / "index.html")
    data = jsonld(doc)
    assert data["name"] == TITLE  # the JSON survived the <script> element
    assert data["lastReviewed"] == "2026-02-20"
    assert data["reviewedBy"]["@type"] == "Person" and data["reviewedBy"]["name"] == REVIEWER
    assert data["reviewedBy"]["hasCredential"]["name"] == CREDENTIALS
    assert aware(data["dateModified"]).date() == date(2025, 7, 1) and data["image"] == "https://images.example.org/sun.jpg"
    # and the reader sees it: a byline and a card, linked within the page
    byline = " ".join(doc.xpath("//header/p[@class='byline reviewed']")[0].text_content().split())
    assert byline == f"Medically reviewed by {REVIEWER}, {CREDENTIALS} on 20 February 2026"
    assert doc.xpath("//section[@id='section-reviewer']//strong/text()") == [REVIEWER]


def test_json_ld_cannot_be_closed_by_article_text(built):
    raw = (built / "articles" / "sun-care" / "index.html").read_text(encoding="utf-8")
    script = raw.split('<script type="application/ld+json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in script and ">" not in script and "&" not in script
    assert raw.count("</script>") == 1


@pytest.mark.parametrize("front", ["reviewed_by: sian-oconnor\nreviewed_on: 2026-01-01\n", "reviewed_on: 2026-01-01\n"])
def test_front_matter_cannot_claim_a_review(content_dir, frozen, front):
    """A review is a reviewer's sign-off in the database; an article file claiming one is refused at its line."""
    path = write_article(content_dir, "reviewed", "2025-01-01")
    path.write_text(path.read_text(encoding="utf-8").replace("author: amy-murtagh\n", f"author: amy-murtagh\n{front}"),
                    encoding="utf-8")
    library, problems = check_library(content_dir)
    errors = [p for p in problems if p.level == "error"]
    assert library is None and errors and all("newsletter review approve" in e.message for e in errors)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(lines[e.line - 1].startswith(("reviewed_by:", "reviewed_on:")) for e in errors)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_favicon_is_our_own_svg_and_every_page_links_it(built):
    svg = lxml.etree.fromstring((built / "favicon.svg").read_bytes())
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.xpath("//*[@href or @xlink:href]", namespaces={
        "xlink": "http://www.w3.org/1999/xlink"}) == []  # draws, fetches nothing
    for name, size in (("icon-64.png", (64, 64)), ("icon-144.png", (144, 144)), ("icon-512.png", (512, 512)),
                       ("logo.png", (288, 144))):
        assert png_size((built / name).read_bytes()) == size
    for html in ("index.html", "articles/microneedling/index.html", "topics/skin-care/index.html", "404.html"):
        doc = page(built / html)
        icons = doc.xpath("//head/link[@rel='icon']")
        assert [(i.get("href"), i.get("type")) for i in icons] == [(f"{BASE}/favicon.svg", "image/svg+xml"),
                                                                   (f"{BASE}/icon-64.png", "image/png")], html


def test_feeds_carry_an_icon_a_logo_and_the_publishers_rights_line(built):
    rights = "© 2025 Klarity / Managed Self Ltd. All rights reserved. Company number 10696687."
    rss = feedparser.parse((built / "feed.xml").read_bytes())
    assert not rss.bozo, rss.get("bozo_exception")
    assert rss.feed.image.href == f"{BASE}/icon-144.png" and rss.feed.image.link == f"{BASE}/"
    assert int(rss.feed.image.width) <= 144  # RSS 2.0: at most 144 px wide
    assert rss.feed.rights == rights
    atom = feedparser.parse((built / "atom.xml").read_bytes())
    assert not atom.bozo, atom.get("bozo_exception")
    assert atom.feed.icon == f"{BASE}/icon-64.png" and atom.feed.logo == f"{BASE}/logo.png"
    assert atom.feed.rights == rights
    feed = json.loads((built / "feed.json").read_bytes())
    assert feed["icon"] == f"{BASE}/icon-512.png" and feed["favicon"] == f"{BASE}/icon-64.png"
    # each image exists and has the size the format asks for
    assert png_size((built / "icon-144.png").read_bytes())[0] <= 144
    logo = png_size((built / "logo.png").read_bytes())
    assert logo[0] == 2 * logo[1]  # Atom: a 2:1 logo
    # the topic feeds too
    topic = feedparser.parse((built / "topics" / "skin-care" / "atom.xml").read_bytes())
    assert topic.feed.rights == rights and topic.feed.logo == f"{BASE}/logo.png"
