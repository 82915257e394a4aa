"""Issue 14's smaller messages, unit by unit (pipeline/rendering/minify.py, pipeline/delivery/qp.py):
the HTML's lines fitted for quoted-printable change only spaces that HTML reads as any whitespace,
and the classes, tags and comments taken out are the ones nothing reads."""
from __future__ import annotations

import binascii
import re

import lxml.html
import pytest

from pipeline.rendering.issue import PLACEHOLDERS
from pipeline.rendering.minify import drop_redundant, drop_unused_classes, fit_lines, minify_css, qp_length

WORDS = ("Prices – from £100 to £350 – café-side clinics’ “micro-needling” 🎉 naïve Zoë O’Brien "
         "=?utf-8?q?Zo=C3=AB?= a=b " * 12)


def encoded_lines(html: str) -> list[bytes]:
    return binascii.b2a_qp(html.encode("utf-8"), istext=True).split(b"\n")


def test_a_fitted_paragraph_needs_no_soft_break_and_reads_the_same():
    html = f'<p class="x y" style="margin:0 0 18px;color:#1f2933">{WORDS}</p>'
    assert any(line.endswith(b"=") for line in encoded_lines(html))  # one long line: soft breaks
    fitted = fit_lines(html)
    assert fitted != html and len(fitted) == len(html)
    assert [i for i, (a, b) in enumerate(zip(html, fitted)) if a != b] == [m.start() for m in re.finditer("\n", fitted)]
    assert all(html[m.start()] == " " for m in re.finditer("\n", fitted))  # only spaces changed
    lines = encoded_lines(fitted)
    assert not [line for line in lines if line.endswith(b"=")]  # every line fits: no soft break at all
    assert max(len(line) for line in lines) <= 76 and max(len(line) for line in lines) >= 70  # lines used in full
    for line in fitted.split("\n"):
        assert qp_length(line) == len(binascii.b2a_qp(line.encode("utf-8"), istext=True))
    before, after = lxml.html.fragment_fromstring(html), lxml.html.fragment_fromstring(fitted)
    assert " ".join(after.text_content().split()) == " ".join(before.text_content().split())
    assert after.attrib == before.attrib


@pytest.mark.parametrize("protected", [
    "<pre>two  spaces and  more words " + "x " * 60 + "</pre>",
    "<title>A subject with many words " + "word " * 30 + "</title>",
    "<style>@media only screen and (max-width:479px){.px{padding-left:20px !important}} " + ".a b " * 20 + "</style>",
    "<!--[if mso | IE]><table border=\"0\" cellpadding=\"0\" role=\"presentation\"><tr><td> " + "y " * 40 + "<![endif]-->",
    "<p>" + " ".join(["微针"] * 60) + "</p>",
])
def test_spaces_that_matter_are_never_turned_into_line_breaks(protected):
    html = "<p>" + "lead words " * 10 + "</p>" + protected
    fitted = fit_lines(html)
    assert fitted[len(html) - len(protected):] == protected  # untouched
    assert "\n" in fitted[:len(html) - len(protected)]  # while the plain text before it is fitted


def test_attribute_values_keep_their_spaces_while_the_spaces_between_attributes_may_break():
    tag = '<a href="https://example.org/a b" aria-label="' + "Read the article: " * 8 + '" title=\'t t\'>x</a>'
    fitted = fit_lines("<p>" + "lead words " * 10 + tag + "</p>")
    link = lxml.html.fragment_fromstring(fitted).find("a")
    assert link.attrib == lxml.html.fragment_fromstring(tag).attrib  # every value as it was
    assert "\naria-label=" in fitted or "\ntitle=" in fitted  # a break between two attributes


def test_a_line_break_may_sit_between_a_cjk_character_and_a_latin_word():
    html = "<p>" + "微针 word " * 30 + "</p>"
    fitted = fit_lines(html)
    for match in re.finditer("\n", fitted):
        assert not ("\u4e00" <= fitted[match.start() - 1] <= "\u9fff" and "\u4e00" <= fitted[match.start() + 1] <= "\u9fff")
    assert "\n" in fitted


def test_placeholders_are_never_cut_and_a_leading_dot_is_counted():
    html = "<p>" + " ".join([PLACEHOLDERS["greeting"], *(["word"] * 40), PLACEHOLDERS["unsubscribe_url"]] * 3) + "</p>"
    fitted = fit_lines(html)
    for placeholder in (PLACEHOLDERS["greeting"], PLACEHOLDERS["unsubscribe_url"]):
        assert fitted.count(placeholder) == 3
    assert qp_length(".x", line_start=True) == 4 and qp_length(".x") == 2 and qp_length("a=b") == 5
    assert qp_length("é") == 6 and qp_length("’") == 9 and qp_length("🎉") == 12


def test_classes_only_the_inliner_read_are_dropped_and_the_rest_kept():
    html = ('<html><head><style>.px{padding:0}@media (prefers-color-scheme:dark){.card *{color:#fff !important}}</style>'
            '<!--[if lte mso 11]><style>.mj-outlook-group-fix{width:100% !important}</style><![endif]-->'
            '<!--[if mso]><style>.mso-only{x:y}</style><![endif]--></head><body>'
            '<td class="px title card"><span class="cite-group" style="white-space:nowrap">a<sup class="cite">1</sup>'
            '</span><div class="mj-outlook-group-fix mso-only">x</div></td></body></html>')
    out = drop_unused_classes(html)
    assert 'class="px card"' in out and 'class="cite' not in out and 'class="mj-outlook-group-fix mso-only"' in out
    assert '<span style="white-space:nowrap">' in out and "<sup>1</sup>" in out
    # the block for Outlook 2003 goes (and then its class with the next pass), other conditionals stay
    trimmed = drop_unused_classes(drop_redundant(html))
    assert "lte mso 11" not in trimmed and 'class="mso-only"' in trimmed and "<!--[if mso]>" in trimmed


def test_mjml_leftovers_go_and_neighbouring_conditionals_merge():
    html = ('<html xmlns="http://www.w3.org/1999/xhtml" xmlns:o="urn:schemas-microsoft-com:office:office"><body>'
            '<table><tbody><tr><td><!--[if mso | IE]><table><tr><![endif]--><!--[if mso | IE]><td><![endif]-->'
            'x</td></tr></tbody></table></body></html>')
    out = drop_redundant(html)
    assert "tbody" not in out and "xhtml" not in out and 'xmlns:o="urn' in out
    assert out.count("<!--[if mso | IE]>") == 1 and "<!--[if mso | IE]><table><tr><td><![endif]-->" in out


def test_css_values_are_written_shorter_and_mean_the_same():
    css = ".a { margin: 0 0 18px 0; padding: 0px 0 0 26px; color: #FFFFFF; background: #0b5c8a } .b { margin: 0px auto }"
    assert minify_css(css) == ".a{margin:0 0 18px;padding:0 0 0 26px;color:#FFF;background:#0b5c8a}.b{margin:0 auto}"


# -- the message as clients get it ------------------------------------------------------------

EDGE_BODY = """Opening words with a citation.[^1] Café–side prices from £100 – 350, naïve “quotes” and 微针 微针 微针
text that runs on long enough to wrap over several lines on a phone, with more words after it.[^1,2]

## Details – 微针

> A quote long enough to wrap over two lines on a phone, at the very least, and then some more words.

![A dermaroller on a tray – 微针](https://images.example.org/roller.jpg "The roller, café-side"){width=1200 height=800}

| a | b |
|---|---|
| 1 | 2 |

```
code   block  with   spaces
  indented line
```

- one item with a [link](https://example.org/x y)
- two
"""


@pytest.mark.browser
def test_the_html_as_the_message_carries_it_renders_as_the_rendered_html(browser, content_dir, frozen, tmp_path):
    """The wire's fitted lines (spaces as line breaks) change nothing a reader sees: a digest with
    CJK, a <pre>, a table, a figure and citations, in light and dark mode, pixel for pixel."""
    from datetime import date
    from email import message_from_bytes, policy

    from fixtures_site import write_article
    from pipeline.content.library import load_library
    from pipeline.delivery.message import build_message
    from pipeline.rendering.issue import Issue, Personal, personalise
    from pipeline.rendering.render import render_issue
    from test_email_clients import pixel_diff, screenshot

    write_article(content_dir, "edge", "2024-05-06", title="Edge – café 微针 🎉", body=EDGE_BODY)
    write_article(content_dir, "second", "2024-05-06", title="Second – naïve 微针")
    library = load_library(content_dir)
    rendered = render_issue(Issue(date=date(2026, 3, 3), number=1,
                                  articles=(library.article("edge"), library.article("second"))), library.settings)
    personal = Personal("https://my.klarity.health/newsletter/unsubscribe/T", "https://my.klarity.health/newsletter/preferences/T",
                        "Hello Zoë,")
    message = message_from_bytes(build_message(rendered, library.settings, to="Zoë <zoe@example.org>", personal=personal),
                                 policy=policy.default)
    wire = message.get_body(("html",)).get_content()
    html = personalise(rendered, personal)[0]
    assert wire.count("\n") > html.count("\n") + 50  # fitted
    for width, scheme in ((375, "light"), (600, "dark")):
        before = screenshot(browser, html, width, tmp_path / f"rendered-{width}.png", scheme)
        after = screenshot(browser, wire, width, tmp_path / f"wire-{width}.png", scheme)
        result = pixel_diff(browser, before, after)
        assert result["diff"] == 0 and result["sizes"][0][1] > 1000, result
