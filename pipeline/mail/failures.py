"""What a delivery failure means for the address: the one decider.

Used for a relay's refusal at SMTP time (``pipeline.delivery.outcomes.classify``),
for each recipient of a delivery status notification (RFC 3464) and for each
provider webhook event (``pipeline.bounces``):

- ``hard``: the mailbox does not exist or is disabled (5.1.x, 5.2.1, Microsoft's
  5.4.1 "recipient address rejected", or a 5xx whose text says "no such user").
  The address is suppressed.
- ``policy``: the receiver refused *us* or the content (5.7.x, or any 5xx/4xx whose
  text says policy, spam, content, blocked, reputation, a block list, DMARC/SPF/DKIM).
  Nothing is wrong with the address: counted and alerted on, never suppressed.
- ``soft``: anything else (4.x.x given up after retries, mailbox full, a system
  problem at the receiver): adds to the address's decaying bounce score.

Policy words are checked first, except when the text also plainly says the user
does not exist ("550 5.1.1 user unknown" is hard whatever else it says).
"""
from __future__ import annotations

import re

HARD, SOFT, POLICY = "hard", "soft", "policy"

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_USER_UNKNOWN = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|mailbox (?:not found|unavailable|"
    r"does not exist|disabled)|(?:address|recipient|user|account|mailbox)(?: \S+)? (?:does not|doesn't) exist|"
    r"does not exist|invalid (?:recipient|mailbox|address)|recipient address rejected|unknown recipient|"
    r"not a valid (?:user|mailbox)|account (?:has been )?disabled|undeliverable address|no mailbox here",
    re.IGNORECASE)
_POLICY = re.compile(
    r"\bpolic(?:y|ies)\b|\bspam\b|unsolicited|\bcontent\b|\bblock(?:ed|list|listed)?\b|black ?list|"
    r"\breputation\b|\bRBL\b|\bDNSBL\b|\blisted\b|\bDMARC\b|\bSPF\b|\bDKIM\b|\bphish|\bvirus\b|\bmalware\b|"
    r"rate limit|too many (?:messages|connections)|not authori[sz]ed to send|junk", re.IGNORECASE)


def enhanced_status(text: str) -> str:
    """The first enhanced status code (``5.1.1``) in ``text``, or ''."""
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else ""


def classify_failure(status: str = "", text: str = "", code: int | None = None) -> str:
    """``hard``, ``soft`` or ``policy`` for one failed recipient.

    ``status`` is an enhanced status code if known (else it is looked for in
    ``text``); ``code`` the SMTP reply code if known; ``text`` the diagnostic."""
    text = text or ""
    status = (status or enhanced_status(text)).strip()
    user_unknown = bool(_USER_UNKNOWN.search(text))
    if status.startswith("5.7.") or (_POLICY.search(text) and not user_unknown):
        return POLICY
    if status.startswith(("5.1.", "5.2.1", "5.4.1")) and status not in ("5.1.0",):
        return HARD
    permanent = status.startswith("5.") or (code is not None and 500 <= code < 600)
    if permanent and user_unknown:
        return HARD
    return SOFT


def is_policy_refusal(code: int, text: str) -> bool:
    """A relay's 5xx refusal that is about us or the content, not the address."""
    return 500 <= code < 600 and classify_failure("", text, code) == POLICY
