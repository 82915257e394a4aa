"""Rendering many pages on every core: a cold build, or one after a template or settings change.

Rendering an article page is CPU-bound (Markdown, the sanitiser, Jinja), so ``write_pages`` splits
the pages among forked worker processes, one per core, when there are at least ``MIN_PAGES`` of
them. A forked worker already has the library, the views and the compiled templates (nothing is
pickled on the way in); it renders and writes its share of the pages through its copy of the
``SiteWriter``, and sends back, per page, whether the file changed and its manifest entry. The
parent takes them in page order, so the report and the manifest are what one process gives, and
each page's bytes depend on its own inputs only: the output is the same, byte for byte.

One process does it all when the machine has one core, when there are few pages, where ``fork``
is not available, or when the process runs other threads (the web service, the daemon): forking
a process with threads can copy a lock some other thread holds.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Callable

MIN_PAGES = 400  # below this, starting the workers costs more than it saves
CHUNKS_PER_WORKER = 4  # smaller shares even out the workers' finishing times

# what the forked workers render: set just before the fork, read by _render_share in the child
_task: tuple | None = None


def workers(count: int) -> int:
    """How many processes should render ``count`` pages (1: this one alone)."""
    if count < MIN_PAGES or "fork" not in multiprocessing.get_all_start_methods() \
            or threading.active_count() > 1:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, count // (MIN_PAGES // 2)))


def _render_share(bounds: tuple[int, int]) -> list[tuple[str, bool, list | None]]:
    writer, jobs, render = _task
    done = []
    for relative, key, value in jobs[bounds[0]:bounds[1]]:
        changed = writer.write(relative, render(value), key=key)
        done.append((relative, changed, writer.manifest.files.get(relative) if writer.manifest else None))
    return done


def write_pages(writer, jobs: list[tuple[str, str, object]], render: Callable[[object], str]) -> None:
    """``writer.write(relative, render(value), key=key)`` for each (relative, key, value) of
    ``jobs``, on several processes when it pays (see the module doc)."""
    global _task
    processes = workers(len(jobs))
    if processes == 1:
        for relative, key, value in jobs:
            writer.write(relative, render(value), key=key)
        return
    size = -(-len(jobs) // (processes * CHUNKS_PER_WORKER))
    shares = [(start, min(start + size, len(jobs))) for start in range(0, len(jobs), size)]
    _task = (writer, jobs, render)
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for done in pool.imap(_render_share, shares):
                for relative, changed, entry in done:
                    writer.adopt(relative, changed, entry)
    finally:
        _task = None
