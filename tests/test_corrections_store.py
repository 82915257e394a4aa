"""The corrections tables and the notice's audience on SQLite and on PostgreSQL, with
concurrent writers: one retraction per article, one ledger per notice."""
from __future__ import annotations

import threading
from datetime import date

from sqlalchemy import select, update

from fixtures_delivery import add_subscribers, small_rendered
from pipeline.corrections import audience, records
from pipeline.corrections.notice_mail import render_notice
from pipeline.database import open_database
from pipeline.delivery import ledger
from pipeline.errors import CorrectionError
from pipeline.rendering.compose import compose_issue

SLUG = "microneedling"
TODAY = date(2026, 11, 1)


def _together(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads released at once; each result or exception."""
    gate, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_editors_retracting_at_once_make_one_retraction(store_url, library):
    engine = open_database(store_url)
    results = _together(6, lambda i: records.record(engine, library, SLUG, f"Withdrawn ({i}).",
                                                    kind=records.RETRACTION, by=f"editor {i}", today=TODAY))
    done = [r for r in results if isinstance(r, records.Correction)]
    refused = [r for r in results if isinstance(r, CorrectionError)]
    assert len(done) == 1 and len(refused) == 5, results
    assert all("already retracted" in str(r) for r in refused)
    assert [r.kind for r in records.listing(engine, SLUG)] == ["retraction"]


def test_the_notice_ledger_is_written_once_for_those_who_got_the_article(store_url, library, settings):
    engine = open_database(store_url)
    settings = settings.replace(secret_key="store-secret")
    ids = add_subscribers(engine, settings, 30)
    # an issue carrying the article, sent to the first 25 (the rest: still queued, never reached)
    issue = compose_issue(library, date(2026, 3, 2), number=1, scheduled=[SLUG])
    info = ledger.record_issue(engine, issue, "subject")
    ledger.write_recipients(engine, info.id, "daily", topics=issue.topics)
    other = ledger.record_issue(engine, small_rendered(on=date(2026, 3, 3)).issue, "another article")
    ledger.write_recipients(engine, other.id, "daily")
    with engine.begin() as conn:
        for state, chosen in ((ledger.SENT, ids[:24]), (ledger.UNCERTAIN, ids[24:25])):
            conn.execute(update(ledger.DELIVERIES).where(ledger.DELIVERIES.c.issue_id == info.id,
                                                         ledger.DELIVERIES.c.subscriber_id.in_(chosen))
                         .values(state=state))
        conn.execute(update(ledger.DELIVERIES).where(ledger.DELIVERIES.c.issue_id == other.id)
                     .values(state=ledger.SENT))
    correction = records.record(engine, library, SLUG, "Withdrawn.", kind=records.RETRACTION, by="ed", today=TODAY)
    rendered = render_notice(correction, library.article(SLUG), settings)
    notice = ledger.record_issue(engine, rendered.issue, rendered.subject)
    assert audience.count_audience(engine, SLUG) == 25
    results = _together(4, lambda i: audience.write_audience(engine, notice.id, SLUG))
    assert sorted(results, key=str) == [25, None, None, None], results
    with engine.connect() as conn:
        rows = conn.execute(select(ledger.DELIVERIES.c.subscriber_id)
                            .where(ledger.DELIVERIES.c.issue_id == notice.id)).scalars().all()
        state = conn.execute(select(ledger.ISSUES.c.state).where(ledger.ISSUES.c.id == notice.id)).scalar_one()
    assert sorted(rows) == ids[:25] and state == "queued"
    assert audience.carrying_issues(engine, SLUG) == [info.id]  # the notice itself carries nothing
