"""Benchmark of `newsletter build` on a synthetic library (bench/synthetic.py).

    .venv/bin/python bench/build.py --n 1000
    .venv/bin/python bench/build.py --n 10000

In a temporary folder it generates N articles, then runs the real CLI
(`python -m pipeline.cli --content DIR build --out OUT`) as a child process four
times: cold (empty output folder), no change, after editing one article (its text,
title and `updated` date), and after a settings change (``publication_description``
in site.yaml, shown on every page: the "templates or settings changed, render
everything" path). For each run it prints the wall time, the child's CPU time and
peak RSS (``os.wait4`` on that one child) and the build's own summary line.

The floor: the time to write the same output bytes (every file of the cold build,
read into memory first) with plain ``open().write()`` into a fresh folder, and to
stat every output file (what a no-change build cannot avoid). Ratios to the floor
are printed. The feeds alone are timed in-process (``render_feeds`` on the loaded
library), since they must cost O(feed_items).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import synthetic  # noqa: E402


def run_build(content: Path, out: Path, env: dict, log: Path) -> dict:
    """One `newsletter build` in a child process; its CPU time and peak RSS come from wait4."""
    start = time.perf_counter()
    with open(log, "wb") as sink, open(log.with_suffix(".err"), "wb") as errors:
        child = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--content", str(content), "build",
                                  "--out", str(out)], stdout=sink, stderr=errors, cwd=ROOT, env=env)
        _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    if child.returncode != 0:
        sys.exit("build failed:\n" + log.with_suffix(".err").read_text(encoding="utf-8")[-2000:])
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "summary": lines[-1] if lines else ""}


def output_files(out: Path) -> list[Path]:
    return [p for p in sorted(out.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(out).parts]


def floor_write(files: list[Path], out: Path, target: Path) -> float:
    data = [(p.relative_to(out), p.read_bytes()) for p in files]
    start = time.perf_counter()
    for relative, payload in data:
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(payload)
    return time.perf_counter() - start


def floor_stat(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        os.stat(path)
    return time.perf_counter() - start


def feed_time(content: Path, as_of) -> float:
    from pipeline.content.library import load_library
    from pipeline.site.feeds import render_feeds
    library = load_library(content)
    render_feeds(library, as_of)  # the first call also compiles the templates
    start = time.perf_counter()
    render_feeds(library, as_of)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of articles (default 1000)")
    parser.add_argument("--wide-every", type=int, default=10,
                        help="every Nth article has CJK and emoji (1: all of them; default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        content, out = tmp / "content", tmp / "public"
        started = time.perf_counter()
        synthetic.generate(content, args.n, wide_every=args.wide_every)
        print(f"generated {args.n} articles in {time.perf_counter() - started:.1f} s ({tmp})")
        as_of = synthetic.last_day(args.n)
        env = {**os.environ, "NEWSLETTER_FAKE_NOW": f"{as_of.isoformat()}T12:00:00+00:00"}
        env.pop("NEWSLETTER_PUBLIC_DIR", None)

        runs = {"cold": run_build(content, out, env, tmp / "build.log")}
        files = output_files(out)
        size = sum(p.stat().st_size for p in files)
        write_floor = floor_write(files, out, tmp / "floor")
        runs["no change"] = run_build(content, out, env, tmp / "build.log")
        stat_floor = floor_stat(files)
        edited = content / "articles" / f"article-{args.n - 1:05d}.md"
        text = synthetic.article_text(args.n - 1, edit=1, wide_every=args.wide_every)
        text = text.replace("\ntitle: ", "\ntitle: Corrected – ", 1)
        text = text.replace("\nauthor: ", f"\nupdated: {as_of.isoformat()}\nauthor: ", 1)
        edited.write_text(text, encoding="utf-8")
        runs["one edit"] = run_build(content, out, env, tmp / "build.log")
        site = content / "site.yaml"
        site.write_text(site.read_text(encoding="utf-8").replace(
            "publication_description: >-\n", "publication_description: >-\n  (Changed.)\n", 1), encoding="utf-8")
        runs["settings change"] = run_build(content, out, env, tmp / "build.log")
        feeds = feed_time(content, as_of)

        print(f"output: {len(files)} files, {size / 1e6:.1f} MB")
        print(f"floor: plain writes of the same bytes {write_floor:.2f} s; stat of every file {stat_floor:.3f} s")
        print(f"{'run':<16} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'wall/floor':>11}  result")
        for name, run in runs.items():
            print(f"{name:<16} {run['wall']:>8.2f} {run['cpu']:>8.2f} {run['rss_mb']:>12.0f} "
                  f"{run['wall'] / write_floor:>11.2f}  {run['summary']}")
        print(f"the three feeds alone (render_feeds, in process, templates compiled): {feeds:.3f} s")
        print("(wall/floor: each run's wall time over the plain writes of the whole output)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
