"""`newsletter check`: every broken-library case gives file:line, a reason and a
non-zero exit.  Each test breaks a private copy of content/ (the ``content_dir``
fixture) in one small way and runs the real command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.content.library import LibraryError, check_library, load_library

ROOT = Path(__file__).resolve().parent.parent


def check(content_dir: Path):
    result = CliRunner().invoke(cli, ["--content", str(content_dir), "check"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if ": error: " in line]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line containing ``needle`` (found independently of the checker)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


@pytest.fixture
def article(content_dir: Path) -> Path:
    return content_dir / "articles" / "microneedling.md"


@pytest.fixture
def author(content_dir: Path) -> Path:
    return content_dir / "authors" / "amy-murtagh.yaml"


def assert_fails_with(content_dir: Path, *expected: str) -> None:
    result = check(content_dir)
    assert result.exit_code == 1, result.output
    assert errors(result) == list(expected)
    assert result.stderr.splitlines()[-1].startswith(f"check failed: {len(expected)} error(s)")


def test_the_committed_library_passes(content_dir):
    result = check(content_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 1 article(s), 1 author(s), 0 warning(s)\n"


# -- YAML and required fields ---------------------------------------------------------

def test_bad_yaml_in_front_matter(content_dir, article):
    edit(article, "author: amy-murtagh", "author: [amy-murtagh")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'topics:')}: error: bad YAML: "
                                   "expected ',' or ']', but got ':'")


def test_bad_yaml_in_author_file(content_dir, author, article):
    edit(author, "name: Amy Murtagh", "name: 'Amy Murtagh")
    result = check(content_dir)
    assert result.exit_code == 1
    assert errors(result)[0].startswith(f"{author}:4: error: bad YAML: ")
    # the article that names the broken author is reported too, at its author line
    assert errors(result)[1] == (f"{article}:{line_of(article, 'author:')}: error: unknown author 'amy-murtagh' "
                                 f"(no {content_dir / 'authors' / 'amy-murtagh.yaml'}, or it has errors)")


def test_bad_yaml_in_site_settings_still_checks_the_articles(content_dir, article):
    site = content_dir / "site.yaml"
    edit(site, "sender_name: Klarity Health Library", "sender_name: [Klarity")
    edit(article, "title: What Is Microneedling?\n", "")
    assert_fails_with(content_dir,
                      f"{site}:{line_of(site, 'sender_address:')}: error: bad YAML: expected ',' or ']', but got ':'",
                      f"{article}:1: error: front matter is missing required field 'title'")


@pytest.mark.parametrize("field", ["title", "slug", "summary", "published", "author"])
def test_missing_required_field(content_dir, article, field):
    text = article.read_text(encoding="utf-8").splitlines(keepends=True)
    start = line_of(article, f"{field}:") - 1
    end = start + 1
    while text[end].startswith("  "):  # a folded value continues on indented lines
        end += 1
    article.write_text("".join(text[:start] + text[end:]), encoding="utf-8")
    result = check(content_dir)
    assert result.exit_code == 1
    assert f"{article}:1: error: front matter is missing required field {field!r}" in errors(result)


def test_front_matter_not_closed(content_dir, article):
    article.write_text("---\ntitle: Half an article\n", encoding="utf-8")
    assert_fails_with(content_dir, f"{article}:1: error: the front matter is not closed: no second '---' line")


def test_non_utf8_article_is_reported_not_crashed(content_dir, article):
    article.write_bytes(article.read_bytes().replace("don’t".encode(), b"don\x92t"))
    assert_fails_with(content_dir, f"{article}:{line_of_bytes(article, b'don')}: error: not UTF-8 text (byte 0x92)")


def line_of_bytes(path: Path, needle: bytes) -> int:
    data = path.read_bytes()
    return data[:data.index(needle)].count(b"\n") + 1


# -- authors ----------------------------------------------------------------------------

def test_unknown_author(content_dir, article):
    edit(article, "author: amy-murtagh", "author: nobody")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'author:')}: error: unknown author 'nobody' "
                                   f"(no {content_dir / 'authors' / 'nobody.yaml'}, or it has errors)")


def test_author_without_credentials(content_dir, author, article):
    edit(author, "credentials: BSc Veterinary Bioscience - Bachelors of Science, University of Glasgow\n", "")
    assert_fails_with(content_dir,
                      f"{author}:1: error: author has no credentials",
                      f"{article}:{line_of(article, 'author:')}: error: unknown author 'amy-murtagh' "
                      f"(no {content_dir / 'authors' / 'amy-murtagh.yaml'}, or it has errors)")


def test_author_with_empty_credentials_points_at_the_line(content_dir, author):
    edit(author, "credentials: BSc Veterinary Bioscience - Bachelors of Science, University of Glasgow", "credentials: ''")
    result = check(content_dir)
    assert errors(result)[0] == f"{author}:2: error: author has no credentials"


# -- citations and references -------------------------------------------------------------

def test_citation_to_a_missing_reference(content_dir, article):
    edit(article, "Other small scar types[^1,2]", "Other small scar types[^1,9]")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'scar types[^1,9]')}: error: citation [9] points to "
                                   "a reference that does not exist (there are 6)")


def test_citation_line_is_exact_inside_a_wrapped_paragraph(content_dir, article):
    edit(article, "## Overview\n\n", "## Overview\n\nA wrapped paragraph,\nits second line,\nand a bad citation.[^7]\n\n")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'bad citation.[^7]')}: error: citation [7] points "
                                   "to a reference that does not exist (there are 6)")


def test_reference_with_neither_text_nor_url(content_dir, article):
    edit(article, "references:\n", "references:\n  - cited: 2023-02-17\n")
    result = check(content_dir)
    assert result.exit_code == 1
    # the new first reference shifts the numbers: the body's last citation [^6] now lacks a reference 7
    assert errors(result)[0] == f"{article}:{line_of(article, '- cited: 2023-02-17')}: error: reference 1 has neither text nor URL"


def test_reference_url_must_be_absolute(content_dir, article):
    edit(article, "url: https://www.yalemedicine.org/conditions/microneedling", "url: /conditions/microneedling")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'url: /conditions')}: error: reference 2 URL is not "
                                   "absolute http(s): '/conditions/microneedling'")


@pytest.mark.parametrize("link,reason", [
    ("[our guide](/guides/skin)", "link URL is not absolute https (or mailto): '/guides/skin'"),
    ("[our guide](www.example.org)", "link URL is not absolute https (or mailto): 'www.example.org'"),
    ("[our guide](ftp://example.org/x)", "link URL is not absolute https (or mailto): 'ftp://example.org/x'"),
    ("![a photo](images/a.png){width=10 height=10}", "image URL is not absolute https: 'images/a.png'"),
    # raw HTML in the Markdown: nh3 keeps a relative href, which would reach the feeds as-is
    ('<a href="/guides/skin">our guide</a>', "link URL is not absolute https (or mailto): '/guides/skin'"),
    ("<a href='//example.org/x'>our guide</a>", "link URL is not absolute https (or mailto): '//example.org/x'"),
])
def test_body_link_url_must_be_absolute(content_dir, article, link, reason):
    edit(article, "## Summary\n\n", f"## Summary\n\nSee\n{link} for more.\n\n")
    assert_fails_with(content_dir, f"{article}:{line_of(article, link)}: error: {reason}")


def test_control_character_in_the_body_is_reported_not_crashed(content_dir, article):
    # a vertical tab or form feed pasted from a word processor is not allowed in XML:
    # the feeds could not be built, so check must name the line instead
    edit(article, "## Summary\n\n", "## Summary\n\nPasted\x0btext.\n\n")
    assert_fails_with(content_dir, f"{article}:{line_of(article, 'Pasted')}: error: control character U+000B "
                                   "is not allowed (XML feeds cannot carry it)")


def test_absolute_and_mailto_links_are_fine(content_dir, article):
    edit(article, "## Summary\n\n", "## Summary\n\nSee [a](https://example.org/) or [b](mailto:a@example.org).\n\n")
    assert check(content_dir).exit_code == 0


def test_uncited_reference_is_a_warning_only(content_dir, article):
    edit(article, "    url: https://hob-aesthetics.com/microneedling-cost/\n    cited: 2023-02-17\n",
         "    url: https://hob-aesthetics.com/microneedling-cost/\n    cited: 2023-02-17\n"
         "  - text: An extra source nobody cites.\n")
    result = check(content_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{article}:{line_of(article, 'An extra source nobody cites.')}: warning: reference 7 is never cited",
        "ok: 1 article(s), 1 author(s), 1 warning(s)",
    ]


# -- slugs, bodies and sections ------------------------------------------------------------

def test_duplicate_slug(content_dir, article):
    second = content_dir / "articles" / "second.md"
    second.write_text(article.read_text(encoding="utf-8"), encoding="utf-8")
    result = check(content_dir)
    assert result.exit_code == 1
    assert errors(result) == [f"{second}:{line_of(second, 'slug:')}: error: duplicate slug 'microneedling' "
                              f"(also in {article})"]
    assert f"{second}:{line_of(second, 'slug:')}: warning: slug 'microneedling' differs from the file name " \
           "'second.md' (articles are content/articles/<slug>.md)" in result.stdout


def test_empty_body(content_dir, article):
    front = article.read_text(encoding="utf-8").split("\n---\n")[0]
    article.write_text(front + "\n---\n\n  \n", encoding="utf-8")
    closing = len(front.splitlines()) + 1
    assert_fails_with(content_dir, f"{article}:{closing}: error: the article body is empty (nothing after the front matter)")


def test_empty_section(content_dir, article):
    edit(article, "## Summary\n", "## Nothing here\n\n## Summary\n")
    assert_fails_with(content_dir, f"{article}:{line_of(article, '## Nothing here')}: error: empty section: a heading "
                                   "with no content before the next heading")


def test_empty_last_section(content_dir, article):
    article.write_text(article.read_text(encoding="utf-8") + "\n## Further reading\n", encoding="utf-8")
    assert_fails_with(content_dir, f"{article}:{line_of(article, '## Further reading')}: error: empty section: a "
                                   "heading with no content after it")


def test_a_section_with_only_subsections_is_not_empty(content_dir):
    # the committed article has "## What happens after microneedling?" directly followed by "### Effects"
    assert check(content_dir).exit_code == 0


def test_skipped_heading_level_and_h1(content_dir, article):
    edit(article, "## Overview\n", "### Overview\n")
    edit(article, "## Summary\n", "# Summary\n")
    assert_fails_with(content_dir,
                      f"{article}:{line_of(article, '### Overview')}: error: heading level skips from h1 to h3",
                      f"{article}:{line_of(article, '# Summary')}: error: the body must not contain a level-1 "
                      "heading: the title is the page's only h1")


# -- site settings ----------------------------------------------------------------------------

def remove_key(site: Path, key: str) -> None:
    """Drop a top-level key and its indented continuation lines."""
    lines = site.read_text(encoding="utf-8").splitlines(keepends=True)
    start = line_of(site, f"{key}:") - 1
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    site.write_text("".join(lines[:start] + lines[end:]), encoding="utf-8")


@pytest.mark.parametrize("key", ["disclaimer", "privacy_notice", "publisher"])
def test_site_settings_missing_a_legal_block(content_dir, key):
    site = content_dir / "site.yaml"
    remove_key(site, key)
    assert_fails_with(content_dir, f"{site}: error: missing required setting(s): {key}")


@pytest.mark.parametrize("key,message", [
    ("disclaimer", "site settings lack the disclaimer"),
    ("privacy_notice", "site settings lack the privacy notice"),
])
def test_site_settings_with_an_empty_legal_text(content_dir, key, message):
    site = content_dir / "site.yaml"
    remove_key(site, key)
    site.write_text(site.read_text(encoding="utf-8") + f'{key}: ""\n', encoding="utf-8")
    assert_fails_with(content_dir, f"{site}:{line_of(site, key + ':')}: error: {message}")


def test_publisher_footer_lacking_a_field(content_dir):
    site = content_dir / "site.yaml"
    edit(site, "  vat_number: 362 5758 74\n", "")
    edit(site, "  company_number: \"10696687\"", "  company_number: \"\"")
    assert_fails_with(content_dir,
                      f"{site}:{line_of(site, 'publisher:')}: error: publisher footer lacks vat_number",
                      f"{site}:{line_of(site, 'company_number:')}: error: publisher footer lacks company_number")


def test_publisher_footer_that_is_not_a_mapping(content_dir):
    site = content_dir / "site.yaml"
    remove_key(site, "publisher")
    site.write_text(site.read_text(encoding="utf-8") + "publisher: Klarity\n", encoding="utf-8")
    assert_fails_with(content_dir, f"{site}:{line_of(site, 'publisher:')}: error: site settings lack the publisher "
                                   "footer (a mapping with company_name, registered_office, vat_number, "
                                   "company_number, phone, email)")


def test_unknown_topic_in_article(content_dir, article):
    edit(article, "  - skin-care\n", "  - skin-care\n  - astrology\n")
    assert_fails_with(content_dir, f"{article}:{line_of(article, '- astrology')}: error: unknown topic 'astrology' "
                                   "(not in site settings)")


# -- the whole library ---------------------------------------------------------------------------

def test_every_problem_is_reported_at_once(content_dir, article, author):
    edit(author, "credentials: BSc Veterinary Bioscience - Bachelors of Science, University of Glasgow\n", "")
    edit(article, "Other small scar types[^1,2]", "Other small scar types[^8]")
    edit(article, "## Summary\n", "## Nothing here\n\n## Summary\n")
    result = check(content_dir)
    assert result.exit_code == 1
    assert [e.split(": error: ")[1].split(" (")[0] for e in errors(result)] == [
        "author has no credentials", "unknown author 'amy-murtagh'",
        "empty section: a heading with no content before the next heading",
        "citation [8] points to a reference that does not exist",
    ]
    with pytest.raises(LibraryError) as caught:
        load_library(content_dir)
    assert len([p for p in caught.value.problems if p.level == "error"]) == 4
    library, problems = check_library(content_dir)
    assert library is None and len(problems) == 4


def test_real_cli_exit_status_and_one_line_per_problem(content_dir, article):
    edit(article, "Other small scar types[^1,2]", "Other small scar types[^1,9]")
    proc = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "--content",
                           str(content_dir), "check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{article}:{line_of(article, '[^1,9]')}: error: citation [9] points to a reference that does not exist (there are 6)",
        "check failed: 1 error(s), 0 warning(s)",
    ]
    edit(article, "Other small scar types[^1,9]", "Other small scar types[^1,2]")
    # the default --content is ./content: run where the test's own copy is, never the live library
    ok = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "check"],
                        cwd=content_dir.parent, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
