"""Issue 11, "Fidelity": what one article's email, page and feed items contain.

Each test builds from a private copy of the fixture library with extra articles
(Unicode titles and headings, images, citations), and parses what it generates:
BeautifulSoup for HTML, feedparser and lxml for feeds, the email parser for MIME."""
from __future__ import annotations

import json
import re
import socket
from datetime import date, datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path

import feedparser
import pytest
from bs4 import BeautifulSoup
from click.testing import CliRunner
from lxml import etree

from pipeline.content import markup
from pipeline.cli import cli
from pipeline.content.library import load_library
from pipeline.site.feeds import atom_feed, json_feed, rss_feed
from pipeline.rendering.issue import Issue
from pipeline.rendering.render import render_issue
from pipeline.site.pages import build_site

from fixtures_site import write_article

BASE = "https://my.klarity.health/newsletter"
OPENING = ("Microneedling is a skin treatment that uses fine needles to make tiny wounds. "
           "The skin heals them by making new collagen.")
IMAGE = '![A dermaroller on a clean tray – 微针](https://images.example.org/roller.jpg "The roller, café-side"){width=1200 height=800}'
MEDIA_NS = "http://search.yahoo.com/mrss/"


def check(content_dir: Path):
    return CliRunner().invoke(cli, ["--content", str(content_dir), "check"])


def lines_of(result) -> list[str]:
    return result.output.splitlines()


def visible_text(html: str) -> str:
    """The text a reader sees: without the hidden preheader (display:none) and the head."""
    soup = BeautifulSoup(html, "html.parser")
    for element in soup.select("head, [style*='display:none'], [style*='display: none']"):
        element.decompose()
    return " ".join(soup.get_text(" ").split())


def issue_of(library, slug: str):
    return render_issue(Issue(date=date(2026, 3, 3), number=1, articles=(library.article(slug),)), library.settings)


def set_summary(path: Path, summary: str) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"^summary: .*$", f"summary: {summary}", text, count=1, flags=re.M), encoding="utf-8")


# -- the opening is said once ----------------------------------------------------------

@pytest.fixture
def doubled(content_dir):
    """An article whose summary is its body's first two sentences (what the import used to propose)."""
    path = write_article(content_dir, "opening-twice", "2024-05-02", title="Microneedling – what’s involved",
                         body=f"{OPENING} It takes about an hour.[^1]\n\n## Details\n\nMore detail.[^1,2]\n")
    set_summary(path, OPENING)
    return path


def test_a_summary_that_repeats_the_opening_is_not_a_standfirst_in_email_or_text(content_dir, doubled, frozen):
    rendered = issue_of(load_library(content_dir), "opening-twice")
    first = "Microneedling is a skin treatment that uses fine needles to make tiny wounds."
    assert visible_text(rendered.html).count(first) == 1
    assert " ".join(rendered.text.split()).count(first) == 1
    # the preheader (the inbox preview, hidden in the message) still carries the summary
    assert rendered.preheader == OPENING


def test_a_summary_that_repeats_the_opening_is_not_a_standfirst_on_pages_or_feeds(content_dir, doubled, tmp_path, frozen):
    library = load_library(content_dir)
    build_site(library, tmp_path / "public")
    first = "Microneedling is a skin treatment that uses fine needles to make tiny wounds."
    page = (tmp_path / "public" / "articles" / "opening-twice" / "index.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(page, "html.parser")
    assert " ".join(soup.select_one("article").get_text(" ").split()).count(first) == 1
    item = next(i for i in json.loads(json_feed(library))["items"] if i["id"].endswith("/opening-twice/"))
    assert visible_text(item["content_html"]).count(first) == 1
    entry = next(e for e in feedparser.parse(atom_feed(library)).entries if e.id.endswith("/opening-twice/"))
    assert visible_text(entry.content[0].value).count(first) == 1
    # a summary that adds to the opening is still the standfirst everywhere
    micro = (tmp_path / "public" / "articles" / "microneedling" / "index.html").read_text(encoding="utf-8")
    assert BeautifulSoup(micro, "html.parser").select_one("p.summary").get_text().startswith("Microneedling uses")


def test_check_warns_when_the_summary_copies_the_opening(content_dir, doubled):
    result = check(content_dir)
    assert result.exit_code == 0, result.output
    assert f"{doubled}:4: warning: the summary copies the body's first sentence(s)" in "\n".join(lines_of(result))


@pytest.mark.parametrize("summary,body,repeats", [
    ("Short one.", "Short one. Then more text follows here.", False),  # under four words: never a copy
    ("Sometimes creams don’t work as well as you like.", "Sometimes creams don't  work as well as you like,[^1] so…", True),
    ("Microneedling uses fine needles.", "Sometimes creams don’t work.", False),
    ("微针 治疗 使用 细针 刺激 皮肤。", "微针 治疗 使用 细针 刺激 皮肤。更多。", True),
])
def test_repeats_opening(summary, body, repeats):
    assert markup.repeats_opening(summary, body) is repeats


# -- headings -------------------------------------------------------------------------------

HEADINGS_BODY = """Opening paragraph.[^1]

## Café au lait

Text.

## Café au lait

Text again.

## 微针

Text.

## What’s new – 2024 🎉

Text.

## 🎉

Text.

## Ref 1

Text.[^2]
"""


def test_heading_ids_are_unique_and_readable(content_dir, tmp_path, frozen):
    write_article(content_dir, "unicode-headings", "2024-05-03", title="Café – 微针 🎉", body=HEADINGS_BODY)
    library = load_library(content_dir)
    build_site(library, tmp_path / "public")
    page = BeautifulSoup((tmp_path / "public/articles/unicode-headings/index.html").read_text(encoding="utf-8"),
                         "html.parser")
    ids = [h["id"] for h in page.select(".body h2")]
    assert ids == ["café-au-lait", "café-au-lait-2", "微针", "whats-new-2024", "section", "ref-1-2"]
    every = [el["id"] for el in page.select("[id]")]
    assert len(every) == len(set(every)), every
    # the feed item's headings carry the same ids
    item = next(i for i in json.loads(json_feed(library))["items"] if i["id"].endswith("/unicode-headings/"))
    assert [h["id"] for h in BeautifulSoup(item["content_html"], "html.parser").select("h2[id]")][:4] == ids[:4]


# -- citations stay with their word ------------------------------------------------------

def test_citation_marker_is_grouped_with_its_word():
    html = markup.to_html("Evidence for types[^2,4] and sweating).[^3]\n", lambda n: f"#ref-{n}")
    groups = BeautifulSoup(html, "html.parser").select("span.cite-group")
    assert [g.get_text() for g in groups] == ["types[2,\u00a04]", "sweating).[3]"]
    assert all(g.select_one("sup.cite") for g in groups)
    # the plain-text part is unchanged by the grouping
    from pipeline.content.plaintext import Footnotes, body_text
    assert body_text("Evidence for types[^2,4] here.\n", Footnotes(first=5)) == "Evidence for types[2,4] here."


# -- check: links and dates ---------------------------------------------------------------

@pytest.mark.parametrize("link", [
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click]( javascript:alert(1) )",
    "[click](java&#x09;script:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html,hi)",
    "[click](http://example.org/plain)",
    "<javascript:alert(1)>",
    '<a href="java&#x09;script:alert(1)">click</a>',
    "<a href=' JaVaScRiPt:alert(1)'>click</a>",
])
def test_check_rejects_links_other_than_https_and_mailto(content_dir, link):
    path = write_article(content_dir, "bad-link", "2024-05-04",
                         body=f"Opening paragraph.[^1]\n\n## Details\n\nSee\n{link} now.[^2]\n")
    line = path.read_text(encoding="utf-8").splitlines().index(f"{link} now.[^2]") + 1
    result = check(content_dir)
    assert result.exit_code == 1
    errors = [l for l in lines_of(result) if ": error: " in l]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:{line}: error: link URL is not absolute https"), errors


def test_check_accepts_https_and_mailto_links(content_dir):
    write_article(content_dir, "good-link", "2024-05-04",
                  body="Opening.[^1]\n\n## Details\n\nSee [this](https://example.org/x) or [mail](mailto:a@example.org).[^2]\n")
    assert check(content_dir).exit_code == 0


def test_future_published_is_an_embargo_note_and_future_updated_an_error(content_dir, frozen):
    # frozen: 2026-03-02
    later = write_article(content_dir, "embargoed", "2026-03-10")
    result = check(content_dir)
    assert result.exit_code == 0, result.output
    assert any(l.startswith(f"{later}:5: note: published 2026-03-10 is in the future") for l in lines_of(result))
    write_article(content_dir, "corrected", "2026-01-10", updated="2026-03-05")
    result = check(content_dir)
    assert result.exit_code == 1
    assert any(l.startswith(f"{content_dir / 'articles' / 'corrected.md'}:6: error: updated 2026-03-05 is in the future")
               for l in lines_of(result))


def test_embargoed_article_stays_out_of_site_feeds_and_archive(content_dir, tmp_path, frozen):
    write_article(content_dir, "embargoed", "2026-03-10", title="Embargoed – until 10 March")
    library = load_library(content_dir)
    out = tmp_path / "public"
    build_site(library, out)
    assert not (out / "articles" / "embargoed").exists()
    assert "embargoed" not in (out / "index.html").read_text(encoding="utf-8")
    for feed in ((out / name).read_bytes() for name in ("feed.xml", "atom.xml", "feed.json")):
        assert b"/articles/embargoed/" not in feed
    frozen.set(datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc))
    build_site(library, out)
    assert (out / "articles" / "embargoed" / "index.html").exists()
    assert b"/articles/embargoed/" in (out / "atom.xml").read_bytes()


# -- feed items -----------------------------------------------------------------------------

def test_feed_items_carry_the_terms_notice(library, frozen):
    terms = " ".join(library.settings.terms_notice.split())
    item = json.loads(json_feed(library))["items"][0]
    # get_text() without a separator: "terms and conditions" is a link inside the sentence
    assert terms in " ".join(BeautifulSoup(item["content_html"], "html.parser").get_text().split())
    for entry in feedparser.parse(atom_feed(library)).entries + feedparser.parse(rss_feed(library)).entries:
        assert terms in " ".join(BeautifulSoup(entry.content[0].value, "html.parser").get_text().split())


# -- images -----------------------------------------------------------------------------------

IMAGE_BODY = f"""Opening paragraph about the roller.[^1]

{IMAGE}

## Details

Inline ![a small icon](https://images.example.org/icon.png){{width=16 height=16}} in a sentence.[^2]
"""


@pytest.fixture
def pictured(content_dir):
    return write_article(content_dir, "pictured", "2024-05-05", title="Pictures – café 微针 🎉", body=IMAGE_BODY)


@pytest.mark.parametrize("image,reason", [
    ("![a roller](http://images.example.org/r.jpg){width=600 height=400}", "image URL is not absolute https: 'http://images.example.org/r.jpg'"),
    ("![](https://images.example.org/r.jpg){width=600 height=400}", "image 'https://images.example.org/r.jpg' has no alt text"),
    ("![a roller](https://images.example.org/r.jpg)", "image 'https://images.example.org/r.jpg' needs a width and height"),
    ("![a roller](https://images.example.org/r.jpg){width=600}", "image 'https://images.example.org/r.jpg' needs a width and height"),
    ("![a roller](https://images.example.org/r.jpg){width=600 height=400 style=x}", "image 'https://images.example.org/r.jpg' has unknown attribute 'style'"),
    ('<img src="https://images.example.org/r.jpg" alt="a roller">', "an image written as HTML is dropped"),
])
def test_check_requires_https_alt_and_size_for_images(content_dir, image, reason):
    path = write_article(content_dir, "bad-image", "2024-05-04", body=f"Opening.[^1]\n\n## Details\n\nText.[^2]\n\n{image}\n")
    line = path.read_text(encoding="utf-8").splitlines().index(image) + 1
    result = check(content_dir)
    assert result.exit_code == 1
    errors = [l for l in lines_of(result) if ": error: " in l]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:{line}: error: {reason}"), errors


def test_images_reach_the_email_with_size_alt_and_caption(content_dir, pictured, frozen, monkeypatch):
    library = load_library(content_dir)
    assert check(content_dir).exit_code == 0
    # nothing is fetched while rendering: any connection attempt fails the test
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"network use while rendering: {a}"))
    rendered = issue_of(library, "pictured")
    soup = BeautifulSoup(rendered.html, "html.parser")
    img = soup.select_one("img[src='https://images.example.org/roller.jpg']")
    assert img["alt"] == "A dermaroller on a clean tray – 微针"
    # scaled to the 528 px content column for clients that honour only the attributes (Outlook)
    assert (img["width"], img["height"]) == ("528", "352")
    style = img["style"].replace(" ", "")
    assert "width:100%" in style and "max-width:528px" in style and "height:auto" in style
    caption = img.find_parent("p").find_next_sibling("p")
    assert "font-size:15px" in caption["style"]  # the caption's look (its class only served the CSS inliner)
    assert " ".join(caption.get_text().split()) == "The roller, café-side"
    icon = soup.select_one("img[src='https://images.example.org/icon.png']")
    assert icon["alt"] == "a small icon" and (icon["width"], icon["height"]) == ("16", "16")
    assert "{width=" not in rendered.html and "{width" not in rendered.text
    # the text part names the picture by its alt text
    assert "A dermaroller on a clean tray – 微针" in rendered.text
    # and the MIME message carries the same HTML
    from pipeline.rendering.issue import Personal
    from pipeline.delivery.message import build_message
    personal = Personal(f"{BASE}/unsubscribe/T", f"{BASE}/preferences/T", "Hello Zoë,")
    message = message_from_bytes(build_message(rendered, library.settings, to="Zoë Dubois <zoe@example.org>",
                                               personal=personal), policy=policy.default)
    html_part = BeautifulSoup(message.get_body(("html",)).get_content(), "html.parser")
    assert html_part.select_one("img[src='https://images.example.org/roller.jpg']")["width"] == "528"


def test_images_on_the_page_are_figures_with_captions(content_dir, pictured, tmp_path, frozen):
    build_site(load_library(content_dir), tmp_path / "public")
    soup = BeautifulSoup((tmp_path / "public/articles/pictured/index.html").read_text(encoding="utf-8"), "html.parser")
    figure = soup.select_one(".body figure")
    img = figure.select_one("img")
    assert (img["src"], img["alt"], img["width"], img["height"]) == (
        "https://images.example.org/roller.jpg", "A dermaroller on a clean tray – 微针", "1200", "800")
    assert figure.select_one("figcaption").get_text() == "The roller, café-side"


def test_images_in_the_feeds_with_the_lead_image(content_dir, pictured, frozen):
    library = load_library(content_dir)
    item = next(i for i in json.loads(json_feed(library))["items"] if i["id"].endswith("/pictured/"))
    assert item["image"] == "https://images.example.org/roller.jpg"
    assert BeautifulSoup(item["content_html"], "html.parser").select_one("figure img")["alt"].startswith("A dermaroller")
    other = next(i for i in json.loads(json_feed(library))["items"] if i["id"].endswith("/microneedling/"))
    assert "image" not in other
    root = etree.fromstring(rss_feed(library))
    item = next(i for i in root.iter("item") if i.findtext("link").endswith("/pictured/"))
    media = item.find(f"{{{MEDIA_NS}}}content")
    assert (media.get("url"), media.get("medium"), media.get("width"), media.get("height")) == (
        "https://images.example.org/roller.jpg", "image", "1200", "800")
    entry = next(e for e in feedparser.parse(atom_feed(library)).entries if e.id.endswith("/pictured/"))
    assert "https://images.example.org/roller.jpg" in entry.content[0].value


# -- check --fetch-images ------------------------------------------------------------------

@pytest.fixture
def image_server(tmp_path):
    """An https server on 127.0.0.1 with a throwaway self-signed certificate: /ok.png is an
    image, anything else 404. Yields (base URL, list of (method, path) it was asked)."""
    import http.server
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    asked: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(("HEAD", self.path))
            self.send_response(200 if self.path == "/ok.png" else 404)
            self.send_header("Content-Type", "image/png" if self.path == "/ok.png" else "text/html")
            self.end_headers()

        def do_GET(self):
            asked.append(("GET", self.path))
            self.send_error(405)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", asked, cert
    finally:
        server.shutdown()
        server.server_close()


def test_check_fetch_images_asks_each_url_with_head(content_dir, image_server, monkeypatch):
    base, asked, cert = image_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the throwaway certificate, nothing else changes
    good = f"![a roller]({base}/ok.png){{width=10 height=10}}"
    bad = f"![a missing photo]({base}/gone.png){{width=10 height=10}}"
    path = write_article(content_dir, "fetched", "2024-05-04", body=f"Opening.[^1]\n\n{good}\n\n## Details\n\n{bad}\n\nText.[^2]\n")
    lines = path.read_text(encoding="utf-8").splitlines()
    # without the flag nothing is fetched
    assert check(content_dir).exit_code == 0 and asked == []
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "check", "--fetch-images"])
    assert result.exit_code == 1
    errors = [l for l in lines_of(result) if ": error: " in l]
    assert errors == [f"{path}:{lines.index(bad) + 1}: error: image '{base}/gone.png' answers HTTP 404"]
    assert sorted(asked) == [("HEAD", "/gone.png"), ("HEAD", "/ok.png")]
