"""The send loop of one run: ledger rows in batches, out over SMTP or into the outbox.

``SendRun`` takes batches of due rows from the ledger, builds each recipient's
message from the issue's ``MessageTemplate``, sends them over
``smtp_connections`` pooled connections (or writes them to the Maildir outbox)
and records each outcome as its reply arrives (``pipeline/delivery/outcomes.py``:
a row is marked ``sending`` right before its content goes out, in the same
transaction as its connection's previous outcome), as
``pipeline/delivery/deliver.py`` describes.  Connecting, with a shrinking pool and
a time limit, is ``pipeline/delivery/pool.py``; waiting for deferred rows to come
due, with the retry schedule shown, is ``pipeline/delivery/retry_wait.py``.
``TokenBucket`` is the global rate limit; ``drive`` runs the workers to the end.
A node of a shared send (PostgreSQL, ``pipeline/delivery/claims.py``) claims its
batches with ``SKIP LOCKED`` instead of reading pages, shares the rate limit with
the other nodes through the database, and ends only when no live node holds a row.
"""
from __future__ import annotations

import asyncio
import logging

from pipeline import clock
from pipeline.delivery import claims, ledger
from pipeline.delivery.outcomes import Recorder, updates_for
from pipeline.delivery.pool import Pool
from pipeline.delivery.retry_wait import RetryWait
from pipeline.errors import DeliveryError, NewsletterError
from pipeline.mail import verp
from pipeline.mail.headers import MessageIds
from pipeline.rendering.greeting import greeting
from pipeline.rendering.issue import Personal
from pipeline.delivery.message import DkimSigner, MessageTemplate
from pipeline.delivery.send_guard import LEASE_LOST, SendGuard
from pipeline.delivery.send_summary import SendSummary
from pipeline.mail.transport import Envelope, Halt, Outbox, Outcome, Reply, SMTPConnection

log = logging.getLogger("newsletter.deliver")

PAGE = 500  # ledger rows read per query (a keyset page; memory stays flat)
PEER_POLL = 0.2  # seconds between looks at the other nodes' rows while they hold the last ones
FAILURE_STREAK = 10  # consecutive non-bounce refusals that stop the run: the relay refuses everything


# -- what a message needs per recipient ---------------------------------------------

def personal_for(settings, subscriber_id: int, name: str | None = None) -> Personal:
    from subscribers.tokens import preferences_url, unsubscribe_url
    return Personal(unsubscribe_url(settings, subscriber_id), preferences_url(settings, subscriber_id), greeting(name))


def message_id_for(settings, issue: ledger.IssueInfo, delivery_id: int) -> str:
    """The Message-ID of one ledger row (``pipeline.mail.headers.MessageIds``: opaque, stable per row)."""
    return MessageIds(settings, issue)(delivery_id)


# -- the rate limit --------------------------------------------------------------------------

class TokenBucket:
    """Global rate limit shared by every connection (``smtp_rate_limit`` messages/s)."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate / 20)  # allow bursts of 50 ms worth
        self.tokens = self.capacity
        self.stamp = clock.monotonic()

    async def take(self) -> None:
        while True:
            now = clock.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


# -- the run ------------------------------------------------------------------------------

class SendRun:
    def __init__(self, engine, settings, issue: ledger.IssueInfo, template: MessageTemplate,
                 signer: DkimSigner | None, owner: str, max_attempts: int, summary: SendSummary, bar,
                 guard: SendGuard, notice=None, max_wait: float | None = None, shared: bool = False):
        self.engine, self.settings, self.issue = engine, settings, issue
        self.notice = notice or log.warning  # one line for the operator, at once (stderr, else the log)
        self.template, self.signer = template, signer
        self.guard = guard
        self.shared = shared  # a node of a shared send: claims by SKIP LOCKED (pipeline/delivery/claims.py)
        self.owner = owner
        self.ledger = (claims.SharedLedgerRun if shared else ledger.LedgerRun)(
            engine, issue.id, owner, lease_seconds=float(settings.lease_seconds))
        self.max_attempts = max_attempts
        self.summary = summary
        self.bar = bar
        self.batch_size = max(1, int(settings.delivery_batch_size))
        self.phase = ledger.QUEUED
        self.after = 0
        self.page: list[ledger.Pending] = []
        self.in_flight = 0
        self.held: set[int] = set()  # ids in some connection's batch now (claimed, outcome not yet recorded)
        self.stop: str = ""
        self.failure_streak = 0
        self.sender = settings.sender_address
        self.retry_delay = float(settings.smtp_retry_delay)
        self.message_id = MessageIds(settings, issue)
        self.policy = settings.uncertain_policy
        self.batches_now = 0  # connections in the middle of a batch (each will hand over its next message soon)
        self.recorder = Recorder(self.ledger, settings, expected=lambda: self.batches_now)
        self.pool = Pool(self)
        self.waiting = RetryWait(self, max_wait)

    # feeding batches ---------------------------------------------------------------
    def _refill(self) -> bool:
        rows = self.ledger.page(self.phase, self.after, PAGE, self.max_attempts)
        if rows:
            self.after = rows[-1].id
            self.page = rows[::-1]  # pop() from the end gives id order
            return True
        if self.phase == ledger.QUEUED:
            self.phase, self.after = ledger.DEFERRED, 0
            return self._refill()
        self.after = 0  # next pass over the deferred rows starts from the beginning
        return False

    def claim(self, limit: int) -> list[ledger.Pending]:
        """Up to ``limit`` due rows, checked still open and eligible (``LedgerRun.claim``)."""
        while not self.stop:
            reason = self.guard.stop_reason()  # between batches: a stop request, a lost lease
            if reason:
                self.stop = reason
                return []
            if self.shared:
                return self._claim_shared(limit)
            rows: list[ledger.Pending] = []
            while len(rows) < limit and (self.page or self._refill()):
                row = self.page.pop()
                if row.id not in self.held:  # not a deferred row another connection has now
                    rows.append(row)
            if not rows:
                return []
            send = [r for r in rows if r.eligible]
            skipped = [r.id for r in rows if not r.eligible]
            try:
                claimed, skipped = self.ledger.claim([r.id for r in send], skipped)
            except ledger.LeaseLost:
                self.stop = LEASE_LOST
                return []
            mine = set(claimed)
            send = [r for r in send if r.id in mine]  # another sender claimed the rest first
            self.summary.skipped += len(skipped)
            self._advance(len(skipped))
            if send:
                self.in_flight += len(send)
                self.held.update(r.id for r in send)
                return send
        return []

    def _claim_shared(self, limit: int) -> list[ledger.Pending]:
        """A node's claim: queued rows first, then deferred ones that are due."""
        while not self.stop:
            try:
                send, skipped = self.ledger.claim_batch(self.phase, limit, self.max_attempts)
            except ledger.LeaseLost:
                self.stop = LEASE_LOST
                return []
            self.summary.skipped += skipped
            self._advance(skipped)
            if send:
                self.in_flight += len(send)
                self.held.update(r.id for r in send)
                return send
            if skipped:
                continue
            if self.phase == ledger.QUEUED:
                self.phase = ledger.DEFERRED
                continue
            self.phase = ledger.QUEUED  # the next look starts from the queue again (rows reaped back)
            return []
        return []

    async def _peers_busy(self) -> bool:
        """A node with nothing to claim: take back the rows of dead nodes (then claim
        again), or wait while live nodes still hold rows (they may defer them, or die)."""
        if claims.reap(self.engine, self.issue.id, self.policy):
            return True
        if claims.held_by_others(self.engine, self.issue.id, self.owner):
            await asyncio.sleep(PEER_POLL)
            return True
        return False

    async def next_batch(self, limit: int) -> list[ledger.Pending]:
        """The next batch, waiting for deferred rows to come due; [] when the run is over."""
        while not self.stop:
            batch = self.claim(limit)
            if batch:
                return batch
            if self.in_flight:  # another connection may still defer rows
                await asyncio.sleep(0.05)
                continue
            if self.shared and await self._peers_busy():
                continue
            due, waiting = self.ledger.next_due(self.max_attempts)
            if not waiting or not await self.waiting.wait(due, waiting):
                return []
        return []

    # messages ------------------------------------------------------------------------------
    def build(self, row: ledger.Pending) -> tuple[str, bytes, str]:
        """(envelope recipient, bytes, Message-ID), signed when DKIM is on; DeliveryError for a bad
        address or anything else that stops this one message being built (recorded as failed)."""
        rcpt, head, values, message_id = self.parts(row)
        data = self.template.layout.message(head, values)
        if self.signer is not None:
            try:
                data = self.signer.signatures_for(self.template.layout, head, values) + data
            except NewsletterError:
                raise
            except Exception as exc:  # a bug: this one message's failure, recorded with its row
                raise DeliveryError(f"cannot DKIM-sign the message: {type(exc).__name__}: {exc}") from None
        return rcpt, data, message_id

    def parts(self, row: ledger.Pending) -> tuple[str, bytes, tuple[bytes, ...], str]:
        """(envelope recipient, the recipient's header lines, body values, Message-ID): what
        ``template.layout.message`` joins into the message, and what a DKIM signer needs of it."""
        message_id = self.message_id(row.id)
        try:
            head, values = self.template.parts_to(row.email, row.name, message_id=message_id,
                                                  personal=personal_for(self.settings, row.subscriber_id, row.name))
        except NewsletterError:
            raise
        except Exception as exc:  # a bug must not stop everyone else's message; the row records it
            raise DeliveryError(f"cannot build the message: {type(exc).__name__}: {exc}") from None
        return row.email, head, values, message_id

    # recording ---------------------------------------------------------------------------------
    async def commit(self, triples, hand: ledger.Pending | None = None) -> bool:
        """Record ``(row, outcome, Message-ID)`` triples and, with ``hand``, mark that row
        ``sending`` (its content goes out next), in one transaction.  True when ``hand``
        may go out; False when it may not (the lease is lost: the run stops)."""
        updates, abort = updates_for(triples, base_delay=self.retry_delay, policy=self.policy,
                                     stopping=bool(self.stop))
        if abort:
            self.stop = self.stop or abort
        self.in_flight -= len(triples)
        self.held.difference_update(row.id for row, _, _ in triples)
        bounced = [u["_pending"] for u in updates if u["new_state"] == ledger.BOUNCED]
        try:
            marked = await self.recorder.commit(
                updates, [hand.id] if hand is not None else [],
                [r.subscriber_id if r.subscriber_id is not None else r.email for r in bounced])
        except ledger.LeaseLost:
            # another process owns the issue now: nothing of this is ours to record
            self.stop = LEASE_LOST
            return False
        self._tally(updates)
        return hand is not None and hand.id in marked

    def _tally(self, updates: list[dict]) -> None:
        s = self.summary
        for update in updates:
            state = update["new_state"]
            if state == ledger.SENT:
                s.sent += 1
                self.failure_streak = 0
            elif state == ledger.BOUNCED:
                s.bounced += 1
                self.failure_streak = 0
            elif state == ledger.FAILED:
                s.failed += 1
                self.failure_streak += 1
                if self.failure_streak >= FAILURE_STREAK:
                    self.stop = self.stop or f"{FAILURE_STREAK} messages in a row refused: {update['reply']}"
        self._advance(sum(1 for u in updates if u["new_state"] not in (ledger.DEFERRED, ledger.UNCERTAIN)))

    def _advance(self, count: int) -> None:
        if self.bar is not None and count:
            self.bar.advance(count)

    # workers --------------------------------------------------------------------------------------
    async def smtp_worker(self, bucket: TokenBucket | None) -> None:
        conn: SMTPConnection | None = None
        cap = max(1, int(self.settings.smtp_messages_per_connection))
        try:
            while not self.stop:
                if conn is not None and (not conn.usable or conn.sent >= cap):
                    await self.pool.close(conn)
                    conn = None
                limit = min(self.batch_size, cap - conn.sent) if conn is not None else self.batch_size
                batch = await self.next_batch(limit)
                if not batch:
                    break
                if conn is None:
                    conn = await self.pool.connect(batch)
                    if conn is None:  # the pool shrank by this one, or the relay cannot be reached
                        break
                await self._send_smtp(conn, batch, bucket)
        finally:
            if conn is not None:
                await self.pool.close(conn)

    async def _send_smtp(self, conn: SMTPConnection, batch: list[ledger.Pending], bucket) -> None:
        rows, parts, ids = [], [], []
        refused = []
        for row in batch:
            try:
                rcpt, head, values, mid = self.parts(row)
            except DeliveryError as exc:
                refused.append((row, _refused(str(exc)), None))
                continue
            rows.append(row)
            parts.append((rcpt, head, values))
            ids.append(mid)
        layout = self.template.layout
        signatures = [b""] * len(parts)
        if self.signer is not None and parts:
            # DKIM for the whole batch, in worker processes (mail/dkim.py): only each recipient's own
            # parts cross to them, and only the signature headers come back
            signatures = await self.signer.headers_batch(layout, [(head, values) for _, head, values in parts])
            for i in reversed(range(len(signatures))):
                if isinstance(signatures[i], str):  # this message could not be signed: refused, like a build error
                    refused.append((rows.pop(i), _refused(signatures.pop(i)), None))
                    parts.pop(i)
                    ids.pop(i)
        messages = [(rcpt, layout.message(head, values, before=sig, after=b".\r\n"),
                     verp.return_path(self.settings, "d", row.id))  # VERP: bounces name the row
                    for (rcpt, head, values), sig, row in zip(parts, signatures, rows)]
        # MessageTemplate never starts a line with "." (and a DKIM header cannot), so no dot-stuffing scan
        recorded: set[int] = set()

        async def before_each() -> None:
            reason = self.guard.stop_reason()  # a stop request, a signal, a lost lease: not one more message
            if reason:
                self.stop = self.stop or reason
                raise Halt(reason)
            if bucket is not None:
                await bucket.take()

        async def handover(index: int, finished) -> None:
            recorded.update(i for i, _ in finished)
            if not await self.commit([(rows[i], o, ids[i]) for i, o in finished], hand=rows[index]):
                raise Halt(self.stop or "the row is no longer due")

        outcomes = []
        if messages:
            self.batches_now += 1
            try:
                outcomes = await conn.send_batch(self.sender, messages, before_each, dot_safe="ended", handover=handover)
            finally:
                self.batches_now -= 1
        rest = [(rows[i], o, ids[i]) for i, o in enumerate(outcomes) if i not in recorded]
        await self.commit(rest + refused)

    async def outbox_worker(self) -> None:
        outbox = Outbox(self.settings.outbox_dir)
        try:
            while not self.stop:
                batch = await self.next_batch(self.batch_size)
                if not batch:
                    break
                done = []  # the previous message's outcome, recorded with the next row's mark
                for at, row in enumerate(batch):
                    if self.guard.stop_reason():
                        self.stop = self.stop or self.guard.stop_reason() or LEASE_LOST
                        done += [(r, Outcome("unsent", None, self.stop), None) for r in batch[at:]]
                        break
                    try:
                        rcpt, data, mid = self.build(row)
                    except DeliveryError as exc:
                        done.append((row, _refused(str(exc)), None))
                        continue
                    if not await self.commit(done, hand=row):
                        done = [(r, Outcome("unsent", None, self.stop), None) for r in batch[at:]]
                        break
                    done = []
                    try:
                        outbox.send(data, Envelope(self.sender, rcpt))
                        done.append((row, Outcome("sent", None, "written to the outbox"), mid))
                    except OSError as exc:
                        done.append((row, Outcome("lost", None, f"outbox: {exc}"), mid))
                await self.commit(done)
                await asyncio.sleep(0)
        finally:
            outbox.close()


def _refused(reason: str) -> Outcome:
    """A message we could not build (a malformed stored address): recorded as failed."""
    return Outcome("end", Reply(554, f"554 5.6.0 not sent: {reason}"), reason)


async def drive(run: SendRun) -> None:
    settings = run.settings
    if settings.transport == "outbox":
        await run.outbox_worker()
        return
    rate = float(settings.smtp_rate_limit)
    bucket = None
    if rate > 0:  # a shared send's rate is the issue's, booked in the database by every node
        bucket = claims.SharedRate(run.engine, run.issue.id, rate) if run.shared else TokenBucket(rate)
    workers = [asyncio.create_task(run.smtp_worker(bucket)) for _ in range(max(1, int(settings.smtp_connections)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
