"""Each recent issue's bounce, complaint and policy-refusal rates, and the alerts they raise.

For an issue, out of its recipients (ledger rows the relay was offered: sent,
bounced or failed):

- **bounces**: rows refused as bouncing at SMTP time (ledger ``bounced``) plus rows
  a later notification reported as a hard or soft bounce;
- **complaints**: rows a complaint (ARF report, provider webhook) was traced to;
- **policy**: refusals about us or the content, not the address (ledger ``failed``
  with a policy reply, and later ``policy`` notifications).

Alerts: complaints above ``COMPLAINT_ALERT`` (0.3 %, Gmail's published limit), bounces
above ``bounce_rate_alert`` percent, and any policy refusal.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from pipeline.bounces.models import BounceEvent
from pipeline.delivery.ledger import BOUNCED, FAILED, SENT, Delivery, IssueRecord
from pipeline.mail.failures import is_policy_refusal

COMPLAINT_ALERT = 0.3  # percent


@dataclass(frozen=True)
class IssueRates:
    issue_key: str
    recipients: int
    bounces: int
    complaints: int
    policy: int

    @property
    def bounce_rate(self) -> float:
        return 100.0 * self.bounces / self.recipients if self.recipients else 0.0

    @property
    def complaint_rate(self) -> float:
        return 100.0 * self.complaints / self.recipients if self.recipients else 0.0

    def alerts(self, settings) -> list[str]:
        found = []
        if self.complaint_rate > COMPLAINT_ALERT:
            found.append(f"issue {self.issue_key}: complaint rate {self.complaint_rate:.2f}% is above "
                         f"{COMPLAINT_ALERT}% ({self.complaints} of {self.recipients})")
        if self.bounce_rate > float(settings.bounce_rate_alert):
            found.append(f"issue {self.issue_key}: bounce rate {self.bounce_rate:.2f}% is above "
                         f"{float(settings.bounce_rate_alert):g}% ({self.bounces} of {self.recipients})")
        if self.policy:
            found.append(f"issue {self.issue_key}: {self.policy} refused by policy (spam, content or reputation, "
                         "not the address): check the sending domain's reputation")
        return found

    def to_json(self) -> dict:
        return {"issue": self.issue_key, "recipients": self.recipients, "bounces": self.bounces,
                "complaints": self.complaints, "policy": self.policy, "bounce_rate": round(self.bounce_rate, 3),
                "complaint_rate": round(self.complaint_rate, 3)}


def recent(engine: Engine, count: int = 10) -> list[IssueRates]:
    d, e = Delivery.__table__, BounceEvent.__table__
    with engine.connect() as conn:
        issues = conn.execute(select(IssueRecord.id, IssueRecord.key).order_by(IssueRecord.id.desc())
                              .limit(count)).all()
        found = []
        for issue_id, key in issues:
            states = dict(conn.execute(select(d.c.state, func.count()).where(d.c.issue_id == issue_id)
                                       .group_by(d.c.state)).all())
            recipients = states.get(SENT, 0) + states.get(BOUNCED, 0) + states.get(FAILED, 0)
            if not recipients:
                continue
            later = {kind: set() for kind in ("bounce", "complaint", "policy")}
            for kind, delivery_id, email_hash in conn.execute(
                    select(e.c.kind, e.c.delivery_id, e.c.email_hash)
                    .where(e.c.issue_id == issue_id, e.c.kind.in_(("hard", "soft", "complaint", "policy")))):
                group = "bounce" if kind in ("hard", "soft") else kind
                later[group].add(delivery_id or email_hash)
            failed_policy = sum(1 for (reply,) in conn.execute(
                select(d.c.last_reply).where(d.c.issue_id == issue_id, d.c.state == FAILED))
                if reply and is_policy_refusal(_code(reply), reply))
            found.append(IssueRates(key, recipients, states.get(BOUNCED, 0) + len(later["bounce"]),
                                    len(later["complaint"]), failed_policy + len(later["policy"])))
        return found


def _code(reply: str) -> int:
    head = reply.strip()[:3]
    return int(head) if head.isdigit() else 0


def counts(engine: Engine) -> dict[str, int]:
    """Events by kind, all time (``unparsed`` and ``unmatched`` are the ones to look at)."""
    with engine.connect() as conn:
        return dict(conn.execute(select(BounceEvent.kind, func.count()).group_by(BounceEvent.kind)).all())
