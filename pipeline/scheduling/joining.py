"""A daemon joins a send another node is doing (PostgreSQL; issue 15).

``schedule.wake`` finds a day whose run is ``running`` under another live daemon.
On SQLite (or with ``send_nodes: single``) it leaves it to that daemon, as
before.  On PostgreSQL this node helps: it renders the issue the ledger recorded
for the day (``plan_day``'s first rule: the same articles and number) and hands it
to ``send_issue``, which joins the send as a node and claims batches of rows
(``pipeline/delivery/claims.py``).  The run row stays the other daemon's: it
records the day's outcome; this node only sends.
"""
from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine

from pipeline.delivery import claims, ledger
from pipeline.errors import NewsletterError
from pipeline.rendering.issue import issue_key
from pipeline.scheduling.calendar import Run
from pipeline.settings import Settings

log = logging.getLogger("newsletter.schedule")


def join_day(engine: Engine, settings: Settings, content_dir: Path | str, run: Run) -> None:
    """Help send ``run``'s issue when it is recorded and not finished; never raises."""
    try:
        if not claims.sharing(settings, engine):
            return
        recorded = ledger.find_issue(engine, run.issue_key or issue_key(run.day, run.kind))
        if recorded is None or recorded.state == "sent":
            return  # not started yet (the next wake looks again), or done
        from pipeline.content.library import check_library
        from pipeline.delivery.deliver import render_for_send
        from pipeline.review.reviews import attach
        from pipeline.scheduling.plan import plan_day
        from pipeline.scheduling.wave_sends import send_with_waves

        library, found = check_library(content_dir, settings, cache_dir=Path(settings.public_dir) / ".cache")
        if library is None or any(p.level == "error" for p in found):
            return  # the day's own holder records the content error
        plan = plan_day(engine, settings, attach(engine, library), run.day, run.kind)
        if plan.issue is None or plan.issue.key != recorded.key:
            return
        log.info("%s issue %s: joining the send of %s", run.kind, recorded.key, run.holder)
        # through the waves: when the leader died before writing the recipients, this node
        # writes them, each at its reader's local time as the leader would have
        summary = send_with_waves(engine, settings, render_for_send(plan.issue, settings),
                                  [e.at for e in plan.entries], frequency=run.kind, progress=False)
        log.info("%s issue %s: this node sent %d (the issue is %s)", run.kind, recorded.key, summary.sent,
                 summary.state)
    except NewsletterError as exc:
        log.warning("%s issue of %s: could not join the send: %s", run.kind, run.day.isoformat(), exc)
    except Exception:  # the daemon must not die of a helper's failure; the day's holder goes on
        log.exception("%s issue of %s: could not join the send", run.kind, run.day.isoformat())
