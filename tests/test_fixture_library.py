"""Tests build their own library (tests/fixtures/library); editors change content/ every day,
and an ordinary new article there must not break the suite."""
from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).parent
# a path into the repository's live content folder, written the ways a test might write it
LIVE = re.compile(r"""(ROOT|REPO|BASE)\w*\s*/\s*["']content["']|Path\(\s*["'](\.\./)?content["']""")


def test_no_test_reads_the_live_content_folder():
    offenders = [f"{path.name}:{n}" for path in sorted(TESTS.rglob("*.py")) if path != Path(__file__)
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if LIVE.search(line)]
    assert offenders == []


def test_the_fixture_library_is_what_the_content_fixture_copies(content_dir):
    from conftest import CONTENT

    assert CONTENT == TESTS / "fixtures" / "library"
    assert sorted(p.name for p in content_dir.rglob("*.md")) == sorted(p.name for p in CONTENT.rglob("*.md"))
