"""Faults at a real SMTP server on loopback (aiosmtpd with a scripted handler):
451s, 550s, a connection dropped mid-DATA and a reply that never comes.  Counted at
the server: nobody is lost and nobody gets two copies."""
from __future__ import annotations

import asyncio

import pytest

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, small_rendered, start_scripted_server
from pipeline.delivery import ledger
from pipeline.database import open_database
from pipeline.delivery.deliver import send_issue
from pipeline.mail.transport import SMTPConnection

SECRET = "faults-test-secret"


@pytest.fixture
def engine(db_url):
    return open_database(db_url)


async def pipelines(settings) -> bool:
    conn = await SMTPConnection.open(settings)
    await conn.quit()
    return conn.pipelining


def addresses(*numbers: int) -> set[str]:
    return {f"sub{n}@example.com" for n in numbers}


def fault_settings(settings, port: int, **more):
    return settings.replace(**({"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port,
                                "secret_key": SECRET, "smtp_timeout": 0.5, "smtp_retry_delay": 0.05,
                                "smtp_connections": 3, "delivery_batch_size": 4} | more))


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_451_retried_550_bounced_drops_and_stalls_retried_nobody_lost_or_doubled(engine, settings, pipelining):
    from subscribers import store

    script = Script(temp_fail_once=addresses(3, 11, 20, 33), reject=addresses(5, 17),
                    drop_in_data_once=addresses(7, 25), stall_once=addresses(9), stall_seconds=1.5,
                    pipelining=pipelining)
    port = free_port()
    controller, server = start_scripted_server(script, port)
    s = fault_settings(settings, port)
    ids = add_subscribers(engine, s, 60)
    try:
        assert asyncio.run(pipelines(s)) is pipelining  # the path under test is the one taken
        summary = send_issue(engine, s, small_rendered(), progress=False)
    finally:
        controller.stop()

    everyone = addresses(*range(60))
    got = server.by_recipient()
    # 550 recipients never got it; everyone else exactly once
    assert set(got) == everyone - script.reject
    assert max(got.values()) == 1, [a for a, n in got.items() if n > 1]
    assert max(server.message_ids().values()) == 1
    # every 451 recipient was refused once, then retried and delivered
    for address in script.temp_fail_once:
        assert server.seen[address] >= 2 and got[address] == 1
    assert (summary.sent, summary.bounced, summary.failed, summary.deferred) == (58, 2, 0, 0)
    assert summary.state == "sent"
    # every 550 recipient is bounced and suppressed, with the reply kept in the ledger
    iid = ledger.find_issue(engine, "2026-03-02").id
    assert ledger.state_counts(engine, iid)["bounced"] == 2
    for n in (5, 17):
        assert store.get(engine, ids[n]).status == "bounced"
        assert store.suppression_reason(engine, s, f"sub{n}@example.com") == "bounced"
    # a later issue does not go to them
    assert ledger.count_recipients(engine, "daily") == 58


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_persistent_451_stays_deferred_within_bounded_attempts_and_resume_delivers(engine, settings, pipelining):
    script = Script(temp_fail=addresses(2, 4), pipelining=pipelining)
    port = free_port()
    controller, server = start_scripted_server(script, port)
    s = fault_settings(settings, port, smtp_max_attempts=3)
    add_subscribers(engine, s, 8)
    try:
        first = send_issue(engine, s, small_rendered(), progress=False)
        assert (first.sent, first.deferred, first.state) == (6, 2, "unfinished")
        for address in addresses(2, 4):
            assert server.seen[address] == 3  # smtp_max_attempts tries, no more
        # a plain re-run does not hammer a row that used up its tries; --resume gives more
        assert send_issue(engine, s, small_rendered(), progress=False).sent == 0
        script.temp_fail.clear()
        resumed = send_issue(engine, s, small_rendered(), resume=True, progress=False)
    finally:
        controller.stop()
    assert (resumed.sent, resumed.deferred, resumed.state) == (2, 0, "sent")
    got = server.by_recipient()
    assert set(got) == addresses(*range(8)) and max(got.values()) == 1


def test_unreachable_relay_stops_the_run_and_keeps_every_row_queued(engine, settings):
    s = fault_settings(settings, free_port(), smtp_connections=2)  # nothing listens there
    add_subscribers(engine, s, 5)
    summary = send_issue(engine, s, small_rendered(), progress=False)
    assert summary.sent == 0 and "cannot connect" in summary.error
    counts = ledger.state_counts(engine, ledger.find_issue(engine, "2026-03-02").id)
    assert counts["queued"] + counts["deferred"] == 5 and counts["sending"] == 0
    assert counts["failed"] == counts["bounced"] == 0
