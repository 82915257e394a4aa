"""Each provider's webhook signature, checked as its documentation describes.

Every check raises ``Refused`` (with a reason for the log; the caller answers 401/403)
or returns quietly.  Replays are refused twice over: a signed timestamp outside
``webhook_replay_seconds`` of now, and a token/signature seen before (``webhook_nonces``).

- **SES** (through SNS): the JSON's fields, in SNS's canonical order, signed with
  RSA (SignatureVersion 1: SHA1, 2: SHA256) by the certificate at
  ``SigningCertURL``.  The URL must be https on ``sns.<region>.amazonaws.com`` with a
  ``.pem`` path; the certificate must chain to a trusted CA (``ses_ca_file``, else the
  system's) and name that host; ``ses_cert_dir`` supplies it instead of a fetch.  The
  ``TopicArn`` must be one of ``ses_topic_arns``.
- **SendGrid** (signed event webhook): ECDSA P-256 / SHA-256 over the
  ``X-Twilio-Email-Event-Webhook-Timestamp`` header followed by the raw body; the
  signature is the base64 DER in ``X-Twilio-Email-Event-Webhook-Signature``.
- **Postmark**: no signature exists; the webhook URL carries HTTP basic auth
  (``postmark_webhook_user``/``_password``), compared in constant time.  Postmark's
  timestamps are not signed, so only its record ``ID`` dedupes (no replay window).
- **Mailgun**: ``signature.signature`` is the hex HMAC-SHA256, under the signing
  key, of ``signature.timestamp`` + ``signature.token``; a token is used once.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import Engine

from pipeline import clock, keys
from pipeline.bounces.models import WebhookNonce
from pipeline.database import transaction
from subscribers.conflicts import insert_ignore

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$")
_SNS_FIELDS = {"Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
               "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                                            "Type"),
               "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                                           "Type")}


class Refused(Exception):
    """The request is not from the provider (or is a replay): answer 401/403, act on nothing."""


# -- replay defence ------------------------------------------------------------------

def check_fresh(settings, when: datetime) -> None:
    window = float(settings.webhook_replay_seconds)
    if abs((clock.now() - when).total_seconds()) > window:
        raise Refused(f"timestamp {when.isoformat()} is outside the {window:g} s replay window")


def _nonce_key(provider: str, token: str) -> str:
    return f"{provider}:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"


def check_unused(engine: Engine, provider: str, token: str) -> None:
    """``Refused`` if this token (or signature) was already used: a replayed request."""
    with transaction(engine) as s:
        if s.get(WebhookNonce, _nonce_key(provider, token)) is not None:
            raise Refused("token already used (a replay)")


def remember(engine: Engine, provider: str, token: str) -> None:
    """Mark the token used, once its events are stored (a failed request may be retried)."""
    with transaction(engine) as s:
        insert_ignore(s, WebhookNonce.__table__, {"key": _nonce_key(provider, token), "seen_at": clock.now()},
                      ["key"])


def _epoch(value) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(value).strip()), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Refused("missing or malformed timestamp") from None


# -- SES / SNS ---------------------------------------------------------------------------

def sns_string_to_sign(doc: dict) -> bytes:
    fields = _SNS_FIELDS.get(doc.get("Type", ""))
    if fields is None:
        raise Refused(f"unknown SNS message type {doc.get('Type')!r}")
    out = []
    for name in fields:
        if name in doc and doc[name] is not None:
            if not isinstance(doc[name], str):
                raise Refused(f"SNS field {name} is not a string")
            out.append(f"{name}\n{doc[name]}\n")
    return "".join(out).encode("utf-8")


def check_sns_cert_url(url: str) -> str:
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not _SNS_HOST.match(host) or not parts.path.endswith(".pem") or parts.port \
            or parts.username or parts.query:
        raise Refused(f"SigningCertURL {url!r} is not an https .pem URL on sns.<region>.amazonaws.com")
    return host


def _fetch(url: str) -> bytes:  # pragma: no cover - needs the internet; tests use ses_cert_dir
    context = ssl.create_default_context()
    with urllib.request.urlopen(url, timeout=10, context=context) as response:  # noqa: S310 - host checked
        return response.read(65536)


_CERTS: dict[tuple, tuple[float, bytes]] = {}  # (url, trust settings) -> (verified at, pem); re-checked daily


def sns_certificate(settings, url: str, host: str) -> bytes:
    key = (url, settings.ses_cert_dir, settings.ses_ca_file)
    cached = _CERTS.get(key)
    if cached is not None and clock.monotonic() - cached[0] < 86400:
        return cached[1]
    if settings.ses_cert_dir:
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        path = Path(settings.ses_cert_dir) / name
        if not path.is_file():
            raise Refused(f"no certificate {name} in ses_cert_dir")
        pem = path.read_bytes()
    else:
        pem = _fetch(url)
    _verify_chain(settings, pem, host)
    _CERTS[key] = (clock.monotonic(), pem)
    return pem


def _verify_chain(settings, pem: bytes, host: str) -> None:
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    try:
        leaf = x509.load_pem_x509_certificate(pem)
        if settings.ses_ca_file:
            roots = x509.load_pem_x509_certificates(Path(settings.ses_ca_file).read_bytes())
        else:  # pragma: no cover - the system's CAs
            roots = x509.load_pem_x509_certificates(Path(ssl.get_default_verify_paths().cafile or "").read_bytes())
        verifier = PolicyBuilder().store(Store(roots)).time(clock.now()).build_server_verifier(x509.DNSName(host))
        verifier.verify(leaf, [])
    except (ValueError, VerificationError, OSError) as exc:
        raise Refused(f"the SNS signing certificate is not trusted for {host}: {exc}") from None


def check_sns(settings, doc: dict) -> None:
    allowed = {a.strip() for a in str(settings.ses_topic_arns).split(",") if a.strip()}
    if doc.get("TopicArn") not in allowed:
        raise Refused(f"topic {doc.get('TopicArn')!r} is not in ses_topic_arns")
    version = str(doc.get("SignatureVersion", ""))
    digest = {"1": "sha1", "2": "sha256"}.get(version)
    if digest is None:
        raise Refused(f"unsupported SNS SignatureVersion {version!r}")
    host = check_sns_cert_url(doc.get("SigningCertURL", ""))
    data = sns_string_to_sign(doc)
    try:
        signature = base64.b64decode(doc.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError):
        raise Refused("malformed SNS signature") from None
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = x509.load_pem_x509_certificate(sns_certificate(settings, doc["SigningCertURL"], host)).public_key()
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA1() if digest == "sha1" else hashes.SHA256())
    except (InvalidSignature, TypeError, ValueError):
        raise Refused("SNS signature does not verify") from None
    try:
        when = datetime.fromisoformat(str(doc.get("Timestamp", "")).replace("Z", "+00:00"))
    except ValueError:
        raise Refused("malformed SNS Timestamp") from None
    if when.tzinfo is None:
        raise Refused("SNS Timestamp without a time zone")
    check_fresh(settings, when)


# -- SendGrid ---------------------------------------------------------------------------------

def check_sendgrid(settings, body: bytes, signature: str | None, timestamp: str | None) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise Refused("missing SendGrid signature headers")
    try:
        key = serialization.load_der_public_key(base64.b64decode(settings.sendgrid_webhook_public_key))
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("malformed SendGrid key or signature") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Refused("the SendGrid verification key is not an EC key")
    try:
        key.verify(raw_signature, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Refused("SendGrid signature does not verify") from None
    check_fresh(settings, _epoch(timestamp))


# -- Postmark ---------------------------------------------------------------------------------

def check_postmark(settings, authorization: str | None) -> None:
    expected = f"{settings.postmark_webhook_user}:{settings.postmark_webhook_password}".encode("utf-8")
    scheme, _, value = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(value.strip(), validate=True) if scheme.lower() == "basic" else b""
    except (binascii.Error, ValueError):
        given = b""
    if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()):
        raise Refused("wrong Postmark basic-auth credentials")


# -- Mailgun ----------------------------------------------------------------------------------

def check_mailgun(settings, signature: dict) -> str:
    """Verify and return the token (the caller marks it used once the event is stored)."""
    if not isinstance(signature, dict):
        raise Refused("missing Mailgun signature block")
    timestamp, token, given = (str(signature.get(k, "")) for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and given):
        raise Refused("incomplete Mailgun signature block")
    mac = hmac.new(settings.mailgun_webhook_signing_key.encode("utf-8"), (timestamp + token).encode("utf-8"),
                   hashlib.sha256).hexdigest()
    if not keys.same(given.lower(), mac):
        raise Refused("Mailgun signature does not verify")
    check_fresh(settings, _epoch(timestamp))
    return token
