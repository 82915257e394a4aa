"""The send's connections to the relay: opened as the workers need them, fewer when
the relay says so, and given up on in time when it cannot be reached.

- A 4xx greeting (421 "too many connections") while other connections work is
  "one connection fewer": that worker retires, its rows go back to the others,
  and the summary says how many connections the relay allowed.
- A failure while no connection works (a refused port, an unresolvable host, a
  relay that never greets) is printed at once as one line; the workers keep
  trying with backoff for ``smtp_give_up_after`` seconds (each attempt waits at
  most ``smtp_connect_timeout``), then the run stops with every row still due,
  for ``newsletter send --resume``.
- A refusal that retrying cannot cure (TLS, AUTH, a 5xx greeting) stops the run
  at once.
"""
from __future__ import annotations

import asyncio
import logging

from pipeline.errors import DeliveryError
from pipeline.mail.transport import ConnectionLost, GreetingRefused, Outcome, SMTPConnection

log = logging.getLogger("newsletter.deliver")

FIRST_RETRY = 0.5  # seconds before the first reconnect while nothing works; doubles, capped below
MAX_RETRY = 5.0


class Pool:
    def __init__(self, run):
        self.run = run
        settings = run.settings
        self.give_up_after = float(settings.smtp_give_up_after)
        self.live = 0  # connections open now
        self.peak = 0  # most open at once
        self.retired = 0  # workers that gave up their connection because the relay refused more
        self.refusal = ""  # the relay's words when it did
        self.failing_since: float | None = None  # loop time of the first failure while none worked
        self.told = False

    async def connect(self, batch) -> SMTPConnection | None:
        """A connection for ``batch``; None (the batch handed back, still due) when this
        worker retires or the relay cannot be reached (then ``run.stop`` says why)."""
        run = self.run
        loop = asyncio.get_running_loop()
        attempt = 0
        error = ""
        while not run.stop:
            deadline = self.failing_since + self.give_up_after if self.failing_since is not None else None
            try:
                conn = await SMTPConnection.open(run.settings, deadline=deadline)
            except GreetingRefused as exc:
                error, refusal = str(exc), str(exc.reply)
            except ConnectionLost as exc:
                error, refusal = str(exc), ""
            except DeliveryError as exc:  # refused (bad TLS or AUTH, a 5xx greeting): retrying will not help
                error = str(exc)
                run.stop = run.stop or error
                break
            else:
                self.live += 1
                self.peak = max(self.peak, self.live)
                self.failing_since = None
                return conn
            if self.live > 0:
                # the relay takes fewer connections than we asked for: carry on with those that work
                self.retired += 1
                self.refusal = self.refusal or refusal
                log.info("connection refused while %d work: %s; sending on fewer", self.live, error)
                break
            now = loop.time()
            if self.failing_since is None:
                self.failing_since = now
            if not self.told:
                self.told = True
                run.notice(f"{error} (trying again for up to {self.give_up_after:g} s)")
            remaining = self.failing_since + self.give_up_after - now
            if remaining <= 0:
                run.stop = run.stop or error
                break
            await asyncio.sleep(min(FIRST_RETRY * 2 ** attempt, MAX_RETRY, remaining))
            attempt += 1
        # hand the batch back: nothing of it went out
        await run.commit([(row, Outcome("unsent", None, error), None) for row in batch])
        return None

    async def close(self, conn: SMTPConnection) -> None:
        self.live -= 1
        await conn.quit() if conn.usable else conn.abort()

    def describe(self, asked: int) -> str:
        """One line for the summary when the relay allowed fewer connections than asked."""
        if not self.retired:
            return ""
        why = f" ({self.refusal})" if self.refusal else ""
        return f"the relay refused {self.retired} connection(s){why}: sent on {self.peak} of {asked}"
