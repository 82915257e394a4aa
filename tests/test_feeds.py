"""The three feeds, parsed back: RSS 2.0 and Atom with feedparser and a hardened lxml
parser, JSON Feed with json.  Every item's fields are checked, the W3C Feed Validation
Service's rules are checked by hand, and the bytes are compared with golden files
(refresh: UPDATE_GOLDENS=1)."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import lxml.html
import pytest
from lxml import etree

from click.testing import CliRunner

from pipeline.content import markup
from pipeline.cli import cli
from pipeline.content.library import load_library
from pipeline.errors import ContentError
from pipeline.site.feeds import (ATOM_FILE, JSON_FILE, RSS_FILE, atom_feed, json_feed, render_feeds,
                            rss_feed)

from conftest import GOLDEN
from fixtures_site import write_article

NS = {
    "atom": "http://www.w3.org/2005/Atom",
    "content": "http://purl.org/rss/1.0/modules/content/",
    "dc": "http://purl.org/dc/elements/1.1/",
}
BASE = "https://my.klarity.health/newsletter"
SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                              huge_tree=False, remove_pis=False)
RFC822 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                    r"\d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def xml(data: bytes) -> etree._Element:
    return etree.fromstring(data, SAFE_PARSER)


@pytest.fixture
def big_library(content_dir, frozen):
    """The committed microneedling article plus three more (one edited, one with a sensitive
    topic, one dated in the future), read with the clock frozen at 2026-03-02."""
    write_article(content_dir, "sleep-basics", "2024-05-20", topics=("wellbeing",))
    write_article(content_dir, "hair-care", "2025-07-01", topics=("hair-loss", "skin-care"), updated="2025-08-15")
    write_article(content_dir, "next-year", "2027-01-01")
    return load_library(content_dir)


def articles_by_slug(library):
    return {a.slug: a for a in library.articles}


def content_links(html: str) -> list[str]:
    doc = lxml.html.fragment_fromstring(html, create_parent="div")
    return [el.get("href") or el.get("src") for el in doc.iter() if el.get("href") or el.get("src")]


def assert_full_article(html: str, article, settings) -> None:
    """What an email reader sees is in the item: body, numbered references with links,
    author block, disclaimer and privacy notice."""
    doc = lxml.html.fragment_fromstring(html, create_parent="div")
    text = " ".join(doc.text_content().split())
    refs = doc.xpath("//h2[.='References']/following-sibling::ol[1]/li")
    assert len(refs) == len(article.references)
    for li, ref in zip(refs, article.references):
        assert ref.text in " ".join(li.text_content().split())
        if ref.url:
            assert li.xpath(".//a/@href") == [ref.url]
    cites = doc.xpath("//sup[@class='cite']/a/@href")
    assert cites, "citations must link to the references"
    for href in cites:
        assert re.fullmatch(rf"{re.escape(BASE)}/articles/{article.slug}/#ref-\d+", href), href
    assert article.author.name in text and article.author.credentials in text
    assert " ".join(article.author.bio.split()) in text
    assert " ".join(settings.disclaimer.split()) in text
    assert " ".join(settings.privacy_notice.split()) in text
    assert not doc.xpath("//script|//style|//iframe|//form|//img")


# -- RSS ------------------------------------------------------------------------------

def test_rss_items_parse_back_with_every_field(big_library):
    parsed = feedparser.parse(rss_feed(big_library))
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "rss20"
    assert parsed.feed.link == f"{BASE}/"  # the site, not the feed
    by_slug = articles_by_slug(big_library)
    slugs = [e.link.rstrip("/").rsplit("/", 1)[1] for e in parsed.entries]
    assert slugs == ["hair-care", "sleep-basics", "microneedling"]  # newest first, future article left out
    for entry, slug in zip(parsed.entries, slugs):
        article = by_slug[slug]
        url = f"{BASE}/articles/{slug}/"
        assert entry.id == url and entry.link == url
        assert entry.title == article.title
        assert entry.author == article.author.name  # from dc:creator
        assert entry.summary == article.summary  # the plain <description>
        assert entry.published.endswith("+0000") or entry.published.endswith("+0100")
        assert parsedate_to_datetime(entry.published).tzinfo is not None
        assert parsedate_to_datetime(entry.published).hour == 7  # the send time, Europe/London
        assert [t.term for t in entry.tags] == [big_library.settings.topics[t]["name"] for t in article.topics]
        (content,) = entry.content
        assert_full_article(content.value, article, big_library.settings)


def test_rss_namespaces_channel_link_and_self(big_library):
    root = xml(rss_feed(big_library))
    assert root.tag == "rss" and root.get("version") == "2.0"
    for prefix in ("atom", "content", "dc"):
        assert root.nsmap[prefix] == NS[prefix]
    channel = root.find("channel")
    assert channel.findtext("link") == f"{BASE}/"
    (self_link,) = channel.findall("atom:link", NS)
    assert self_link.get("rel") == "self" and self_link.get("href") == f"{BASE}/{RSS_FILE}"
    assert self_link.get("type") == "application/rss+xml"
    items = channel.findall("item")
    assert len(items) == 3
    for item in items:
        assert item.find("content:encoded", NS) is not None
        assert item.findtext("dc:creator", namespaces=NS) == "Amy Murtagh"
        assert item.find("author") is None  # no email, so no RSS <author>; dc:creator carries it


def test_rss_last_build_date_is_the_newest_content_not_the_build_time(big_library):
    channel = xml(rss_feed(big_library)).find("channel")
    built = parsedate_to_datetime(channel.findtext("lastBuildDate"))
    # hair-care was updated on 2025-08-15: 07:00 BST is 06:00 UTC
    assert built == datetime(2025, 8, 15, 6, 0, tzinfo=timezone.utc)


# -- Atom -----------------------------------------------------------------------------

def test_atom_entries_parse_back_with_every_field(big_library):
    data = atom_feed(big_library)
    parsed = feedparser.parse(data)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    by_slug = articles_by_slug(big_library)
    assert len(parsed.entries) == 3
    for entry in parsed.entries:
        slug = entry.id.rstrip("/").rsplit("/", 1)[1]
        article = by_slug[slug]
        assert entry.id == entry.link == f"{BASE}/articles/{slug}/"
        assert entry.title == article.title and entry.title_detail.type == "text/plain"
        assert entry.author == article.author.name
        for stamp in (entry.published, entry.updated):
            assert RFC3339.match(stamp), stamp
            assert datetime.fromisoformat(stamp).tzinfo is not None
        assert entry.summary == article.summary
        (content,) = entry.content
        assert content.type == "text/html"
        assert_full_article(content.value, article, big_library.settings)
        assert [(t.term, t.label) for t in entry.tags] == [
            (t, big_library.settings.topics[t]["name"]) for t in article.topics]
    edited = next(e for e in parsed.entries if e.id.endswith("/hair-care/"))
    assert edited.published == "2025-07-01T07:00:00+01:00" and edited.updated == "2025-08-15T07:00:00+01:00"
    winter = next(e for e in parsed.entries if e.id.endswith("/microneedling/"))
    assert winter.published == winter.updated == "2023-02-17T07:00:00+00:00"


def test_atom_content_is_escaped_html_not_cdata_and_self_link_is_the_feed(big_library):
    data = atom_feed(big_library)
    assert b"CDATA" not in data
    root = xml(data)
    assert root.tag == f"{{{NS['atom']}}}feed"
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en-GB"
    links = {link.get("rel"): link.get("href") for link in root.findall("atom:link", NS)}
    assert links == {"self": f"{BASE}/{ATOM_FILE}", "alternate": f"{BASE}/"}
    assert root.findtext("atom:updated", namespaces=NS) == "2025-08-15T07:00:00+01:00"
    for content in root.iterfind("atom:entry/atom:content", NS):
        assert content.get("type") == "html"
        assert len(content) == 0 and content.text.startswith("<p>")  # escaped text, no child elements


# -- JSON Feed ------------------------------------------------------------------------

def test_json_feed_items_have_every_field(big_library):
    feed = json.loads(json_feed(big_library))
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["home_page_url"] == f"{BASE}/" and feed["feed_url"] == f"{BASE}/{JSON_FILE}"
    by_slug = articles_by_slug(big_library)
    assert [i["id"] for i in feed["items"]] == [f"{BASE}/articles/{s}/" for s in ("hair-care", "sleep-basics", "microneedling")]
    for item in feed["items"]:
        article = by_slug[item["id"].rstrip("/").rsplit("/", 1)[1]]
        assert item["url"] == item["id"]
        assert item["title"] == article.title and item["summary"] == article.summary
        assert item["authors"] == [{"name": article.author.name}]
        for key in ("date_published", "date_modified"):
            assert RFC3339.match(item[key]) and datetime.fromisoformat(item[key]).tzinfo is not None
        assert item["tags"] == [big_library.settings.topics[t]["name"] for t in article.topics]
        assert_full_article(item["content_html"], article, big_library.settings)


def test_the_three_feeds_carry_the_same_values(big_library):
    rss = feedparser.parse(rss_feed(big_library)).entries
    atom = feedparser.parse(atom_feed(big_library)).entries
    items = json.loads(json_feed(big_library))["items"]
    assert [e.id for e in rss] == [e.id for e in atom] == [i["id"] for i in items]
    assert [e.title for e in rss] == [e.title for e in atom] == [i["title"] for i in items]
    # raw HTML as written (feedparser sanitises RSS and Atom content slightly differently)
    rss_html = [el.text for el in xml(rss_feed(big_library)).iterfind("channel/item/content:encoded", NS)]
    atom_html = [el.text for el in xml(atom_feed(big_library)).iterfind("atom:entry/atom:content", NS)]
    assert rss_html == atom_html == [i["content_html"] for i in items]
    assert [parsedate_to_datetime(e.published) for e in rss] == \
        [datetime.fromisoformat(e.published) for e in atom] == [datetime.fromisoformat(i["date_published"]) for i in items]


# -- count, order, stability ------------------------------------------------------------

def test_feed_items_setting_caps_the_count_newest_first(content_dir, frozen):
    for n in range(1, 6):
        write_article(content_dir, f"extra-{n}", f"2024-01-0{n}")
    library = load_library(content_dir)
    library = type(library)(settings=library.settings.replace(feed_items=3), authors=library.authors,
                            articles=library.articles)
    ids = [i["id"] for i in json.loads(json_feed(library))["items"]]
    assert ids == [f"{BASE}/articles/extra-{n}/" for n in (5, 4, 3)]
    assert len(feedparser.parse(rss_feed(library)).entries) == len(feedparser.parse(atom_feed(library)).entries) == 3


def test_ids_stay_the_same_when_an_article_is_edited(content_dir, frozen):
    before = render_feeds(load_library(content_dir))
    path = content_dir / "articles" / "microneedling.md"
    text = path.read_text(encoding="utf-8")
    text = text.replace("published: 2023-02-17\n", "published: 2023-02-17\nupdated: 2024-06-03\n", 1)
    text = text.replace("## Overview", "A new paragraph added by the editors.\n\n## Overview", 1)
    path.write_text(text, encoding="utf-8")
    after = render_feeds(load_library(content_dir))
    for name in (RSS_FILE, ATOM_FILE):
        old, new = feedparser.parse(before[name]).entries[0], feedparser.parse(after[name]).entries[0]
        assert old.id == new.id == f"{BASE}/articles/microneedling/"
        assert old.published == new.published
        assert "new paragraph added" not in old.content[0].value and "new paragraph added" in new.content[0].value
    old_atom, new_atom = (feedparser.parse(f[ATOM_FILE]).entries[0] for f in (before, after))
    assert (old_atom.updated, new_atom.updated) == ("2023-02-17T07:00:00+00:00", "2024-06-03T07:00:00+01:00")
    old_json, new_json = (json.loads(f[JSON_FILE])["items"][0] for f in (before, after))
    assert old_json["id"] == new_json["id"]
    assert new_json["date_modified"] == "2024-06-03T07:00:00+01:00"
    old_rss, new_rss = (xml(f[RSS_FILE]).find("channel") for f in (before, after))
    assert old_rss.findtext("item/guid") == new_rss.findtext("item/guid")
    assert old_rss.findtext("lastBuildDate") != new_rss.findtext("lastBuildDate")


def test_feeds_do_not_depend_on_the_build_time(content_dir, frozen):
    library = load_library(content_dir)
    first = render_feeds(library)
    frozen.advance(days=40, hours=5, minutes=17)
    assert render_feeds(load_library(content_dir)) == first


def test_no_published_article_is_a_clear_error(content_dir, frozen):
    (content_dir / "articles" / "microneedling.md").unlink()
    write_article(content_dir, "later", "2030-01-01")
    with pytest.raises(ContentError, match="no published articles"):
        render_feeds(load_library(content_dir))


# -- the W3C Feed Validation Service's rules ----------------------------------------------

def test_rss_follows_the_feed_validator_rules(big_library):
    channel = xml(rss_feed(big_library)).find("channel")
    for name in ("title", "link", "description", "language", "lastBuildDate"):
        assert (channel.findtext(name) or "").strip(), name
    assert RFC822.match(channel.findtext("lastBuildDate"))
    assert re.fullmatch(r"[a-z]{2}(-[A-Za-z]{2})?", channel.findtext("language"))
    guids = []
    for item in channel.findall("item"):
        for name in ("title", "link", "description", "guid", "pubDate"):
            assert (item.findtext(name) or "").strip(), name
        names = [child.tag for child in item]
        # NeedDescriptionBeforeContent
        assert names.index("description") < names.index(f"{{{NS['content']}}}encoded")
        guid = item.find("guid")
        # isPermaLink="true" needs a full URL that can be opened: the article page
        assert guid.get("isPermaLink") == "true" and guid.text == item.findtext("link")
        assert guid.text.startswith("https://")
        guids.append(guid.text)
        assert RFC822.match(item.findtext("pubDate")), item.findtext("pubDate")
        # description is plain text; HTML lives only in content:encoded
        assert "<" not in item.findtext("description")
        assert_no_relative_or_unsafe_urls(item.findtext("content:encoded", namespaces=NS))
        assert "<" not in item.findtext("title")
    assert len(guids) == len(set(guids))


def test_atom_follows_the_feed_validator_rules(big_library):
    root = xml(atom_feed(big_library))
    for name in ("id", "title", "updated"):
        assert (root.findtext(f"atom:{name}", namespaces=NS) or "").strip(), name
    assert RFC3339.match(root.findtext("atom:updated", namespaces=NS))
    self_links = [link for link in root.findall("atom:link", NS) if link.get("rel") == "self"]
    assert [link.get("href") for link in self_links] == [f"{BASE}/{ATOM_FILE}"]  # where the document lives
    assert self_links[0].get("type") == "application/atom+xml"
    ids = []
    for entry in root.findall("atom:entry", NS):
        ids.append(entry.findtext("atom:id", namespaces=NS))
        # every entry has an author, since the feed has none
        assert entry.findtext("atom:author/atom:name", namespaces=NS)
        assert entry.find("atom:link", NS).get("href") == ids[-1]
        assert entry.find("atom:link", NS).get("rel") in (None, "alternate")
        for name in ("updated", "published"):
            assert RFC3339.match(entry.findtext(f"atom:{name}", namespaces=NS))
        assert entry.findtext("atom:updated", namespaces=NS) >= entry.findtext("atom:published", namespaces=NS)
        title = entry.find("atom:title", NS)
        assert title.get("type") in (None, "text") and len(title) == 0 and "<" not in title.text
        assert_no_relative_or_unsafe_urls(entry.findtext("atom:content", namespaces=NS))
    assert all(i.startswith("https://") for i in ids) and len(ids) == len(set(ids))
    # DuplicateUpdated: no two entries with the same atom:updated
    updated = root.xpath("atom:entry/atom:updated/text()", namespaces=NS)
    assert len(updated) == len(set(updated))
    # NonCanonicalURI: ids are in RFC 3986 canonical form (lowercase scheme and host, no default port)
    for value in ids + [root.findtext("atom:id", namespaces=NS)]:
        parts = urlsplit(value)
        assert parts.scheme == "https" and parts.netloc == parts.netloc.lower() and ":" not in parts.netloc
        assert value == value.strip() and "/../" not in value and "/./" not in value


def test_same_day_articles_get_distinct_deterministic_instants(content_dir, tmp_path, frozen):
    write_article(content_dir, "twin-b", "2024-04-04")
    write_article(content_dir, "twin-a", "2024-04-04")
    write_article(content_dir, "twin-c", "2024-04-01", updated="2024-04-04")  # edited on the twins' day
    library = load_library(content_dir)
    atom = atom_feed(library)
    stamps = {e.id: (e.published, e.updated) for e in feedparser.parse(atom).entries}
    # one second apart, in slug order, from the send time: stable whatever the file order
    assert stamps[f"{BASE}/articles/twin-a/"] == ("2024-04-04T07:00:00+01:00", "2024-04-04T07:00:00+01:00")
    assert stamps[f"{BASE}/articles/twin-b/"] == ("2024-04-04T07:00:01+01:00", "2024-04-04T07:00:01+01:00")
    assert stamps[f"{BASE}/articles/twin-c/"] == ("2024-04-01T07:00:00+01:00", "2024-04-04T07:00:02+01:00")
    updated = xml(atom).xpath("atom:entry/atom:updated/text()", namespaces=NS)
    assert len(updated) == len(set(updated))  # the W3C validator's DuplicateUpdated
    assert atom_feed(load_library(content_dir)) == atom  # a rebuild gives the same values
    # the pages carry the same instants, and the build prints no warning about them
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "build", "--out", str(tmp_path / "public")])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    page = lxml.html.fromstring((tmp_path / "public/articles/twin-b/index.html").read_bytes())
    assert page.xpath("//p[@class='byline']/time/@datetime")[0] == "2024-04-04T07:00:01+01:00"


def assert_no_relative_or_unsafe_urls(html: str) -> None:
    doc = lxml.html.fragment_fromstring(html, create_parent="div")
    for url in content_links(html):
        assert re.match(r"^(https://|http://|mailto:)", url), f"relative or unsafe URL in content: {url}"
    for el in doc.iter():
        assert not any(attr.startswith("on") or attr == "style" for attr in el.attrib), el.attrib


def test_hostile_markup_in_an_article_does_not_reach_the_feeds(content_dir, frozen):
    write_article(content_dir, "hostile", "2024-02-02",
                  body='Text<script>alert("x")</script> and '
                       # (an absolute href: a relative one, like a Markdown link's, is refused by the check;
                       # so is a raw <img>, which the renderer drops anyway: see below)
                       'and <a href="https://example.org/" onclick="steal()">a link</a>.[^1]\n')
    library = load_library(content_dir)
    for name, data in render_feeds(library).items():
        lowered = data.lower()
        assert b"alert" not in lowered and b"onclick" not in lowered and b"onerror" not in lowered, name
    html = markup.to_html('A <img src=x onerror=alert(1)> and <IMG/src="https://evil.example/p.gif" alt="">.\n',
                          lambda n: "")
    doc = lxml.html.fragment_fromstring(html, create_parent="div")
    assert not doc.xpath("//img") and "onerror" not in html


# -- golden files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [RSS_FILE, ATOM_FILE, JSON_FILE])
def test_feed_golden(name, library, frozen):
    """The committed content's feeds, byte for byte. Refresh with UPDATE_GOLDENS=1 (make goldens)."""
    data = render_feeds(library)[name]
    golden: Path = GOLDEN / "feeds" / name
    if os.environ.get("UPDATE_GOLDENS") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(data)
    assert golden.exists(), f"missing {golden}: run UPDATE_GOLDENS=1 pytest -k golden"
    assert data == golden.read_bytes(), f"{name} differs from {golden}; if intended, refresh with UPDATE_GOLDENS=1"
