"""Bounces and complaints after the send (issue 14): VERP return paths, the parser, the policy,
`newsletter bounces ingest|list|show|release` (more in test_bounces_ops.py).

Notifications are the tests' own, in the layouts Postfix, Exim, Gmail and Microsoft use
(tests/fixtures_bounces.py). Each test sends a real issue first, so every notification is
traced through a real ledger row."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

import fixtures_bounces as fb
from fixtures_bounces import bsettings, engine, run_cli, sent_issue, vaddr  # noqa: F401 - fixtures
from fixtures_delivery import add_subscribers, small_rendered
from pipeline.bounces import process
from pipeline.bounces.models import BounceEvent, BounceRaw, BounceRelease
from pipeline.delivery import ledger
from pipeline.delivery.deliver import send_issue
from pipeline.delivery.outcomes import classify
from pipeline.mail import verp
from pipeline.mail.failures import classify_failure
from pipeline.mail.transport import Outcome, Reply
from subscribers import store

# -- VERP ------------------------------------------------------------------------------------

def test_verp_ids_round_trip_are_opaque_and_cannot_be_forged(bsettings):
    ids = [verp.encode(bsettings, "d", n) for n in (1, 2, 3, 2 ** 40)]
    assert len(set(ids)) == 4 and all(len(i) == 24 and i.isalnum() and i == i.lower() for i in ids)
    assert verp.decode(bsettings, ids[1]) == verp.VerpId("d", 2)
    assert verp.decode(bsettings, ids[1].upper()) == verp.VerpId("d", 2)  # MTAs may fold case
    assert verp.decode(bsettings, verp.encode(bsettings, "q", 7)) == verp.VerpId("q", 7)
    # neighbouring rows share nothing readable; every single-character change is refused
    assert sum(a == b for a, b in zip(ids[0], ids[1])) < 12
    for pos in range(24):
        swapped = ids[1][:pos] + ("a" if ids[1][pos] != "a" else "b") + ids[1][pos + 1:]
        assert verp.decode(bsettings, swapped) is None
    assert verp.decode(bsettings.replace(secret_key="another-secret-entirely"), ids[1]) is None
    for junk in ("", "x" * 24, "bounces", "é" * 24, "0" * 24, ids[1] + "a"):
        assert verp.decode(bsettings, junk) is None
    address = verp.return_path(bsettings, "d", 5)
    assert address.startswith("bounces+") and address.endswith("@my.klarity.health")
    assert verp.return_path(bsettings.replace(bounce_domain="Bounce.Klarity.Example"), "d", 5).endswith(
        "@bounce.klarity.example")
    assert verp.find(bsettings, f"To: <{address}>") == verp.VerpId("d", 5)

def test_each_message_of_a_send_carries_its_own_verp_sender_and_the_from_header_is_unchanged(
        engine, bsettings, smtp_server):
    s = bsettings.replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_timeout=2.0,
                          smtp_connections=2, delivery_batch_size=3)
    add_subscribers(engine, s, 7)
    assert send_issue(engine, s, small_rendered(), progress=False).sent == 7
    received = smtp_server.wait_for(7)
    with engine.connect() as conn:
        rows = {r.email: r.id for r in conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.id))}
    for r in received:
        local, _, domain = r.mail_from.partition("@")
        assert domain == "my.klarity.health" and local.startswith("bounces+")
        assert verp.decode(s, local.split("+", 1)[1]) == verp.VerpId("d", rows[r.rcpt_tos[0]])
        assert r.message["From"].addresses[0].addr_spec == "newsletter@my.klarity.health"
        assert r.rcpt_tos[0] not in r.mail_from and "sub" not in r.mail_from

def test_transactional_mail_gets_its_own_verp_kind(engine, bsettings, smtp_server):
    from subscribers import mailqueue, signup

    s = bsettings.replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    signup.sign_up(engine, s, "zoe@example.org", name="Zoë", topics=[], frequency="daily", ip="192.0.2.1")
    mailqueue.drain(engine, s)
    (msg,) = smtp_server.wait_for(1)
    found = verp.find(s, msg.mail_from)
    assert found is not None and found.kind == "q"
    # the confirmation bounces (nobody has that mailbox): the address is suppressed, no more mail goes to it
    result = process.ingest_message(engine, s, fb.gmail_dsn(msg.mail_from, "zoe@example.org"), "ingest")
    assert [(e["kind"], e["action"], e["email"]) for e in result.events] == [("hard", "suppressed", "zoe@example.org")]
    assert store.get_by_email(engine, "zoe@example.org").status == "bounced"
    assert store.suppression_reason(engine, s, "zoe@example.org") == "bounced"


# -- the one decider ----------------------------------------------------------------------------

@pytest.mark.parametrize("status,text,code,expected", [
    ("5.1.1", "550 5.1.1 user unknown", 550, "hard"),
    ("", "550 No such user here", 550, "hard"),
    ("5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", 550, "hard"),
    ("5.7.1", "550 5.7.1 Message rejected as spam", 550, "policy"),
    ("", "550 Message rejected: content policy violation", 550, "policy"),
    ("", "554 Your IP is listed on a DNSBL", 554, "policy"),
    ("5.2.2", "552 5.2.2 Mailbox full", 552, "soft"),
    ("4.4.1", "Connection timed out", None, "soft"),
    ("5.1.1", "550 5.1.1 user unknown (spam filter said nothing)", 550, "hard"),
])
def test_failure_classes(status, text, code, expected):
    assert classify_failure(status, text, code) == expected

def test_a_policy_550_at_smtp_time_is_failed_not_bounced():
    spam = Outcome("rcpt", Reply(550, "550 Message rejected as spam by content filter"))
    unknown = Outcome("rcpt", Reply(550, "550 No such user"))
    assert classify(spam) == ledger.FAILED
    assert classify(unknown) == ledger.BOUNCED


# -- ingest, each layout -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(fb.LAYOUTS))
def test_a_hard_bounce_in_each_layout_suppresses_exactly_that_subscriber(engine, bsettings, content_dir, tmp_path,
                                                                       layout):
    rows = sent_issue(engine, bsettings)
    victim = "sub3@example.com"
    path = tmp_path / f"{layout}.eml"
    path.write_bytes(fb.LAYOUTS[layout](vaddr(bsettings, rows[victim]), victim))
    result = run_cli(bsettings, content_dir, "bounces", "ingest", str(path))
    assert result.exit_code == 0, result.output
    assert f"hard {victim}: suppressed" in result.output
    assert store.get_by_email(engine, victim).status == "bounced"
    assert store.suppression_reason(engine, bsettings, victim) == "bounced"
    others = [store.get_by_email(engine, a).status for a in rows if a != victim]
    assert others == ["confirmed"] * (len(rows) - 1)
    records = store.consent_records(engine, store.get_by_email(engine, victim).id)
    assert records[-1]["action"] == "bounce" and records[-1]["detail"]["kind"] == "hard"
    # the same file again is one event
    again = run_cli(bsettings, content_dir, "bounces", "ingest", str(path))
    assert "already processed" in again.output
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BounceEvent.__table__)).scalar_one() == 1

def test_verp_wins_over_the_address_a_report_names_and_unsigned_reports_act_on_nobody(engine, bsettings):
    rows = sent_issue(engine, bsettings)
    # forwarded mailbox: the DSN names another address, but the VERP id names sub1's row
    r = process.ingest_message(engine, bsettings, fb.postfix_dsn(vaddr(bsettings, rows["sub1@example.com"]),
                                                                 "forwarded@elsewhere.example"), "ingest")
    assert r.events[0]["action"] == "suppressed" and r.events[0]["email"] == "sub1@example.com"
    # no valid VERP id (sent to the From address, or forged): kept, counted, nobody suppressed
    forged = fb.gmail_dsn("bounces+" + "a" * 24 + "@my.klarity.health", "sub2@example.com")
    r = process.ingest_message(engine, bsettings, forged, "ingest")
    assert [(e["kind"], e["action"]) for e in r.events] == [("unmatched", "kept")]
    assert store.get_by_email(engine, "sub2@example.com").status == "confirmed"

def test_policy_soft_delayed_autoreply_and_unparseable_never_suppress(engine, bsettings, content_dir, tmp_path):
    rows = sent_issue(engine, bsettings)
    v = vaddr(bsettings, rows["sub2@example.com"])
    files = {
        "policy.eml": fb.gmail_dsn(v, "sub2@example.com", status="5.7.1", diagnostic="smtp; 550-5.7.1 Our system "
                                   "has detected that this message is likely unsolicited mail."),
        "soft.eml": fb.postfix_dsn(v, "sub2@example.com", status="4.4.1",
                                   diagnostic="X-Postfix; connect to mx.example.org: Connection timed out"),
        "delayed.eml": fb.postfix_dsn(v, "sub2@example.com", status="4.2.2", action="delayed",
                                      diagnostic="smtp; 452 4.2.2 Mailbox full"),
        "unparseable.eml": fb.unparseable(v),
    }
    files.update({f"ooo-{style}.eml": fb.auto_reply(v, style=style)
                  for style in ("rfc3834", "exchange", "x-autoreply", "precedence", "french", "ooo")})
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    result = run_cli(bsettings, content_dir, "bounces", "ingest", *[str(tmp_path / n) for n in files])
    assert result.exit_code == 0, result.output
    assert store.get_by_email(engine, "sub2@example.com").status == "confirmed"
    assert store.suppression_reason(engine, bsettings, "sub2@example.com") is None
    with engine.connect() as conn:
        kinds = sorted(k for (k,) in conn.execute(select(BounceEvent.kind)))
    assert kinds == sorted(["policy", "soft", "delayed", "unparsed"] + ["autoreply"] * 6)
    listing = run_cli(bsettings, content_dir, "bounces", "list")
    assert "unparsed 1" in listing.output and "autoreply 6" in listing.output and "policy 1" in listing.output

def test_complaints_in_arf_unsubscribe_and_suppress_at_once(engine, bsettings, content_dir, tmp_path):
    rows = sent_issue(engine, bsettings)
    mbox = b""
    for n, (who, layout, ftype) in enumerate([("sub0@example.com", "microsoft", "abuse"),
                                              ("sub4@example.com", "generic", "abuse"),
                                              ("sub5@example.com", "generic", "not-spam")]):
        mbox += b"From MAILER-DAEMON Tue Mar  3 09:15:00 2026\n" + fb.arf_report(
            vaddr(bsettings, rows[who]), who, feedback_type=ftype, layout=layout).replace(b"\r\n", b"\n") + b"\n"
    result = run_cli(bsettings, content_dir, "bounces", "ingest", input=mbox)  # stdin, as an mbox
    assert result.exit_code == 0, result.output
    assert "3 message(s) recorded, 0 not" in result.output
    for who in ("sub0@example.com", "sub4@example.com"):
        assert store.get_by_email(engine, who).status == "complained"
        assert store.suppression_reason(engine, bsettings, who) == "complained"
    assert store.get_by_email(engine, "sub5@example.com").status == "confirmed"
    # a complaint cannot be released by an operator: only the person can come back
    refused = run_cli(bsettings, content_dir, "bounces", "release", "sub0@example.com", "--reason", "mistake")
    assert refused.exit_code == 1 and "cannot be released" in refused.output

def test_soft_bounces_add_a_decaying_score_and_the_threshold_suppresses(engine, bsettings, frozen):
    s = bsettings.replace(bounce_score_threshold=3.0, bounce_score_decay_days=7.0)
    rows = sent_issue(engine, s)
    slow, fast = rows["sub1@example.com"], rows["sub2@example.com"]

    def soft(delivery_id, who, n):
        data = fb.postfix_dsn(vaddr(s, delivery_id), who, status="4.2.2", diagnostic=f"smtp; 452 4.2.2 full {n}")
        return process.ingest_message(engine, s, data, "ingest").events[0]

    # one a month never adds up: the score halves every week
    for n in range(4):
        assert soft(slow, "sub1@example.com", n)["action"] == "scored"
        frozen.advance(timedelta(days=30))
    assert store.get_by_email(engine, "sub1@example.com").status == "confirmed"
    # three on consecutive days reach the threshold (1 + 0.906 + 0.82 < 3; the fourth crosses it)
    actions = []
    for n in range(4):
        actions.append(soft(fast, "sub2@example.com", n)["action"])
        frozen.advance(timedelta(days=1))
    assert actions == ["scored", "scored", "scored", "suppressed"]
    assert store.get_by_email(engine, "sub2@example.com").status == "bounced"

def test_the_event_and_the_suppression_are_one_transaction(engine, bsettings, monkeypatch):
    rows = sent_issue(engine, bsettings)
    data = fb.postfix_dsn(vaddr(bsettings, rows["sub1@example.com"]), "sub1@example.com")

    def crash(*_a, **_k):
        raise RuntimeError("killed between the event and the suppression")

    monkeypatch.setattr(store, "leave_in", crash)
    with pytest.raises(RuntimeError):
        process.ingest_message(engine, bsettings, data, "ingest")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BounceEvent.__table__)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(BounceRaw.__table__)).scalar_one() == 0
    monkeypatch.undo()
    assert process.ingest_message(engine, bsettings, data, "ingest").events[0]["action"] == "suppressed"

def test_a_bounce_a_day_later_suppresses_the_right_subscriber_and_can_be_released(
        engine, bsettings, content_dir, tmp_path, frozen):
    from datetime import date
    rows = sent_issue(engine, bsettings, n=20, on=date(2026, 3, 2))
    frozen.advance(timedelta(days=1, hours=3))  # the DSN comes back the next morning
    victim = "sub13@example.com"
    path = tmp_path / "late.eml"
    path.write_bytes(fb.microsoft_ndr(vaddr(bsettings, rows[victim]), victim))
    assert run_cli(bsettings, content_dir, "bounces", "ingest", str(path)).exit_code == 0
    assert [a for a in rows if store.get_by_email(engine, a).status == "bounced"] == [victim]
    # the next issue skips them
    second = send_issue(engine, bsettings, small_rendered(on=date(2026, 3, 3)), progress=False)
    assert second.sent == 19
    # the operator sees why...
    listing = run_cli(bsettings, content_dir, "bounces", "list", "--address", victim, "--json")
    (event,) = [json.loads(line) for line in listing.output.splitlines()]
    assert event["kind"] == "hard" and event["status"] == "5.1.10" and event["action"] == "suppressed"
    shown = json.loads(run_cli(bsettings, content_dir, "bounces", "show", str(event["id"])).output)
    assert "RecipientNotFound" in shown["raw"] and shown["suppressed"] == "bounced"
    # ...and undoes it, with a reason (required) that is audited
    missing = run_cli(bsettings, content_dir, "bounces", "release", victim)
    assert missing.exit_code != 0 and "--reason" in missing.output
    done = run_cli(bsettings, content_dir, "bounces", "release", victim, "--reason", "mailbox restored – £ é 山",
                   "--by", "Zoë")
    assert done.exit_code == 0, done.output
    assert store.get_by_email(engine, victim).status == "confirmed"
    assert store.suppression_reason(engine, bsettings, victim) is None
    with engine.connect() as conn:
        audit = conn.execute(select(BounceRelease.released_by, BounceRelease.reason, BounceRelease.previous,
                                    BounceRelease.at)).one()
    assert audit[:3] == ("Zoë", "mailbox restored – £ é 山", "bounced") and audit.at.tzinfo is not None
    assert store.consent_records(engine, store.get_by_email(engine, victim).id)[-1]["action"] == "release"
    third = send_issue(engine, bsettings, small_rendered(on=date(2026, 3, 4)), progress=False)
    assert third.sent == 20
    # the raw notification is kept 30 days, then pruned; the event (the why) stays
    frozen.advance(timedelta(days=31))
    assert process.prune(engine, bsettings) == 1
    assert json.loads(run_cli(bsettings, content_dir, "bounces", "show", str(event["id"])).output)["raw"] is None

def test_bad_input_to_the_commands_is_one_line(engine, bsettings, content_dir, tmp_path):
    result = run_cli(bsettings, content_dir, "bounces", "ingest", str(tmp_path / "nope.eml"))
    assert result.exit_code == 1 and "cannot read" in result.output and "Traceback" not in result.output
    result = run_cli(bsettings, content_dir, "bounces", "show", "999")
    assert result.exit_code == 1 and "Traceback" not in result.output
    result = run_cli(bsettings, content_dir, "bounces", "release", "never@example.org", "--reason", "x")
    assert result.exit_code == 1 and "not suppressed" in result.output
