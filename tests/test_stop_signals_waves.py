"""A signal stop holds the day until an editor resumes it, and a wave released while the
daemon was down for days is not sent late (single-node SQLite daemon)."""
from __future__ import annotations

from datetime import date

from pipeline.delivery import ledger, stops
from test_schedule_days import utc
from test_send_nodes_stop import DAY, days  # noqa: F401  (fixture)
from test_waves_daemon import arrivals


def test_a_sigterm_stopped_day_is_not_sent_days_late(days):  # noqa: F811
    """systemctl stop during the 07:00 wave, daemon started again two days later: a
    crash (running, dead holder) past the grace window is recorded failed for an
    editor; a clean shutdown must not instead mail the 10th's issue on the 12th."""
    stops.SIGNALLED.set("shutdown of newsletter run (pid 4242)")
    try:
        days.wake_at(utc(2026, 3, 10, 7, 0))
    finally:
        stops.SIGNALLED.clear()
    assert days.run(DAY).state == "stopped"
    days.wake_at(utc(2026, 3, 12, 7, 30))  # back two days later
    late = {a: [t for t in ts if t.date() == date(2026, 3, 12)] for a, ts in arrivals(days).items()}
    assert late.get("london@example.com", []) == [], "the 10th's issue went out on the 12th"


def test_ctrl_c_of_a_resumed_hand_send_still_holds_the_daemon(days):  # noqa: F811
    """An operator's `newsletter stop` stops the day; they run `newsletter send --date D
    --resume` (which releases the stop) and press Ctrl-C: the message says
    `send --date D --resume` finishes it.  The daemon must not send the rest on its own."""
    stops.request(days.engine, DAY, "Zoë Ōkubo")  # the operator's stop, before the wave goes
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert days.run(DAY).state == "stopped"
    key = days.run(DAY).issue_key
    stops.release(days.engine, DAY)  # newsletter send --date D --resume ...
    stops.record_signal(days.engine, DAY, "SIGINT", key, 0, 2)  # ... then Ctrl-C before its first message
    assert arrivals(days) == {}
    days.wake_at(utc(2026, 3, 10, 7, 5))
    assert arrivals(days).get("london@example.com", []) == [], "the daemon finished a send the editor interrupted"


def test_a_daemon_killed_in_the_first_wave_does_not_send_it_days_late(days):  # noqa: F811
    """kill -9 (OOM, power) just after the 07:00Z wave's ledger was written, nothing sent
    yet; the server is back two days later.  A run left `running` by a dead holder past
    its window expires (failed, for an editor).  The later Tokyo wave (11:00Z) must not
    turn that into a resume that mails the 10th's issue to London on the 12th."""
    from sqlalchemy import update
    from test_waves_nodes import dead_holder
    from pipeline.scheduling import calendar
    stops.SIGNALLED.set("shutdown")  # only to get a written ledger with nothing sent
    try:
        days.wake_at(utc(2026, 3, 10, 7, 0))
    finally:
        stops.SIGNALLED.clear()
    stops.release(days.engine)
    with days.engine.begin() as conn:  # as after kill -9 mid-wave: running, holder gone
        conn.execute(update(calendar.RunRecord.__table__).values(state="running", holder=dead_holder(),
                                                                  finished_at=None))
    assert arrivals(days) == {}
    days.wake_at(utc(2026, 3, 12, 7, 30))
    late = {a: [t for t in ts if t.date() == date(2026, 3, 12)] for a, ts in arrivals(days).items()}
    assert late == {}, (late, days.run(DAY))
