"""Delivery stage: send a rendered issue to its recipients, exactly once.

The ledger (``pipeline/delivery/ledger.py``) sits between building and sending:

1. The issue is recorded in ``issues`` and its recipients are written to
   ``deliveries`` in one INSERT ... SELECT (confirmed subscribers of the
   frequency and topic, never a suppressed address), before any message goes out.
2. Each connection takes ``delivery_batch_size`` rows at a time, checked still due
   and still eligible in one transaction (nothing is marked yet).  Each row then
   goes through these states:

       queued -> sending -> sent
                         -> deferred  4xx, timeout, dropped connection: retried with
                                      exponential backoff, at most smtp_max_attempts
                                      tries per run, then left for --resume
                         -> bounced   5xx for the recipient: the subscriber becomes
                                      bounced and the address is suppressed
                         -> failed    5xx that is not about the mailbox (policy, content)
              -> skipped              unsubscribed or suppressed since the ledger was written

3. Each row is marked ``sending`` only right before its content goes to the
   relay, in the transaction that records its connection's previous outcome
   (``pipeline/delivery/outcomes.py``), so at most one row per connection is ever
   ``sending``.  A process killed (SIGKILL) mid-send leaves at most those rows
   ``sending``; the next run finds them and marks them ``uncertain`` (the relay
   may have accepted them before their state was recorded).  So is a message
   whose reply does not come within ``smtp_timeout``.  ``uncertain_policy``
   decides: ``resend`` (default: nobody missed, at most one duplicate per
   connection per crash) or ``skip`` (left ``uncertain``; the send is unfinished
   until ``newsletter send --resume --uncertain resend|skip``).  The summary
   counts them from the ledger.

On SQLite only one process sends an issue at a time (a lease in ``issues``; one
held by a dead process on this host is taken over at once).  On PostgreSQL every
process that sends the issue joins the send as a node and claims batches of rows
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (``pipeline/delivery/claims.py``); the
first one (the issue's lease holder) does the issue-level steps first.  Sending
twice never mails anyone twice: only ``queued`` and ``deferred`` rows are ever
sent, each by the one node that claimed it.

A message whose connection drops before its content went out is certainly not
delivered and is retried.  One that drops (or times out) after its content went
out and before the relay's reply is uncertain, as above: by RFC 5321 the relay
takes responsibility only with its 250, but a relay that delivers anyway (RFC
1047) is common enough that such a row is counted, never silently retried.

This module holds the entry points (``send_issue``, ``render_for_send``); the
batches, connections and outcome handling are in ``pipeline/delivery/send_loop.py``, the
summary and progress bar in ``pipeline/delivery/send_summary.py``, and the test copy
(``newsletter send-test``) in ``pipeline/delivery/send_test_copy.py``.
"""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import nullcontext

from pipeline import clock
from pipeline.delivery import claims, ledger, stops
from pipeline.errors import DeliveryError, NewsletterError
from pipeline.rendering.issue import RenderedIssue
from pipeline.delivery.message import MessageTemplate, dkim_signer
from pipeline.delivery.send_guard import LEASE_LOST, SendGuard
from pipeline.delivery.send_loop import SendRun, drive, personal_for
from pipeline.delivery.send_summary import ProgressBar, SendSummary


# -- the entry points ---------------------------------------------------------------------------

def send_issue(engine, settings, rendered: RenderedIssue, *, frequency: str = "daily", topic: str | None = None,
               resume: bool = False, dry_run: bool = False, progress: bool = True, uncertain: str | None = None,
               max_wait: float | None = None, notice=None, releases=None) -> SendSummary:
    """Send ``rendered`` to every matching subscriber exactly once (see the module docstring).

    ``topic`` defaults to the issue's ``audience_topic``; without one, the recipients are
    those whose topics meet the issue's (``pipeline.delivery.ledger``).  Re-running is safe: only
    rows never sent are sent.  ``resume`` also gives rows that used up their
    ``smtp_max_attempts`` in earlier runs that many more tries.  ``dry_run`` writes
    nothing and sends nothing; it counts the recipients and builds one message.
    ``uncertain`` (``resend`` or ``skip``) decides the rows left ``uncertain`` by
    earlier runs: sent again, or closed as skipped.  ``max_wait`` bounds the seconds
    spent waiting for deferred rows to come due.  ``notice(line)`` is told at once
    of what the operator should know mid-send (a relay that cannot be reached, a
    wait for retries); the summary holds the rest.  ``releases`` gives each recipient
    group's wave (``ledger.write_recipients``); rows not yet released wait, and the
    issue ends ``waiting`` when they are all that is left.
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

    shared = claims.sharing(settings, engine)  # several nodes (PostgreSQL), or one sender per issue
    issue = ledger.record_issue(engine, rendered.issue, rendered.subject)
    seconds = float(settings.lease_seconds)
    owner = ledger.lease_owner()
    if shared:
        leading = lead(engine, issue.id, seconds, owner)
    else:
        leading = bool(take_lease(engine, issue.id, seconds, owner))
    summary = SendSummary(issue_key)
    renew = None
    if shared:
        claims.join(engine, issue.id, owner, seconds)
        renew = node_renewal(engine, issue.id, owner, seconds, lambda: leading)
    try:
        if shared and not leading:
            leading = wait_for_ledger(engine, issue, owner, seconds)
        if leading:  # the issue-level steps, by the issue's lease holder, before any row is claimed
            summary.recovered = (claims.reap(engine, issue.id, settings.uncertain_policy, orphans=True) if shared
                                 else ledger.recover_in_flight(engine, issue.id, settings.uncertain_policy, owner))
            if uncertain is not None:
                summary.decided = ledger.decide_uncertain(engine, issue.id, uncertain, owner)
            ledger.write_recipients(engine, issue.id, frequency, topic, rendered.issue.topics, owner, releases)
        max_attempts = int(settings.smtp_max_attempts)
        if resume:
            max_attempts += ledger.max_deferred_attempts(engine, issue.id)
        before = ledger.state_counts(engine, issue.id)
        summary.previously_sent = before[ledger.SENT]
        pending = before[ledger.QUEUED] + before[ledger.DEFERRED]
        with SendGuard(engine, issue.id, rendered.issue.date, owner, seconds, renew) as guard, \
                (ProgressBar(pending, issue_key) if progress and pending else nullcontext()) as bar:
            run = SendRun(engine, settings, issue, template, signer, owner, max_attempts, summary, bar, guard,
                          notice=notice, max_wait=max_wait, shared=shared)
            try:
                run_coroutine(drive(run))
            finally:
                run.ledger.close()
        summary.error = run.stop
        summary.pool = run.pool.describe(max(1, int(settings.smtp_connections)))
        after = ledger.state_counts(engine, issue.id)
        summary.recipients = sum(after.values())
        summary.deferred = after[ledger.DEFERRED] + after[ledger.QUEUED]
        summary.uncertain = after[ledger.UNCERTAIN]  # from the ledger: every row still in doubt
        summary.in_doubt = ledger.count_in_doubt(engine, issue.id)
        if run.stop == LEASE_LOST:
            summary.lease_lost = True
            summary.state = "unfinished"
            return summary
        summary.state = ledger.finish_issue(engine, issue.id, owner, fence_with=(
            (lambda conn: claims.fence_node(conn, issue.id, owner)) if shared else None))
        if summary.state == "sent" and guard.stopped_on_request:
            summary.error = ""  # the stop came after the last message: nothing was stopped
        if guard.stopped_on_request and summary.state != "sent":
            request = guard.honour(issue_key, after[ledger.SENT], summary.recipients)
            if request is not None:
                from zoneinfo import ZoneInfo
                summary.stopped = request.describe(ZoneInfo(settings.timezone))
            elif guard.left_to:  # a signal to one node of a shared send: the others go on
                summary.stopped = (f"{run.stop}: this node left the send, "
                                   f"{len(guard.left_to)} other node(s) go on sending it")
    except ledger.LeaseLost:
        summary.lease_lost, summary.state, summary.error = True, "unfinished", LEASE_LOST
    finally:
        if shared:
            claims.leave(engine, issue.id, owner)
        ledger.release_lease(engine, issue.id, owner)
        summary.elapsed = clock.monotonic() - started
    return summary


def take_lease(engine, issue_id: int, seconds: float, owner: str) -> str:
    """The issue's send lease (``ledger.acquire_lease``).  When a live holder's lease
    ends within a third of its length, that holder has missed a heartbeat (they come
    every third): it stalled, and the daemon that took the day over from it would
    otherwise fail the day until its next retry minutes later.  So wait for that lease
    to run out (at most a third of a lease) and take it then."""
    try:
        return ledger.acquire_lease(engine, issue_id, seconds, owner)
    except DeliveryError:
        left = ledger.lease_left(engine, issue_id)
        if left is None or left > seconds / 3:
            raise
        time.sleep(max(left, 0.0) + 0.05)
        return ledger.acquire_lease(engine, issue_id, seconds, owner)


# -- a node of a shared send (PostgreSQL: pipeline/delivery/claims.py) ----------------------------

def lead(engine, issue_id: int, seconds: float, owner: str) -> bool:
    """Take the issue's lease (this node does the issue-level steps); False when a live
    node holds it, and this one joins that send instead."""
    try:
        ledger.acquire_lease(engine, issue_id, seconds, owner)
    except DeliveryError:
        return False
    return True


def node_renewal(engine, issue_id: int, owner: str, seconds: float, leading):
    """The heartbeat of a node: its own lease (which fences its rows), and the issue's
    while it holds that too."""
    def renew() -> bool:
        if leading():
            ledger.renew_issue_lease(engine, issue_id, owner, seconds)
        return claims.renew(engine, issue_id, owner, seconds)
    return renew


def wait_for_ledger(engine, issue: ledger.IssueInfo, owner: str, seconds: float) -> bool:
    """A node that joined before the leader wrote the recipients waits for them (or
    leads itself, when the leader died first).  True when this node now leads."""
    while not stops.SIGNALLED:
        found = ledger.find_issue(engine, issue.key)
        if found is None or found.state != "composed":
            return False
        if lead(engine, issue.id, seconds, owner):
            return True
        if not claims.renew(engine, issue.id, owner, seconds):
            raise ledger.LeaseLost(claims.NODE_LOST)
        time.sleep(0.2)
    return False


def render_for_send(issue, settings) -> RenderedIssue:
    """``render_issue``, with any unexpected failure as a one-line ``RenderError``."""
    from pipeline.errors import RenderError
    from pipeline.rendering.render import render_issue
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
