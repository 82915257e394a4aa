"""/webhooks/{ses,sendgrid,postmark,mailgun} on a real uvicorn server: each provider's signature
scheme (keys and a CA we generate here), idempotence, replays, and 50 clients at once."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select

from conftest import serve
from fixtures_delivery import add_subscribers, small_rendered
from pipeline.bounces.models import BounceEvent
from pipeline.database import open_database
from pipeline.delivery import ledger
from pipeline.delivery.deliver import send_issue
from subscribers import store

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

SECRET = "webhook-test-secret-0123456789"
TOPIC = "arn:aws:sns:eu-west-2:123456789012:newsletter-ses"
SNS_HOST = "sns.eu-west-2.amazonaws.com"
CERT_URL = f"https://{SNS_HOST}/SimpleNotificationService-test0001.pem"
MAILGUN_KEY = "key-mailgun-test-0123456789"


def _ca_and_leaf(tmp_path, host: str, name: str = "ca"):
    """A throwaway CA and a leaf certificate for ``host``; (ca pem path, leaf pem bytes, leaf key)."""
    now = datetime.now(timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test SNS CA {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    ca_path = tmp_path / f"{name}.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_path, leaf.public_bytes(serialization.Encoding.PEM), key


@pytest.fixture
def world(settings, tmp_path, db_url):
    """Settings with every webhook on, a sent issue (6 subscribers), and the keys to sign with."""
    ca_path, leaf_pem, sns_key = _ca_and_leaf(tmp_path, SNS_HOST)
    cert_dir = tmp_path / "sns-certs"
    cert_dir.mkdir()
    (cert_dir / "SimpleNotificationService-test0001.pem").write_bytes(leaf_pem)
    sg_key = ec.generate_private_key(ec.SECP256R1())
    sg_public = base64.b64encode(sg_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    s = settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"), secret_key=SECRET,
                         database_url=db_url, var_dir=str(tmp_path / "var"), public_dir=str(tmp_path / "public"),
                         ses_topic_arns=f"arn:aws:sns:eu-west-1:1:other, {TOPIC}", ses_cert_dir=str(cert_dir),
                         ses_ca_file=str(ca_path), sendgrid_webhook_public_key=sg_public,
                         postmark_webhook_user="pm", postmark_webhook_password="pm-secret-£",
                         mailgun_webhook_signing_key=MAILGUN_KEY)
    engine = open_database(db_url)
    add_subscribers(engine, s, 6)
    send_issue(engine, s, small_rendered(), progress=False)
    with engine.connect() as conn:
        mids = dict(conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.message_id)).all())
    from pipeline.web.app import create_app
    app = create_app(s, engine, mail_worker=False)
    with serve(app) as base:
        yield type("World", (), dict(settings=s, engine=engine, base=base + s.base_path + "/webhooks", sns_key=sns_key,
                                     sg_key=sg_key, mids=mids, tmp_path=tmp_path))


def events(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(select(BounceEvent.source, BounceEvent.kind, BounceEvent.action, BounceEvent.email,
                                   BounceEvent.issue_id).order_by(BounceEvent.id)).all()


def status(engine, who: str) -> str:
    return store.get_by_email(engine, who).status


# -- SES through SNS ----------------------------------------------------------------------------------

def sns_doc(w, message: dict, *, message_id: str = "sns-0001", version: str = "2", topic: str = TOPIC,
            when: datetime | None = None, cert_url: str = CERT_URL, key=None) -> dict:
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    doc = {"Type": "Notification", "MessageId": message_id, "TopicArn": topic, "Message": json.dumps(message),
           "Timestamp": stamp, "SignatureVersion": version, "SigningCertURL": cert_url}
    text = "".join(f"{k}\n{doc[k]}\n" for k in ("Message", "MessageId", "Timestamp", "TopicArn", "Type"))
    signature = (key or w.sns_key).sign(text.encode(), padding.PKCS1v15(),
                                        hashes.SHA256() if version == "2" else hashes.SHA1())
    doc["Signature"] = base64.b64encode(signature).decode()
    return doc


def ses_bounce(w, who: str, btype: str = "Permanent", status_code: str = "5.1.1") -> dict:
    return {"notificationType": "Bounce", "mail": {"commonHeaders": {"messageId": w.mids[who]}},
            "bounce": {"bounceType": btype, "bounceSubType": "General", "bouncedRecipients": [
                {"emailAddress": who, "status": status_code, "action": "failed",
                 "diagnosticCode": f"smtp; 550 {status_code} user unknown"}]}}


def test_ses_verifies_the_sns_signature_chain_topic_and_freshness(world):
    w = world
    post = lambda doc: httpx.post(f"{w.base}/ses", content=json.dumps(doc), timeout=10)  # noqa: E731
    good = sns_doc(w, ses_bounce(w, "sub1@example.com"))
    assert post(good).status_code == 200
    assert status(w.engine, "sub1@example.com") == "bounced"
    (event,) = events(w.engine)
    assert event[:4] == ("webhook:ses", "hard", "suppressed", "sub1@example.com") and event.issue_id is not None
    assert post(good).status_code == 403  # the very same request again: a replay
    # SNS redelivers with a new signature: the same MessageId is one event
    assert post(sns_doc(w, ses_bounce(w, "sub1@example.com"))).json()["recorded"] == 0
    complaint = {"notificationType": "Complaint", "mail": {"commonHeaders": {"messageId": w.mids["sub2@example.com"]}},
                 "complaint": {"complaintFeedbackType": "abuse", "complainedRecipients": [
                     {"emailAddress": "sub2@example.com"}]}}
    assert post(sns_doc(w, complaint, message_id="sns-0002", version="1")).status_code == 200  # SHA1 too
    assert status(w.engine, "sub2@example.com") == "complained"
    # each of these changes nothing
    _, _, stranger = _ca_and_leaf(w.tmp_path, SNS_HOST, "stranger")
    tampered = sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0003")
    tampered["Message"] = tampered["Message"].replace("sub3", "sub4")
    refused = [
        tampered,
        sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0004", topic="arn:aws:sns:eu-west-2:666:evil"),
        sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0005",
                cert_url="https://sns.eu-west-2.amazonaws.com.evil.example/SimpleNotificationService-test0001.pem"),
        sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0006",
                cert_url="http://sns.eu-west-2.amazonaws.com/SimpleNotificationService-test0001.pem"),
        sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0007",
                when=datetime.now(timezone.utc) - timedelta(hours=1)),
        sns_doc(w, ses_bounce(w, "sub3@example.com"), message_id="sns-0008", key=stranger),
    ]
    for doc in refused:
        assert post(doc).status_code == 403
    assert status(w.engine, "sub3@example.com") == "confirmed" and status(w.engine, "sub4@example.com") == "confirmed"
    assert len(events(w.engine)) == 2


def test_ses_subscription_confirmation_is_verified_and_records_nothing(world):
    w = world
    doc = {"Type": "SubscriptionConfirmation", "MessageId": "sns-sub-1", "TopicArn": TOPIC, "Token": "tok-1",
           "Message": "You have chosen to subscribe to the topic.", "SignatureVersion": "2",
           "SubscribeURL": f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok-1",
           "Timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "SigningCertURL": CERT_URL}
    text = "".join(f"{k}\n{doc[k]}\n" for k in ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                                "TopicArn", "Type"))
    doc["Signature"] = base64.b64encode(w.sns_key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    forged = {**doc, "SubscribeURL": "https://evil.example/confirm", "MessageId": "sns-sub-2"}
    assert httpx.post(f"{w.base}/ses", content=json.dumps(forged), timeout=10).status_code == 403
    answer = httpx.post(f"{w.base}/ses", content=json.dumps(doc), timeout=10)
    assert answer.status_code == 200 and "SubscribeURL" in answer.text
    assert events(w.engine) == []


def test_ses_refuses_a_certificate_from_an_untrusted_ca(world):
    w = world
    _, other_leaf, other_key = _ca_and_leaf(w.tmp_path, SNS_HOST, "untrusted")
    (w.tmp_path / "sns-certs" / "SimpleNotificationService-other.pem").write_bytes(other_leaf)
    doc = sns_doc(w, ses_bounce(w, "sub1@example.com"), key=other_key,
                  cert_url=f"https://{SNS_HOST}/SimpleNotificationService-other.pem")
    assert httpx.post(f"{w.base}/ses", content=json.dumps(doc), timeout=10).status_code == 403
    assert status(w.engine, "sub1@example.com") == "confirmed"


# -- SendGrid ---------------------------------------------------------------------------------------------

def sendgrid_post(w, items: list, *, stamp: int | None = None, key=None, body: bytes | None = None):
    body = body if body is not None else json.dumps(items).encode()
    ts = str(stamp if stamp is not None else int(time.time()))
    signature = (key or w.sg_key).sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return httpx.post(f"{w.base}/sendgrid", content=body, timeout=10, headers={
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": ts, "Content-Type": "application/json"})


def test_sendgrid_signed_events(world):
    w = world
    items = [{"email": "sub1@example.com", "event": "bounce", "type": "bounce", "status": "5.1.1",
              "reason": "550 5.1.1 user unknown", "sg_event_id": "sg-1", "smtp-id": w.mids["sub1@example.com"]},
             {"email": "sub2@example.com", "event": "spamreport", "sg_event_id": "sg-2"},
             {"email": "sub3@example.com", "event": "bounce", "type": "blocked", "status": "5.7.1",
              "reason": "550 5.7.1 blocked by policy: spam content", "sg_event_id": "sg-3"},
             {"email": "sub4@example.com", "event": "deferred", "sg_event_id": "sg-4"},
             {"email": "sub5@example.com", "event": "delivered", "sg_event_id": "sg-5"}]
    assert sendgrid_post(w, items).json() == {"events": 4, "recorded": 4}
    assert [status(w.engine, f"sub{i}@example.com") for i in range(1, 6)] == [
        "bounced", "complained", "confirmed", "confirmed", "confirmed"]
    assert [e.kind for e in events(w.engine)] == ["hard", "complaint", "policy", "delayed"]
    assert sendgrid_post(w, items).json()["recorded"] == 0  # a new signature, the same events: once
    assert sendgrid_post(w, items, stamp=int(time.time()) - 3600).status_code == 403
    other = ec.generate_private_key(ec.SECP256R1())
    assert sendgrid_post(w, items, key=other).status_code == 403
    r = httpx.post(f"{w.base}/sendgrid", content=b"[]", timeout=10)
    assert r.status_code == 403


def test_fifty_clients_at_once_record_one_event(world):
    w = world
    item = [{"email": "sub1@example.com", "event": "bounce", "type": "bounce", "status": "5.1.1",
             "reason": "550 5.1.1 user unknown", "sg_event_id": "sg-same"}]
    base = int(time.time())
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda n: sendgrid_post(w, item, stamp=base - n % 30).status_code, range(50)))
    assert all(code in (200, 403) for code in answers) and answers.count(200) >= 1
    assert len(events(w.engine)) == 1 and status(w.engine, "sub1@example.com") == "bounced"


# -- Postmark ----------------------------------------------------------------------------------------------

def test_postmark_basic_auth_and_idempotence(world):
    w = world
    doc = {"RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "TypeCode": 1,
           "Email": "sub1@example.com", "Details": "smtp;550 5.1.1 The email account does not exist",
           "BouncedAt": datetime.now(timezone.utc).isoformat()}
    url = f"{w.base}/postmark"
    assert httpx.post(url, json=doc, timeout=10).status_code == 403
    assert httpx.post(url, json=doc, auth=("pm", "wrong"), timeout=10).status_code == 403
    assert status(w.engine, "sub1@example.com") == "confirmed"
    for _ in range(2):
        assert httpx.post(url, json=doc, auth=("pm", "pm-secret-£"), timeout=10).status_code == 200
    assert status(w.engine, "sub1@example.com") == "bounced" and len(events(w.engine)) == 1
    spam = {"RecordType": "SpamComplaint", "ID": 77, "Email": "sub2@example.com", "Type": "SpamComplaint"}
    assert httpx.post(url, json=spam, auth=("pm", "pm-secret-£"), timeout=10).status_code == 200
    assert status(w.engine, "sub2@example.com") == "complained"


# -- Mailgun -------------------------------------------------------------------------------------------------

def mailgun_doc(event: dict, *, token: str, stamp: int | None = None, key: str = MAILGUN_KEY) -> dict:
    ts = str(stamp if stamp is not None else int(time.time()))
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": event}


def test_mailgun_hmac_replay_window_and_token_reuse(world):
    w = world
    failed = {"event": "failed", "severity": "permanent", "id": "mg-1", "recipient": "sub1@example.com",
              "delivery-status": {"code": 550, "message": "5.1.1 mailbox does not exist"},
              "message": {"headers": {"message-id": w.mids["sub1@example.com"].strip("<>")}}}
    url = f"{w.base}/mailgun"
    doc = mailgun_doc(failed, token="t" * 50)
    assert httpx.post(url, json=doc, timeout=10).status_code == 200
    assert status(w.engine, "sub1@example.com") == "bounced" and events(w.engine)[0].issue_id is not None
    assert httpx.post(url, json=doc, timeout=10).status_code == 403  # the same token again
    stale = {**failed, "id": "mg-2", "recipient": "sub2@example.com"}
    assert httpx.post(url, json=mailgun_doc(stale, token="u" * 50, stamp=int(time.time()) - 3600),
                      timeout=10).status_code == 403
    assert httpx.post(url, json=mailgun_doc(stale, token="v" * 50, key="wrong-key"), timeout=10).status_code == 403
    # a signature with non-ASCII characters is refused like any wrong one, never a server error
    bad = mailgun_doc(stale, token="w" * 50)
    bad["signature"]["signature"] = "é" * 64
    assert httpx.post(url, json=bad, timeout=10).status_code == 403
    # Mailgun's signature covers the timestamp and token, not the body: a captured token must never work twice,
    # even freshly stamped and with another event
    assert httpx.post(url, json=mailgun_doc(stale, token="t" * 50), timeout=10).status_code == 403
    assert status(w.engine, "sub2@example.com") == "confirmed"
    soft = {"event": "failed", "severity": "temporary", "id": "mg-3", "recipient": "sub4@example.com",
            "delivery-status": {"code": 452, "message": "4.2.2 mailbox full"}}
    assert httpx.post(url, json=mailgun_doc(soft, token="x" * 50), timeout=10).status_code == 200
    assert [e.kind for e in events(w.engine)] == ["hard", "soft"]
    assert status(w.engine, "sub4@example.com") == "confirmed"


def test_a_provider_without_its_secret_is_off(settings, tmp_path, db_url):
    s = settings.replace(secret_key=SECRET, database_url=db_url, public_dir=str(tmp_path / "public"),
                         var_dir=str(tmp_path / "var"))
    from pipeline.web.app import create_app
    with serve(create_app(s, open_database(db_url), mail_worker=False)) as base:
        for provider in ("ses", "sendgrid", "postmark", "mailgun"):
            r = httpx.post(f"{base}{s.base_path}/webhooks/{provider}", content=b"{}", timeout=10)
            assert r.status_code == 404, provider
        assert httpx.get(f"{base}{s.base_path}/webhooks/ses", timeout=10).status_code == 405
