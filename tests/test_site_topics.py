"""Issue 11, "The web archive": per-topic archive pages and feeds for the topics not
marked sensitive, and nothing at all (no URL, link or file) for a sensitive one."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import feedparser
import lxml.etree
import lxml.html
import pytest
from pipeline.content.library import load_library
from pipeline.site.pages import build_site

from fixtures_site import write_article

BASE = "https://my.klarity.health/newsletter"
SENSITIVE = {"hair-loss": "Hair loss", "skin-conditions": "Skin conditions (eczema, psoriasis, acne)",
             "mental-health": "Mental health"}
URL_ATTRIBUTES = ("href", "src", "action", "content")


def slugish(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def names_a_sensitive_topic(value: str) -> bool:
    """True when a URL or path names a sensitive topic, by id or by (slugified) name."""
    value = unquote(value).lower()
    return any(word in value or word in slugish(value) for topic_id, name in SENSITIVE.items()
               for word in (topic_id, slugish(name), topic_id.replace("-", "_"), topic_id.replace("-", "")))


@pytest.fixture
def site(content_dir, tmp_path, frozen):
    site_yaml = content_dir / "site.yaml"
    site_yaml.write_text(site_yaml.read_text(encoding="utf-8") + "archive_page_size: 2\nfeed_items: 2\n",
                         encoding="utf-8")
    # skin-care: the fixture's microneedling and three more; wellbeing: one; the sensitive ones: several
    for i, day in enumerate(("2025-01-01", "2025-02-01", "2025-03-01")):
        write_article(content_dir, f"skin-{i}", day, title=f"Skin {i} – café ‘£’ 護膚 😊", topics=("skin-care",))
    write_article(content_dir, "calm", "2025-04-01", title="Calm", topics=("wellbeing", "mental-health"))
    write_article(content_dir, "thinning", "2025-05-01", title="Thinning hair", topics=("hair-loss",))
    write_article(content_dir, "eczema", "2025-06-01", title="Eczema", topics=("skin-conditions", "skin-care"))
    out = tmp_path / "public"
    build_site(load_library(content_dir), out)
    return content_dir, out


def page(path: Path):
    return lxml.html.fromstring(path.read_bytes())


def test_each_public_topic_has_a_paginated_archive(site):
    _, out = site
    first = page(out / "topics" / "skin-care" / "index.html")
    second = page(out / "topics" / "skin-care" / "page" / "2" / "index.html")
    third = page(out / "topics" / "skin-care" / "page" / "3" / "index.html")
    assert first.xpath("//h1/text()") == ["Skin care and treatments"]
    assert first.xpath("//link[@rel='canonical']/@href") == [f"{BASE}/topics/skin-care/"]
    assert second.xpath("//link[@rel='canonical']/@href") == [f"{BASE}/topics/skin-care/page/2/"]
    assert first.xpath("//link[@rel='next']/@href") == [f"{BASE}/topics/skin-care/page/2/"]
    assert second.xpath("//nav[@aria-label='Archive pages']//a[@rel='prev']/@href") == [f"{BASE}/topics/skin-care/"]
    assert third.xpath("//a[@rel='next']") == [] and not (out / "topics" / "skin-care" / "page" / "4").exists()
    listed = [a.text_content() for doc in (first, second, third)
              for a in doc.xpath("//section[@aria-labelledby='articles']//h3/a")]
    # newest first; every skin-care article (eczema is in a sensitive topic too, but also in skin-care)
    assert listed == ["Eczema", "Skin 2 – café ‘£’ 護膚 😊", "Skin 1 – café ‘£’ 護膚 😊", "Skin 0 – café ‘£’ 護膚 😊",
                      "What Is Microneedling?"]
    assert [a.text_content() for a in page(out / "topics" / "wellbeing" / "index.html")
            .xpath("//section[@aria-labelledby='articles']//h3/a")] == ["Calm"]
    # the main archive lists the public topics, and an article links its public topics only
    home = page(out / "index.html")
    assert home.xpath("//nav[@aria-labelledby='topics']//a/@href") == [f"{BASE}/topics/skin-care/",
                                                                       f"{BASE}/topics/wellbeing/"]
    calm = page(out / "articles" / "calm" / "index.html")
    assert calm.xpath("//p[@class='topics']/a/@href") == [f"{BASE}/topics/wellbeing/"]
    assert " ".join(calm.xpath("//p[@class='topics']")[0].text_content().split()) == \
        "Topics: Everyday wellbeing, Mental health"


def test_each_public_topic_has_three_feeds_of_its_own_articles(site):
    _, out = site
    rss = feedparser.parse((out / "topics" / "skin-care" / "feed.xml").read_bytes())
    atom = feedparser.parse((out / "topics" / "skin-care" / "atom.xml").read_bytes())
    assert not rss.bozo and not atom.bozo
    for parsed in (rss, atom):
        assert parsed.feed.title == "Klarity Health Library: Skin care and treatments"
        assert [e.link for e in parsed.entries] == [f"{BASE}/articles/eczema/", f"{BASE}/articles/skin-2/"]
    self_links = [link.href for link in atom.feed.links if link.rel == "self"]
    assert self_links == [f"{BASE}/topics/skin-care/atom.xml"]
    assert atom.feed.link == f"{BASE}/topics/skin-care/"
    feed = json.loads((out / "topics" / "skin-care" / "feed.json").read_bytes())
    assert feed["feed_url"] == f"{BASE}/topics/skin-care/feed.json"
    assert feed["home_page_url"] == f"{BASE}/topics/skin-care/"
    assert [i["id"] for i in feed["items"]] == [f"{BASE}/articles/eczema/", f"{BASE}/articles/skin-2/"]
    # autodiscovery on the topic page: its own feeds first, then the site's
    alternates = page(out / "topics" / "skin-care" / "index.html").xpath("//head/link[@rel='alternate']/@href")
    assert alternates == [f"{BASE}/topics/skin-care/{n}" for n in ("feed.xml", "atom.xml", "feed.json")] + \
        [f"{BASE}/{n}" for n in ("feed.xml", "atom.xml", "feed.json")]
    # and the sitemap lists the topic pages
    locs = lxml.etree.fromstring((out / "sitemap.xml").read_bytes()).xpath(
        "//s:loc/text()", namespaces={"s": "http://www.sitemaps.org/schemas/sitemap/0.9"})
    assert {f"{BASE}/topics/skin-care/", f"{BASE}/topics/skin-care/page/2/", f"{BASE}/topics/skin-care/page/3/",
            f"{BASE}/topics/wellbeing/"} <= set(locs)


def every_url(out: Path) -> list[tuple[str, str]]:
    """(file, URL or path) for every file and every URL any file of the site carries."""
    found = []
    for path in sorted(out.rglob("*")):
        relative = str(path.relative_to(out))
        if ".cache" in path.relative_to(out).parts:
            continue
        found.append((relative, relative))
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".html":
            doc = lxml.html.fromstring(data)
            found += [(relative, value) for attribute in URL_ATTRIBUTES
                      for value in doc.xpath(f"//@{attribute}") if "/" in value or attribute != "content"]
        elif path.suffix == ".xml":
            root = lxml.etree.fromstring(data)
            found += [(relative, value) for value in root.xpath("//@href | //@url")]
            found += [(relative, el.text) for el in root.iter() if isinstance(el.tag, str) and el.text
                      and el.text.strip().startswith("http")]
        elif path.suffix == ".json":
            found += [(relative, value) for value in re.findall(r'"(https?://[^"]+)"', data.decode("utf-8"))]
        elif path.suffix == ".txt":
            found += [(relative, value) for value in re.findall(r"https?://\S+", data.decode("utf-8"))]
    return found


def test_no_url_link_or_file_names_a_sensitive_topic(site):
    content_dir, out = site
    urls = every_url(out)
    assert len(urls) > 100  # the walk found the site
    assert any("topics/skin-care" in value for _, value in urls)  # it would see a topic URL
    # our own URLs and files (an article's reference may well link to another site's hair-loss page)
    ours = [(f, v) for f, v in urls if not v.startswith(("http://", "https://")) or v.startswith(BASE)]
    bad = [(f, v) for f, v in ours if names_a_sensitive_topic(v)]
    assert bad == []
    # the articles in sensitive topics are published, like any other, under their own slugs
    assert (out / "articles" / "thinning" / "index.html").is_file()


def test_a_topic_that_becomes_sensitive_loses_its_page_and_feeds(site):
    content_dir, out = site
    site_yaml = content_dir / "site.yaml"
    site_yaml.write_text(site_yaml.read_text(encoding="utf-8").replace(
        "    name: Everyday wellbeing\n    sensitive: false", "    name: Everyday wellbeing\n    sensitive: true"),
        encoding="utf-8")
    report = build_site(load_library(content_dir), out)
    assert "topics/wellbeing" in report.removed and not (out / "topics" / "wellbeing").exists()
    assert not [v for _, v in every_url(out) if "wellbeing" in v]


def test_a_public_topic_id_that_cannot_be_a_folder_is_one_clear_error(content_dir, tmp_path, frozen):
    site_yaml = content_dir / "site.yaml"
    site_yaml.write_text(site_yaml.read_text(encoding="utf-8").replace("  wellbeing:\n", "  Well Being/..:\n")
                         .replace("- wellbeing", "- Well Being/.."), encoding="utf-8")
    out = tmp_path / "public"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "build",
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    lines = [line for line in output.splitlines() if "Well Being" in line]
    assert len(lines) == 1 and "must be lowercase letters, digits and hyphens" in lines[0], output
    assert not (out / "index.html").exists()  # nothing written


def test_an_incremental_build_after_adding_an_old_article_equals_a_full_build(site, tmp_path):
    content_dir, out = site
    # an old article in a public topic: it lands on the last archive page, but page 1 lists the topic's count
    write_article(content_dir, "old-skin", "2020-01-01", title="Old skin", topics=("skin-care",))
    library = load_library(content_dir)
    build_site(library, out)
    build_site(library, tmp_path / "full", incremental=False)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")  # noqa: E731
                          if p.is_file() and ".cache" not in p.relative_to(root).parts}
    incremental, full = files(out), files(tmp_path / "full")
    assert incremental.keys() == full.keys()
    assert [name for name in full if incremental[name] != full[name]] == []
