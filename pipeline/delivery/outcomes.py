"""What each message's outcome does to the ledger, written as the reply arrives.

``classify`` maps an SMTP outcome to a ledger state.  ``updates_for`` turns
(row, outcome, Message-ID) triples into the ledger's update rows.  ``Recorder``
writes them: each connection hands it the outcomes that ended since its last
message, together with the row whose content is about to go to the relay (marked
``sending`` in the same transaction), and every connection ready at the same
moment shares one transaction (a group commit: ``Recorder``), so per-message
recording costs one transaction per group of connections, not one per message.

The ledger states of an outcome:

- ``sent``: the relay said 250 to the end of data;
- ``deferred``: a 4xx, or the connection dropped (or timed out) before the
  message's content went out, or it never started: certainly not delivered,
  retried with backoff;
- ``bounced`` / ``failed``: a 5xx (``classify`` says which);
- uncertain: the connection dropped or timed out after the content went out
  and before the reply (stage ``unknown``).  The relay may have it.  The row's
  ``uncertain`` counter goes up, and ``uncertain_policy`` decides: ``resend``
  (the default, at-least-once) defers it for a retry, ``skip`` leaves it in
  state ``uncertain`` for ``newsletter send --resume --uncertain resend|skip``.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta

from pipeline import clock
from pipeline.delivery import ledger
from pipeline.mail.transport import Outcome
from pipeline.mail.failures import is_policy_refusal

MAX_RETRY_DELAY = 300.0


def classify(outcome: Outcome) -> str:
    """The ledger state for an SMTP outcome (``abort`` stops the run: the relay refuses our sender)."""
    stage, reply = outcome.stage, outcome.reply
    if stage == "sent":
        return ledger.SENT
    if stage == "unknown":
        return ledger.UNCERTAIN
    if stage in ("lost", "unsent"):
        return ledger.DEFERRED
    code = reply.code if reply is not None else 0
    if 400 <= code < 500 or code == 0:
        return ledger.DEFERRED
    if stage in ("mail", "data"):
        return "abort"
    if is_policy_refusal(code, reply.text if reply is not None else ""):
        return ledger.FAILED  # about us or the content, not the address: counted and alerted, never suppressed
    enhanced = reply.enhanced
    if enhanced:
        if enhanced.startswith(("5.1.", "5.2.1")):
            return ledger.BOUNCED
        return ledger.BOUNCED if stage == "rcpt" and not enhanced.startswith("5.7.") else ledger.FAILED
    return ledger.BOUNCED if stage == "rcpt" or code in (550, 551, 553) else ledger.FAILED


def retry_delay(base: float, attempts: int) -> float:
    """Seconds before the next try of a row that has had ``attempts`` tries (exponential, capped)."""
    return min(base * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)


def updates_for(triples, *, base_delay: float, policy: str, stopping: bool) -> tuple[list[dict], str]:
    """The ledger update rows for ``(row, outcome, message_id)`` triples, and why the run
    must stop ("" to go on).  A message that never started while the run is stopping
    is left as it was (still queued or deferred: nothing to write)."""
    now = clock.now()
    updates, abort = [], ""
    for row, outcome, mid in triples:
        state = classify(outcome)
        tried = 0 if outcome.stage == "unsent" else 1
        doubt = 0
        if outcome.stage == "unsent" and stopping:
            continue
        if state == "abort":
            abort = abort or f"the relay refuses our messages: {outcome.detail}"
            state, tried = ledger.DEFERRED, 0  # certainly not delivered: it was refused before DATA
        if state == ledger.UNCERTAIN:
            doubt = 1
            if policy == "resend":
                state = ledger.DEFERRED
        retry_at = None
        if state == ledger.DEFERRED:
            delay = retry_delay(base_delay, row.attempts + tried) if tried else 0.0
            retry_at = now + timedelta(seconds=delay)
        reply = outcome.detail[:500] or None
        if doubt:
            reply = f"uncertain: {outcome.detail}"[:500]
        updates.append({"row": row.id, "new_state": state, "tried": tried, "doubt": doubt, "reply": reply,
                        "mid": mid, "retry_at": retry_at, "_pending": row})
    return updates, abort


HOPS = 3  # event-loop turns a group commit waits for more connections (replies already read join it)


class Recorder:
    """Group commit of the ledger writes of every connection (see the module docstring).

    A connection that hands over a message waits until its write is committed.  The
    write goes as soon as every connection expected (``expected()``: those in the
    middle of a batch) has joined, else after ``HOPS`` turns of the event loop: time
    enough for the replies already read to join, never a wait on the network (the loop
    does not block while a turn is pending).  The bound on uncertain rows is unchanged:
    a row is marked ``sending``, and its connection's previous outcome recorded, before
    its content goes out."""

    def __init__(self, ledger_run: ledger.LedgerRun, settings, expected=lambda: 0):
        self.ledger_run, self.settings = ledger_run, settings
        self.expected = expected
        self._queue: list[tuple[list[dict], list[int], list, asyncio.Future]] = []
        self._pending = False  # a flush is on its way through the loop's turns
        self._full = False  # everyone expected has joined: flush at the next turn
        self.commits = 0  # transactions written

    async def commit(self, updates: list[dict], hand: list[int] = (), bounced: list = ()) -> set[int]:
        """Write ``updates``, the ``bounced`` subscribers' suppression, and mark ``hand``
        sending, in a transaction shared with whoever else is ready; returns the ids of
        ``hand`` marked.  ``LeaseLost`` when the lease is gone (nothing written)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((updates, list(hand), list(bounced), future))
        if len(self._queue) >= self.expected():
            self._full = True
        if not self._pending:
            self._pending = True
            loop.call_soon(self._turn, HOPS)
        return await future

    def _turn(self, hops: int) -> None:
        if hops > 1 and not self._full:
            asyncio.get_running_loop().call_soon(self._turn, hops - 1)
            return
        self._pending = self._full = False
        self._flush()

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        if not queue:
            return
        self.commits += 1
        rows = [{k: v for k, v in u.items() if k != "_pending"} for q in queue for u in q[0]]
        hand = [i for q in queue for i in q[1]]
        bounced = [b for q in queue for b in q[2]]
        try:
            marked = self.ledger_run.write(rows, hand, bounced, self.settings)
        except BaseException as exc:  # LeaseLost, or a database error: every waiter learns it
            for *_, future in queue:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for _, ids, _, future in queue:
            mine = marked.intersection(ids)
            marked -= mine  # a row goes to one connection only
            if not future.done():
                future.set_result(mine)
