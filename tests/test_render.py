"""The rendered email, checked against shared/docs/email-checklist.md (points 1-15,
21 and 24) by parsing the HTML (lxml) and the text part, plus goldens.

Refresh the goldens after an intended change with
    UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_render.py
and review the diff of tests/golden/email/ before committing it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from datetime import date
from email import message_from_bytes, policy
from pathlib import Path

import cssutils
import lxml.html
import pytest

from pipeline.content import legal
from pipeline.content.article import Article, Author, Reference
from pipeline.rendering.compose import compose_issue, weekly_issue
from pipeline.content.library import Library, load_library
from pipeline.errors import RenderError
from pipeline.rendering.issue import PLACEHOLDERS, Issue, Personal, personalise
from pipeline.rendering.render import CLIP_BYTES, DOCTYPE, compile_mjml, inline_css, render_issue, render_mjml, subject_and_preheader
from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).parent / "fixtures" / "library"  # the tests' own library
GOLDEN = Path(__file__).parent / "golden" / "email"
DAY = date(2026, 3, 3)
BASE = "https://my.klarity.health/newsletter"
ARTICLE_URL = f"{BASE}/articles/microneedling/"
TEXT_WIDTH = 78
URL_RE = re.compile(r"https?://\S+")


# -- fixtures: the committed content, rendered once per module ----------------------------

@pytest.fixture(scope="module")
def lib() -> Library:
    settings = load_settings(CONTENT, env={})
    return load_library(CONTENT, settings)


@pytest.fixture(scope="module")
def rendered(lib):
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"])
    return render_issue(issue, lib.settings)


@pytest.fixture(scope="module")
def doc(rendered):
    return lxml.html.document_fromstring(rendered.html)


@pytest.fixture(scope="module")
def article(lib) -> Article:
    return lib.article("microneedling")


def words(text: str) -> str:
    return " ".join(text.split())


def body_text(doc) -> str:
    return words(doc.find("body").text_content())


def hidden(element) -> bool:
    for node in [element, *element.iterancestors()]:
        if "display:none" in (node.get("style") or "").replace(" ", "").lower():
            return True
    return False


# -- goldens ------------------------------------------------------------------------------

@pytest.mark.parametrize("part,suffix", [("html", "html"), ("text", "txt")])
def test_golden(rendered, part, suffix):
    path = GOLDEN / f"microneedling.{suffix}"
    actual = getattr(rendered, part)
    if os.environ.get("UPDATE_GOLDENS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_render.py"
    assert actual == path.read_text(encoding="utf-8"), f"{path} differs (refresh with UPDATE_GOLDENS=1 if intended)"


# -- HTML part: checklist 1-15 -----------------------------------------------------------------

def test_1_doctype_first(rendered, doc):
    assert rendered.html.startswith(DOCTYPE + "\n")
    assert doc.getroottree().docinfo.doctype == DOCTYPE


def test_doctype_is_restored_after_premailer_drops_it(lib):
    issue = compose_issue(lib, DAY, number=1, scheduled=["microneedling"])
    compiled = compile_mjml(render_mjml(issue, lib.settings, "S", "P", f"{BASE}/issues/x/"))
    assert compiled.lower().startswith("<!doctype html>")
    out = inline_css(compiled)
    assert out.startswith(DOCTYPE) and out.lower().count("<!doctype") == 1


def test_2_html_lang_and_dir(doc):
    assert doc.tag == "html"
    assert doc.get("lang") == "en-GB"
    assert doc.get("dir") == "ltr"
    assert "und" not in {e.get("lang") for e in doc.iter() if isinstance(e.tag, str) and e.get("lang")}


def test_3_title_is_the_subject(rendered, doc, article):
    assert rendered.subject == article.title == "What Is Microneedling?"
    assert doc.findtext(".//head/title") == rendered.subject


def test_4_layout_tables_are_presentation(doc):
    tables = doc.xpath("//table")
    assert len(tables) >= 3  # one section, one column: MJML's tables once, not per part
    for table in tables:
        assert table.get("role") == "presentation" or table.xpath(".//th"), lxml.html.tostring(table)[:200]


def test_5_every_img_has_alt(lib):
    # the microneedling author has no photo: give her one, so there is an image to check
    article = lib.article("microneedling")
    author = dataclasses.replace(article.author, photo="https://my.klarity.health/img/amy.jpg")
    issue = Issue(DAY, 1, (dataclasses.replace(article, author=author),))
    doc = lxml.html.document_fromstring(render_issue(issue, lib.settings).html)
    images = doc.xpath("//img")
    assert images, "expected the author's photo"
    for img in images:
        assert img.get("alt") is not None, lxml.html.tostring(img)
    assert [img.get("alt") for img in images] == ["Amy Murtagh"]


def test_6_one_h1_and_no_skipped_levels(doc, article):
    h1 = doc.xpath("//h1")
    assert len(h1) == 1 and words(h1[0].text_content()) == article.title
    levels = [int(h.tag[1]) for h in doc.iter("h1", "h2", "h3", "h4", "h5", "h6")]
    assert levels[0] == 1
    for before, after in zip(levels, levels[1:]):
        assert after <= before + 1, f"heading level skips from h{before} to h{after}: {levels}"
    assert levels.count(2) >= 8 and 3 in levels  # the body's sections and subsections came through


def test_7_links_are_absolute_https_with_accessible_names(doc):
    links = doc.xpath("//a")
    assert len(links) > 40
    for a in links:
        href = a.get("href") or ""
        assert href.startswith("https://") and " " not in href, href
        name = words(a.text_content()) or a.get("aria-label") or "".join(i.get("alt") or "" for i in a.iter("img"))
        assert name.strip(), f"link to {href} has no accessible name"


# WCAG 2 relative luminance and contrast ratio, on the colours inlined into the HTML.

NAMED = {"white": "#ffffff", "black": "#000000"}


def parse_colour(value: str) -> tuple[float, float, float]:
    value = NAMED.get(value.strip().lower(), value.strip().lower())
    match = re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", value)
    assert match, f"a colour the test cannot read: {value!r}"
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))


def luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in parse_colour(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(foreground: str, background: str) -> float:
    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_function_against_known_values():
    assert contrast("#000", "#fff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # the classic near miss
    assert contrast("#ffffff", "#ffffff") == pytest.approx(1.0)


def style_of(element) -> dict[str, str]:
    declarations = {}
    for part in (element.get("style") or "").split(";"):
        name, _, value = part.partition(":")
        if value.strip():
            declarations[name.strip().lower()] = value.replace("!important", "").strip()
    return declarations


def inherited(element, name: str, attribute: str | None = None) -> str | None:
    for node in [element, *element.iterancestors()]:
        style = style_of(node)
        if name in style:
            return style[name]
        if attribute and node.get(attribute):
            return node.get(attribute)
    return None


def background_of(element) -> str:
    for node in [element, *element.iterancestors()]:
        style = style_of(node)
        for name in ("background-color", "background"):
            if name in style and re.fullmatch(r"#[0-9a-fA-F]{3,6}|white|black", style[name]):
                return style[name]
        if node.get("bgcolor"):
            return node.get("bgcolor")
    return "#ffffff"


def text_elements(doc):
    for element in doc.find("body").iter():
        if not isinstance(element.tag, str) or hidden(element):
            continue
        own = (element.text or "") + "".join(child.tail or "" for child in element)
        if own.strip():
            yield element


def test_8_text_contrast_on_inlined_colours(doc):
    checked = 0
    colours = set()
    for element in text_elements(doc):
        colour = inherited(element, "color", "color")
        assert colour, f"no inlined colour for text {words(element.text_content())[:40]!r}"
        background = background_of(element)
        size = float(re.sub(r"[^0-9.]", "", inherited(element, "font-size") or "16") or 16)
        bold = (inherited(element, "font-weight") or "400") in ("700", "800", "900", "bold") or element.tag in ("strong", "b", "h1", "h2", "h3")
        large = size >= 24 or (size >= 18.66 and bold)
        ratio = contrast(colour, background)
        assert ratio >= (3.0 if large else 4.5), (
            f"contrast {ratio:.2f} of {colour} on {background} for {words(element.text_content())[:50]!r}")
        colours.add((colour.lower(), background.lower()))
        checked += 1
    assert checked > 100
    assert len(colours) >= 5  # body, muted, link, header (white on blue) and footer colours were all checked


def test_9_content_is_600px_and_single_column(rendered, doc):
    # mj-body width 600: every section is a max-width:600px block (Outlook gets width="600")
    sections = [d for d in doc.xpath("//body//div") if "max-width:600px" in (d.get("style") or "").replace(" ", "")]
    assert len(sections) >= 1
    assert doc.xpath("//table[@width='600']") or "width=\"600\"" in rendered.html
    # one column per section: every column is mj-column-per-100 (full width on phones)
    columns = doc.xpath("//div[contains(@class, 'mj-column-per-')]")
    assert columns and all("mj-column-per-100" in c.get("class") for c in columns)
    assert doc.xpath("//meta[@name='viewport']/@content") == ["width=device-width, initial-scale=1"]


def test_10_preheader_is_the_summary(rendered, doc, article):
    assert rendered.preheader == article.summary
    first = doc.find("body").xpath("./div")[0]
    assert hidden(first) and words(first.text_content()) == article.summary


def test_11_nothing_active_and_nothing_remote(rendered, doc):
    for tag in ("script", "form", "iframe", "object", "embed", "link", "base", "input", "button"):
        assert not doc.xpath(f"//{tag}"), tag
    for element in doc.iter():
        if isinstance(element.tag, str):
            assert not [a for a in element.attrib if a.lower().startswith("on")], lxml.html.tostring(element)[:120]
    styles = " ".join(s.text or "" for s in doc.iter("style"))
    assert not re.search(r"@import|@font-face|url\(", styles, re.I)
    assert "fonts.googleapis" not in rendered.html and "fonts.gstatic" not in rendered.html
    assert not doc.xpath("//img"), "a remote image in the microneedling issue would be a tracking pixel"
    assert "background-image" not in rendered.html


def media_blocks(css_text: str) -> list[str]:
    sheet = cssutils.parseString(css_text, validate=False)
    return [rule.cssText for rule in sheet if rule.type == rule.MEDIA_RULE]


def test_12_media_rules_keep_important_and_style_blocks_survive(lib, rendered, doc):
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"])
    subject, preheader = subject_and_preheader(issue, lib.settings)
    before = lxml.html.document_fromstring(compile_mjml(render_mjml(issue, lib.settings, subject, preheader, rendered.web_url)))
    media_before = [m for s in before.iter("style") for m in media_blocks(s.text or "")]
    media_after = [m for s in doc.iter("style") for m in media_blocks(s.text or "")]
    assert media_before and all(m in media_after for m in media_before)  # MJML's own blocks survive
    assert sum(m.count("!important") for m in media_after) >= 4
    ours = [m for m in media_after if ".px" in m]
    assert ours and "padding-left: 20px !important" in ours[0]
    # inline.css is inlined and not repeated in a <style> block; head.css is a <style> block only
    styles = " ".join(s.text or "" for s in doc.iter("style"))
    assert ".refs li" not in styles and "margin:0 0 12px" in doc.xpath("//li[@id='ref-1']")[0].get("style")
    assert ".prose h2{" in styles and ".prose sup a{" in styles and "prefers-color-scheme" in styles
    # the body's typography is in <head> (the author card and references after it set their own)
    body_h2 = [h for h in doc.xpath("//td[contains(@class,'prose')]//h2") if words(h.text_content()) not in
               ("About the author", "References")]
    assert len(body_h2) >= 3 and not [h for h in body_h2 if h.get("style")]
    assert not any(a.get("style") for a in doc.xpath("//sup/a"))  # and so are the tap targets


def test_13_size_and_visible_unsubscribe_and_browser_links(rendered, doc):
    assert len(rendered.html.encode("utf-8")) < CLIP_BYTES
    visible = [a for a in doc.xpath("//a") if not hidden(a)]
    unsubscribe = [a for a in visible if a.get("href") == PLACEHOLDERS["unsubscribe_url"]]
    assert [words(a.text_content()) for a in unsubscribe] == ["Unsubscribe"]
    browser = [a for a in visible if a.get("href") == rendered.web_url]
    assert rendered.web_url == f"{BASE}/issues/2026-03-03/"
    assert "View this email in your browser" in [words(a.text_content()) for a in browser]
    assert [a for a in visible if a.get("href") == PLACEHOLDERS["preferences_url"]]


def test_14_citations_link_to_the_numbered_references(doc, article):
    cites = doc.xpath("//sup//a")  # the markers (their classes only served the CSS inliner)
    assert len(cites) >= 30
    cited = set()
    for a in cites:
        match = re.fullmatch(re.escape(ARTICLE_URL) + r"#ref-(\d+)", a.get("href"))
        assert match, a.get("href")
        assert words(a.text_content()) == match.group(1)
        assert a.get("aria-label") == f"Reference {match.group(1)}"
        cited.add(int(match.group(1)))
    assert cited == {r.number for r in article.references}
    items = doc.xpath("//li[starts-with(@id,'ref-')]")
    assert [li.get("id") for li in items] == [f"ref-{r.number}" for r in article.references]
    assert items[0].getparent().tag == "ol"  # numbered
    for li, ref in zip(items, article.references):
        text = words(li.text_content())
        assert words(ref.text) in text
        assert "Cited 17 February 2023" in text
        links = li.xpath(".//a")
        assert [a.get("href") for a in links] == [ref.url]
        assert words(links[0].text_content()) == ref.url


def test_15_author_disclaimer_privacy_and_publisher_footer(doc, article, lib):
    text = body_text(doc)
    s = lib.settings
    for value in (article.author.name, article.author.credentials, article.author.bio, s.disclaimer,
                  legal.email_privacy_notice(s), s.publisher["company_name"], s.publisher["company_number"],
                  s.publisher["vat_number"], s.publisher["phone"], s.publisher["email"], *s.publisher["registered_office"],
                  s.why_you_get_this.format(publication_name=s.publication_name), s.publication_name):
        assert words(value) in text, value
    assert "this website" not in text  # the privacy notice in an email's words
    assert "Company number 10696687" in text and "VAT number 362 5758 74" in text
    assert "About the author" in [words(h.text_content()) for h in doc.xpath("//h2")]


# -- text part: checklist 21 ---------------------------------------------------------------------

def links_section(text: str) -> dict[int, str]:
    head, sep, tail = text.rpartition("\nLinks\n-----\n")
    assert sep, "no Links list at the end of the text part"
    entries = {}
    for line in tail.strip().splitlines():
        match = re.fullmatch(r"<(\d+)> (https://\S+)", line)
        assert match, f"not a footnote line: {line!r}"
        entries[int(match.group(1))] = match.group(2)
    return entries


def test_21_text_has_no_tags_and_footnoted_links(rendered, article):
    text = rendered.text
    assert len(text) > 5000
    assert not re.search(r"<[A-Za-z/!][^>]*>", text), re.search(r"<[A-Za-z/!][^>]*>", text)
    links = links_section(text)
    refs = len(article.references)
    # links are <n> and citations [n]: two lists, each numbered from 1, never confused
    assert sorted(links) == list(range(1, len(links) + 1))
    body, _, _ = text.rpartition("\nLinks\n")
    link_marks = {int(n) for n in re.findall(r"<(\d+)>", body)}
    cite_marks = {int(n) for group in re.findall(r"\[(\d+(?:,\d+)*)\]", body) for n in group.split(",")}
    assert link_marks == set(links), "every link marker has a footnote, and every footnote is referred to"
    assert cite_marks == set(range(1, refs + 1)), "every [n] is a reference"
    assert set(links.values()) >= {ARTICLE_URL, PLACEHOLDERS["unsubscribe_url"], PLACEHOLDERS["preferences_url"],
                                   rendered.web_url}
    by_url = {url: n for n, url in links.items()}
    assert f"Unsubscribe <{by_url[PLACEHOLDERS['unsubscribe_url']]}>" in text
    assert f"Manage your preferences <{by_url[PLACEHOLDERS['preferences_url']]}>" in text
    # no URL in the running text except the references' own
    ref_urls = {r.url for r in article.references}
    assert set(URL_RE.findall(body)) == ref_urls


def test_21_text_carries_every_block(rendered, article, lib):
    text = rendered.text
    flat = words(re.sub(r" <\d+>", "", text))  # the legal text's links are footnoted inside it
    s = lib.settings
    for value in (article.title, article.summary, article.author.name, article.author.credentials, article.author.bio,
                  s.disclaimer, legal.email_privacy_notice(s), s.publisher["company_name"], s.publisher["company_number"],
                  s.publisher["vat_number"], s.publisher["phone"], s.publisher["email"],
                  ", ".join(s.publisher["registered_office"]),
                  s.why_you_get_this.format(publication_name=s.publication_name),
                  "Microneedling is a procedure that can have cosmetic and medical benefits."):
        assert words(value) in flat, value
    assert "What Is Microneedling?\n======================" in text
    assert "\nOverview\n--------\n" in text and "\nEffects\n~~~~~~~\n" in text
    assert "\n- Acne scars\n- Large pores\n" in text
    assert "Other small scar types[1,2]" in text and "(excessive sweating).[3,4]" in text
    for ref in article.references:
        entry = re.search(rf"^\[{ref.number}\] (.+?)(?=^\S|\Z)", text, re.M | re.S)
        assert entry, ref.number
        assert words(ref.text) in words(entry.group(1)) and ref.url in entry.group(1).split()


def test_21_text_lines_wrap_at_78_without_breaking_urls(rendered, article):
    for line in rendered.text.splitlines():
        if len(line) > TEXT_WIDTH:
            assert URL_RE.search(line) and len(line.split()) <= 2, f"long line without a URL: {line!r}"
    for ref in article.references:
        assert ref.url in rendered.text.split()  # each URL whole, on one line


# -- sensitive topics: checklist 24 -------------------------------------------------------------

def test_24_sensitive_audience_gets_neutral_subject_and_nothing_names_the_topic(lib):
    from pipeline.delivery.message import build_message

    s = lib.settings
    topic = "hair-loss"
    assert topic in s.sensitive_topics
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"], audience_topic=topic)
    rendered = render_issue(issue, s)
    assert rendered.subject == s.neutral_subject and rendered.preheader == s.neutral_preheader
    doc = lxml.html.document_fromstring(rendered.html)
    assert doc.findtext(".//title") == s.neutral_subject
    assert words(doc.find("body").xpath("./div")[0].text_content()) == s.neutral_preheader
    assert doc.find("body").xpath("./div")[1].get("aria-label") == s.neutral_subject
    needles = [topic, s.topics[topic]["name"].lower(), "hair loss"]
    # every URL we build (web copy, article, citations, footer); the references' own URLs are
    # the article's public sources and would name it for every reader alike
    ours = [a.get("href") for a in doc.xpath("//a") if a.get("href").startswith(BASE) or "personalise.invalid" in a.get("href")]
    ours += [rendered.web_url, *links_section(rendered.text).values()]
    assert len(ours) > 30
    for url in ours:
        assert not any(n in url.lower() for n in needles), url
    message = build_message(rendered, s, to="reader@example.com",
                            personal=Personal(unsubscribe_url=f"{BASE}/u/TOKEN", preferences_url=f"{BASE}/p/TOKEN"))
    parsed = message_from_bytes(message, policy=policy.default)
    for name, value in parsed.items():
        assert not any(n in str(value).lower() for n in needles), (name, value)
    for text in (rendered.subject, rendered.preheader):
        assert not any(n in text.lower() for n in needles)


def test_non_sensitive_audience_keeps_the_title(lib):
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"], audience_topic="skin-care")
    assert render_issue(issue, lib.settings).subject == "What Is Microneedling?"


def test_an_article_only_about_sensitive_topics_gets_the_neutral_subject(lib):
    """Sent to everyone who chose its topics: if all of them are health conditions,
    the subject would tell an inbox glance which one the reader chose."""
    from dataclasses import replace

    s = lib.settings
    article = replace(lib.article("microneedling"), topics=("hair-loss", "skin-conditions"))
    issue = compose_issue(replace(lib, articles=(article,)), DAY, number=7, scheduled=["microneedling"])
    rendered = render_issue(issue, s)
    assert (rendered.subject, rendered.preheader) == (s.neutral_subject, s.neutral_preheader)
    # one non-sensitive topic among them: the subject no longer singles out a condition
    mixed = replace(article, topics=("hair-loss", "skin-care"))
    issue = compose_issue(replace(lib, articles=(mixed,)), DAY, number=7, scheduled=["microneedling"])
    assert render_issue(issue, s).subject == "What Is Microneedling?"


def test_subject_template_sees_issue_values(lib):
    settings = lib.settings.replace(subject_template="{{ publication_name }} #{{ number }}: {{ title }} ({{ date_label }})")
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"])
    rendered = render_issue(issue, settings)
    assert rendered.subject == "Klarity Health Library #7: What Is Microneedling? (Tuesday 3 March 2026)"
    assert lxml.html.document_fromstring(rendered.html).findtext(".//title") == rendered.subject


def test_bad_subject_template_is_a_render_error(lib):
    issue = compose_issue(lib, DAY, number=7, scheduled=["microneedling"])
    with pytest.raises(RenderError, match="subject_template"):
        render_issue(issue, lib.settings.replace(subject_template="{{ title "))
    with pytest.raises(RenderError, match="empty"):
        render_issue(issue, lib.settings.replace(subject_template="{{ '' }}"))


# -- hostile content ---------------------------------------------------------------------------

HOSTILE_BODY = """\
Intro with <script>alert('body')</script> and <b onclick="alert('click')">bold</b>.

[click me](javascript:alert('md')) and <a href="javascript:alert('raw')">raw link</a>
and <a href="https://ok.example/" onmouseover="alert('hover')">fine link</a>.

<img src="https://evil.example/pixel.gif" onerror="alert('img')">

<iframe src="https://evil.example/frame"></iframe>

<style>@import url(https://evil.example/x.css); body { color: red }</style>

<form action="https://evil.example/steal"><input name="q"></form>

## A section

Text with a citation.[^1]
"""


@pytest.fixture(scope="module")
def hostile(lib):
    author = Author(id="mallory", name='Mallory <img src=x onerror="alert(1)">', credentials="<script>x</script>PhD",
                    bio="Bio\r\nX-Injected: yes")
    article = Article(slug="hostile", title="Evil\r\nBcc: victim@example.com <script>alert('title')</script>",
                      summary="Sum\nmary\r\n<script>alert('summary')</script>", published=date(2026, 1, 1),
                      author=author, body=HOSTILE_BODY,
                      references=(Reference(1, "A <script>ref</script>", "javascript:alert('ref')"),))
    return render_issue(Issue(DAY, 1, (article,)), lib.settings)


def test_hostile_article_reaches_no_output(hostile, lib):
    from pipeline.delivery.message import build_message

    doc = lxml.html.document_fromstring(hostile.html)
    for tag in ("script", "iframe", "form", "input", "img", "style[not(ancestor::head)]"):
        assert not doc.xpath(f"//{tag}"), tag
    for element in doc.iter():
        if not isinstance(element.tag, str):
            continue
        assert not [a for a in element.attrib if a.lower().startswith("on")], lxml.html.tostring(element)[:150]
        for attr in ("href", "src", "action"):
            assert not (element.get(attr) or "").lower().strip().startswith("javascript"), lxml.html.tostring(element)
    assert "@import" not in hostile.html and "evil.example" not in hostile.html
    assert [a.get("href") for a in doc.xpath("//a") if "ok.example" in a.get("href")] == ["https://ok.example/"]
    # the subject is one line: CR/LF cannot start a header
    assert "\r" not in hostile.subject and "\n" not in hostile.subject and "\n" not in hostile.preheader
    assert hostile.subject.startswith("Evil Bcc: victim@example.com")
    message = message_from_bytes(build_message(hostile, lib.settings, to="reader@example.com",
                                               personal=Personal(f"{BASE}/u/T", f"{BASE}/p/T")), policy=policy.default)
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert message["Subject"] == hostile.subject
    # the text part: no tags, no script content, no javascript: footnote
    assert not re.search(r"<[A-Za-z/!][^>]*>", hostile.text)
    assert "alert('body')" not in hostile.text and "alert('title')" not in hostile.text
    assert "javascript" not in hostile.text.split("[click me](")[1].split("\n", 1)[1]  # only the inert Markdown text
    assert list(links_section(hostile.text).values())[0] == "https://ok.example/"  # the raw <a href> is footnoted
    assert "fine link <" in hostile.text and "X-Injected: yes" not in hostile.text.splitlines()


def test_non_https_reference_is_text_not_a_link(lib):
    article = lib.article("microneedling")
    refs = (dataclasses.replace(article.references[0], url="http://insecure.example/page"), *article.references[1:])
    rendered = render_issue(Issue(DAY, 1, (dataclasses.replace(article, references=refs),)), lib.settings)
    doc = lxml.html.document_fromstring(rendered.html)
    li = doc.xpath("//li[@id='ref-1']")[0]
    assert not li.xpath(".//a") and "http://insecure.example/page" in li.text_content()
    assert any("reference 1" in w for w in rendered.warnings)


def test_http_and_mailto_body_links_are_text_not_a_failed_render(lib):
    # `newsletter check` accepts them (see test_check), so the email must not refuse them
    # at send time: like an http reference they stay visible as text, with a warning
    article = lib.article("microneedling")
    body = article.body.replace("## Summary\n\n", "## Summary\n\nWrite to [our editors](mailto:editors@example.org) "
                                "or see [the old site](http://old.example.org/page).\n\n", 1)
    assert body != article.body
    rendered = render_issue(Issue(DAY, 1, (dataclasses.replace(article, body=body),)), lib.settings)
    doc = lxml.html.document_fromstring(rendered.html)
    assert all(a.get("href").startswith("https://") for a in doc.xpath("//a"))
    text = body_text(doc)
    assert "our editors (editors@example.org)" in text and "the old site (http://old.example.org/page)" in text
    assert any("mailto:editors@example.org" in w for w in rendered.warnings)
    assert any("http://old.example.org/page" in w for w in rendered.warnings)


def test_oversized_issue_is_refused(lib):
    article = lib.article("microneedling")
    huge = dataclasses.replace(article, body=article.body * 12)
    with pytest.raises(RenderError, match="Gmail clips"):
        render_issue(Issue(DAY, 1, (huge,)), lib.settings)


# -- the Markdown-to-text walker ------------------------------------------------------------------

def test_body_text_walker_structure_and_footnotes():
    from pipeline.content.plaintext import Footnotes, body_text

    markdown = (
        "Read [the NHS page](https://www.nhs.uk/conditions/) and [again](https://www.nhs.uk/conditions/),\n"
        "or <https://example.org/x>.  \nA hard break; a citation.[^2,3]\n\n"
        "1. First step\n2. Second step with a long line that must wrap because it is far longer than the width\n"
        "   - nested bullet\n\n"
        "> Quoted text\n\n"
        "    code line\n\n"
        "| A | B |\n|---|---|\n| 1 | 2 |\n\n"
        "---\n\n#### Small heading\n\nEnd with <em>inline</em> HTML.\n"
    )
    notes = Footnotes(first=4)
    text = body_text(markdown, notes)
    assert notes.items() == [(4, "https://www.nhs.uk/conditions/")]
    assert "Read the NHS page <4> and again <4>, or https://example.org/x.\nA hard break; a citation.[2,3]" in text
    assert "1. First step\n2. Second step with a long line that must wrap because it is far longer than\n   the width\n   - nested bullet" in text
    assert "> Quoted text" in text and "    code line" in text and "A | B\n1 | 2" in text
    assert "* * *" in text and "Small heading\n\nEnd with inline HTML." in text
    assert all(len(line) <= 78 for line in text.splitlines())


# -- digests -------------------------------------------------------------------------------------

SECOND_BODY = "A second article body sentence that must not appear in the digest.\n\n## Part\n\nMore.\n"


@pytest.fixture(scope="module")
def two_articles(lib) -> Library:
    first = lib.article("microneedling")
    second = Article(slug="sun-cream", title="Choosing a Sun Cream", summary="What SPF and UVA stars mean for your skin.",
                     published=date(2023, 3, 1), author=first.author, body=SECOND_BODY, topics=("skin-care",))
    return dataclasses.replace(lib, articles=(*lib.articles, second))


def test_two_article_digest(two_articles):
    issue = compose_issue(two_articles, DAY, number=8, scheduled=["microneedling", "sun-cream"])
    rendered = render_issue(issue, two_articles.settings)
    doc = lxml.html.document_fromstring(rendered.html)
    h1 = doc.xpath("//h1")
    assert [words(h.text_content()) for h in h1] == ["What Is Microneedling?"]
    assert rendered.subject == "What Is Microneedling?"
    second_url = f"{BASE}/articles/sun-cream/"
    entry = [h for h in doc.xpath("//h2") if words(h.text_content()) == "Choosing a Sun Cream"]
    assert len(entry) == 1 and [a.get("href") for a in entry[0].xpath(".//a")] == [second_url]
    text = body_text(doc)
    assert "What SPF and UVA stars mean for your skin." in text
    assert "A second article body sentence" not in text and "More from the library" in text
    assert text.index("Microneedling is a procedure that can have") < text.index("Choosing a Sun Cream")
    more = [a for a in doc.xpath("//a") if a.get("aria-label") == "Read the article: Choosing a Sun Cream"]
    assert more and more[0].get("href") == second_url
    # the lead is still in full, with its references and only its references
    assert len(doc.xpath("//li[starts-with(@id,'ref-')]")) == 6
    assert "A second article body sentence" not in rendered.text
    links = links_section(rendered.text)
    assert second_url in links.values()
    number = {u: n for n, u in links.items()}[second_url]
    assert f"Choosing a Sun Cream <{number}>" in rendered.text


def test_weekly_digest_renders(two_articles):
    issue = weekly_issue(two_articles, date(2023, 3, 5), 2, sent_on={"microneedling": date(2023, 2, 28),
                                                                      "sun-cream": date(2023, 3, 2)})
    rendered = render_issue(issue, two_articles.settings)
    assert issue.key == "2023-03-05-weekly"
    assert rendered.subject == "This week: What Is Microneedling? and 1 more"
    assert rendered.web_url == f"{BASE}/issues/2023-03-05-weekly/"
    text = body_text(lxml.html.document_fromstring(rendered.html))
    assert "Week ending Sunday 5 March 2023 · Issue 2" in text and "Choosing a Sun Cream" in text


# -- personalise ----------------------------------------------------------------------------------

def test_personalise_escapes_values_and_replaces_every_placeholder(rendered):
    personal = Personal(unsubscribe_url=f"{BASE}/unsubscribe?t=abc&x=\"1\"", preferences_url=f"{BASE}/preferences?t=abc&y=2",
                        greeting='Hello <b>Jo</b> & "Al",')
    html, text = personalise(rendered, personal)
    for placeholder in PLACEHOLDERS.values():
        assert placeholder not in html and placeholder not in text
    assert "personalise.invalid" not in html + text
    doc = lxml.html.document_fromstring(html)
    hrefs = [a.get("href") for a in doc.xpath("//a")]
    assert personal.unsubscribe_url in hrefs and personal.preferences_url in hrefs  # parsed back exactly
    assert "Hello &lt;b&gt;Jo&lt;/b&gt; &amp; &quot;Al&quot;," in html
    assert not doc.xpath("//b")  # the greeting's markup stayed text
    assert 'Hello <b>Jo</b> & "Al",' in text and personal.unsubscribe_url in text.split()


# -- newsletter preview ------------------------------------------------------------------------------

def test_preview_command_writes_html_text_and_a_mime_message(content_dir, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "preview"
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "preview", "--article", "microneedling",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("issue.html", "issue.txt", "issue.eml"):
        assert f"wrote {out / name}" in result.output
    assert "subject:   What Is Microneedling?" in result.output
    assert "preheader: Microneedling uses small, fine needles" in result.output
    assert re.search(r"html size: \d+\.\d KB", result.output)
    html = (out / "issue.html").read_text(encoding="utf-8")
    text = (out / "issue.txt").read_text(encoding="utf-8")
    assert "personalise.invalid" not in html + text and PLACEHOLDERS["greeting"] not in html + text
    assert f'href="{BASE}/unsubscribe"' in html and "\nHello,\n" in text
    message = message_from_bytes((out / "issue.eml").read_bytes(), policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["Subject"] == "What Is Microneedling?" and "preview@example.com" in message["To"]
    # the message's parts are the written files, line ends aside (CRLF on the wire), the HTML's
    # lines fitted for quoted-printable (pipeline.delivery.qp.wire_html: spaces as line breaks)
    from pipeline.delivery.qp import wire_html
    wire = message.get_body(("html",)).get_content().replace("\r\n", "\n").rstrip("\n")
    assert wire == wire_html(html.rstrip("\n")) and wire.replace("\n", " ") == html.rstrip("\n").replace("\n", " ")
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == text.rstrip("\n")


def test_preview_refuses_date_and_article_together(content_dir):
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, ["--content", str(content_dir), "preview", "--article", "microneedling",
                                      "--date", "2026-03-03"])
    assert result.exit_code != 0 and "not both" in result.output


def test_preview_by_date_takes_the_queue_and_says_when_nothing_is_due(content_dir, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    runner = CliRunner(env={"DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.db'}",
                            "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true"})
    result = runner.invoke(cli, ["--content", str(content_dir), "preview", "--date", "2026-03-03", "--out", str(tmp_path)])
    assert result.exit_code == 0 and "issue:     2026-03-03 (number 1): microneedling" in result.output
    result = runner.invoke(cli, ["--content", str(content_dir), "preview", "--date", "2020-01-01", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "nothing to send for the daily issue of 2020-01-01: nothing is scheduled and the queue has no unsent " \
           "article published by then" in result.output
