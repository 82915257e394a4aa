"""Waiting for deferred rows to come due, out loud.

When every row left is deferred (a relay answering 451, say), the send waits for
the earliest retry.  It says so at once, with the schedule (when the next try is,
which try it is, the backoff after it) and then a countdown every
``TICK`` seconds, so a resumed send never sits silent.  ``--max-wait SECONDS``
bounds the total waiting of one run: a retry due later than that is left for the
next ``newsletter send --resume`` (the send ends unfinished, exit code 4).
"""
from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo

from pipeline import clock
from pipeline.delivery.outcomes import retry_delay
from pipeline.delivery.send_guard import LEASE_LOST

TICK = 10.0  # seconds between countdown lines
QUIET = 1.0  # a wait shorter than this is not announced


class RetryWait:
    def __init__(self, run, max_wait: float | None):
        self.run = run
        self.max_wait = max_wait
        self.waited = 0.0
        self.announced = None  # the due time last announced
        self.next_tick = 0.0
        self.gave_up = False

    async def wait(self, due, waiting: int) -> bool:
        """Wait a moment (at most a second) toward ``due``; False when the run stops waiting."""
        run = self.run
        if not run.ledger.renew_lease():  # waiting for retries can outlast the lease
            run.stop = run.stop or LEASE_LOST
            return False
        delay = max((due - clock.now()).total_seconds(), 0.0) if due else 0.0
        if delay >= QUIET:
            now = clock.monotonic()
            if due != self.announced:
                self.announced, self.next_tick = due, now + TICK
                run.notice(self.schedule(due, delay, waiting))
            elif now >= self.next_tick:
                self.next_tick = now + TICK
                run.notice(f"next try in {delay:.0f} s ({waiting} recipient(s) deferred)")
        if self.max_wait is not None and self.waited + delay > self.max_wait:
            self.gave_up = True
            run.notice(f"stopped waiting (--max-wait {self.max_wait:g} s): {waiting} recipient(s) still deferred, "
                       f"next try due at {self._local(due)}")
            return False
        step = min(max(delay, 0.01), 1.0)
        await asyncio.sleep(step)
        self.waited += step
        return True

    def schedule(self, due, delay: float, waiting: int) -> str:
        """``2 recipient(s) deferred (451 ...): next try in 40 s, at 02:13:05 (try 3 of 10); then after 80 s, ...``"""
        run = self.run
        attempts, reply = run.ledger.retry_info(run.max_attempts)
        base = run.retry_delay
        later = [f"{retry_delay(base, n):g} s" for n in range(attempts + 1, run.max_attempts)]
        text = (f"{waiting} recipient(s) deferred" + (f" ({reply})" if reply else "")
                + f": next try in {delay:.0f} s, at {self._local(due)} (try {attempts + 1} of {run.max_attempts})")
        if later:
            text += "; then after " + ", ".join(later[:6]) + (", ..." if len(later) > 6 else "")
        if self.max_wait is None:
            text += "; `--max-wait SECONDS` stops waiting sooner"
        return text

    def _local(self, when) -> str:
        if when is None:
            return "now"
        return f"{when.astimezone(ZoneInfo(self.run.settings.timezone)):%H:%M:%S %Z}"
