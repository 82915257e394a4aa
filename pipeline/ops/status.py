"""What `newsletter status` reports, as one frozen value (and its JSON form).

Every count comes from the ledger at the moment of asking, so a send under way
shows how far it got, and the numbers never contradict the relay: ``sent`` is
what the relay acknowledged and the ledger recorded, ``sending`` is what is in
flight (handed to the relay, reply not yet recorded).

Alerts last until dealt with: a day that failed, was stopped or hit a content
error alerts until it is sent (resent or resumed) or acknowledged
(``newsletter status --ack DATE``); a missed or paused day alerts while its
articles are stranded on it (not yet moved to another day).  A stop of a hand
send (``newsletter send``) alerts until it is resumed.

JSON schema (``status --json``; times are ISO 8601 with offset, days YYYY-MM-DD):

    {"now", "timezone", "exit_code",
     "sending": {"paused": bool, "until": day|null},
     "daemons": [{"holder", "host", "pid", "started_at", "last_seen", "alive": bool, "state": "running"|"dead"|"silent"}],
     "leases":  [{"name", "holder", "expires_at", "alive": bool}],
     "next":    [{"day", "kind", "at", "articles": [slug]}],
     "runs":    [{"day", "kind", "state", "issue_key", "subject", "planned_at", "started_at", "finished_at",
                  "late": bool, "counts": {"total", "queued", "sending", "sent", "deferred", "failed", "bounced",
                  "uncertain", "skipped"}, "note", "alert": bool, "acknowledged_at"}],
     "alerts":  [{"day", "kind", "state", "message"}],
     "queue":   {"known": bool, "articles": [{"slug", "scheduled": day|null}]},
     "mail_queue": {"waiting": int, "given_up": int, "oldest_failure": {"at", "error"}|null},  (added by status_cli)
     "bounces": [{"issue", "recipients", "bounces", "complaints", "policy", "bounce_rate", "complaint_rate"}],
                (percent; ``bounce_report``; its alerts join "alerts" with kind "bounces" and day null)
     "waves":   [{"issue", "waves": [{"instant": time|null, "released": bool, "total", "sent", "open", "to_come"}]}],
                (issues going out at each reader's local time: ``wave_sends.current_waves``; instant null:
                rows released at once; to_come: rows of a wave not released yet)
     "senders": [{"issue", "node", "host", "pid", "joined_at", "live": bool, "ended": "done"|"expired"|null,
                  "sent": int, "holding": int}]}
                (the nodes of the newest shared sends, PostgreSQL: who sends, and each node's count)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Engine, func, select

from pipeline.scheduling import calendar, issue_history, schedule
from pipeline import holders
from pipeline.scheduling import slots
from pipeline.delivery import leases, stops
from pipeline import clock, exits

LATE = timedelta(minutes=1)  # a send that began later than this after its planned time is marked late


@dataclass(frozen=True)
class DaemonInfo:
    holder: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    alive: bool
    state: str  # running, dead (its process is gone), silent (no heartbeat lately)


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str
    expires_at: datetime
    alive: bool


@dataclass(frozen=True)
class SenderInfo:
    """One node of a shared send (``pipeline.delivery.claims``) and its rows."""

    issue: str
    node: str
    host: str
    pid: int
    joined_at: datetime
    live: bool
    ended: str | None
    sent: int  # rows whose outcome this node recorded as sent
    holding: int  # rows it has claimed now


@dataclass(frozen=True)
class NextSend:
    day: date
    kind: str
    at: datetime
    articles: tuple[str, ...]


@dataclass(frozen=True)
class RunInfo:
    day: date
    kind: str
    state: str
    issue_key: str
    subject: str | None
    planned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    late: bool
    counts: dict
    note: str
    alert: bool
    acknowledged_at: datetime | None


@dataclass(frozen=True)
class Alert:
    day: date
    kind: str
    state: str
    message: str


@dataclass(frozen=True)
class Status:
    now: datetime
    timezone: str
    paused: bool
    pause_until: date | None
    daemons: tuple[DaemonInfo, ...]
    leases: tuple[LeaseInfo, ...]
    next: tuple[NextSend, ...]
    runs: tuple[RunInfo, ...]
    alerts: tuple[Alert, ...]
    queue_known: bool
    queue: tuple[tuple[str, date | None], ...] = field(default=())
    waves: tuple = field(default=())  # (issue key, [wave_sends.WaveCount]) of the current issues
    senders: tuple["SenderInfo", ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return exits.ALERT if self.alerts else exits.OK

    def to_json(self) -> dict:
        def plain(value):
            if isinstance(value, (datetime, date)):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {
            "now": plain(self.now), "timezone": self.timezone, "exit_code": self.exit_code,
            "sending": {"paused": self.paused, "until": plain(self.pause_until)},
            "daemons": [plain(asdict(d)) for d in self.daemons],
            "leases": [plain(asdict(lease)) for lease in self.leases],
            "next": [plain(asdict(n)) for n in self.next],
            "runs": [plain(asdict(r)) for r in self.runs],
            "alerts": [plain(asdict(a)) for a in self.alerts],
            "queue": {"known": self.queue_known,
                      "articles": [{"slug": slug, "scheduled": plain(day)} for slug, day in self.queue]},
            "waves": [{"issue": key, "waves": [plain(asdict(w)) | {"to_come": 0 if w.released else w.open}
                                               for w in found]} for key, found in self.waves],
            "senders": [plain(asdict(n)) for n in self.senders],
        }


def alive_window(settings) -> timedelta:
    return timedelta(seconds=max(3 * float(settings.reconcile_seconds), 60.0))


def _daemons(engine: Engine, settings) -> tuple[DaemonInfo, ...]:
    found = []
    window = alive_window(settings)
    for d in leases.daemons(engine, alive_within=leases.HEARTBEAT_KEPT):
        if holders.is_dead(d.holder):
            state = "dead"
        elif clock.now() - d.last_seen > window:
            state = "silent"
        else:
            state = "running"
        if state != "running" and clock.now() - d.last_seen > timedelta(hours=1):
            continue  # long gone: not worth a line
        pid = holders.parse(d.holder)[1] or d.pid  # the process the holder name (and the liveness check) is about
        found.append(DaemonInfo(d.holder, d.host, pid, d.started_at, d.last_seen, state == "running", state))
    return tuple(found)


def _leases(engine: Engine) -> tuple[LeaseInfo, ...]:
    from pipeline.delivery import ledger

    now = clock.now()
    found = []
    with engine.connect() as conn:
        for row in conn.execute(select(leases.Lease.__table__)).all():
            found.append(LeaseInfo(row.name, row.holder, row.expires_at,
                                   row.expires_at > now and not holders.is_dead(row.holder)))
        for row in conn.execute(select(ledger.ISSUES.c.key, ledger.ISSUES.c.lease_owner,
                                       ledger.ISSUES.c.lease_expires_at)
                                .where(ledger.ISSUES.c.lease_owner.is_not(None))).all():
            found.append(LeaseInfo(f"issue {row.key}", row.lease_owner, row.lease_expires_at,
                                   row.lease_expires_at > now and not holders.is_dead(row.lease_owner)))
    return tuple(found)


def ledger_states(engine: Engine, keys: list[str]) -> dict[str, dict[str, int]]:
    """Per issue key: its ledger rows by state, and the total."""
    from pipeline.delivery import ledger

    found: dict[str, dict[str, int]] = {}
    if not keys:
        return found
    with engine.connect() as conn:
        rows = conn.execute(select(ledger.ISSUES.c.key, ledger.DELIVERIES.c.state, func.count())
                            .join(ledger.DELIVERIES, ledger.DELIVERIES.c.issue_id == ledger.ISSUES.c.id)
                            .where(ledger.ISSUES.c.key.in_(keys))
                            .group_by(ledger.ISSUES.c.key, ledger.DELIVERIES.c.state)).all()
    for key, state, count in rows:
        counts = found.setdefault(key, {s: 0 for s in ("total",) + ledger.DELIVERY_STATES})
        counts[state] = counts.get(state, 0) + count
        counts["total"] += count
    return found


def _subjects(engine: Engine, keys: list[str]) -> dict[str, str]:
    from pipeline.delivery import ledger
    if not keys:
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(ledger.ISSUES.c.key, ledger.ISSUES.c.subject)
                                 .where(ledger.ISSUES.c.key.in_(keys))).all())


def _stranded_days(engine: Engine) -> set[date]:
    return {e.day for e in calendar.entries(engine, states=("missed",))}


def run_alert(run: calendar.Run, stranded: set[date]) -> bool:
    """Does this run still need an operator? (the rule in the module docstring)"""
    if run.acknowledged_at is not None or run.state not in calendar.LASTING_ALERT:
        return False
    if run.state in ("missed", "paused"):
        return run.day in stranded
    return True


def build(engine: Engine, settings, library=None, *, next_count: int = 5, recent: int = 10) -> Status:
    tz = slots.zone(settings)
    issue_history.settle_from_ledger(engine)
    pause = calendar.get_pause(engine)
    now = clock.now()

    upcoming = [(slot, es) for slot, es, run, paused in schedule.upcoming(engine, settings, days=14)
                if run is None and not paused and slot.instant > now][:next_count]
    nexts = tuple(NextSend(slot.day, slot.kind, slot.instant.astimezone(tz),
                           tuple(e.slug for e in es if e.state in ("scheduled", "failed"))) for slot, es in upcoming)

    runs = calendar.recent_runs(engine, 60)
    keys = [r.issue_key or issue_history.issue_key(r.day, r.kind) for r in runs]
    live = ledger_states(engine, keys)
    subjects = _subjects(engine, keys)
    stranded = _stranded_days(engine)
    infos, alerts = [], []
    for n, (run, key) in enumerate(zip(runs, keys)):
        alert = run_alert(run, stranded)
        resume = _partly_sent(run, live.get(key))
        if resume and run.state not in ("sent", "running", "waiting") and run.acknowledged_at is None:
            alert = True  # recipients are waiting whatever else the day's state says: name the one action
        if alert:
            message = f"{run.kind} issue of {run.day.isoformat()} {run.state}: {run.error or ''}".rstrip(": ")
            if resume and resume not in message:
                message += f"; {resume}"
            alerts.append(Alert(run.day, run.kind, run.state, message))
        if n >= recent and not alert:
            continue
        counts = live.get(key) or {"total": run.sent + run.deferred + run.failed + run.bounced, "sent": run.sent,
                                   "deferred": run.deferred, "failed": run.failed, "bounced": run.bounced}
        late = bool(run.planned_at and run.started_at and run.started_at - run.planned_at > LATE)
        infos.append(RunInfo(run.day, run.kind, run.state, key if key in live else (run.issue_key or ""),
                             subjects.get(key), run.planned_at, run.started_at, run.finished_at, late, counts,
                             run.error or "", alert, run.acknowledged_at))
    # hand sends (`newsletter send`, topic issues too) have no run of their own until they finish:
    # the ledger shows them, live, and an unfinished one alerts until it is resumed to the end
    hand_infos, hand_alerts = _hand_sends(engine, {r.issue_key for r in runs if r.issue_key} | set(keys), tz)
    infos = sorted(infos + hand_infos, key=lambda i: (i.day, i.started_at or now), reverse=True)
    alerts += hand_alerts

    queue: list[tuple[str, date | None]] = []
    if library is not None:
        sent = issue_history.sent_slugs(engine)
        planned = {e.slug: e.day for e in calendar.entries(engine, states=("scheduled",))}
        queue = [(a.slug, planned.get(a.slug)) for a in library.articles if a.slug not in sent]
    from pipeline.scheduling.wave_sends import current_waves
    return Status(now, settings.timezone, pause.covers(slots.today(settings)), pause.until,
                  _daemons(engine, settings), _leases(engine), nexts, tuple(infos), tuple(alerts),
                  library is not None, tuple(queue), tuple(current_waves(engine, now)), senders(engine))


def _partly_sent(run: calendar.Run, counts: dict | None) -> str:
    """``904 of 3,000 sent; `newsletter send --date D --resume` finishes it`` when the day's
    issue has recipients still open in the ledger (queued, deferred, uncertain), else ""."""
    if not counts or not counts.get("sent") or run.kind != "daily":
        return ""
    if not any(counts.get(s, 0) for s in ("queued", "deferred", "sending", "uncertain")):
        return ""
    return (f"{counts['sent']:,} of {counts.get('total', 0):,} sent; "
            f"`newsletter send --date {run.day.isoformat()} --resume` finishes it" + _uncertain_note(counts))


def _uncertain_note(counts: dict) -> str:
    """What to do about rows left uncertain (uncertain_policy skip), or ""."""
    n = counts.get("uncertain", 0)
    return (f" ({n:,} uncertain: the relay may have had them; add `--uncertain resend` to send them again or "
            f"`--uncertain skip` to close them)") if n else ""


def _hand_sends(engine: Engine, known: set[str], tz) -> tuple[list[RunInfo], list[Alert]]:
    """Issues in the ledger with no run row (hand sends): live counts, and an alert for
    one left unfinished (stopped, interrupted, relay failures) that nobody is sending."""
    from pipeline.delivery import ledger

    now = clock.now()
    with engine.connect() as conn:
        records = conn.execute(select(ledger.ISSUES).where(ledger.ISSUES.c.state != "composed")
                               .order_by(ledger.ISSUES.c.date.desc(), ledger.ISSUES.c.id.desc()).limit(30)).all()
    records = [r for r in records if r.key not in known]
    live = ledger_states(engine, [r.key for r in records])
    stopped = {q.issue_key: q for q in stops.open_requests(engine) if q.honoured_at is not None and q.issue_key}
    from pipeline.delivery import claims
    nodes = claims.live_nodes(engine, [r.id for r in records])  # a shared send goes on after its first node
    infos, alerts = [], []
    for r in records:
        counts = live.get(r.key, {"total": 0})
        held = r.id in nodes or bool(r.lease_owner and r.lease_expires_at and r.lease_expires_at > now
                                     and not holders.is_dead(r.lease_owner))
        finished = r.state == "sent" and not any(counts.get(s, 0)
                                                 for s in ("queued", "sending", "deferred", "uncertain"))
        state = "sent" if finished else "sending" if held else "stopped" if r.key in stopped else (
            "waiting" if r.state == "waiting" else "unfinished")  # waiting: later waves not released yet
        again = f"newsletter send --date {r.date.isoformat()}" + (f" --topic {r.audience_topic}"
                                                                  if r.audience_topic else "") + " --resume"
        if r.kind == "correction":  # a correction's notice (pipeline.corrections), numbered by the correction
            again = f"newsletter send --correction {r.number} --resume"
        note = "" if state in ("sent", "sending", "waiting") else (
            f"hand send {stopped[r.key].describe(tz) if r.key in stopped else 'interrupted'}: "
            f"{counts.get('sent', 0)} of {counts.get('total', 0)} sent; `{again}` finishes it"
            + _uncertain_note(counts))
        alert = state in ("stopped", "unfinished")
        infos.append(RunInfo(r.date, r.kind, state, r.key, r.subject, None, r.created_at, r.finished_at, False,
                             counts, note, alert, None))
        if alert:
            alerts.append(Alert(r.date, r.kind, state, f"{r.kind} issue {r.key} {note}"))
    return infos, alerts


def bounce_report(engine: Engine, settings) -> tuple[list[dict], list[str]]:
    """Each recent issue's bounce, complaint and policy-refusal rates (``pipeline.bounces.rates``),
    and the alerts they raise (complaints above 0.3 %, bounces above ``bounce_rate_alert``)."""
    from pipeline.bounces import rates

    found = rates.recent(engine)
    return [r.to_json() for r in found], [line for r in found for line in r.alerts(settings)]



def senders(engine: Engine, issues: int = 3) -> tuple[SenderInfo, ...]:
    """The nodes of the ``issues`` newest shared sends, each with its count from the ledger."""
    from pipeline.delivery import claims, ledger

    with engine.connect() as conn:
        newest = conn.execute(select(ledger.ISSUES.c.id, ledger.ISSUES.c.key)
                              .where(ledger.ISSUES.c.id.in_(select(claims.NODES.c.issue_id)))
                              .order_by(ledger.ISSUES.c.id.desc()).limit(issues)).all()
    keys = dict(newest)
    found = claims.shares(engine, list(keys))
    return tuple(SenderInfo(keys[iid], **asdict(n))
                 for iid, _ in newest for n in found.get(iid, []))
