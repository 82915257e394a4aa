"""The build at library scale (issue 11, "Scale"): a smoke test on 1,000 synthetic articles
(bench/synthetic.py; the 10,000-article figures come from bench/build.py, not from tests).

Times are compared as ratios of CPU time within one run, never against a fixed number."""
from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import lxml.etree
import lxml.html
import pytest

from pipeline.site import views
from pipeline.content import markup
from pipeline.content.library import check_library, load_library
from pipeline.site.feeds import render_feeds
from pipeline.site import topics, views
from pipeline.site.archive import page_size
from pipeline.site.views import public_articles
from pipeline.site.pages import build_site

from conftest import ROOT
from fixtures_site import write_article

sys.path.insert(0, str(ROOT / "bench"))
import synthetic  # noqa: E402

N = 1000
BASE = "https://my.klarity.health/newsletter"  # the fixture site's base_url: it has a path prefix


def outputs(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(root).parts}


def build(content: Path, out: Path, **kwargs):
    """Load through the content cache and build, as `newsletter build` does; (report, CPU seconds)."""
    start = time.process_time()
    library, problems = check_library(content, cache_dir=out / ".cache")
    assert library is not None, [str(p) for p in problems if p.level == "error"][:3]
    report = build_site(library, out, as_of=synthetic.last_day(N), **kwargs)
    return report, time.process_time() - start


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    content = tmp_path_factory.mktemp("big") / "content"
    synthetic.generate(content, N)
    return content


def topic_files(content: Path) -> tuple[int, dict[str, list[str]]]:
    """How many files the public topics add (pages and three feeds each), and each topic's
    slugs, newest first (their position gives the topic archive page of an article)."""
    library = load_library(content)
    archives = topics.topic_archives(library.settings, public_articles(library, synthetic.last_day(N)))
    count = sum(math.ceil(len(a.views) / page_size(library.settings)) + 3 for a in archives)
    return count, {a.topic.id: [v.article.slug for v in a.views] for a in archives}


def instants(content: Path) -> dict[str, tuple]:
    library = load_library(content)
    return {v.article.slug: (v.published_at, v.updated_at) for v in public_articles(library, synthetic.last_day(N))}


def moved(before: dict, after: dict, edited: str) -> set[str]:
    """The pages of the other articles whose instants an edit moved (same-day neighbours: the
    n-th in slug order is n seconds after the send time); their pages show them."""
    return {f"articles/{slug}/index.html" for slug in after if slug != edited and before.get(slug) != after[slug]}


def test_incremental_build_of_a_thousand_articles(big, tmp_path):
    content = tmp_path / "content"
    shutil.copytree(big, content)
    out = tmp_path / "public"
    cold, cold_cpu = build(content, out)
    pages = math.ceil(N / 50)
    extra, by_topic = topic_files(content)
    assert len(by_topic) == 2  # skin-care and wellbeing; hair-loss and skin-conditions are sensitive
    # articles, archive pages, 3 feeds, sitemap, robots.txt, 404, 5 icons, the topics' pages and feeds
    assert len(cold.written) == N + pages + 6 + 5 + extra
    assert (out / "page" / str(pages) / "index.html").is_file() and not (out / "page" / str(pages + 1)).exists()
    before = outputs(out)

    again, again_cpu = build(content, out)
    assert again.written == () and again.removed == ()
    assert outputs(out) == before  # bytes and mtimes
    assert again_cpu <= 0.2 * cold_cpu, (again_cpu, cold_cpu)

    # a correction to the newest article, the same day: its page, the feeds and archive page 1
    # (the sitemap's lastmod is a date, and it is still that day)
    newest = N - 1
    slug = f"article-{newest:05d}"
    text = synthetic.article_text(newest, edit=1).replace("\ntitle: ", "\ntitle: Corrected – ", 1)
    text = text.replace("\nauthor: ", f"\nupdated: {synthetic.last_day(N).isoformat()}\nauthor: ", 1)
    before = instants(content)
    (content / "articles" / f"{slug}.md").write_text(text, encoding="utf-8")
    edit, _ = build(content, out)
    neighbours = moved(before, instants(content), slug)
    own = [t for t, slugs in by_topic.items() if slug in slugs]
    assert set(edit.written) == {f"articles/{slug}/index.html", "feed.xml", "atom.xml", "feed.json", "index.html",
                                 *(f"topics/{t}/{name}" for t in own
                                   for name in ("index.html", "feed.xml", "atom.xml", "feed.json")), *neighbours}
    assert "Corrected (1)" in (out / "articles" / slug / "index.html").read_text(encoding="utf-8")

    # an old article (not in the feeds) on archive page 7: its page, that archive page, the sitemap
    old = N - 1 - 6 * 50 - 3
    slug = f"article-{old:05d}"
    path = content / "articles" / f"{slug}.md"
    before = instants(content)
    path.write_text(path.read_text(encoding="utf-8").replace("\ntitle: ", "\ntitle: Revised – ", 1)
                    .replace("\nauthor: ", "\nupdated: 2024-01-01\nauthor: ", 1), encoding="utf-8")
    edit, _ = build(content, out)
    topic_pages = {f"topics/{t}/page/{slugs.index(slug) // 50 + 1}/index.html" for t, slugs in by_topic.items()
                   if slug in slugs}
    neighbours = moved(before, instants(content), slug)
    assert neighbours  # 2024-01-01 is another article's publication day: one of them moves by a second
    assert set(edit.written) == {f"articles/{slug}/index.html", "page/7/index.html", "sitemap.xml", *topic_pages,
                                 *neighbours}

    # every file is what a full, non-incremental build into an empty folder gives
    library = load_library(content)
    full = build_site(library, tmp_path / "full", as_of=synthetic.last_day(N), incremental=False)
    assert len(full.written) == len(cold.written)
    assert {k: v[0] for k, v in outputs(out).items()} == {k: v[0] for k, v in outputs(tmp_path / "full").items()}


def test_a_template_change_rebuilds_everything(big, tmp_path, monkeypatch):
    out = tmp_path / "public"
    first, _ = build(big, out)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    base = templates / "web" / "base.html"
    base.write_text(base.read_text(encoding="utf-8").replace("<body>", "<body data-build=\"2\">"),
                    encoding="utf-8")
    monkeypatch.setattr(views, "TEMPLATES", templates / "web")
    monkeypatch.setattr("pipeline.site.pages.TEMPLATES", templates / "web")
    views.web_templates.cache_clear()
    try:
        second, _ = build(big, out)
    finally:
        views.web_templates.cache_clear()
    pages = {name for name in first.written if name.endswith(".html")}
    topic_pages = sum(math.ceil(len(slugs) / 50) for slugs in topic_files(big)[1].values())
    assert pages <= set(second.written) and len(pages) == N + math.ceil(N / 50) + 1 + topic_pages
    assert 'data-build="2"' in (out / "articles" / "article-00000" / "index.html").read_text(encoding="utf-8")


def test_feeds_render_only_the_newest_items(big, monkeypatch):
    library = load_library(big)
    rendered: list[str] = []
    real = markup.render_body
    monkeypatch.setattr(markup, "render_body", lambda body, *a, **k: rendered.append(body) or real(body, *a, **k))
    parsed = []
    real_parse = markup.parser().parse
    monkeypatch.setattr(markup.parser(), "parse", lambda body, *a, **k: parsed.append(body) or real_parse(body, *a, **k))
    files = render_feeds(library, synthetic.last_day(N))
    items = int(library.settings.feed_items)
    assert len(rendered) == items  # once per item for all three feeds, nothing for the other 980
    assert len(parsed) == items  # and that one parse also gives the standfirst (no second parse)
    newest = sorted(library.articles, key=lambda a: (a.published, a.slug), reverse=True)[:items]
    assert set(rendered) == {a.body for a in newest}
    atom = lxml.etree.fromstring(files["atom.xml"])
    assert len(atom.findall("{http://www.w3.org/2005/Atom}entry")) == items


def test_paginated_archive_sitemap_and_robots(content_dir, tmp_path, frozen):
    for i, day in enumerate(("2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04")):
        write_article(content_dir, f"extra-{i}", day, title=f"Extra {i} – café ‘£’ 護膚 😊")
    site = content_dir / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8") + "archive_page_size: 2\n", encoding="utf-8")
    out = tmp_path / "public"
    build_site(load_library(content_dir), out)
    # five articles (the fixture's one and four extra), two a page: index.html, page/2/, page/3/
    first = lxml.html.fromstring((out / "index.html").read_bytes())
    second = lxml.html.fromstring((out / "page" / "2" / "index.html").read_bytes())
    third = lxml.html.fromstring((out / "page" / "3" / "index.html").read_bytes())
    assert first.xpath("//link[@rel='next']/@href") == [f"{BASE}/page/2/"]
    assert first.xpath("//link[@rel='prev']") == []
    assert first.xpath("//h2[@id='issues']")  # the issues are on page 1 only
    assert not second.xpath("//h2[@id='issues']")
    assert second.xpath("//nav[@aria-label='Archive pages']//a[@rel='prev']/@href") == [f"{BASE}/"]
    assert second.xpath("//nav[@aria-label='Archive pages']//a[@rel='next']/@href") == [f"{BASE}/page/3/"]
    assert second.xpath("//link[@rel='canonical']/@href") == [f"{BASE}/page/2/"]
    assert third.xpath("//a[@rel='next']") == []
    listed = [h.text_content() for doc in (first, second, third) for h in doc.xpath("//section[@aria-labelledby='articles']//h3")]
    assert listed[:4] == [f"Extra {i} – café ‘£’ 護膚 😊" for i in (3, 2, 1, 0)] and len(listed) == 5

    sitemap = lxml.etree.fromstring((out / "sitemap.xml").read_bytes())
    ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    locs = sitemap.xpath("//s:loc/text()", namespaces=ns)
    assert locs[:3] == [f"{BASE}/", f"{BASE}/page/2/", f"{BASE}/page/3/"]
    # then the topic's archive pages (every article here is in wellbeing but the fixture's one)
    assert locs[3:5] == [f"{BASE}/topics/skin-care/", f"{BASE}/topics/wellbeing/"]
    assert f"{BASE}/articles/extra-3/" in locs and len(locs) == 3 + 1 + 2 + 5
    assert all(loc.startswith(f"{BASE}/") for loc in locs)
    assert (out / "robots.txt").read_text() == f"User-agent: *\nAllow: /\nSitemap: {BASE}/sitemap.xml\n"

    # fewer articles: the page past the last one is removed
    for i in range(3):
        (content_dir / "articles" / f"extra-{i}.md").unlink()
    report = build_site(load_library(content_dir), out)
    assert "page/3" in report.removed and not (out / "page" / "3").exists()
    assert not (out / "page" / "2").exists()
