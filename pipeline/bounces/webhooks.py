"""``/webhooks/{ses,sendgrid,postmark,mailgun}``: relay events in, each signature checked first.

A provider is off (404) until its secret (or, for SES, its topic ARNs) is set.  A
request that fails its check gets 403 and changes nothing; a valid one is turned into
``EventIn``s, keyed by the provider's own event id, and handed to the one processor
(``pipeline.bounces.process.record``), so the same event twice is recorded once.  The
token or signature is then remembered, so the same request replayed is refused.
"""
from __future__ import annotations

import json
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from pipeline.bounces import signatures
from pipeline.bounces.process import EventIn, record
from pipeline.bounces.signatures import Refused
from pipeline.mail.failures import POLICY, classify_failure

log = logging.getLogger("newsletter.bounces")


def _bracket(message_id) -> str | None:
    value = str(message_id or "").strip()
    if not value:
        return None
    return value if value.startswith("<") else f"<{value}>"


# -- each provider's events -> EventIn ----------------------------------------------------

def ses_events(doc: dict) -> list[EventIn]:
    try:
        msg = json.loads(doc.get("Message") or "{}")
    except ValueError:
        return []
    kind = msg.get("notificationType") or msg.get("eventType")
    mail = msg.get("mail") or {}
    mid = _bracket((mail.get("commonHeaders") or {}).get("messageId"))
    base = f"ses:{doc.get('MessageId')}"
    events = []
    if kind == "Bounce":
        bounce = msg.get("bounce") or {}
        btype = bounce.get("bounceType")
        for n, r in enumerate(bounce.get("bouncedRecipients") or []):
            status, diag = str(r.get("status") or ""), str(r.get("diagnosticCode") or "")
            found = classify_failure(status, diag)
            if found != POLICY:
                found = {"Permanent": "hard"}.get(btype, "soft")
            events.append(EventIn(f"{base}:{n}", found, r.get("emailAddress"), status, diag[:1000], message_id=mid))
    elif kind == "Complaint":
        complaint = msg.get("complaint") or {}
        found = "not-spam" if complaint.get("complaintFeedbackType") == "not-spam" else "complaint"
        for n, r in enumerate(complaint.get("complainedRecipients") or []):
            events.append(EventIn(f"{base}:{n}", found, r.get("emailAddress"), "",
                                  f"feedback-type {complaint.get('complaintFeedbackType') or 'unknown'}",
                                  message_id=mid))
    return events


def sendgrid_events(items: list) -> list[EventIn]:
    events = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        event, key = item.get("event"), f"sendgrid:{item.get('sg_event_id')}"
        status, reason = str(item.get("status") or ""), str(item.get("reason") or "")
        mid = _bracket(item.get("smtp-id"))
        if event == "bounce":
            found = classify_failure(status, reason)
            if found != POLICY and item.get("type") != "blocked":
                found = "hard" if status.startswith("5") or not status else found
        elif event == "dropped":
            found = ("complaint" if "spam" in reason.lower() else
                     "hard" if "bounce" in reason.lower() or "invalid" in reason.lower() else "")
        elif event == "spamreport":
            found = "complaint"
        elif event == "deferred":
            found = "delayed"
        else:
            continue
        if found:
            events.append(EventIn(key, found, item.get("email"), status, reason[:1000], message_id=mid))
    return events


_POSTMARK = {"HardBounce": "hard", "BadEmailAddress": "hard", "ManuallyDeactivated": "hard", "SoftBounce": "soft",
             "Transient": "soft", "DnsError": "soft", "MailFrontierMatch": POLICY, "Blocked": POLICY,
             "ContentRelated": POLICY, "SpamNotification": POLICY, "SpamComplaint": "complaint",
             "AutoResponder": "autoreply", "ChallengeVerification": "autoreply"}


def postmark_events(doc: dict) -> list[EventIn]:
    record_type, key = doc.get("RecordType"), f"postmark:{doc.get('RecordType')}:{doc.get('ID')}"
    details = str(doc.get("Details") or doc.get("Description") or "")
    if record_type == "SpamComplaint":
        return [EventIn(key, "complaint", doc.get("Email"), "", details[:1000])]
    if record_type != "Bounce":
        return []
    found = _POSTMARK.get(str(doc.get("Type")), "soft")
    if found == "hard" and classify_failure("", details) == POLICY:
        found = POLICY
    return [EventIn(key, found, doc.get("Email"), "", details[:1000])]


def mailgun_events(doc: dict) -> list[EventIn]:
    data = doc.get("event-data") or {}
    event, key = data.get("event"), f"mailgun:{data.get('id')}"
    status = data.get("delivery-status") or {}
    text = " ".join(str(status.get(k) or "") for k in ("message", "description")).strip()
    code = status.get("code") if isinstance(status.get("code"), int) else None
    mid = _bracket(((data.get("message") or {}).get("headers") or {}).get("message-id"))
    if event == "complained":
        return [EventIn(key, "complaint", data.get("recipient"), "", "complained", message_id=mid)]
    if event != "failed":
        return []
    enhanced = str(status.get("enhanced-code") or "")
    found = classify_failure(enhanced, text, code)
    if found != POLICY:
        found = "hard" if data.get("severity") == "permanent" else "soft"
    return [EventIn(key, found, data.get("recipient"), enhanced, text[:1000], message_id=mid)]


# -- the routes -----------------------------------------------------------------------------------

def routes(settings, engine) -> list[Route]:
    async def accept(provider: str, body: bytes, events: list[EventIn], nonce: str | None) -> JSONResponse:
        result = await run_in_threadpool(record, engine, settings, f"webhook:{provider}", body, events) \
            if events else None
        if nonce:
            await run_in_threadpool(signatures.remember, engine, provider, nonce)
        recorded = len(result.events) if result else 0
        return JSONResponse({"events": len(events), "recorded": recorded})

    def refused(provider: str, exc: Exception) -> PlainTextResponse:
        log.warning("webhook %s refused: %s", provider, exc)
        return PlainTextResponse("refused\n", status_code=403)

    async def body_json(request: Request):
        body = await request.body()
        try:
            return body, json.loads(body)
        except ValueError:
            return body, None

    async def ses(request: Request):
        if not settings.ses_topic_arns:
            return PlainTextResponse("not found\n", status_code=404)
        body, doc = await body_json(request)
        if not isinstance(doc, dict):
            return PlainTextResponse("not JSON\n", status_code=400)
        try:
            await run_in_threadpool(signatures.check_sns, settings, doc)
            await run_in_threadpool(signatures.check_unused, engine, "ses", str(doc.get("Signature")))
        except Refused as exc:
            return refused("ses", exc)
        if doc.get("Type") == "SubscriptionConfirmation":
            log.warning("SNS subscription of %s to /webhooks/ses awaits confirmation: open %s",
                        doc.get("TopicArn"), doc.get("SubscribeURL"))
            return JSONResponse({"subscription": "confirm it by opening the SubscribeURL (see the log)"})
        return await accept("ses", body, ses_events(doc), str(doc.get("Signature")))

    async def sendgrid(request: Request):
        if not settings.sendgrid_webhook_public_key:
            return PlainTextResponse("not found\n", status_code=404)
        body = await request.body()
        signature = request.headers.get("x-twilio-email-event-webhook-signature")
        try:
            signatures.check_sendgrid(settings, body, signature, request.headers.get(
                "x-twilio-email-event-webhook-timestamp"))
            await run_in_threadpool(signatures.check_unused, engine, "sendgrid", signature or "")
        except Refused as exc:
            return refused("sendgrid", exc)
        try:
            items = json.loads(body)
        except ValueError:
            return PlainTextResponse("not JSON\n", status_code=400)
        return await accept("sendgrid", body, sendgrid_events(items), signature)

    async def postmark(request: Request):
        if not settings.postmark_webhook_password:
            return PlainTextResponse("not found\n", status_code=404)
        try:
            signatures.check_postmark(settings, request.headers.get("authorization"))
        except Refused as exc:
            return refused("postmark", exc)
        body, doc = await body_json(request)
        if not isinstance(doc, dict):
            return PlainTextResponse("not JSON\n", status_code=400)
        return await accept("postmark", body, postmark_events(doc), None)

    async def mailgun(request: Request):
        if not settings.mailgun_webhook_signing_key:
            return PlainTextResponse("not found\n", status_code=404)
        body, doc = await body_json(request)
        if not isinstance(doc, dict):
            return PlainTextResponse("not JSON\n", status_code=400)
        try:
            token = signatures.check_mailgun(settings, doc.get("signature"))
            await run_in_threadpool(signatures.check_unused, engine, "mailgun", token)
        except Refused as exc:
            return refused("mailgun", exc)
        return await accept("mailgun", body, mailgun_events(doc), token)

    return [Route("/ses", ses, methods=["POST"]), Route("/sendgrid", sendgrid, methods=["POST"]),
            Route("/postmark", postmark, methods=["POST"]), Route("/mailgun", mailgun, methods=["POST"])]
