"""Retrying an issue's deferred rows from the console.

The console runs the very command an operator would: ``newsletter send --date D
--resume`` (``--topic T`` for a topic's issue) or ``newsletter send --correction N
--resume`` for a correction notice, as a child process of the web service, with the
service's content folder and environment (so the same settings).  That command takes
the issue's lease, so it can never send alongside another sender; the console also
refuses up front while the lease is held by a live process, or while its own retry of
the issue still runs.  The child's output goes to ``<var_dir>/console-retries/``; its
progress shows in the send's live view (the ledger) and its outcome beside it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from pipeline import clock, holders
from pipeline.errors import DeliveryError
from pipeline.staff import audit

TAIL = 2000  # characters of the child's output kept for the live view


@dataclass
class Retry:
    key: str
    args: tuple[str, ...]
    by: str
    started_at: datetime
    log: Path
    proc: subprocess.Popen = field(repr=False)
    exit_code: int | None = None
    output: str = ""

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def public(self, tz=None) -> dict:
        at = self.started_at.astimezone(tz) if tz else self.started_at
        return {"running": self.running, "by": self.by, "started_at": at.isoformat(timespec="seconds"),
                "command": "newsletter " + " ".join(self.args), "exit_code": self.exit_code,
                "last_line": (self.output.strip().splitlines() or [""])[-1]}


def command_for(issue) -> tuple[str, ...]:
    """The ``newsletter`` arguments that resume ``issue`` (an ``IssueInfo``)."""
    if issue.kind == "correction":
        return ("send", "--correction", str(issue.number), "--resume", "--no-progress")
    if issue.kind == "daily":
        topic = ("--topic", issue.audience_topic) if issue.audience_topic else ()
        return ("send", "--date", issue.date.isoformat(), *topic, "--resume", "--no-progress")
    raise DeliveryError(f"issue {issue.key} is a {issue.kind} issue: the daemon (`newsletter run`) resumes it; "
                        "the console retries daily issues and correction notices")


def lease_in_use(engine, issue_id: int) -> str | None:
    """Who holds the issue's send lease now (a live holder, unexpired), else None."""
    from pipeline.delivery import ledger

    with engine.connect() as conn:
        row = conn.execute(select(ledger.ISSUES.c.lease_owner, ledger.ISSUES.c.lease_expires_at)
                           .where(ledger.ISSUES.c.id == issue_id)).one()
    if row.lease_owner and row.lease_expires_at and row.lease_expires_at > clock.now() \
            and not holders.is_dead(row.lease_owner):
        return f"{row.lease_owner} (lease until {row.lease_expires_at.isoformat(timespec='seconds')})"
    return None


class Retries:
    """The console's retries, one at a time per issue."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: dict[str, Retry] = {}

    def get(self, key: str) -> Retry | None:
        with self._lock:
            return self._runs.get(key)

    def start(self, console, key: str, *, actor: str, ip: str | None) -> Retry:
        """Start the retry of ``key``'s deferred rows, or raise ``DeliveryError`` saying why not."""
        from pipeline.delivery import ledger

        issue = ledger.find_issue(console.engine, key)
        if issue is None:
            raise DeliveryError(f"no send with the issue key {audit.clean(key, 64)}")
        args = command_for(issue)
        with self._lock:
            mine = self._runs.get(key)
            if mine is not None and mine.running:
                raise DeliveryError(f"a retry of {key} started by {mine.by} is still running; "
                                    "watch it here, and try again when it has finished")
            holder = lease_in_use(console.engine, issue.id)
            if holder is not None:
                raise DeliveryError(f"{key} is being sent now by {holder}: not sending it twice; "
                                    "its deferred rows are retried by that send or after it")
            counts = ledger.state_counts(console.engine, issue.id)
            if not counts[ledger.DEFERRED]:
                raise DeliveryError(f"{key} has no deferred rows to retry")
            folder = Path(console.settings.var_dir) / "console-retries"
            folder.mkdir(parents=True, exist_ok=True)
            started = clock.now()
            log = folder / f"{key}-{started:%Y%m%dT%H%M%S}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--content",
                                         str(Path(console.content_dir).resolve()), *args],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=dict(os.environ), start_new_session=True)
            run = Retry(key, args, actor, started, log, proc)
            self._runs[key] = run
        audit.write(console.engine, actor, "send.retry", key,
                    after={"command": "newsletter " + " ".join(args), "pid": proc.pid,
                           "deferred": counts[ledger.DEFERRED]}, via="web", ip=ip)
        threading.Thread(target=self._wait, args=(console.engine, run), daemon=True,
                         name=f"retry-{key}").start()
        return run

    def _wait(self, engine, run: Retry) -> None:
        code = run.proc.wait()
        try:
            output = run.log.read_text(encoding="utf-8", errors="replace")[-TAIL:]
        except OSError:
            output = ""
        with self._lock:
            run.output, run.exit_code = output, code
        try:
            audit.write(engine, run.by, "send.retry.finished", run.key,
                        after={"exit_code": code, "last_line": audit.clean(run.public()["last_line"], 300)},
                        via="web")
        except Exception:  # the database went away: the ledger and the log file still tell
            pass

    def wait(self, key: str, timeout: float | None = None) -> int | None:
        """For tests and shutdown: wait for ``key``'s retry; its exit code."""
        run = self.get(key)
        if run is None:
            return None
        run.proc.wait(timeout)
        deadline = time.monotonic() + 5  # the real clock: a test may have frozen pipeline.clock
        while run.running and time.monotonic() < deadline:
            time.sleep(0.02)
        return run.exit_code
