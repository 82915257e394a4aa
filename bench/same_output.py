"""Does a change to the build change its output? Build one library with two checkouts and compare.

    .venv/bin/python bench/same_output.py --base /tmp/main-copy            # this checkout vs another
    .venv/bin/python bench/same_output.py --base /tmp/main-copy --n 1000   # a bigger library

A checkout is a folder holding ``pipeline/`` and ``templates/`` (e.g. ``git archive main | tar -x -C DIR``);
its code runs with this interpreter (``python -m pipeline.cli`` with the checkout as working folder, so
its own ``pipeline`` package is the one imported).

The library (made once, then copied for each checkout): ``n`` synthetic articles (bench/synthetic.py,
CJK and emoji in every third), the fixture library's microneedling guide, an article with images (a
figure with a caption and an inline one), an embargoed article; and a SQLite database where a reviewer
approved one article, one article was corrected (significant) and one retracted. Each checkout then runs,
in a fresh copy: a cold build, a build with nothing changed, a build after editing the newest article and
an old one, a build after a settings change, and a build with ``--date`` (an issue page). After each step
the SHA-256 of every output file (``.cache/`` left out) is recorded; the script prints the files whose
bytes differ between the checkouts at any step, and exits 1 if there is one.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import synthetic  # noqa: E402

IMAGES = """---
title: Pictures – café, 護膚 and 😊
slug: pictures
summary: Two pictures, one a figure with a caption, one inline.
published: {day}
author: amy-murtagh
topics:
  - skin-care
references:
  - text: A study of rollers.
    url: https://example.org/rollers
---
What a clinic tray holds before a session, shown below.[^1]

![A dermaroller on a clean tray](https://images.example.org/roller.jpg "The roller used in clinic"){{width=1200 height=800}}

## After the session

Redness fades ![a small redness chart](https://images.example.org/chart.png){{width=320 height=200}} within days.
"""

FUTURE = """---
title: Not yet
slug: not-yet
summary: An embargoed article stays off every page until its day.
published: 2099-01-01
author: amy-murtagh
---
Nothing to see before the day, and nothing leaks.
"""


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(out).parts}


def run(code: Path, world: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(world / "content"), *args],
                          cwd=code, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{code}: {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def environment(world: Path, as_of) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DATABASE_URL"))}
    return env | {"DATABASE_URL": f"sqlite:///{world / 'newsletter.db'}", "NEWSLETTER_SECRET": "same-output",
                  "NEWSLETTER_FAKE_NOW": f"{as_of.isoformat()}T12:00:00+00:00",
                  "NEWSLETTER_STAFF_PASSWORD": "a long staff password for the bench"}


def make_world(world: Path, n: int) -> None:
    """The library and its database, made with this checkout's code."""
    content = world / "content"
    synthetic.generate(content, n, wide_every=3)
    shutil.copy(synthetic.FIXTURE_LIBRARY / "articles" / "microneedling.md", content / "articles")
    as_of = synthetic.last_day(n)
    (content / "articles" / "pictures.md").write_text(IMAGES.format(day=as_of.isoformat()), encoding="utf-8")
    (content / "articles" / "not-yet.md").write_text(FUTURE, encoding="utf-8")
    env = environment(world, as_of)
    run(ROOT, world, env, "staff", "add", "rev@example.org", "--role", "reviewer", "--name", "Dr Zoë Brontë",
        "--credentials", "MBBS, MRCGP")
    run(ROOT, world, env, "review", "approve", f"article-{n - 2:05d}", "--as", "rev@example.org")
    run(ROOT, world, env, "build", "--out", str(world / "public"))  # the versions that went out
    corrected = content / "articles" / f"article-{n - 3:05d}.md"
    corrected.write_text(corrected.read_text(encoding="utf-8").replace("\ntitle: ", "\ntitle: Fixed – ", 1),
                         encoding="utf-8")
    run(ROOT, world, env, "correct", f"article-{n - 3:05d}", "--note", "The dose was wrong – now 5 mg.",
        "--significant", "--by", "Editor É", "--no-build")
    run(ROOT, world, env, "retract", f"article-{n - 4:05d}", "--note", "Withdrawn: the study was retracted.",
        "--by", "Editor É", "--no-build")
    shutil.rmtree(world / "public")


def steps(code: Path, world: Path, n: int) -> dict[str, dict[str, str]]:
    as_of = synthetic.last_day(n)
    env = environment(world, as_of)
    out = world / "public"
    found = {}
    run(code, world, env, "build", "--out", str(out))
    found["cold"] = digests(out)
    run(code, world, env, "build", "--out", str(out))
    found["no change"] = digests(out)
    newest = world / "content" / "articles" / f"article-{n - 1:05d}.md"
    newest.write_text(synthetic.article_text(n - 1, edit=1, wide_every=3), encoding="utf-8")
    old = world / "content" / "articles" / "article-00007.md"
    old.write_text(old.read_text(encoding="utf-8").replace("\ntitle: ", "\ntitle: Revised – ", 1), encoding="utf-8")
    run(code, world, env, "build", "--out", str(out))
    found["two edits"] = digests(out)
    site = world / "content" / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8").replace(
        "publication_description: >-\n", "publication_description: >-\n  (Changed.)\n", 1), encoding="utf-8")
    run(code, world, env, "build", "--out", str(out))
    found["settings change"] = digests(out)
    run(code, world, env, "build", "--out", str(out), "--date", as_of.isoformat())
    found["issue page"] = digests(out)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (holds pipeline/, templates/)")
    parser.add_argument("--n", type=int, default=200, help="synthetic articles (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="same-output-"))
    try:
        make_world(tmp / "world", args.n)
        results = {}
        for name, code in (("base", args.base.resolve()), ("this", ROOT)):
            shutil.copytree(tmp / "world", tmp / name)
            results[name] = steps(code, tmp / name, args.n)
        differ = 0
        for step, base in results["base"].items():
            this = results["this"][step]
            names = sorted(set(base) | set(this))
            bad = [f for f in names if base.get(f) != this.get(f)]
            differ += len(bad)
            print(f"{step:<16} {len(names):>6} files, {len(bad)} differ" + (": " + ", ".join(bad[:10]) if bad else ""))
        sys.exit(1 if differ else 0)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
