"""The static archive (pages parsed with lxml), issue publishing, the byte-stable writer,
`newsletter build`, and the static file server under a real uvicorn on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import httpx
import lxml.html
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.content.library import load_library
from pipeline.errors import ContentError, RenderError
from pipeline.rendering.issue import PLACEHOLDERS
from pipeline.site.pages import SiteWriter, build_site, publish_issue, published_issues
from pipeline.site.static_files import StaticSite

from conftest import ROOT
from fixtures_site import sample_issue, serve, write_article

BASE = "https://my.klarity.health/newsletter"
FEED_TYPES = {"feed.xml": "application/rss+xml", "atom.xml": "application/atom+xml", "feed.json": "application/feed+json"}


def page(path: Path) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(path.read_bytes())


def text_of(el) -> str:
    return " ".join(el.text_content().split())


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every served file (the build cache under .cache/ is not output)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(root).parts}


@pytest.fixture
def public(tmp_path, library, frozen) -> Path:
    out = tmp_path / "public"
    build_site(library, out)
    return out


# -- the article page ----------------------------------------------------------------------

def test_article_page_has_everything_the_email_has(public, library):
    article = library.article("microneedling")
    doc = page(public / "articles" / "microneedling" / "index.html")
    settings = library.settings
    assert doc.get("lang") == "en-GB"
    assert [text_of(h) for h in doc.xpath("//h1")] == [article.title]
    assert doc.findtext(".//title").startswith(article.title)
    assert text_of(doc.xpath("//p[@class='summary']")[0]) == article.summary
    body_text = text_of(doc.xpath("//div[@class='body']")[0])
    assert "Microneedling is a technique where a small, fine needle" in body_text
    # references: numbered, id=ref-N, full text and a link
    refs = doc.xpath("//section[@class='references']/ol/li")
    assert [li.get("id") for li in refs] == [f"ref-{r.number}" for r in article.references]
    for li, ref in zip(refs, article.references):
        assert ref.text in text_of(li)
        assert li.xpath(".//a/@href") == ([ref.url] if ref.url else [])
    # every citation jumps to a reference on this page
    cites = doc.xpath("//sup[@class='cite']/a/@href")
    assert cites and all(h.startswith("#ref-") for h in cites)
    ids = doc.xpath("//@id")
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert {h[1:] for h in cites} <= set(ids)
    # author card, disclaimer, privacy notice, publisher footer
    card = text_of(doc.xpath("//section[contains(@class,'author-card')]")[0])
    for value in (article.author.name, article.author.credentials, " ".join(article.author.bio.split())):
        assert value in card
    notices = text_of(doc.xpath("//section[@class='notices']")[0])
    assert " ".join(settings.disclaimer.split()) in notices
    assert " ".join(settings.privacy_notice.split()) in notices
    footer = text_of(doc.xpath("//body/div/footer")[0])
    for value in ("Klarity / Managed Self Ltd", "10696687", "362 5758 74", "Bournemouth BH4 8DT",
                  "library@my.klarity.health"):
        assert value in footer
    # no script runs: the one <script> is JSON-LD data (tests/test_site_meta.py parses it)
    assert doc.xpath("//script/@type") == ["application/ld+json"] and not doc.xpath("//link[@rel='stylesheet']")


def test_article_page_links_its_feeds_and_canonical_url(public):
    doc = page(public / "articles" / "microneedling" / "index.html")
    alternates = [(link.get("type"), link.get("href")) for link in doc.xpath("//head/link[@rel='alternate']")]
    # the site's feeds, then those of the article's public topic
    assert alternates == [(media, f"{BASE}/{name}") for name, media in FEED_TYPES.items()] + \
        [(media, f"{BASE}/topics/skin-care/{name}") for name, media in FEED_TYPES.items()]
    assert doc.xpath("//head/link[@rel='canonical']/@href") == [f"{BASE}/articles/microneedling/"]
    times = doc.xpath("//time/@datetime")
    assert times == ["2023-02-17T07:00:00+00:00"]


def test_future_article_gets_no_page_until_its_day(content_dir, tmp_path, frozen):
    write_article(content_dir, "coming-soon", "2026-03-10")
    out = tmp_path / "public"
    build_site(load_library(content_dir), out)
    assert not (out / "articles" / "coming-soon").exists()
    frozen.set(datetime(2026, 3, 10, 7, 0, tzinfo=timezone.utc))
    report = build_site(load_library(content_dir), out)
    assert "articles/coming-soon/index.html" in report.written
    assert "coming-soon" in (out / "feed.json").read_text()


def test_withdrawn_article_page_is_removed(content_dir, tmp_path, frozen):
    path = write_article(content_dir, "withdrawn", "2024-01-01")
    out = tmp_path / "public"
    build_site(load_library(content_dir), out)
    assert (out / "articles" / "withdrawn" / "index.html").exists()
    path.unlink()
    report = build_site(load_library(content_dir), out)
    # its topic (wellbeing) has no other article, so its page and feeds go too
    assert report.removed == ("articles/withdrawn", "topics/wellbeing")
    assert not (out / "articles" / "withdrawn").exists()
    assert "withdrawn" not in (out / "index.html").read_text()


# -- the archive and issues ------------------------------------------------------------------

def test_archive_lists_issues_and_articles_newest_first(content_dir, tmp_path, frozen):
    write_article(content_dir, "sleep-basics", "2024-05-20", title="Sleep basics")
    library = load_library(content_dir)
    out = tmp_path / "public"
    publish_issue(sample_issue(library, date(2026, 2, 27), 1, ("microneedling",)), out, settings=library.settings)
    publish_issue(sample_issue(library, date(2026, 3, 2), 2, ("sleep-basics",)), out, settings=library.settings)
    build_site(library, out)
    doc = page(out / "index.html")
    issues = doc.xpath("//section[@aria-labelledby='issues']//li")
    assert [li.xpath(".//a/@href")[0] for li in issues] == [f"{BASE}/issues/2026-03-02/", f"{BASE}/issues/2026-02-27/"]
    assert "Sleep basics" in text_of(issues[0]) and "2 March 2026" in text_of(issues[0])
    articles = doc.xpath("//section[@aria-labelledby='articles']//h3/a")
    assert [(a.text, a.get("href")) for a in articles] == [
        ("Sleep basics", f"{BASE}/articles/sleep-basics/"),
        ("What Is Microneedling?", f"{BASE}/articles/microneedling/")]
    feed_links = doc.xpath("//section[@aria-labelledby='feeds']//a/@href")
    assert feed_links == [f"{BASE}/{name}" for name in FEED_TYPES]
    assert len(doc.xpath("//h1")) == 1


def test_published_issue_page_has_no_subscriber_data(tmp_path, library, frozen):
    out = tmp_path / "public"
    rendered = sample_issue(library, date(2026, 3, 2), 7, ("microneedling",))
    report = publish_issue(rendered, out, settings=library.settings)
    assert report.written == ("issues/2026-03-02/index.html", "issues/2026-03-02/issue.json")
    html = (out / "issues" / "2026-03-02" / "index.html").read_text()
    for placeholder in PLACEHOLDERS.values():
        assert placeholder not in html
    assert "personalise.invalid" not in html
    hrefs = lxml.html.fromstring(html).xpath("//a/@href")
    assert f"{BASE}/unsubscribe" in hrefs and f"{BASE}/preferences" in hrefs
    assert all("token" not in h and "?" not in h for h in hrefs)
    assert "Hello," in html
    record = json.loads((out / "issues" / "2026-03-02" / "issue.json").read_text())
    assert record == {"key": "2026-03-02", "date": "2026-03-02", "number": 7, "kind": "daily",
                      "subject": "What Is Microneedling?", "articles": ["microneedling"],
                      "url": f"{BASE}/issues/2026-03-02/"}


def test_published_issue_stays_in_the_archive_across_builds(tmp_path, library, frozen):
    out = tmp_path / "public"
    publish_issue(sample_issue(library, date(2026, 3, 2), 1, ("microneedling",)), out, settings=library.settings)
    build_site(library, out)
    first = snapshot(out)
    frozen.advance(days=3)
    build_site(library, out)
    assert snapshot(out) == first
    assert [r.key for r in published_issues(out)] == ["2026-03-02"]
    assert f"{BASE}/issues/2026-03-02/" in (out / "index.html").read_text()


def test_issue_with_a_foreign_web_url_is_refused(tmp_path, library):
    rendered = sample_issue(library, date(2026, 3, 2), 1, ("microneedling",))
    rendered = type(rendered)(**{**rendered.__dict__, "web_url": "https://elsewhere.example/x/"})
    with pytest.raises(RenderError, match="web_url"):
        publish_issue(rendered, tmp_path / "public", settings=library.settings)


def test_malformed_issue_record_names_the_file(tmp_path, library, frozen):
    out = tmp_path / "public"
    bad = out / "issues" / "2026-03-02" / "issue.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ContentError) as info:
        build_site(library, out)
    assert str(bad) in str(info.value)


# -- the writer and idempotence ---------------------------------------------------------------

def test_rebuild_without_changes_is_byte_identical_and_keeps_mtimes(public, library, frozen):
    first = snapshot(public)
    assert set(first) == {"404.html", "index.html", "feed.xml", "atom.xml", "feed.json", "sitemap.xml",
                          "robots.txt", "articles/microneedling/index.html", "favicon.svg", "icon-64.png",
                          "icon-144.png", "icon-512.png", "logo.png", "topics/skin-care/index.html",
                          "topics/skin-care/feed.xml", "topics/skin-care/atom.xml", "topics/skin-care/feed.json"}
    frozen.advance(days=1, hours=3)
    report = build_site(library, public)
    assert report.written == () and len(report.unchanged) == len(first)
    assert snapshot(public) == first  # bytes and mtimes


def test_two_builds_at_different_times_give_the_same_bytes(tmp_path, library, frozen):
    build_site(library, tmp_path / "a")
    frozen.advance(days=200)
    build_site(library, tmp_path / "b")
    a = {k: v[0] for k, v in snapshot(tmp_path / "a").items()}
    b = {k: v[0] for k, v in snapshot(tmp_path / "b").items()}
    assert a == b


def test_writer_replaces_only_changed_files_and_stays_inside_its_root(tmp_path):
    writer = SiteWriter(tmp_path)
    assert writer.write("a/b.txt", "one") is True
    assert writer.write("a/b.txt", "one") is False
    assert writer.write("a/b.txt", "two") is True
    assert (tmp_path / "a" / "b.txt").read_text() == "two"
    assert oct((tmp_path / "a" / "b.txt").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]  # no temporary file left
    for bad in ("../escape.txt", "/etc/x", "a/../../x"):
        with pytest.raises(ValueError):
            writer.write(bad, "x")


# -- newsletter build ----------------------------------------------------------------------------

def test_build_command_writes_then_reports_nothing_changed(content_dir, tmp_path, frozen):
    out = tmp_path / "site"
    runner = CliRunner()
    first = runner.invoke(cli, ["--content", str(content_dir), "build", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert f"wrote {out / 'feed.xml'}" in first.output and "17 written, 0 unchanged" in first.output
    second = runner.invoke(cli, ["--content", str(content_dir), "build", "--out", str(out)])
    assert second.exit_code == 0 and "0 written, 17 unchanged, 0 removed" in second.output


def test_build_fails_on_a_library_error_and_writes_nothing(content_dir, tmp_path):
    (content_dir / "articles" / "broken.md").write_text("---\ntitle: Broken\nslug: Not A Slug\n---\nBody\n")
    out = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "build",
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "broken.md:" in last
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_build_with_date_publishes_that_days_issue(content_dir, tmp_path, frozen):
    out = tmp_path / "site"
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "build", "--out", str(out),
                                      "--date", "2026-03-02"])
    assert result.exit_code == 0, result.output
    html = (out / "issues" / "2026-03-02" / "index.html").read_text()
    assert "personalise.invalid" not in html
    hrefs = set(lxml.html.fromstring(html).xpath("//a/@href"))
    assert {f"{BASE}/unsubscribe", f"{BASE}/preferences"} <= hrefs
    assert json.loads((out / "issues" / "2026-03-02" / "issue.json").read_text())["number"] == 1
    assert f"{BASE}/issues/2026-03-02/" in (out / "index.html").read_text()
    assert "issue 2026-03-02 (number 1): What Is Microneedling?" in result.output
    # the next day: the queue has moved on (the only article was sent), so nothing is due
    nothing = CliRunner().invoke(cli, ["--content", str(content_dir), "build", "--out", str(out),
                                       "--date", "2026-03-03"])
    assert nothing.exit_code == 0 and "no issue for 2026-03-03: nothing is due" in nothing.output
    assert not (out / "issues" / "2026-03-03").exists()


# -- the static file server, under uvicorn ----------------------------------------------------------

@pytest.fixture
def server(public):
    with serve(StaticSite(public)) as url:
        yield url


def test_served_content_types(server, public):
    with httpx.Client(base_url=server) as client:
        for name, media in FEED_TYPES.items():
            response = client.get(f"/{name}")
            assert response.status_code == 200
            assert response.headers["content-type"].split(";")[0] == media
            assert response.content == (public / name).read_bytes()
        for path in ("/", "/articles/microneedling/"):
            response = client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert client.get("/").content == (public / "index.html").read_bytes()


def test_etag_last_modified_and_conditional_get(server, public):
    path = public / "atom.xml"
    # the identity representation (the gzip one, with its own ETag: tests/test_web_gzip.py)
    with httpx.Client(base_url=server, headers={"Accept-Encoding": "identity"}) as client:
        response = client.get("/atom.xml")
        etag = response.headers["etag"]
        assert etag == f'"{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}"'  # strong: no W/
        last_modified = response.headers["last-modified"]
        assert parsedate_to_datetime(last_modified) == datetime.fromtimestamp(int(path.stat().st_mtime), timezone.utc)
        for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"other", W/{etag}'}, {"If-None-Match": "*"},
                        {"If-Modified-Since": last_modified}):
            cached = client.get("/atom.xml", headers=headers)
            assert cached.status_code == 304, headers
            assert cached.content == b"" and cached.headers["etag"] == etag
        assert client.get("/atom.xml", headers={"If-None-Match": '"stale"'}).status_code == 200
        # If-None-Match wins over If-Modified-Since
        assert client.get("/atom.xml", headers={"If-None-Match": '"stale"',
                                                "If-Modified-Since": last_modified}).status_code == 200
        earlier = format_datetime(datetime(2020, 1, 1, tzinfo=timezone.utc), usegmt=True)
        assert client.get("/atom.xml", headers={"If-Modified-Since": earlier}).status_code == 200
        # a changed file gets a new validator
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.write_bytes(path.read_bytes().replace(b"Klarity Health Library", b"Klarity Library", 1))
        changed = client.get("/atom.xml", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_directories_redirects_head_methods_and_404(server, public):
    with httpx.Client(base_url=server, headers={"Accept-Encoding": "identity"}) as client:
        redirect = client.get("/articles/microneedling")
        assert redirect.status_code == 301 and redirect.headers["location"] == "/articles/microneedling/"
        head = client.head("/feed.xml")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == (public / "feed.xml").stat().st_size
        assert client.post("/feed.xml").status_code == 405
        missing = client.get("/articles/nothing-here/")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "text/html; charset=utf-8"
        assert "Page not found" in missing.text and "etag" not in missing.headers


def raw_request(base: str, target: str) -> tuple[int, str | None]:
    """GET the request target exactly as given (httpx would normalise '..' and '//');
    returns the status and the Location header."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("location")
    finally:
        conn.close()


def raw_get(base: str, target: str) -> int:
    return raw_request(base, target)[0]


def test_no_path_traversal(server, public, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    (public / "link-out").symlink_to(secret)
    (public / ".hidden").write_text("dotfile")
    for target in ("/../secret.txt", "/articles/../../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
                   "/link-out", "/.hidden", "/articles/%00", "/articles\\..\\..\\secret.txt"):
        assert raw_get(server, target) in (400, 404), target


def test_directory_redirect_is_never_to_another_host(server, public):
    # "//articles" resolves to the articles folder; echoing it back as "Location: //articles/"
    # would send the browser to the host "articles" (a protocol-relative URL)
    for target, expected in (("//articles", "/articles/"), ("//articles//microneedling", "/articles/microneedling/")):
        assert raw_request(server, target) == (301, expected), target


def test_mounted_under_a_prefix(public):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/newsletter", app=StaticSite(public))])
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/newsletter/feed.xml").content == (public / "feed.xml").read_bytes()
        redirect = client.get("/newsletter/articles/microneedling")
        assert redirect.headers["location"] == "/newsletter/articles/microneedling/"
        assert client.get("/newsletter/articles/microneedling/").status_code == 200
