"""A synthetic library of N articles for the build benchmark and the build smoke test.

The articles look like the real ones: YAML front matter with six cited references,
a Markdown body of about 5 KB with sections, a list, a table row or two and
citations, and Unicode in titles and text (’ – £ é, CJK, emoji). Two or three
articles share a publication date, as same-day digests do. The output depends only
on ``n`` (and ``seed``), so two runs give the same files.
"""
from __future__ import annotations

import random
import shutil
from datetime import date, timedelta
from pathlib import Path

FIXTURE_LIBRARY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "library"
TOPICS = ("skin-care", "wellbeing", "hair-loss", "skin-conditions")
WORDS = ("skin", "treatment", "dermatologist", "collagen", "recovery", "session", "redness", "results",
         "clinic", "cost", "£120", "café", "naïve", "évaluation", "patients", "evidence", "risk", "sleep",
         "hydration", "sun–protection", "don’t", "microneedling", "routine", "scar", "healing")
# One article in ten also has CJK and emoji, as pasted-in quotes do. (Python keeps a str with an
# emoji at 4 bytes a character, against 2 for ’ – £ é: a library where every article has one
# costs about twice the memory; bench/README.md gives the figure for that case too.)
WIDE_WORDS = ("护肤", "😊", "皮肤科")
FIRST_DAY = date(2000, 1, 3)


def _sentence(rng: random.Random, cite: int | None = None, wide: bool = False) -> str:
    words = [rng.choice(WORDS + WIDE_WORDS if wide else WORDS) for _ in range(rng.randint(8, 18))]
    text = " ".join(words).capitalize() + "."
    return text + (f"[^{cite}]" if cite else "")


def article_text(i: int, seed: int = 0, *, edit: int = 0, wide_every: int = 10) -> str:
    """The Markdown file of synthetic article ``i``; ``edit`` changes its wording (a correction).
    Every ``wide_every``-th article has CJK and emoji in its body."""
    rng = random.Random(seed * 1_000_003 + i)
    wide = i % wide_every == 0
    slug = f"article-{i:05d}"
    published = FIRST_DAY + timedelta(days=i * 2 // 5)
    topics = rng.sample(TOPICS, rng.randint(1, 2))
    lines = ["---", f"title: “Synthetic” article {i} – skin, £ and é {'（護膚）' if i % 7 == 0 else ''}{' 😊' if i % 11 == 0 else ''}".rstrip(),
             f"slug: {slug}", f"summary: What to know about case {i} – {_sentence(rng)}",
             f"published: {published.isoformat()}", "author: amy-murtagh", "topics:",
             *[f"  - {t}" for t in topics], "references:"]
    for n in range(1, 7):
        lines += [f"  - text: Source {n} for article {i}, a study of {rng.choice(WORDS)}.",
                  f"    url: https://example.org/{slug}/ref-{n}", "    cited: 2023-01-05"]
    lines.append("---")
    body = [" ".join(_sentence(rng, 1 if k == 0 else None, wide) for k in range(4))]
    if edit:
        body[0] = f"Corrected ({edit}): " + body[0]
    for section in range(4):
        body.append(f"## Section {section + 1}: {rng.choice(WORDS)} and {rng.choice(WORDS)}")
        body.append(" ".join(_sentence(rng, (section % 5) + 2 if k == 1 else None, wide) for k in range(5)))
        body.append("\n".join(f"- {_sentence(rng, wide=wide)}" for _ in range(3)))
        body.append(" ".join(_sentence(rng) for _ in range(4)) + f" See [the guide](https://example.org/{slug}/guide).")
    body.append("## Summary")
    body.append(_sentence(rng, 6) + " " + _sentence(rng))
    return "\n".join(lines) + "\n" + "\n\n".join(body) + "\n"


def generate(content_dir: Path, n: int, seed: int = 0, wide_every: int = 10) -> list[Path]:
    """Write site.yaml, the fixture authors and ``n`` articles to ``content_dir``."""
    content_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE_LIBRARY / "site.yaml", content_dir / "site.yaml")
    shutil.copytree(FIXTURE_LIBRARY / "authors", content_dir / "authors", dirs_exist_ok=True)
    articles = content_dir / "articles"
    articles.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = articles / f"article-{i:05d}.md"
        path.write_text(article_text(i, seed, wide_every=wide_every), encoding="utf-8")
        paths.append(path)
    return paths


def last_day(n: int) -> date:
    """The publication date of the newest synthetic article."""
    return FIRST_DAY + timedelta(days=(n - 1) * 2 // 5)
