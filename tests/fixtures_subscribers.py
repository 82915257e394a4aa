"""Helpers for the subscriber and web tests: settings with a test secret and a
private outbox, reading mail back, and the web app under a real uvicorn."""
from __future__ import annotations

import mailbox
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import uvicorn

from conftest import free_port, serve

SECRET = "test-secret-not-for-production-0123456789"
CONSENT = {"consent": "yes", "consent_version": "2026-03-01", "topics_consent": "yes"}


def subscriber_settings(settings, tmp_path: Path, **changes):
    """The committed site settings with a test secret and everything written under tmp_path."""
    outbox = tmp_path / "outbox"
    # made up front so a test can read an outbox nothing was sent to
    mailbox.Maildir(outbox, create=True)
    return settings.replace(secret_key=SECRET, outbox_dir=str(outbox), public_dir=str(tmp_path / "public"),
                            var_dir=str(tmp_path / "var"), **changes)


@pytest.fixture
def sub_settings(settings, tmp_path):
    return subscriber_settings(settings, tmp_path)


def _delivery_order(key: str) -> tuple[int, int, int]:
    # Maildir keys are "<seconds>.M<microseconds>P<pid>Q<count>.<host>"; as text they do not sort by time
    seconds, _, rest = key.partition(".")
    micro = re.search(r"M(\d+)", rest)
    count = re.search(r"Q(\d+)", rest)
    return int(seconds), int(micro.group(1)) if micro else 0, int(count.group(1)) if count else 0


def outbox_messages(settings) -> list[EmailMessage]:
    """Every message in the outbox, oldest first, once the mail queue has drained
    (what is due is sent now; rows another worker is sending are waited for)."""
    from pipeline.database import open_database
    from subscribers import mailqueue

    mailqueue.drain(open_database(settings.database_url), settings)
    box = mailbox.Maildir(settings.outbox_dir, create=False)
    return [message_from_bytes(box.get_bytes(key), policy=policy.default)
            for key in sorted(box.keys(), key=_delivery_order)]


def text_part(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content().replace("\r\n", "\n")


def html_part(message: EmailMessage) -> str:
    return message.get_body(("html",)).get_content().replace("\r\n", "\n")


def link(message: EmailMessage, kind: str) -> str:
    """The first ``/{kind}/TOKEN`` URL in the plain-text part."""
    found = re.search(rf"\S+/{kind}/[A-Za-z0-9_-]+", text_part(message))
    assert found, f"no /{kind}/ link in:\n{text_part(message)}"
    return found.group(0)


def serve_on(app, port: int):
    """Run ``app`` under a real uvicorn server on 127.0.0.1:port; yield its base URL."""
    return serve(app, port)


__all__ = ["SECRET", "CONSENT", "subscriber_settings", "sub_settings", "outbox_messages", "text_part", "html_part",
           "link", "serve_on", "free_port"]
