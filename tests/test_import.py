"""`newsletter import`: the seed and its HTML twin become the committed article.

Golden files: the committed content/articles/microneedling.md and
content/authors/amy-murtagh.yaml are the reviewed import of the seed; the import
with every default (no --summary, no --topics) is tests/golden/import/.  Refresh
the latter with `UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_import.py`
(or `make goldens`) and review the diff.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings as hsettings, strategies as st

from pipeline.content import markup
from pipeline.cli import cli
from pipeline.content.library import load_library, split_front_matter
from pipeline.errors import ImportError_
from pipeline.importing.importer import read_page
from pipeline.importing.page import Cite, Paragraph, find_citations
from pipeline.importing.writer import inline_markdown, render_body, slug_from_title

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT.parent / "shared" / "seeds" / "microneedling-guide.txt"
HTML_PAGE = Path(__file__).parent / "fixtures" / "pages" / "microneedling.html"
LIBRARY = Path(__file__).parent / "fixtures" / "library"
ARTICLE = LIBRARY / "articles" / "microneedling.md"
AUTHOR = LIBRARY / "authors" / "amy-murtagh.yaml"
GOLDEN = Path(__file__).parent / "golden" / "import"

pytestmark = pytest.mark.skipif(not SEED.exists(), reason="the shared seed is not checked out next to the repo")


def committed_summary() -> str:
    front, _, _ = split_front_matter(ARTICLE.read_text(encoding="utf-8"))
    return yaml.safe_load(front)["summary"]


def run_import(content_dir: Path, page: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["--content", str(content_dir), "import", str(page), "--out", str(out), *extra])


def newsletter(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real console entry point, for the one-line error output."""
    return subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


# -- the seed and its HTML twin ---------------------------------------------------

@pytest.mark.parametrize("page", [SEED, HTML_PAGE], ids=["text", "html"])
def test_import_reproduces_the_committed_article_byte_for_byte(content_dir, tmp_path, page):
    result = run_import(content_dir, page, tmp_path / "out", "--topics", "skin-care", "--summary", committed_summary())
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # the page's disclaimer, privacy notice and footer match site.yaml
    assert (tmp_path / "out" / "articles" / "microneedling.md").read_bytes() == ARTICLE.read_bytes()
    assert (tmp_path / "out" / "authors" / "amy-murtagh.yaml").read_bytes() == AUTHOR.read_bytes()


def test_default_import_matches_golden(content_dir, tmp_path):
    """No --summary, no --topics: the proposed summary lists the sections, never repeats the
    opening (the standfirst would say it twice), and the import tells the editor to write one."""
    out = tmp_path / "out"
    result = run_import(content_dir, SEED, out)
    assert result.exit_code == 0, result.output
    produced = {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*")) if p.is_file()}
    assert sorted(produced) == ["articles/microneedling.md", "authors/amy-murtagh.yaml"]
    if os.environ.get("UPDATE_GOLDENS") == "1":
        for name, text in produced.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text, encoding="utf-8")
    for name, text in produced.items():
        assert text == (GOLDEN / name).read_text(encoding="utf-8"), f"{name} differs from the golden file"
    front_text, body, _ = split_front_matter(produced["articles/microneedling.md"])
    front = yaml.safe_load(front_text)
    assert front["summary"] == ("In this article: Microneedling benefits; Who gets microneedling?; What happens when "
                                "you get microneedling?; What happens after microneedling?; Microneedling healing "
                                "and risks; Microneedling Safety and Costs.")
    assert not markup.repeats_opening(front["summary"], body)
    assert "warning: no --summary given: the summary lists the article's sections" in result.stderr
    assert str(out / "articles" / "microneedling.md") in result.stderr
    assert front["topics"] == []


def test_both_readers_give_the_same_page():
    assert read_page(SEED) == read_page(HTML_PAGE)


def test_the_imported_article_has_every_part_in_place():
    page = read_page(SEED)
    assert page.title == "What Is Microneedling?"
    assert [(r.number, r.cited) for r in page.references] == [(n, date(2023, 2, 17)) for n in range(1, 7)]
    assert all(r.url and r.url.startswith("https://") for r in page.references)
    assert page.references[4].text == "Petrou I. Microneedling strategies. 2021 Apr 27;42."
    assert page.references[0].text == "Microneedling: what it is, uses, benefits & results [Internet]. Cleveland Clinic."
    assert page.author.id == "amy-murtagh"
    assert page.author.credentials == "BSc Veterinary Bioscience - Bachelors of Science, University of Glasgow"
    assert page.author.bio.startswith("Amy is a recent graduate")

    body = ARTICLE.read_text(encoding="utf-8")
    toks = markup.tokens(split_front_matter(body)[1])
    headings = [(t.tag, toks[i + 1].content) for i, t in enumerate(toks) if t.type == "heading_open"]
    assert headings == [
        ("h2", "Overview"), ("h2", "Microneedling benefits"), ("h2", "Who gets microneedling?"),
        ("h2", "What happens when you get microneedling?"), ("h2", "What happens after microneedling?"),
        ("h3", "Effects"), ("h2", "Microneedling healing and risks"), ("h3", "Healing"), ("h3", "Risks"),
        ("h2", "Microneedling Safety and Costs"), ("h3", "Safety"), ("h3", "Costs"), ("h2", "Summary"),
    ]
    lists = [t for t in toks if t.type == "bullet_list_open"]
    assert len(lists) == 4
    cited = [n for _, n in markup.citations(split_front_matter(body)[1])]
    # an independent oracle that holds for this seed: every citation ends its line
    seed_lines = SEED.read_text(encoding="utf-8").split("\n")
    expected = []
    for line in seed_lines[:seed_lines.index("References")]:
        match = re.search(r"(?<=[a-z).])(\d(?:,\d)*)\s*$", line)
        expected += [int(n) for n in match.group(1).split(",")] if match else []
    assert len(expected) == 30 and cited == expected
    for marker in ("types[^1,2]", "sweating).[^3,4]", "£100-350.[^6]", "30 minutes to take effect.[^1]"):
        assert marker in body
    for chrome in ("newsletter", "Leave a Reply", "citizen-centric", "will not be published", "VAT", "purely informational"):
        assert chrome not in split_front_matter(body)[1]


def test_imported_article_loads_and_checks(content_dir, tmp_path):
    (content_dir / "articles" / "microneedling.md").unlink()
    result = run_import(content_dir, HTML_PAGE, content_dir, "--topics", "skin-care")
    assert result.exit_code == 0, result.output
    library = load_library(content_dir)
    assert [a.slug for a in library.articles] == ["microneedling"]
    assert library.articles[0].topics == ("skin-care",)


# -- the command ------------------------------------------------------------------

def test_import_is_deterministic_and_a_rerun_changes_nothing(content_dir, tmp_path):
    out = tmp_path / "out"
    first = run_import(content_dir, SEED, out)
    before = {p: p.read_bytes() for p in out.rglob("*.*")}
    second = run_import(content_dir, SEED, out)
    assert second.exit_code == 0, second.output
    assert "unchanged: " in second.stdout and "wrote: " not in second.stdout
    assert "wrote: " in first.stdout
    assert {p: p.read_bytes() for p in out.rglob("*.*")} == before


def test_refuses_to_overwrite_an_edited_article_unless_forced(content_dir, tmp_path):
    out = tmp_path / "out"
    run_import(content_dir, SEED, out)
    article = out / "articles" / "microneedling.md"
    article.write_text(article.read_text(encoding="utf-8") + "\nAn editor's addition.\n", encoding="utf-8")
    edited = article.read_bytes()
    proc = newsletter("--content", str(content_dir), "import", str(SEED), "--out", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {article}: the article already exists and differs from this import; pass --force to replace it"]
    assert article.read_bytes() == edited
    forced = run_import(content_dir, SEED, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert b"An editor's addition." not in article.read_bytes()


def test_a_different_existing_author_file_is_kept_with_a_warning(content_dir, tmp_path):
    out = tmp_path / "out"
    author = out / "authors" / "amy-murtagh.yaml"
    author.parent.mkdir(parents=True)
    author.write_text("name: Amy Murtagh\ncredentials: BSc\nbio: Edited by hand.\n", encoding="utf-8")
    result = run_import(content_dir, SEED, out)
    assert result.exit_code == 0, result.output
    assert f"warning: {author} differs from the page's author block and is kept" in result.stderr
    assert author.read_text(encoding="utf-8").endswith("bio: Edited by hand.\n")


def test_warns_when_the_site_disclaimer_differs_and_keeps_site_yaml(content_dir, tmp_path):
    site = content_dir / "site.yaml"
    text = site.read_text(encoding="utf-8")
    text = text.replace("See our editorial standards for more details.", "Read our editorial policy.")
    text = text.replace("vat_number: 362 5758 74", "vat_number: 999 9999 99")
    site.write_text(text, encoding="utf-8")
    result = run_import(content_dir, SEED, tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    at = lines.index("warning: site setting disclaimer differs from the page (site.yaml is kept as it is)")
    assert lines[at + 1].startswith("  site.yaml: This content is purely informational") 
    assert lines[at + 1].endswith("Read our editorial policy.")
    assert lines[at + 2].startswith("  page:      This content is purely informational")
    assert lines[at + 2].endswith("See our editorial standards for more details.")
    assert "warning: site setting publisher.vat_number differs from the page (site.yaml is kept as it is)" in lines
    assert "  site.yaml: 999 9999 99" in lines and "  page:      362 5758 74" in lines
    # the two differences, and the note that the summary is only a proposal (no --summary)
    assert len([l for l in lines if l.startswith("warning:") and "--summary" not in l]) == 2
    assert site.read_text(encoding="utf-8") == text


def test_whitespace_and_line_splits_are_not_differences(content_dir, tmp_path):
    site = content_dir / "site.yaml"
    # the page writes the address as three lines, site.yaml as four; reflowing the disclaimer changes nothing
    text = site.read_text(encoding="utf-8").replace("isn’t medical guidance. It shouldn’t replace",
                                                    "isn’t medical guidance.\n  It shouldn’t   replace")
    site.write_text(text, encoding="utf-8")
    result = run_import(content_dir, SEED, tmp_path / "out", "--summary", "What it is, what it costs.")
    assert result.exit_code == 0 and result.stderr == ""


def test_options_slug_published_topics(content_dir, tmp_path):
    out = tmp_path / "out"
    result = run_import(content_dir, SEED, out, "--slug", "microneedling-guide", "--published", "2024-01-05",
                        "--topics", "skin-care, wellbeing,skin-care")
    assert result.exit_code == 0, result.output
    front = yaml.safe_load(split_front_matter((out / "articles" / "microneedling-guide.md").read_text())[0])
    assert (front["slug"], front["published"], front["topics"]) == ("microneedling-guide", date(2024, 1, 5),
                                                                    ["skin-care", "wellbeing"])


def test_unknown_topic_is_refused_before_anything_is_written(content_dir, tmp_path):
    proc = newsletter("--content", str(content_dir), "import", str(SEED), "--out", str(tmp_path / "out"),
                      "--topics", "skin-care,astrology")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {content_dir / 'site.yaml'}: unknown topic 'astrology'; the site's topics are: ")
    assert not (tmp_path / "out").exists()


def test_slug_from_title_drops_question_words():
    assert slug_from_title("What Is Microneedling?") == "microneedling"
    assert slug_from_title("How to Care for Your Skin After Microneedling") == "care-skin-after-microneedling"
    assert slug_from_title("Who Are You?") == "who-are-you"  # nothing left: keep every word
    assert slug_from_title("Café au lait spots") == "cafe-au-lait-spots"


# -- malformed pages ----------------------------------------------------------------

GOOD_TEXT = """Title Of The Page

An introduction that cites something.1

References

  1. Some source [Internet]. [cited 2023 Feb 17]. Available from: https://example.org/a
Disclaimer text.

Get our health newsletter

Sign up here.

Jo Bloggs

MSc Something

Jo writes.
"""


def write(tmp_path: Path, text: str | bytes, name: str = "page.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_the_minimal_page_imports(tmp_path):
    page = read_page(write(tmp_path, GOOD_TEXT))
    assert page.title == "Title Of The Page" and page.author.name == "Jo Bloggs"
    assert page.site.disclaimer == "Disclaimer text." and page.site.privacy_notice is None


@pytest.mark.parametrize("text,line,reason", [
    ("", 1, "no title: the file is empty"),
    ("\n\nThis page starts with a sentence, not a title.\n", 3, "no title: the first line reads like prose"),
    (GOOD_TEXT.replace("References\n", "Sources we used\n"), 18, "no References section"),
    (GOOD_TEXT.replace("[cited 2023 Feb 17]", "[cited 2023 Febtember 17]"), 7,
     "reference 1: cannot read the cited date '2023 Febtember 17'"),
    (GOOD_TEXT.replace("https://example.org/a", "example.org/a"), 7,
     "reference 1: 'Available from:' is not followed by an absolute http(s) URL (got 'example.org/a')"),
    (GOOD_TEXT.replace("  1. Some", "  2. Some"), 7, "reference numbered 2, expected 1"),
    (GOOD_TEXT.replace("  1. Some", "Some"), 7, "cannot read this reference line: expected '1. ...'"),
    (GOOD_TEXT.replace("  1. Some source [Internet]. [cited 2023 Feb 17]. Available from: https://example.org/a",
                       "  1. [cited 2023 Feb 17]."), 7, "reference 1 has neither text nor URL"),
    (GOOD_TEXT.replace("MSc Something\n\nJo writes.\n", ""), 14, "no author block"),
])
def test_malformed_text_page_names_file_line_and_reason(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(ImportError_) as caught:
        read_page(path)
    assert (caught.value.path, caught.value.line) == (path, line)
    assert caught.value.message.startswith(reason)


def test_binary_and_non_utf8_files_are_refused_with_their_line(tmp_path):
    binary = write(tmp_path, b"Title\n\nsome text\n\x00\x01\x02", "page.bin")
    with pytest.raises(ImportError_, match=r"binary file") as caught:
        read_page(binary)
    assert caught.value.line == 4
    latin1 = write(tmp_path, "Title\n\ncaf\u00e9 text\n".encode("latin-1"), "latin1.txt")
    with pytest.raises(ImportError_, match=r"not UTF-8 text \(byte 0xe9\)") as caught:
        read_page(latin1)
    assert caught.value.line == 3


def test_cli_prints_one_line_for_a_malformed_page(content_dir, tmp_path):
    path = write(tmp_path, GOOD_TEXT.replace("References\n", "Reading list\n"))
    proc = newsletter("--content", str(content_dir), "import", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {path}:18: no References section (a 'References' line followed by a "
                           "numbered list)\n")
    assert not (tmp_path / "out").exists()


def test_malformed_html_pages(tmp_path):
    no_h1 = write(tmp_path, "<html><body><h2>Only a section</h2><p>Text</p></body></html>", "a.html")
    with pytest.raises(ImportError_, match="no title: the page has no <h1>"):
        read_page(no_h1)
    no_refs = write(tmp_path, "<html><body>\n<h1>Title</h1>\n<p>Text<sup>1</sup></p>\n</body></html>\n", "b.html")
    with pytest.raises(ImportError_, match="no References section") as caught:
        read_page(no_refs)
    assert caught.value.line == 5


def test_html_sup_past_the_reference_list_stays_text(tmp_path):
    html = HTML_PAGE.read_text(encoding="utf-8").replace("scar types<sup>1,2</sup>", "scar types<sup>7</sup>")
    page = read_page(write(tmp_path, html, "page.html"))
    assert page.blocks[2].items[-1] == ("Other small scar types7",)
    assert any("<sup>7</sup> is not a citation of an existing reference (there are 6)" in n for n in page.notes)


# -- text headings ------------------------------------------------------------------

def test_heading_levels_in_the_text_layout(tmp_path):
    text = GOOD_TEXT.replace("An introduction that cites something.1\n", """An introduction.1

Parent section

Child

Text under child.1

Second

More text.1

Conclusion

Closing words.

A longer heading closes subsections

Text.1
""")
    page = read_page(write(tmp_path, text))
    assert render_body(page.blocks).rstrip("\n").split("\n\n") == [
        "An introduction.[^1]", "## Parent section", "### Child", "Text under child.[^1]", "### Second",
        "More text.[^1]", "## Conclusion", "Closing words.", "## A longer heading closes subsections", "Text.[^1]"]


# -- the citation detector ----------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Other small scar types1,2", "Other small scar types[^1,2]"),
    ("hyperhidrosis (excessive sweating).3,4", "hyperhidrosis (excessive sweating).[^3,4]"),
    ("can cost anything between £100-350.6", "can cost anything between £100-350.[^6]"),
    ("takes at least 30 minutes to take effect.1", "takes at least 30 minutes to take effect.[^1]"),
    ("Effects seen in 2021.2 Later studies agree.", "Effects seen in 2021.[^2] Later studies agree."),
    ("wrinkles1 and pores2 improve", "wrinkles[^1] and pores[^2] improve"),
    ("several sources1-3 agree", "several sources[^1,2,3] agree"),
    ("as reported¹,² before", "as reported[^1,2] before"),
    ("sores (oral herpes)5", "sores (oral herpes)[^5]"),
    # numbers that belong to the text
    ("wear SPF 30 every day", None),
    ("wear SPF30 every day", None),
    ("during COVID-19 the clinics closed", None),
    ("during Covid19 the clinics closed", None),
    ("Westbourne Bournemouth BH4 8DT", None),
    ("a range of 10-20 sessions, 3-4 weeks apart", None),
    ("in 2021 and 2022.", None),
    ("a 2.5 mm needle", None),
    ("about £1,000 in total", None),
    ("at 07:30 each morning", None),
    ("vitamin B12 and omega3 oils", None),
    ("the H1N1 strain", None),
    ("a 3:1 ratio", None),
    ("numbers 1, 2 and 3", None),
    ("see https://example.org/page2 for more", None),
    ("this is wrinkles7", None),  # 7 is past the reference list
    ("out of order types2,1", None),
])
def test_citation_detector(text, expected):
    parts, _ = find_citations(text, 6)
    if expected is None:
        assert parts == (text,)
    else:
        assert inline_markdown(parts) == expected


def test_a_glued_number_past_the_reference_list_is_reported():
    parts, notes = find_citations("reduces scarring8", 6)
    assert parts == ("reduces scarring8",)
    assert notes == ("'scarring8' looks like a citation but there are only 6 reference(s) or the numbers are out "
                     "of order; kept as text",)


def test_no_references_means_no_citations():
    assert find_citations("types1,2", 0)[0] == ("types1,2",)


WORDS = st.sampled_from(["skin", "the", "treatment", "needles", "Microneedling", "and", "costs", "is", "a",
                         "UK", "NHS", "dose", "session", "within", "weeks", "SPF", "of", "£", "about"])
PLAIN_NUMBERS = st.one_of(
    st.integers(0, 5000).map(str),                                              # 30 minutes, 2021
    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}-{t[1]}"),  # ranges
    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"£{t[0]}-{t[1]}"),
    st.integers(0, 99).map(lambda n: f"SPF {n}"),
    st.integers(0, 99).map(lambda n: f"COVID-{n}"),
    st.integers(0, 99).map(lambda n: f"BH{n} {n}DT"),
    st.tuples(st.integers(0, 99), st.integers(0, 9)).map(lambda t: f"{t[0]}.{t[1]} mm"),
    st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}"),
    st.integers(0, 99).map(lambda n: f"{n}%"),
    st.integers(1000, 99999).map(lambda n: f"£{n:,}"),
    st.integers(1900, 2100).map(lambda n: f"in {n}."),
    st.integers(0, 99).map(lambda n: f"({n})"),
    st.integers(0, 99).map(lambda n: f"SPF{n}"),                                 # glued, but codes
    st.tuples(st.sampled_from(["B", "CO", "H", "MP", "Omega", "COVID"]), st.integers(0, 99)).map(lambda t: f"{t[0]}{t[1]}"),
    st.tuples(st.integers(1, 9), st.integers(1, 9)).map(lambda t: f"H{t[0]}N{t[1]}"),
)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(WORDS, PLAIN_NUMBERS), min_size=1, max_size=25), st.integers(0, 60))
def test_plain_numbers_in_text_are_never_citations(pieces, reference_count):
    text = " ".join(pieces)
    parts, _ = find_citations(text, reference_count)
    assert not any(isinstance(p, Cite) for p in parts)
    assert parts == (" ".join(text.split()),)


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from(["types", "wrinkles", "skin", "sweating).", "treatment)", "results.", "pores,"]),
       st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True), st.integers(1, 60))
def test_glued_citations_are_found_when_the_references_exist(word, numbers, reference_count):
    numbers = sorted(numbers)
    parts, _ = find_citations(f"Some text about {word}{','.join(map(str, numbers))} and more", reference_count)
    cites = [p for p in parts if isinstance(p, Cite)]
    if max(numbers) <= reference_count:
        assert cites == [Cite(tuple(numbers))]
    else:
        assert cites == []


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=60))
def test_page_text_survives_markdown(text):
    """Whatever a page says, the Markdown we write reads back as that text (no
    emphasis, links, HTML or citations appear from page characters)."""
    text = " ".join(text.split())
    if not text:
        return
    body = render_body([Paragraph((text,))])
    toks = markup.tokens(body)
    inline = [t for t in toks if t.type == "inline"]
    assert [t.type for t in toks] == ["paragraph_open", "inline", "paragraph_close"]
    assert [c.type for c in inline[0].children] == ["text"] * len(inline[0].children)
    assert "".join(c.content for c in inline[0].children) == text


def test_html_body_links_are_kept_when_absolute(tmp_path):
    html = HTML_PAGE.read_text(encoding="utf-8").replace(
        "<h2>Overview</h2>",
        '<p>See <a href="https://www.nhs.uk/skin">the NHS [skin] page</a> and <a href="/local">our page</a>.</p>\n'
        "<h2>Overview</h2>")
    page = read_page(write(tmp_path, html, "page.html"))
    body = render_body(page.blocks)
    assert "See [the NHS \\[skin\\] page](https://www.nhs.uk/skin) and our page.\n" in body
    links = [c.attrGet("href") for t in markup.tokens(body) if t.type == "inline" for c in t.children
             if c.type == "link_open"]
    assert links == ["https://www.nhs.uk/skin"]
