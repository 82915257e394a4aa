"""Issue 11, "The web archive": the issue page ("view in browser") is a web page, not an
email. Built from a real rendered issue (compose + render), parsed with lxml."""
from __future__ import annotations

from datetime import date

import lxml.html
import pytest

from pipeline.content.library import load_library
from pipeline.rendering.issue import PLACEHOLDERS
from pipeline.site.cli import render_issue_for
from pipeline.site.pages import build_site, publish_issue

from fixtures_site import write_article

BASE = "https://my.klarity.health/newsletter"
EMAIL_ONLY = ("View this email in your browser", "View in your browser", "You are receiving this email",
              "this email")


@pytest.fixture
def published(content_dir, tmp_path, frozen):
    site_yaml = content_dir / "site.yaml"
    # a hostile-looking publication name: it must come through as text
    site_yaml.write_text(site_yaml.read_text(encoding="utf-8").replace(
        "publication_name: Klarity Health Library", "publication_name: Klarity Health Library – café ‘£’ 護膚 😊"),
        encoding="utf-8")
    write_article(content_dir, "sleep-basics", "2026-03-03", title="Sleep basics – ‘£’ 😊")
    library = load_library(content_dir)
    out = tmp_path / "public"
    rendered = render_issue_for(library, date(2026, 3, 3), out)
    assert rendered is not None
    # the email itself says both things, so a page that does not has dropped them
    assert "View this email in your browser" in rendered.html and "You are receiving this email" in rendered.html
    publish_issue(rendered, out, settings=library.settings)
    build_site(library, out, as_of=date(2026, 3, 3))
    return library, rendered, out


def test_issue_page_drops_the_email_only_text(published):
    library, rendered, out = published
    doc = lxml.html.fromstring((out / "issues" / rendered.issue.key / "index.html").read_bytes())
    text = " ".join(doc.text_content().split())
    for words in EMAIL_ONLY:
        assert words not in text, words
    assert rendered.issue.articles[0].title in text  # the content stayed
    # no link to the page itself, and no hidden inbox preview
    assert rendered.web_url not in doc.xpath("//body//a/@href")
    assert not [d for d in doc.xpath("//body//div[@style]") if "display:none" in d.get("style").replace(" ", "")]
    assert not doc.xpath("//*[@aria-roledescription]")
    # no subscriber data: the public links and greeting, no placeholder
    raw = (out / "issues" / rendered.issue.key / "index.html").read_text(encoding="utf-8")
    assert not [p for p in PLACEHOLDERS.values() if p in raw] and "personalise.invalid" not in raw
    hrefs = doc.xpath("//a/@href")
    assert f"{BASE}/unsubscribe" in hrefs and f"{BASE}/preferences" in hrefs


def test_issue_page_has_a_canonical_link_feed_links_and_one_main_landmark(published):
    library, rendered, out = published
    doc = lxml.html.fromstring((out / "issues" / rendered.issue.key / "index.html").read_bytes())
    assert doc.xpath("//head/link[@rel='canonical']/@href") == [f"{BASE}/issues/2026-03-03/"] == [rendered.web_url]
    alternates = [(link.get("type"), link.get("href")) for link in doc.xpath("//head/link[@rel='alternate']")]
    assert alternates == [("application/rss+xml", f"{BASE}/feed.xml"), ("application/atom+xml", f"{BASE}/atom.xml"),
                          ("application/feed+json", f"{BASE}/feed.json")]
    titles = doc.xpath("//head/link[@rel='alternate']/@title")
    assert titles[0] == "Klarity Health Library – café ‘£’ 護膚 😊 (RSS)"
    assert doc.xpath("//head/link[@rel='icon']/@href") == [f"{BASE}/favicon.svg", f"{BASE}/icon-64.png"]
    assert doc.xpath("//head/meta[@name='description']/@content") == [rendered.preheader]
    mains = doc.xpath("//main")
    assert len(mains) == 1 and mains[0].getparent().tag == "body" and len(doc.xpath("//body/*")) == 1
    assert rendered.issue.articles[0].title in mains[0].text_content()
    # the visible feed links, inside main, to files the build wrote
    nav = mains[0].xpath(".//nav")[-1]
    links = nav.xpath(".//a/@href")
    assert links == [f"{BASE}/", f"{BASE}/feed.xml", f"{BASE}/atom.xml", f"{BASE}/feed.json"]
    for href in links[1:]:
        assert (out / href.removeprefix(f"{BASE}/")).is_file()
    assert doc.xpath("//html/@lang") == ["en-GB"]
