"""The send loop of one run: ledger rows in batches, out over SMTP or into the outbox.

``SendRun`` claims batches from the ledger (marked ``sending`` before anything
goes out), builds each recipient's message from the issue's ``MessageTemplate``,
sends them over ``smtp_connections`` pooled connections (or writes them to the
Maildir outbox) and records the outcomes, as ``pipeline/delivery/deliver.py`` describes.
``classify`` maps an SMTP outcome to a ledger state; ``TokenBucket`` is the
global rate limit; ``drive`` runs the workers to the end.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta

from pipeline import clock
from pipeline.delivery import ledger
from pipeline.errors import DeliveryError, NewsletterError
from pipeline.mail import verp
from pipeline.mail.failures import is_policy_refusal
from pipeline.mail.headers import MessageIds
from pipeline.rendering.greeting import greeting as greeting_line
from pipeline.rendering.issue import Personal
from pipeline.delivery.message import DkimSigner, MessageTemplate
from pipeline.delivery.send_guard import LEASE_LOST, SendGuard
from pipeline.delivery.send_summary import SendSummary
from pipeline.mail.transport import ConnectionLost, Envelope, Outbox, Outcome, Reply, SMTPConnection

PAGE = 500  # ledger rows read per query (a keyset page; memory stays flat)
MAX_RETRY_DELAY = 300.0
FAILURE_STREAK = 10  # consecutive non-bounce refusals that stop the run: the relay refuses everything
CONNECT_TRIES = 5


# -- what a message needs per recipient ---------------------------------------------

def greeting(name: str | None) -> str:
    """The greeting line, by first name (``pipeline.rendering.greeting``); a name that breaks the
    name rule (stored before it) is left out."""
    return greeting_line(name)


def personal_for(settings, subscriber_id: int, name: str | None = None) -> Personal:
    from subscribers.tokens import preferences_url, unsubscribe_url
    return Personal(unsubscribe_url(settings, subscriber_id), preferences_url(settings, subscriber_id), greeting(name))


def message_id_for(settings, issue: ledger.IssueInfo, delivery_id: int) -> str:
    """The Message-ID of one ledger row (``pipeline.mail.headers.MessageIds``: opaque, stable per row)."""
    return MessageIds(settings, issue)(delivery_id)


# -- outcomes -> ledger states --------------------------------------------------------------

def classify(outcome: Outcome) -> str:
    """The ledger state for an SMTP outcome (``abort`` stops the run: the relay refuses our sender)."""
    stage, reply = outcome.stage, outcome.reply
    if stage == "sent":
        return ledger.SENT
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
                 guard: SendGuard):
        self.engine, self.settings, self.issue = engine, settings, issue
        self.template, self.signer = template, signer
        self.guard = guard
        self.ledger = ledger.LedgerRun(engine, issue.id, owner, lease_seconds=float(settings.lease_seconds))
        self.max_attempts = max_attempts
        self.summary = summary
        self.bar = bar
        self.batch_size = max(1, int(settings.delivery_batch_size))
        self.phase = ledger.QUEUED
        self.after = 0
        self.page: list[ledger.Pending] = []
        self.in_flight = 0
        self.stop: str = ""
        self.failure_streak = 0
        self.sender = settings.sender_address
        self.retry_delay = float(settings.smtp_retry_delay)
        self.message_id = MessageIds(settings, issue)

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
        """Up to ``limit`` rows, marked sending before anything is sent."""
        while not self.stop:
            reason = self.guard.stop_reason()  # between batches: a stop request, a lost lease
            if reason:
                self.stop = reason
                return []
            rows: list[ledger.Pending] = []
            while len(rows) < limit and (self.page or self._refill()):
                rows.append(self.page.pop())
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
                return send
        return []

    async def next_batch(self, limit: int) -> list[ledger.Pending]:
        """The next batch, waiting for deferred rows to come due; [] when the run is over."""
        while not self.stop:
            batch = self.claim(limit)
            if batch:
                return batch
            if self.in_flight:  # another connection may still defer rows
                await asyncio.sleep(0.05)
                continue
            due, waiting = self.ledger.next_due(self.max_attempts)
            if not waiting:
                return []
            if not self.ledger.renew_lease():  # waiting for retries can outlast the lease
                self.stop = self.stop or LEASE_LOST
                return []
            delay = (due - clock.now()).total_seconds() if due else 0.0
            await asyncio.sleep(min(max(delay, 0.01), 1.0))
        return []

    # messages ------------------------------------------------------------------------------
    def build(self, row: ledger.Pending, sign: bool = True) -> tuple[str, bytes, str]:
        """(envelope recipient, bytes, Message-ID); DeliveryError for a bad address
        or anything else that stops this one message being built (recorded as failed).
        ``sign=False`` leaves DKIM to the caller (``_send_smtp`` signs a whole batch at once)."""
        message_id = self.message_id(row.id)
        try:
            data = self.template.render_to(row.email, row.name, message_id=message_id,
                                           personal=personal_for(self.settings, row.subscriber_id, row.name))
            if sign and self.signer is not None:
                data = self.signer.sign(data)
        except NewsletterError:
            raise
        except Exception as exc:  # a bug must not stop everyone else's message; the row records it
            raise DeliveryError(f"cannot build the message: {type(exc).__name__}: {exc}") from None
        return row.email, data, message_id

    # recording ---------------------------------------------------------------------------------
    def record(self, rows: list[ledger.Pending], outcomes: list[Outcome], message_ids: list[str | None]) -> None:
        updates, bounced = [], []
        now = clock.now()
        s = self.summary
        for row, outcome, mid in zip(rows, outcomes, message_ids):
            state = classify(outcome)
            tried = 0 if outcome.stage == "unsent" else 1
            retry_at = None
            if state == "abort":
                self.stop = self.stop or f"the relay refuses our messages: {outcome.detail}"
                state, tried = ledger.DEFERRED, 0  # certainly not delivered: it was refused before DATA
            if state == ledger.DEFERRED:
                attempts = row.attempts + tried
                delay = 0.0 if not tried else min(self.retry_delay * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)
                retry_at = now + timedelta(seconds=delay)
            updates.append({"row": row.id, "new_state": state, "tried": tried, "reply": outcome.detail[:500] or None,
                            "mid": mid, "retry_at": retry_at})
        self.in_flight -= len(rows)
        if not self.ledger.record(updates):
            # another process owns the issue now: nothing of this batch is ours to record
            self.stop = LEASE_LOST
            return
        for row, update in zip(rows, updates):
            state = update["new_state"]
            if state == ledger.SENT:
                s.sent += 1
                self.failure_streak = 0
            elif state == ledger.BOUNCED:
                s.bounced += 1
                bounced.append(row)
                self.failure_streak = 0
            elif state == ledger.FAILED:
                s.failed += 1
                self.failure_streak += 1
                if self.failure_streak >= FAILURE_STREAK:
                    self.stop = self.stop or f"{FAILURE_STREAK} messages in a row refused: {update['reply']}"
        self._advance(sum(1 for u in updates if u["new_state"] != ledger.DEFERRED))
        for row in bounced:
            self._bounce(row)

    def _bounce(self, row: ledger.Pending) -> None:
        """The subscriber becomes bounced and the address suppressed (by the store's rules)."""
        from subscribers import store
        store.bounce(self.engine, self.settings, row.subscriber_id if row.subscriber_id is not None else row.email)

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
                    await conn.quit() if conn.usable else conn.abort()
                    conn = None
                limit = min(self.batch_size, cap - conn.sent) if conn is not None else self.batch_size
                batch = await self.next_batch(limit)
                if not batch:
                    break
                if conn is None:
                    conn = await self._connect(batch)
                    if conn is None:
                        break
                await self._send_smtp(conn, batch, bucket)
        finally:
            if conn is not None:
                await conn.quit() if conn.usable else conn.abort()

    async def _connect(self, batch: list[ledger.Pending]) -> SMTPConnection | None:
        error = ""
        for attempt in range(CONNECT_TRIES):
            try:
                return await SMTPConnection.open(self.settings)
            except ConnectionLost as exc:
                error = str(exc)
                await asyncio.sleep(min(self.retry_delay * 2 ** attempt, MAX_RETRY_DELAY))
            except DeliveryError as exc:  # refused (bad TLS or AUTH): retrying will not help
                error = str(exc)
                break
        self.stop = self.stop or error
        self.record(batch, [Outcome("unsent", None, error)] * len(batch), [None] * len(batch))
        return None

    async def _send_smtp(self, conn: SMTPConnection, batch: list[ledger.Pending], bucket) -> None:
        rows, messages, ids = [], [], []
        refused_rows, refused = [], []
        for row in batch:
            try:
                rcpt, data, mid = self.build(row, sign=False)
            except DeliveryError as exc:
                refused_rows.append(row)
                refused.append(_refused(str(exc)))
                continue
            rows.append(row)
            messages.append((rcpt, data, verp.return_path(self.settings, "d", row.id)))  # VERP: bounces name the row
            ids.append(mid)
        if self.signer is not None and messages:  # DKIM for the whole batch, in worker processes (mail/dkim.py)
            signed = await self.signer.sign_batch([data for _, data, _ in messages])
            for i in reversed(range(len(signed))):
                if isinstance(signed[i], str):  # this message could not be signed: refused, like a build error
                    refused_rows.append(rows.pop(i))
                    refused.append(_refused(signed.pop(i)))
                    messages.pop(i)
                    ids.pop(i)
            messages = [(rcpt, data, sender) for (rcpt, _, sender), data in zip(messages, signed)]
        # MessageTemplate never starts a line with "." (and a DKIM header cannot), so no dot-stuffing scan
        guard = self.guard

        async def before_each() -> None:
            await guard.before_each()  # never one more message once the lease is gone
            if bucket is not None:
                await bucket.take()

        outcomes = (await conn.send_batch(self.sender, messages, before_each, dot_safe=True) if messages else [])
        self.record(rows + refused_rows, outcomes + refused, ids + [None] * len(refused))

    async def outbox_worker(self) -> None:
        outbox = Outbox(self.settings.outbox_dir)
        try:
            while not self.stop:
                batch = await self.next_batch(self.batch_size)
                if not batch:
                    break
                outcomes, ids = [], []
                for row in batch:
                    if self.guard.lease_gone():
                        outcomes.append(Outcome("unsent", None, LEASE_LOST))
                        ids.append(None)
                        continue
                    try:
                        rcpt, data, mid = self.build(row)
                    except DeliveryError as exc:
                        outcomes.append(_refused(str(exc)))
                        ids.append(None)
                        continue
                    try:
                        outbox.send(data, Envelope(verp.return_path(self.settings, "d", row.id), rcpt))
                        outcomes.append(Outcome("sent", None, "written to the outbox"))
                    except OSError as exc:
                        outcomes.append(Outcome("lost", None, f"outbox: {exc}"))
                    ids.append(mid)
                self.record(batch, outcomes, ids)
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
    bucket = TokenBucket(settings.smtp_rate_limit) if float(settings.smtp_rate_limit) > 0 else None
    workers = [asyncio.create_task(run.smtp_worker(bucket)) for _ in range(max(1, int(settings.smtp_connections)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
