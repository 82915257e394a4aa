"""Delivery stage: send a rendered issue to its recipients, exactly once.

The ledger (``pipeline/ledger.py``) sits between building and sending:

1. The issue is recorded in ``issues`` and its recipients are written to
   ``deliveries`` in one INSERT ... SELECT (confirmed subscribers of the
   frequency and topic, never a suppressed address), before any message goes out.
2. Rows are sent in batches of ``delivery_batch_size`` per connection.  A batch is
   marked ``sending`` in one transaction BEFORE its SMTP transactions, and its
   outcomes are written in one transaction after them:

       queued -> sending -> sent
                         -> deferred  4xx, timeout, dropped connection: retried with
                                      exponential backoff, at most smtp_max_attempts
                                      tries per run, then left for --resume
                         -> bounced   5xx for the recipient: the subscriber becomes
                                      bounced and the address is suppressed
                         -> failed    5xx that is not about the mailbox (policy, content)
              -> skipped              unsubscribed or suppressed since the ledger was written

3. A process killed (SIGKILL) mid-send leaves its in-flight rows ``sending``.  The
   next run finds them and marks them ``uncertain``: the relay may have accepted
   them before their state was recorded.  ``uncertain_policy`` decides: ``skip``
   (default, never a duplicate) or ``resend`` (nobody missed, at most the in-flight
   rows twice).  The bound: at most ``delivery_batch_size`` x ``smtp_connections``
   rows are ever ``sending`` at once (one batch per connection; 10 x 8 = 80 by
   default), so that is the most a kill can make uncertain.  The summary counts them.

Only one process sends an issue at a time (a lease in ``issues``; one held by a
dead process on this host is taken over at once).  Sending twice never mails
anyone twice: only ``queued`` and ``deferred`` rows are ever sent.

A message whose connection drops (or times out) after its content went out but
before the relay's reply is retried: by RFC 5321 the relay takes responsibility
only with its 250, so it must not deliver what it did not acknowledge.  A relay
that does anyway (RFC 1047) can cause a duplicate; a timeout long enough for the
relay's own processing (``smtp_timeout``) keeps that rare.
"""
from __future__ import annotations

import asyncio
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from pipeline import clock, ledger
from pipeline.errors import DeliveryError, NewsletterError
from pipeline.headers import MessageIds, display_name
from pipeline.send_guard import LEASE_LOST, SendGuard
from pipeline.issue import Personal, RenderedIssue
from pipeline.message import DkimSigner, MessageTemplate, build_message, dkim_signer
from pipeline.transport import ConnectionLost, Envelope, Outbox, Outcome, Reply, SMTPConnection

PAGE = 500  # ledger rows read per query (a keyset page; memory stays flat)
MAX_RETRY_DELAY = 300.0
FAILURE_STREAK = 10  # consecutive non-bounce refusals that stop the run: the relay refuses everything
CONNECT_TRIES = 5


@dataclass
class SendSummary:
    issue_key: str
    recipients: int = 0  # rows in the ledger (or, for a dry run, who would get it)
    sent: int = 0  # this run
    deferred: int = 0  # rows left deferred at the end
    failed: int = 0  # this run
    bounced: int = 0  # this run
    skipped: int = 0  # this run
    uncertain: int = 0  # rows found in flight from a dead process at the start of this run
    previously_sent: int = 0  # rows already sent before this run
    elapsed: float = 0.0
    dry_run: bool = False
    state: str = ""  # the issue's state afterwards: sent or unfinished
    error: str = ""  # why the run stopped early, if it did
    stopped: str = ""  # "stopped by NAME at HH:MM, 904 of 3,000 sent" when a stop request ended it
    lease_lost: bool = False  # another process took the issue over; this run wrote nothing more

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def lines(self) -> list[str]:
        if self.dry_run:
            return [f"issue {self.issue_key}: dry run, {self.recipients} recipient(s), nothing sent"]
        out = [f"issue {self.issue_key}: {self.state or 'not finished'}",
               f"  sent {self.sent}  deferred {self.deferred}  failed {self.failed}  bounced {self.bounced}  "
               f"skipped {self.skipped}  uncertain {self.uncertain}",
               f"  recipients {self.recipients} (sent before this run {self.previously_sent})  "
               f"elapsed {self.elapsed:.1f}s  {self.rate:.0f} messages/s"]
        if self.stopped:
            out.append(f"  {self.stopped}")
        elif self.error:
            out.append(f"  stopped: {self.error}")
        return out


# -- what a message needs per recipient ---------------------------------------------

def greeting(name: str | None) -> str:
    """The greeting line; a name that breaks the name rule (stored before it) is left out."""
    name = display_name(name)
    return f"Hello {name}," if name else "Hello,"


def personal_for(settings, subscriber_id: int, name: str | None = None) -> Personal:
    from subscribers.tokens import preferences_url, unsubscribe_url
    return Personal(unsubscribe_url(settings, subscriber_id), preferences_url(settings, subscriber_id), greeting(name))


def message_id_for(settings, issue: ledger.IssueInfo, delivery_id: int) -> str:
    """The Message-ID of one ledger row (``pipeline.headers.MessageIds``: opaque, stable per row)."""
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

class _Run:
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
    def build(self, row: ledger.Pending) -> tuple[str, bytes, str]:
        """(envelope recipient, bytes, Message-ID); DeliveryError for a bad address
        or anything else that stops this one message being built (recorded as failed)."""
        message_id = self.message_id(row.id)
        try:
            data = self.template.render_to(row.email, row.name, message_id=message_id,
                                           personal=personal_for(self.settings, row.subscriber_id, row.name))
            if self.signer is not None:
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
                rcpt, data, mid = self.build(row)
            except DeliveryError as exc:
                refused_rows.append(row)
                refused.append(_refused(str(exc)))
                continue
            rows.append(row)
            messages.append((rcpt, data))
            ids.append(mid)
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
                        outbox.send(data, Envelope(self.sender, rcpt))
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


class _Bar:
    """A rich progress bar on stderr: done/total, percent, rate, elapsed, ETA."""

    def __init__(self, total: int, key: str):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn(f"issue {key}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        self.task = self.progress.add_task("send", total=total, rate="")
        self.started = clock.monotonic()
        self.done = 0

    def __enter__(self) -> "_Bar":
        self.progress.start()
        return self

    def advance(self, count: int) -> None:
        self.done += count
        rate = self.done / max(clock.monotonic() - self.started, 1e-6)
        self.progress.update(self.task, advance=count, rate=f"{rate:,.0f} msg/s")

    def __exit__(self, *exc) -> None:
        self.progress.stop()


# -- the entry points ---------------------------------------------------------------------------

def send_issue(engine, settings, rendered: RenderedIssue, *, frequency: str = "daily", topic: str | None = None,
               resume: bool = False, dry_run: bool = False, progress: bool = True) -> SendSummary:
    """Send ``rendered`` to every matching subscriber exactly once (see the module docstring).

    ``topic`` defaults to the issue's ``audience_topic``; without one, the recipients are
    those whose topics meet the issue's (``pipeline.ledger``).  Re-running is safe: only
    rows never sent are sent.  ``resume`` also gives rows that used up their
    ``smtp_max_attempts`` in earlier runs that many more tries.  ``dry_run`` writes
    nothing and sends nothing; it counts the recipients and builds one message.
    """
    started = clock.monotonic()
    topic = topic if topic is not None else rendered.issue.audience_topic
    issue_key = rendered.issue.key
    if settings.transport not in ("outbox", "smtp"):
        raise DeliveryError(f"unknown transport {settings.transport!r} (outbox or smtp)")
    template = build_template(rendered, settings)
    signer = dkim_signer(settings)

    if dry_run:
        found = ledger.find_issue(engine, issue_key)
        if found is not None and found.state != "composed":
            counts = ledger.state_counts(engine, found.id)
            n = counts[ledger.QUEUED] + counts[ledger.DEFERRED]
        else:
            n = ledger.count_recipients(engine, frequency, topic, rendered.issue.topics)
        # build one message so a problem in the issue shows now, not mid-send
        data = template.render(to="dry-run@example.com", personal=personal_for(settings, 1),
                               message_id=f"<dry-run@{settings.sender_domain}>")
        if signer is not None:
            signer.sign(data)
        return SendSummary(issue_key, recipients=n, dry_run=True, elapsed=clock.monotonic() - started)

    issue = ledger.record_issue(engine, rendered.issue, rendered.subject)
    seconds = float(settings.lease_seconds)
    owner = ledger.acquire_lease(engine, issue.id, seconds)
    summary = SendSummary(issue_key)
    try:
        summary.uncertain = ledger.recover_in_flight(engine, issue.id, settings.uncertain_policy, owner)
        ledger.write_recipients(engine, issue.id, frequency, topic, rendered.issue.topics, owner)
        max_attempts = int(settings.smtp_max_attempts)
        if resume:
            max_attempts += ledger.max_deferred_attempts(engine, issue.id)
        before = ledger.state_counts(engine, issue.id)
        summary.previously_sent = before[ledger.SENT]
        pending = before[ledger.QUEUED] + before[ledger.DEFERRED]
        with SendGuard(engine, issue.id, rendered.issue.date, owner, seconds) as guard, \
                (_Bar(pending, issue_key) if progress and pending else nullcontext()) as bar:
            run = _Run(engine, settings, issue, template, signer, owner, max_attempts, summary, bar, guard)
            run_coroutine(_drive(run))
        summary.error = run.stop
        after = ledger.state_counts(engine, issue.id)
        summary.recipients = sum(after.values())
        summary.deferred = after[ledger.DEFERRED] + after[ledger.QUEUED]
        if run.stop == LEASE_LOST:
            summary.lease_lost = True
            summary.state = "unfinished"
            return summary
        summary.state = ledger.finish_issue(engine, issue.id, owner)
        if guard.stopped_on_request and summary.state != "sent":
            request = guard.honour(issue_key, after[ledger.SENT], summary.recipients)
            if request is not None:
                from zoneinfo import ZoneInfo
                summary.stopped = request.describe(ZoneInfo(settings.timezone))
    except ledger.LeaseLost:
        summary.lease_lost, summary.state, summary.error = True, "unfinished", LEASE_LOST
    finally:
        ledger.release_lease(engine, issue.id, owner)
        summary.elapsed = clock.monotonic() - started
    return summary


def render_for_send(issue, settings) -> RenderedIssue:
    """``render_issue``, with any unexpected failure as a one-line ``RenderError``."""
    from pipeline.errors import RenderError
    from pipeline.render import render_issue
    try:
        return render_issue(issue, settings)
    except NewsletterError:
        raise
    except Exception as exc:
        raise RenderError(f"cannot render issue {issue.key}: {type(exc).__name__}: {exc}") from None


def build_template(rendered: RenderedIssue, settings, *, test: bool = False) -> MessageTemplate:
    """The issue's ``MessageTemplate``; any failure is a one-line ``DeliveryError``
    (a send never ends in a traceback; the day's run records the line)."""
    try:
        return MessageTemplate(rendered, settings, test=test)
    except NewsletterError:
        raise
    except Exception as exc:
        raise DeliveryError(f"cannot build the message of issue {rendered.issue.key}: "
                            f"{type(exc).__name__}: {exc}") from None


def run_coroutine(coro):
    """Run ``coro`` to completion from synchronous code.

    The send loop is asyncio inside a synchronous API.  When the calling thread
    already runs an event loop (a caller inside an ASGI app, or Playwright's sync
    API in the same thread), ``asyncio.run`` refuses, so the loop gets a thread
    of its own and the caller waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, name="newsletter-send")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def _drive(run: _Run) -> None:
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


def send_test(settings, rendered: RenderedIssue, to: str) -> str:
    """One copy to ``to`` with "[TEST]" in the subject, through the configured
    transport; the ledger is never touched.  Returns a receipt."""
    from pipeline.message import check_address
    check_address(to, "test recipient")
    placeholder = f"{settings.base_url.rstrip('/')}"
    try:
        data = build_message(rendered, settings, to=to, test=True,
                             personal=Personal(f"{placeholder}/unsubscribe/test", f"{placeholder}/preferences/test",
                                               greeting(None)))
    except NewsletterError:
        raise
    except Exception as exc:  # one line, never a traceback
        raise DeliveryError(f"cannot build the test message of issue {rendered.issue.key}: "
                            f"{type(exc).__name__}: {exc}") from None
    signer = dkim_signer(settings)
    if signer is not None:
        data = signer.sign(data)
    envelope = Envelope(settings.sender_address, to)
    if settings.transport == "outbox":
        outbox = Outbox(settings.outbox_dir)
        try:
            return outbox.send(data, envelope)
        finally:
            outbox.close()
    return run_coroutine(_send_one(settings, envelope, data))


async def _send_one(settings, envelope: Envelope, data: bytes) -> str:
    conn = await SMTPConnection.open(settings)
    try:
        (outcome,) = await conn.send_batch(envelope.mail_from, [(envelope.rcpt_to, data)])
    finally:
        await conn.quit() if conn.usable else conn.abort()
    if outcome.stage != "sent":
        raise DeliveryError(f"the relay did not take the test message to {envelope.rcpt_to}: {outcome.detail}")
    return f"smtp:{settings.smtp_host}:{settings.smtp_port} {outcome.detail}"
