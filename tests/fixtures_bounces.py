"""Bounce and complaint notifications for the tests, in the layouts Postfix, Exim, Gmail and
Microsoft use.  Written for these tests from RFC 3464 (DSN), RFC 5965 (ARF), RFC 3834
(auto-replies) and the shape each provider documents; no real sample is copied.  Every
builder returns the raw bytes as they would reach the bounce address, with the VERP
address as the envelope recipient (To / Delivered-To)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from fixtures_delivery import add_subscribers, small_rendered
from pipeline.cli import main
from pipeline.database import open_database
from pipeline.delivery import ledger
from pipeline.delivery.deliver import send_issue
from pipeline.mail import verp

DATE = format_datetime(datetime(2026, 3, 3, 9, 15, tzinfo=timezone.utc))
ORIGINAL_ID = "<original-0001@my.klarity.health>"


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _original_headers(verp: str, rcpt: str) -> str:
    return (f"Return-Path: <{verp}>\n"
            f"From: =?utf-8?q?Klarity_Health_Library_=E2=80=93_Daily?= <newsletter@my.klarity.health>\n"
            f"To: {rcpt}\nSubject: =?utf-8?q?Microneedling=3A_what_the_evidence_says_=E2=80=99?=\n"
            f"Message-ID: {ORIGINAL_ID}\nDate: {DATE}\nMIME-Version: 1.0\n")


def postfix_dsn(verp: str, rcpt: str, *, status: str = "5.1.1", action: str = "failed",
                diagnostic: str | None = None) -> bytes:
    diagnostic = diagnostic or (f"smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local "
                                "recipient table")
    return _crlf(f"""Return-Path: <>
Delivered-To: {verp}
Date: {DATE}
From: MAILER-DAEMON@mx1.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="PFX.1234/mx1.example.net"
Message-Id: <20260303091500.PFX1234@mx1.example.net>

This is a MIME-encapsulated message.

--PFX.1234/mx1.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx1.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{rcpt}>: host mx.example.org[192.0.2.25] said: {diagnostic}

--PFX.1234/mx1.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.example.net
X-Postfix-Queue-ID: 4ABCD1234
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: {DATE}

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: {diagnostic}

--PFX.1234/mx1.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{_original_headers(verp, rcpt)}
--PFX.1234/mx1.example.net--
""")


def exim_bounce(verp: str, rcpt: str, *, diagnostic: str = "550 5.1.1 No such user here") -> bytes:
    """Exim's classic bounce: plain text, the failed address in X-Failed-Recipients, no DSN part."""
    return _crlf(f"""Return-path: <>
Envelope-to: {verp}
Delivery-date: {DATE}
Received: from mail by mx.exim.example with local (Exim 4.97)
	id 1tXyZa-000123-AB
	for {verp}; {DATE}
X-Failed-Recipients: {rcpt}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx.exim.example>
To: {verp}
Content-Type: text/plain; charset=utf-8
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tXyZa-000123-AB@mx.exim.example>
Date: {DATE}

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {rcpt}
    host mx.example.org [192.0.2.26]
    SMTP error from remote mail server after RCPT TO:<{rcpt}>:
    {diagnostic}

------ This is a copy of the message, including all the headers. ------

{_original_headers(verp, rcpt)}
Today's article: microneedling – what the evidence says.
""")


def gmail_dsn(verp: str, rcpt: str, *, status: str = "5.1.1", diagnostic: str | None = None) -> bytes:
    diagnostic = diagnostic or ("smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
                                "Please try double-checking the recipient's email address for typos.")
    return _crlf(f"""Delivered-To: {verp}
Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {verp}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
Date: {DATE}
Message-ID: <65f0a1b2.gmaildsn.0001@mx.google.com>
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000gmail01"; report-type=delivery-status

--000000000000gmail01
Content-Type: multipart/related; boundary="000000000000gmail02"

--000000000000gmail02
Content-Type: multipart/alternative; boundary="000000000000gmail03"

--000000000000gmail03
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {rcpt} because the address couldn't be found, or is unable to receive mail.

--000000000000gmail03
Content-Type: text/html; charset="UTF-8"

<html><body><h2>Address not found</h2><p>Your message wasn&#39;t delivered to <b>{rcpt}</b>.</p></body></html>

--000000000000gmail03--

--000000000000gmail02--

--000000000000gmail01
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mail.my.klarity.health
Arrival-Date: {DATE}

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: {status}
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2a00:1450:400c:c0b::1a, the server for the domain gmail.com.)
Diagnostic-Code: {diagnostic}
Last-Attempt-Date: {DATE}

--000000000000gmail01
Content-Type: message/rfc822

{_original_headers(verp, rcpt)}Content-Type: text/plain; charset=utf-8

Today's article.

--000000000000gmail01--
""")


def microsoft_ndr(verp: str, rcpt: str, *, status: str = "5.1.10", diagnostic: str | None = None) -> bytes:
    diagnostic = diagnostic or ("smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
                                "address lookup")
    return _crlf(f"""Received: from AM0PR02MB1234.eurprd02.prod.outlook.com ([::1]) by
 AM0PR02MB1234.eurprd02.prod.outlook.com with mapi id 15.20.8000.001; {DATE}
From: postmaster@outlook.com
To: {verp}
Date: {DATE}
Subject: Undeliverable: Microneedling: what the evidence says
Content-Type: multipart/report; report-type=delivery-status;
	boundary="MSFT_NDR_b1c2d3"
MIME-Version: 1.0
Message-ID: <f1e2d3c4-ndr@AM0PR02MB1234.eurprd02.prod.outlook.com>
Auto-Submitted: auto-replied
X-MS-Exchange-Message-Is-Ndr:

--MSFT_NDR_b1c2d3
Content-Type: multipart/alternative; differences=Content-Type;
	boundary="MSFT_NDR_alt"

--MSFT_NDR_alt
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Your message to {rcpt} couldn't be delivered.
{rcpt.split("@")[0]} wasn't found at {rcpt.split("@")[1]}.

--MSFT_NDR_alt
Content-Type: text/html; charset="utf-8"

<html><body><p><b>Your message to {rcpt} couldn't be delivered.</b></p></body></html>

--MSFT_NDR_alt--

--MSFT_NDR_b1c2d3
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR02MB1234.eurprd02.prod.outlook.com
Received-From-MTA: dns;mail.my.klarity.health
Arrival-Date: {DATE}

Original-Recipient: rfc822;{rcpt}
Final-Recipient: rfc822;{rcpt}
Action: failed
Status: {status}
Diagnostic-Code: {diagnostic}

--MSFT_NDR_b1c2d3
Content-Type: text/rfc822-headers

{_original_headers(verp, rcpt)}
--MSFT_NDR_b1c2d3--
""")


def arf_report(verp: str, rcpt: str, *, feedback_type: str = "abuse", layout: str = "microsoft") -> bytes:
    """An RFC 5965 feedback report.  ``microsoft``: the JMRP shape (sent to the feedback address, so
    the VERP id is only in the attached original's Return-Path); ``generic``: a mailbox provider's
    FBL with Original-Rcpt-To and the original's headers."""
    to = "fbl@my.klarity.health" if layout == "microsoft" else verp
    sender = "staff@hotmail.com" if layout == "microsoft" else "fbl@feedback.mailbox.example"
    original = _original_headers(verp, rcpt)
    part3 = (f"Content-Type: message/rfc822\nContent-Disposition: inline\n\nReceived: from mail.my.klarity.health "
             f"by mx.outlook.example\n{original}Content-Type: text/plain\n\nToday's article.\n")
    if layout != "microsoft":
        part3 = f"Content-Type: text/rfc822-headers\n\n{original}"
    return _crlf(f"""From: {sender}
To: {to}
Subject: =?utf-8?q?Complaint_about_message_from_192=2E0=2E2=2E10?=
Date: {DATE}
Message-ID: <arf-{feedback_type}-{layout}@feedback.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF_part_boundary"

--ARF_part_boundary
Content-Type: text/plain; charset=utf-8

This is an email abuse report for an email message received from IP 192.0.2.10 on {DATE}.
A recipient marked it as {feedback_type}.

--ARF_part_boundary
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: FeedbackLoop/1.0
Version: 1
Original-Mail-From: <{verp}>
Original-Rcpt-To: <{rcpt}>
Arrival-Date: {DATE}
Source-IP: 192.0.2.10
Reported-Domain: my.klarity.health

--ARF_part_boundary
{part3}
--ARF_part_boundary--
""")


def auto_reply(verp: str, *, style: str = "rfc3834") -> bytes:
    headers = {
        "rfc3834": "Auto-Submitted: auto-replied\nSubject: Re: Microneedling: what the evidence says\n",
        "exchange": ("X-Auto-Response-Suppress: All\n"
                     "Subject: Automatic reply: Microneedling – what the evidence says\n"),
        "x-autoreply": "X-Autoreply: yes\nSubject: Away until Monday\n",
        "precedence": "Precedence: auto_reply\nSubject: I'm away\n",
        "french": "Subject: Réponse automatique : absent du bureau 🌴\n",
        "ooo": "Subject: Out of Office: Microneedling\n",
    }[style]
    return _crlf(f"""From: =?utf-8?q?Zo=C3=AB_=E5=B1=B1=E7=94=B0?= <zoe@example.org>
To: {verp}
Date: {DATE}
Message-ID: <ooo-{style}@example.org>
{headers}MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

I am out of the office until 10 March with limited access to email – £ é 山田.
""")


def unparseable(verp: str) -> bytes:
    return _crlf(f"""From: someone@example.org
To: {verp}
Subject: hello?
Date: {DATE}

Is this the right address for questions about the newsletter?
""")


LAYOUTS = {"postfix": postfix_dsn, "exim": exim_bounce, "gmail": gmail_dsn, "microsoft": microsoft_ndr}


# -- a sent issue to bounce against, and the CLI in process ------------------------------------------

SECRET = "bounces-test-secret-0123456789"


@pytest.fixture
def bsettings(settings, tmp_path, db_url):
    return settings.replace(transport="outbox", outbox_dir=str(tmp_path / "outbox"), secret_key=SECRET,
                            database_url=db_url, var_dir=str(tmp_path / "var"))


@pytest.fixture
def engine(bsettings):
    return open_database(bsettings.database_url)


def sent_issue(engine, settings, n: int = 6, on=None) -> dict[str, int]:
    """Send a small issue to n subscribers through the outbox; {address: delivery id}."""
    add_subscribers(engine, settings, n, start=0)
    rendered = small_rendered(on=on) if on else small_rendered()
    summary = send_issue(engine, settings, rendered, progress=False)
    assert summary.sent == n
    with engine.connect() as conn:
        return dict(conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.id)
                                 .where(ledger.DELIVERIES.c.state == ledger.SENT)).all())


def vaddr(settings, delivery_id: int) -> str:
    return verp.return_path(settings, "d", delivery_id)


@dataclass
class Ran:
    exit_code: int
    output: str  # stdout and stderr together, as a terminal shows them


def run_cli(settings, content_dir, *args, input=None) -> Ran:
    """``newsletter ...`` through ``pipeline.cli.main`` (its one-line errors), in this process."""
    env = {"NEWSLETTER_SECRET": settings.secret_key, "DATABASE_URL": settings.database_url,
           "NEWSLETTER_TRANSPORT": "outbox", "NEWSLETTER_OUTBOX_DIR": settings.outbox_dir,
           "NEWSLETTER_VAR_DIR": settings.var_dir}
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as streams:
        try:
            main(["--content", str(content_dir), *args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = streams[0].getvalue() + (streams[1].getvalue() if streams[1] is not None else b"")
    return Ran(code, out.decode("utf-8"))
