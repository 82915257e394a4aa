"""The build's caches (issue 11, "builds that stay fast"): a change to any input renders again
exactly what depends on it, and nothing else; the ways the build saves work (one Markdown parse
where five were, pages rendered on several processes) give the same bytes as before.

Pages are counted as rendered by wrapping ``pipeline.site.pages.article_page`` (and the feeds'
``channel_feeds``), so a page rendered again with the same bytes still counts."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.content import cache, markup
from pipeline.content.library import check_library
from pipeline.site import pages, parallel

from fixtures_console import cli
from fixtures_site import write_article

EXTRA = ("café-crème-x", "zoë-2", "niño-3", "plain-4", "plain-5")
SLUGS = ("microneedling", "cafe-creme", "zoe-two", "nino-three", "plain-four", "plain-five")
TITLES = ("Café crème – £5 ‘tips’", "Zoë’s 護膚 routine 😊", "Niño — why", "Plain four", "Plain five")


@pytest.fixture
def site(content_dir: Path, monkeypatch):
    """The fixture library plus five articles, and counters of what each build renders."""
    for slug, title, day in zip(SLUGS[1:], TITLES, ("2025-01-01", "2025-01-01", "2025-01-02", "2025-01-03",
                                                      "2025-01-04")):
        write_article(content_dir, slug, day, title=title)
    seen = {"pages": [], "feeds": [], "checked": []}
    real_page, real_feeds = pages.article_page, pages.channel_feeds
    monkeypatch.setattr(pages, "article_page",
                        lambda view, *a, **k: seen["pages"].append(view.article.slug) or real_page(view, *a, **k))
    monkeypatch.setattr(pages, "channel_feeds",
                        lambda lib, views, chan: seen["feeds"].append(chan.folder) or real_feeds(lib, views, chan))
    import pipeline.content.library as library_module
    real_load = library_module._load_article
    monkeypatch.setattr(library_module, "_load_article",
                        lambda path, *a, **k: seen["checked"].append(path.stem) or real_load(path, *a, **k))
    return content_dir, seen


def build(content: Path, out: Path, seen: dict):
    for found in seen.values():
        found.clear()
    library, problems = check_library(content, cache_dir=out / ".cache")
    assert library is not None, [str(p) for p in problems if p.level == "error"]
    return pages.build_site(library, out)


def test_each_input_renders_again_exactly_what_depends_on_it(site, tmp_path, frozen, monkeypatch):
    content, seen = site
    out = tmp_path / "public"
    build(content, out, seen)
    assert sorted(seen["pages"]) == sorted(SLUGS) and sorted(seen["checked"]) == sorted(SLUGS)

    report = build(content, out, seen)  # nothing changed: nothing checked, rendered or written
    assert seen == {"pages": [], "feeds": [], "checked": []} and report.written == ()

    # one article's text: that article is checked and rendered again, with the feeds it is in
    path = content / "articles" / "plain-four.md"
    path.write_text(path.read_text(encoding="utf-8").replace("Opening paragraph", "Revised opening"),
                    encoding="utf-8")
    report = build(content, out, seen)
    assert seen["checked"] == ["plain-four"] and seen["pages"] == ["plain-four"]
    assert sorted(seen["feeds"]) == ["", "topics/wellbeing/"]
    assert "articles/plain-four/index.html" in report.written

    # an output file touched by hand is rendered again (its size and mtime are in the manifest)
    page = out / "articles" / "zoe-two" / "index.html"
    good = page.read_bytes()
    page.write_bytes(good.replace(b"</body>", b"<!-- hand edit --></body>"))
    report = build(content, out, seen)
    assert seen["pages"] == ["zoe-two"] and report.written == ("articles/zoe-two/index.html",)
    assert page.read_bytes() == good

    # the author (shown on every page of theirs): every article is checked and rendered again
    author = content / "authors" / "amy-murtagh.yaml"
    author.write_text(author.read_text(encoding="utf-8").replace("bio: ", "bio: Née Brontë. ", 1), encoding="utf-8")
    build(content, out, seen)
    assert sorted(seen["checked"]) == sorted(SLUGS) and sorted(seen["pages"]) == sorted(SLUGS)
    assert "Née Brontë" in page.read_text(encoding="utf-8")

    # a setting every page shows: every page rendered again, the articles not checked again
    site_file = content / "site.yaml"
    site_file.write_text(site_file.read_text(encoding="utf-8").replace(
        "publication_description: >-\n", "publication_description: >-\n  (Changed.)\n", 1), encoding="utf-8")
    build(content, out, seen)
    assert sorted(seen["pages"]) == sorted(SLUGS) and seen["checked"] == []

    # the code (a new check rule or page layout): everything checked and rendered again
    monkeypatch.setattr(cache, "code_hash", lambda: "another release")
    monkeypatch.setattr("pipeline.site.buildcache.code_hash", lambda: "another release")
    build(content, out, seen)
    assert sorted(seen["checked"]) == sorted(SLUGS) and sorted(seen["pages"]) == sorted(SLUGS)
    report = build(content, out, seen)
    assert seen == {"pages": [], "feeds": [], "checked": []} and report.written == ()


def test_a_review_or_a_correction_renders_that_article_again(site, tmp_path):
    content, seen = site
    out = tmp_path / "public"
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.db'}", "NEWSLETTER_SECRET": "build-cache-test",
           "NEWSLETTER_FAKE_NOW": "2026-03-02T12:00:00+00:00", "NEWSLETTER_STAFF_PASSWORD": "a long password for tests"}
    assert cli(content, "staff", "add", "rev@example.org", "--role", "reviewer", "--name", "Dr Zoë Brontë",
               "--credentials", "MBBS", env=env).exit_code == 0
    assert cli(content, "build", "--out", str(out), env=env).exit_code == 0
    assert cli(content, "build", "--out", str(out), env=env).exit_code == 0
    seen["pages"].clear()

    assert cli(content, "review", "approve", "zoe-two", "--as", "rev@example.org", env=env).exit_code == 0
    result = cli(content, "build", "--out", str(out), env=env)
    assert seen["pages"] == ["zoe-two"], result.output
    assert "Medically reviewed by" in (out / "articles" / "zoe-two" / "index.html").read_text(encoding="utf-8")

    seen["pages"].clear()
    path = content / "articles" / "nino-three.md"
    path.write_text(path.read_text(encoding="utf-8").replace("with a claim", "with a corrected claim"),
                    encoding="utf-8")
    result = cli(content, "correct", "nino-three", "--note", "The claim was wrong – fixed.", "--by", "Editor É",
                 "--no-build", env=env)
    assert result.exit_code == 0, result.output
    result = cli(content, "build", "--out", str(out), env=env)
    assert seen["pages"] == ["nino-three"], result.output
    assert "The claim was wrong – fixed." in (out / "articles" / "nino-three" / "index.html").read_text(encoding="utf-8")
    assert "The claim was wrong" in (out / "feed.xml").read_text(encoding="utf-8")


def test_pages_rendered_on_several_processes_are_the_same_bytes(site, tmp_path, frozen, monkeypatch):
    content, seen = site
    for i in range(12):
        write_article(content, f"many-{i:02d}", f"2025-02-{i + 1:02d}", title=f"Many {i} – ‘é’ 😊")
    monkeypatch.setattr(parallel, "MIN_PAGES", 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 2)
    assert parallel.workers(18) == 1  # another thread running (a server in this process): never fork
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)  # (other tests may leave idle threads)
    assert parallel.workers(18) == 2 and parallel.workers(3) == 1
    pids = tmp_path / "pids"
    real = pages.article_page

    def noting_pid(view, *a, **k):
        with open(pids, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return real(view, *a, **k)

    monkeypatch.setattr(pages, "article_page", noting_pid)
    forked = build(content, tmp_path / "forked", seen)
    assert len(set(pids.read_text().split())) == 2 and str(os.getpid()) not in pids.read_text().split()

    monkeypatch.setattr(parallel, "MIN_PAGES", 10_000)
    alone = build(content, tmp_path / "alone", seen)
    assert forked.written == alone.written  # the same order: the report is the same

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and ".cache" not in p.relative_to(root).parts}
    assert files(tmp_path / "forked") == files(tmp_path / "alone")
    # the manifest knows every page the workers wrote: the next build renders nothing
    pids.unlink()
    again = build(content, tmp_path / "forked", seen)
    assert again.written == () and not pids.exists()


def test_check_parses_an_article_once_unless_a_link_was_refused(content_dir, monkeypatch):
    parsed = {"main": 0, "links": 0}
    main, links = markup.parser(), markup.link_parser()
    real_main, real_links = main.parse, links.parse
    monkeypatch.setattr(main, "parse", lambda *a, **k: parsed.__setitem__("main", parsed["main"] + 1)
                        or real_main(*a, **k))
    monkeypatch.setattr(links, "parse", lambda *a, **k: parsed.__setitem__("links", parsed["links"] + 1)
                        or real_links(*a, **k))
    for slug in SLUGS[1:]:
        write_article(content_dir, slug, "2025-01-01")
    library, problems = check_library(content_dir)
    assert library is not None
    assert parsed == {"main": len(SLUGS), "links": 0}

    # a link markdown-it refuses parses again with every URL kept, and is reported at its line
    write_article(content_dir, "sneaky", "2025-01-02",
                  body="Opening with a claim.[^1]\n\n## Details\n\nSee [this](JaVaScRiPt:alert(1)) and both.[^1,2]\n")
    parsed.update(main=0, links=0)
    library, problems = check_library(content_dir)
    assert parsed == {"main": len(SLUGS) + 1, "links": 1}
    assert any(p.path.name == "sneaky.md" and "JaVaScRiPt:alert(1)" in p.message and p.level == "error"
               for p in problems)
