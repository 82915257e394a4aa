"""Issue 11, "Feeds": gzip from the web service (its own ETag, Vary, 304s still right) and
``Access-Control-Allow-Origin: *`` on the feed files only. Against a real uvicorn server
running the whole web service, under the shipped base_url's path prefix and at a root
base_url, and once against a real ``newsletter serve`` process."""
from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from pipeline import web
from pipeline.content.library import load_library
from pipeline.database import open_database
from pipeline.site.pages import build_site

from conftest import ROOT, free_port
from fixtures_site import serve, write_article
from fixtures_subscribers import subscriber_settings
from test_web_process import environment, process

FEED_FILES = ("feed.xml", "atom.xml", "feed.json", "topics/skin-care/feed.xml", "topics/skin-care/atom.xml",
              "topics/skin-care/feed.json")
NOT_FEEDS = ("", "articles/microneedling/", "topics/skin-care/", "sitemap.xml", "robots.txt", "favicon.svg",
             "icon-64.png")
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(params=["https://my.klarity.health/newsletter", "https://news.example.org"],
                ids=["prefix", "root"])
def server(request, content_dir, tmp_path, frozen):
    write_article(content_dir, "cafe-free", "2026-02-01", title="Café – ‘£’ 護膚 😊")  # a second article
    base_url = request.param
    site_yaml = content_dir / "site.yaml"
    site_yaml.write_text(site_yaml.read_text(encoding="utf-8").replace(
        "base_url: https://my.klarity.health/newsletter", f"base_url: {base_url}"), encoding="utf-8")
    library = load_library(content_dir)
    assert library.settings.base_url == base_url
    ws = subscriber_settings(library.settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'w.db'}")
    build_site(library, ws.public_dir)
    app = web.create_app(ws, open_database(ws.database_url), rate_per_minute=1000, mail_worker=False)
    with serve(app) as url:
        yield url + urlsplit(base_url).path, ws


def raw_get(url: str, headers: dict) -> httpx.Response:
    """A GET whose body is left as sent (httpx would decode gzip)."""
    with httpx.Client() as client:
        request = client.build_request("GET", url, headers=headers)
        response = client.send(request, stream=True)
        response.raw_body = b"".join(response.iter_raw())
        response.close()
        return response


def on_disk(settings, name: str) -> bytes:
    path = Path(settings.public_dir) / name
    return (path / "index.html" if path.is_dir() else path).read_bytes()


@pytest.mark.parametrize("name", ["feed.xml", "topics/skin-care/atom.xml", "articles/microneedling/", ""])
def test_text_is_gzipped_with_its_own_etag_and_vary(server, name):
    url, settings = server
    zipped = raw_get(f"{url}/{name}", GZIP)
    plain = raw_get(f"{url}/{name}", IDENTITY)
    assert zipped.status_code == plain.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert gzip.decompress(zipped.raw_body) == plain.raw_body == on_disk(settings, name)
    assert len(zipped.raw_body) < len(plain.raw_body)
    assert int(zipped.headers["content-length"]) == len(zipped.raw_body)
    for response in (zipped, plain):
        assert "accept-encoding" in response.headers["vary"].lower()
    # two representations, two strong ETags; each derived from the content
    assert zipped.headers["etag"] != plain.headers["etag"] and not zipped.headers["etag"].startswith("W/")
    assert plain.headers["etag"].strip('"') == hashlib.sha256(plain.raw_body).hexdigest()[:32]


def test_304s_still_work_with_either_etag_and_either_encoding(server):
    url, _ = server
    zipped, plain = raw_get(f"{url}/feed.xml", GZIP), raw_get(f"{url}/feed.xml", IDENTITY)
    for tag in (zipped.headers["etag"], plain.headers["etag"]):
        for encoding, expected in ((GZIP, zipped), (IDENTITY, plain)):
            again = raw_get(f"{url}/feed.xml", {**encoding, "If-None-Match": tag})
            assert again.status_code == 304 and again.raw_body == b""
            assert again.headers["etag"] == expected.headers["etag"]  # the tag of what would be sent
            assert "accept-encoding" in again.headers["vary"].lower()
            assert again.headers["access-control-allow-origin"] == "*"
    since = raw_get(f"{url}/feed.xml", {**GZIP, "If-Modified-Since": zipped.headers["last-modified"]})
    assert since.status_code == 304
    assert raw_get(f"{url}/feed.xml", {**GZIP, "If-None-Match": '"other"'}).status_code == 200
    assert raw_get(f"{url}/feed.xml", {"Accept-Encoding": "gzip;q=0"}).headers.get("content-encoding") is None


def test_images_are_not_gzipped(server):
    url, _ = server
    png = raw_get(f"{url}/icon-512.png", GZIP)
    assert png.status_code == 200 and "content-encoding" not in png.headers
    assert png.raw_body[:8] == b"\x89PNG\r\n\x1a\n"


def test_cors_on_the_feed_files_only(server):
    url, _ = server
    with httpx.Client() as client:
        for name in FEED_FILES:
            response = client.get(f"{url}/{name}", headers={"Origin": "https://reader.example"})
            assert response.status_code == 200, name
            assert response.headers["access-control-allow-origin"] == "*", name
            assert "etag" in response.headers["access-control-expose-headers"].lower()
            # the preflight of a conditional fetch (If-None-Match is not CORS-safelisted)
            preflight = client.options(f"{url}/{name}", headers={
                "Origin": "https://reader.example", "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "if-none-match"})
            assert preflight.status_code == 204, name
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "if-none-match" in preflight.headers["access-control-allow-headers"].lower()
        for name in NOT_FEEDS:
            response = client.get(f"{url}/{name}", headers={"Origin": "https://reader.example"})
            assert response.status_code == 200, name
            assert "access-control-allow-origin" not in response.headers, name
        for path in ("subscribe", "healthz"):
            response = client.get(f"{url}/{path}", headers={"Origin": "https://reader.example"})
            assert response.status_code == 200 and "access-control-allow-origin" not in response.headers, path
        # no preflight for anything else, and a missing feed is just missing
        assert client.options(f"{url}/").status_code == 405
        assert client.options(f"{url}/subscribe").status_code == 405
        missing = client.get(f"{url}/topics/hair-loss/feed.xml")
        assert missing.status_code == 404 and "access-control-allow-origin" not in missing.headers


def test_fifty_readers_at_once_get_whole_feeds(server):
    url, settings = server
    expected = on_disk(settings, "atom.xml")

    def fetch(i: int) -> tuple[bytes, str]:
        response = raw_get(f"{url}/atom.xml", GZIP if i % 2 else IDENTITY)
        body = gzip.decompress(response.raw_body) if response.headers.get("content-encoding") == "gzip" \
            else response.raw_body
        return body, response.headers["etag"]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(fetch, range(50)))
    assert all(body == expected for body, _ in results)
    assert len({tag for _, tag in results}) == 2  # one per representation


def test_a_real_newsletter_serve_process_gzips_and_allows_feed_readers(content_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/newsletter"
    # built for the shipped https base_url; served on loopback under the same path
    build_env = environment(content_dir, tmp_path, "https://my.klarity.health/newsletter")
    built = subprocess.run([sys.executable, "-m", "pipeline.cli", "build"], cwd=ROOT, env=build_env,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    with process(["serve", "--host", "127.0.0.1", "--port", str(port)], environment(content_dir, tmp_path, url),
                 f"{url}/healthz", tmp_path / "serve.log"):
        feed = raw_get(f"{url}/feed.json", GZIP)
        assert feed.status_code == 200 and feed.headers["content-encoding"] == "gzip"
        assert feed.headers["access-control-allow-origin"] == "*"
        assert gzip.decompress(feed.raw_body) == (tmp_path / "public" / "feed.json").read_bytes()
        page = raw_get(f"{url}/articles/microneedling/", GZIP)
        assert page.headers["content-encoding"] == "gzip" and "access-control-allow-origin" not in page.headers
        assert raw_get(f"{url}/feed.json", {**GZIP, "If-None-Match": feed.headers["etag"]}).status_code == 304


def test_the_service_has_its_favicon_before_the_first_build(settings, tmp_path):
    ws = subscriber_settings(settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'w.db'}")
    assert not Path(ws.public_dir, "favicon.svg").exists()
    app = web.create_app(ws, open_database(ws.database_url), rate_per_minute=1000, mail_worker=False)
    with serve(app) as url, httpx.Client() as client:
        base = url + "/newsletter"
        page = client.get(f"{base}/subscribe")
        icons = page.text.count('rel="icon"')
        assert page.status_code == 200 and icons == 2
        svg = client.get(f"{base}/favicon.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.content.startswith(b"<svg ")
        assert client.get(f"{base}/favicon.svg", headers={"If-None-Match": svg.headers["etag"]}).status_code == 304
        png = client.get(f"{base}/icon-64.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"{base}/icon-65.png").status_code == 404
