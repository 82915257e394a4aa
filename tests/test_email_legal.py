"""Issue 11's legal links and small things, checked by parsing what is generated:

- "editorial standards", "terms and conditions" and the privacy policy are links in the
  email (HTML and text part), the article page and every feed item, to the URLs in
  settings; an unset or non-https URL leaves the phrase as text and `newsletter check`
  warns; URLs are escaped;
- the email's privacy notice does not call an email "this website", the page's does;
- the greeting uses a first name (``Hello Jane,`` for ``Jane "JD" Doe``);
- the text part marks links ``<n>`` and lists them under "Links", apart from ``[n]`` citations.
"""
from __future__ import annotations

import json
import re
from datetime import date
from email import message_from_bytes, policy
from pathlib import Path

import feedparser
import lxml.html
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.content import legal
from pipeline.content.library import load_library
from pipeline.delivery.message import build_message
from pipeline.rendering.compose import compose_issue
from pipeline.rendering.greeting import first_name, greeting
from pipeline.rendering.issue import Personal, personalise
from pipeline.rendering.render import render_issue
from pipeline.site.feeds import atom_feed, json_feed, rss_feed
from pipeline.site.pages import build_site

BASE = "https://my.klarity.health/newsletter"
STANDARDS = "https://my.klarity.health/editorial-standards"  # in tests/fixtures/library/site.yaml
TERMS = "https://my.klarity.health/terms-and-conditions"
POLICY = "https://my.klarity.health/privacy-policy"  # privacy_policy_url's default for base_url
PHRASES = {"editorial standards": STANDARDS, "terms and conditions": TERMS, "privacy policy": POLICY}


def issue_of(library):
    return render_issue(compose_issue(library, date(2026, 3, 3), number=7, scheduled=["microneedling"]),
                        library.settings)


def phrase_links(html: str) -> dict[str, str]:
    doc = lxml.html.fromstring(html)
    return {" ".join(a.text_content().split()).lower(): a.get("href") for a in doc.iter("a")
            if " ".join(a.text_content().split()).lower() in PHRASES}


def set_setting(content_dir: Path, name: str, value: str) -> None:
    site = content_dir / "site.yaml"
    lines = [line for line in site.read_text(encoding="utf-8").splitlines() if not line.startswith(f"{name}:")]
    site.write_text("\n".join(lines) + f"\n{name}: {json.dumps(value)}\n", encoding="utf-8")


# -- where the links appear -------------------------------------------------------------------

def test_the_email_links_the_legal_phrases_in_both_parts(library):
    rendered = issue_of(library)
    assert phrase_links(rendered.html) == PHRASES
    text = rendered.text
    body, _, tail = text.rpartition("\nLinks\n-----\n")
    links = dict(re.fullmatch(r"<(\d+)> (\S+)", line).groups() for line in tail.strip().splitlines())
    for phrase, url in PHRASES.items():
        words = r"\s+".join(phrase.split())  # the text part may wrap inside the phrase
        marks = re.findall(words + r"\s+<(\d+)>", body)
        assert marks and all(links[m] == url for m in marks), phrase


def test_the_article_page_and_every_feed_item_link_them(library, tmp_path, frozen):
    build_site(library, tmp_path)
    page = (tmp_path / "articles" / "microneedling" / "index.html").read_text(encoding="utf-8")
    assert phrase_links(page) == PHRASES
    items = [i["content_html"] for i in json.loads(json_feed(library))["items"]]
    items += [e.content[0].value for feed in (atom_feed(library), rss_feed(library)) for e in feedparser.parse(feed).entries]
    assert len(items) >= 3
    for html in items:
        assert phrase_links(f"<div>{html}</div>") == PHRASES


def test_the_issue_page_is_the_email_with_its_links(library, tmp_path):
    from pipeline.site.pages import publish_issue

    publish_issue(issue_of(library), tmp_path, settings=library.settings)
    page = (tmp_path / "issues" / "2026-03-03" / "index.html").read_text(encoding="utf-8")
    assert phrase_links(page) == PHRASES


def test_privacy_notice_in_an_email_does_not_say_this_website(library, tmp_path, frozen):
    settings = library.settings
    assert "this website" in settings.privacy_notice
    rendered = issue_of(library)
    text = " ".join(lxml.html.fromstring(rendered.html).text_content().split())
    assert "this website" not in text and "this website" not in rendered.text
    assert "Any information you provide to us may be placed by us on our servers." in text
    # the web page keeps the publisher's words exactly
    build_site(library, tmp_path)
    page = lxml.html.fromstring((tmp_path / "articles" / "microneedling" / "index.html").read_bytes())
    assert " ".join(settings.privacy_notice.split()) in " ".join(page.text_content().split())


def test_other_uses_of_this_website_read_as_our_website(content_dir):
    set_setting(content_dir, "privacy_notice", "Data you provide to this website stays with us. Cookies on This Website: none.")
    rendered = issue_of(load_library(content_dir))
    flat = " ".join(rendered.text.split())
    assert "Data you provide to us stays with us. Cookies on our website: none." in flat


def test_email_privacy_notice_setting_is_used_word_for_word(content_dir):
    set_setting(content_dir, "email_privacy_notice", "We keep your address only to send you this newsletter – £0, no catch.")
    rendered = issue_of(load_library(content_dir))
    assert "We keep your address only to send you this newsletter – £0, no catch." in rendered.text.replace("\n", " ")


# -- unset, unsafe and hostile URLs ----------------------------------------------------------------

def test_an_unset_url_leaves_the_phrase_as_text_and_check_warns(content_dir):
    site = content_dir / "site.yaml"
    site.write_text(re.sub(r"(?m)^terms_url:.*\n", "", site.read_text(encoding="utf-8")), encoding="utf-8")
    library = load_library(content_dir)
    rendered = issue_of(library)
    links = phrase_links(rendered.html)
    assert "terms and conditions" not in links and links["editorial standards"] == STANDARDS
    assert "terms and conditions." in " ".join(rendered.text.split())  # no marker after it
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "check"])
    assert result.exit_code == 0
    terms_line = next(n for n, line in enumerate(site.read_text().splitlines(), 1) if line.startswith("terms_notice:"))
    assert (f"{site}:{terms_line}: warning: the terms notice mentions \"terms and conditions\" but terms_url is not set, "
            "so it is shown without a link") in result.output.splitlines()


@pytest.mark.parametrize("url", ["http://my.klarity.health/standards", "javascript:alert(1)", "//evil.example/x",
                                 "https://user@evil.example/", "https://ok.example/a b"])
def test_a_url_that_is_not_https_is_never_a_link(content_dir, url):
    set_setting(content_dir, "editorial_standards_url", url)
    library = load_library(content_dir)
    rendered = issue_of(library)
    assert "editorial standards" not in phrase_links(rendered.html)
    assert url not in rendered.html and url not in rendered.text
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "check"])
    assert any("editorial_standards_url" in line and "warning" in line for line in result.output.splitlines())


def test_urls_and_text_are_escaped(content_dir, library):
    hostile = 'https://my.klarity.health/terms?a=1&b="><script>alert(1)</script>'
    set_setting(content_dir, "terms_url", hostile)
    settings = load_library(content_dir).settings
    html = legal.html("Our terms and conditions & <b>more</b>", settings)
    doc = lxml.html.fromstring(f"<p>{html}</p>")
    assert [a.get("href") for a in doc.iter("a")] == [hostile]  # exactly the URL, as an attribute
    assert not doc.xpath("//script|//b") and "&lt;b&gt;" in html
    rendered = issue_of(load_library(content_dir))
    assert phrase_links(rendered.html)["terms and conditions"] == hostile
    assert "<script>" not in rendered.html


# -- the greeting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ('Jane "JD" Doe', "Hello Jane,"),
    ('"JD" Jane Doe', "Hello Jane,"),
    ("Jane “JD” Doe", "Hello Jane,"),
    ("Jane 'J D' Doe", "Hello Jane,"),
    ("Dr. Jane Doe", "Hello Jane,"),
    ("Dr Okafor", "Hello Dr Okafor,"),
    ("Zoë O’Brien 山田 😀", "Hello Zoë,"),
    ("山田太郎", "Hello 山田太郎,"),
    ("  Mary-Jane   Watson ", "Hello Mary-Jane,"),
    ("Ms", "Hello,"),
    ("-", "Hello,"),
    ("", "Hello,"),
    (None, "Hello,"),
    ("Jo\r\nBcc: victim@example.net", "Hello,"),  # the hostile-name rule still comes first
    ("=?utf-8?q?Account_locked?=", "Hello,"),
    ("Jo\u2028Smith", "Hello,"),
])
def test_greeting_uses_a_sensible_first_name(name, expected):
    assert greeting(name) == expected
    assert "\n" not in first_name(name) and '"' not in first_name(name)


def test_a_sent_message_greets_by_first_name(library):
    from pipeline.rendering.greeting import greeting as send_greeting

    rendered = issue_of(library)
    personal = Personal(f"{BASE}/unsubscribe/T", f"{BASE}/preferences/T", send_greeting('Jane "JD" Doe'))
    msg = message_from_bytes(build_message(rendered, library.settings, to='"Jane \\"JD\\" Doe" <jane@example.com>',
                                           personal=personal), policy=policy.default)
    assert "\nHello Jane,\n" in msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content()
    assert "Hello Jane," in html and "Hello Jane &quot;JD&quot; Doe" not in html
    assert msg["To"].addresses[0].display_name == 'Jane "JD" Doe'  # the header keeps the full name


# -- the text part's markers ---------------------------------------------------------------------------

def test_text_part_link_markers_are_distinct_from_citations(library):
    rendered = issue_of(library)
    text = personalise(rendered, Personal(f"{BASE}/unsubscribe/T", f"{BASE}/preferences/T", "Hello,"))[1]
    body, sep, tail = text.rpartition("\nLinks\n-----\n")
    assert sep
    links = {}
    for line in tail.strip().splitlines():
        number, url = re.fullmatch(r"<(\d+)> (https://\S+)", line).groups()
        links[int(number)] = url
    assert sorted(links) == list(range(1, len(links) + 1)) and len(set(links.values())) == len(links)
    refs, _, after = body.partition("\nReferences\n----------\n")
    ref_numbers = [int(n) for n in re.findall(r"(?m)^\[(\d+)\] ", after)]
    article = library.article("microneedling")
    assert ref_numbers == [r.number for r in article.references]  # the reference list keeps [n]
    cites = {int(n) for g in re.findall(r"\[(\d+(?:,\d+)*)\]", refs) for n in g.split(",")}
    assert cites == {r.number for r in article.references}  # every [n] in the body is a reference
    marks = {int(n) for n in re.findall(r"<(\d+)>", body)}
    assert marks == set(links)  # every <n> has its line under Links, and every line is used
    assert f"Unsubscribe <{next(n for n, u in links.items() if u.endswith('/unsubscribe/T'))}>" in body
