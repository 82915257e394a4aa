"""Bounces, continued: the rates `newsletter status` shows, erasure, a person's own choice never released,
the processor on PostgreSQL, and `bounces ingest` from an MTA pipe when the database fails."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

import fixtures_bounces as fb
from fixtures_bounces import SECRET, bsettings, engine, run_cli, sent_issue, vaddr  # noqa: F401 - fixtures
from pipeline.bounces import evidence, process
from pipeline.bounces.models import BounceEvent, BounceRaw
from pipeline.database import open_database
from subscribers import store


def test_status_shows_rates_and_alerts_on_complaints_and_policy_refusals(engine, bsettings, content_dir):
    from pipeline.ops.status import bounce_report

    rows = sent_issue(engine, bsettings, n=10)
    rows_list = sorted(rows.items())
    process.ingest_message(engine, bsettings, fb.gmail_dsn(vaddr(bsettings, rows_list[0][1]), rows_list[0][0]),
                           "ingest")
    report, alerts = bounce_report(engine, bsettings)
    assert report[0]["recipients"] == 10 and report[0]["bounces"] == 1 and report[0]["bounce_rate"] == 10.0
    assert any("bounce rate 10.00%" in a for a in alerts) and not any("complaint" in a for a in alerts)
    assert bounce_report(engine, bsettings.replace(bounce_rate_alert=20.0))[1] == []
    process.ingest_message(engine, bsettings, fb.arf_report(vaddr(bsettings, rows_list[1][1]), rows_list[1][0]),
                           "ingest")
    report, alerts = bounce_report(engine, bsettings.replace(bounce_rate_alert=20.0))
    assert report[0]["complaints"] == 1 and any("complaint rate 10.00% is above 0.3%" in a for a in alerts)
    result = run_cli(bsettings, content_dir, "status", "--json")
    doc = json.loads(result.output)
    assert result.exit_code == 2 and doc["bounces"][0]["complaints"] == 1
    assert any(a["kind"] == "bounces" for a in doc["alerts"])


def test_erasure_forgets_the_bounce_evidence(engine, bsettings):
    from pipeline.privacy import rights

    rows = sent_issue(engine, bsettings)
    process.ingest_message(engine, bsettings, fb.postfix_dsn(vaddr(bsettings, rows["sub1@example.com"]),
                                                             "sub1@example.com"), "ingest")
    assert rights.erase(engine, bsettings, "sub1@example.com", method="cli")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BounceRaw.__table__)).scalar_one() == 0
        (email, diag) = conn.execute(select(BounceEvent.email, BounceEvent.diagnostic)).one()
    assert email is None and diag is None
    assert store.suppression_reason(engine, bsettings, "sub1@example.com") == "erased"
    assert evidence.events(engine, bsettings)[0]["kind"] == "hard"  # the count survives, anonymous


def test_the_processor_on_sqlite_and_postgresql(settings, tmp_path, store_url):
    s = settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"), secret_key=SECRET,
                         database_url=store_url, var_dir=str(tmp_path / "var"), bounce_score_threshold=2.0)
    engine = open_database(store_url)
    rows = sent_issue(engine, s, n=4)
    hard = fb.exim_bounce(vaddr(s, rows["sub1@example.com"]), "sub1@example.com")
    assert process.ingest_message(engine, s, hard, "ingest").events[0]["action"] == "suppressed"
    assert process.ingest_message(engine, s, hard, "ingest").duplicate
    for n in range(2):
        soft = fb.postfix_dsn(vaddr(s, rows["sub2@example.com"]), "sub2@example.com", status="4.2.2",
                              diagnostic=f"smtp; 452 4.2.2 over quota {n}")
        process.ingest_message(engine, s, soft, "ingest")
    assert store.get_by_email(engine, "sub2@example.com").status == "bounced"
    assert evidence.release(engine, s, "sub2@example.com", by="ops", reason="quota raised")["status"] == "confirmed"
    from pipeline.bounces import signatures
    signatures.check_unused(engine, "mailgun", "token-1")
    signatures.remember(engine, "mailgun", "token-1")
    signatures.remember(engine, "mailgun", "token-1")  # a concurrent twin: no error
    with pytest.raises(signatures.Refused):
        signatures.check_unused(engine, "mailgun", "token-1")


def test_a_late_bounce_never_makes_a_persons_own_choice_releasable(engine, bsettings):
    from pipeline.privacy import rights

    rows = sent_issue(engine, bsettings)
    store.unsubscribe(engine, bsettings, "sub1@example.com", method="web")
    process.ingest_message(engine, bsettings, fb.postfix_dsn(vaddr(bsettings, rows["sub1@example.com"]),
                                                             "sub1@example.com"), "ingest")
    assert store.get_by_email(engine, "sub1@example.com").status == "unsubscribed"
    with pytest.raises(Exception, match="cannot be released"):
        evidence.release(engine, bsettings, "sub1@example.com", by="ops", reason="oops")
    # an erased person's suppression stays "erased" whatever a signed webhook later says about the address
    rights.erase(engine, bsettings, "sub2@example.com", method="cli")
    process.record(engine, bsettings, "webhook:postmark", b"{}",
                   [process.EventIn("postmark:Bounce:1", "hard", "sub2@example.com", "5.1.1", "gone")])
    assert store.suppression_reason(engine, bsettings, "sub2@example.com") == "erased"
    with pytest.raises(Exception, match="cannot be released"):
        evidence.release(engine, bsettings, "sub2@example.com", by="ops", reason="oops")


def test_ingest_from_a_pipe_asks_the_mta_to_retry_when_the_database_fails(engine, bsettings, content_dir,
                                                                          monkeypatch):
    from sqlalchemy.exc import OperationalError

    rows = sent_issue(engine, bsettings, n=2)
    data = fb.postfix_dsn(vaddr(bsettings, rows["sub1@example.com"]), "sub1@example.com")

    def locked(*_a, **_k):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(process, "ingest_message", locked)
    result = run_cli(bsettings, content_dir, "bounces", "ingest", input=data)
    assert result.exit_code == 75 and "not recorded: database" in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    assert run_cli(bsettings, content_dir, "bounces", "ingest", input=data).exit_code == 0
    assert store.get_by_email(engine, "sub1@example.com").status == "bounced"


def test_status_counts_what_nobody_could_act_on(engine, bsettings, content_dir):
    rows = sent_issue(engine, bsettings, n=2)
    process.ingest_message(engine, bsettings, fb.unparseable(vaddr(bsettings, rows["sub0@example.com"])), "ingest")
    process.ingest_message(engine, bsettings, fb.postfix_dsn("bounces+" + "b" * 24 + "@my.klarity.health",
                                                             "sub1@example.com"), "ingest")
    result = run_cli(bsettings, content_dir, "status")
    assert "bounce mail nobody could act on: 1 unmatched, 1 unparsed" in result.output
