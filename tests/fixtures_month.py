"""One simulated month for the property test: a database, a fixture library, Unicode
subscribers, a frozen clock, the actions the test draws, and the checks it makes
against the relay's count (see tests/test_property_sends.py for the property)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from fixtures_property import NAMES, SECRET, SwitchRelay, make_library

UTC = timezone.utc
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
BATCH, CONNECTIONS = 3, 2
SUBPROCESS_ACTIONS = 2
HOLDER = "property-daemon"
RESUME = re.compile(r"`(newsletter send (?:--date (\S+) --resume|--resume --date (\S+)))`")


class Month:
    def __init__(self, folder: Path, db_url: str, relay: SwitchRelay, subscribers: int, weekly: int, policy: str):
        self.folder, self.db_url, self.relay, self.policy = folder, db_url, relay, policy
        self.n_subscribers, self.n_weekly = subscribers, weekly
        self.kills = 0
        self.subprocesses = 0
        self.log: list[str] = []

    # -- setting up ------------------------------------------------------------------------

    def __enter__(self) -> "Month":
        from pipeline.clock import frozen_clock
        from pipeline.database import open_database
        from pipeline.settings import load_settings
        from subscribers import store

        self.folder.mkdir(parents=True)
        content = self.folder / "content"
        self.slugs = make_library(content)
        self.content_dir = content
        self.env = {"DATABASE_URL": self.db_url, "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_TRANSPORT": "smtp",
                    "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.relay.port),
                    "NEWSLETTER_SMTP_CONNECTIONS": str(CONNECTIONS), "NEWSLETTER_DELIVERY_BATCH_SIZE": str(BATCH),
                    "NEWSLETTER_SMTP_MAX_ATTEMPTS": "1", "NEWSLETTER_SMTP_RETRY_DELAY": "0.01",
                    "NEWSLETTER_SMTP_TIMEOUT": "5", "NEWSLETTER_UNCERTAIN_POLICY": self.policy,
                    "NEWSLETTER_PUBLIC_DIR": str(self.folder / "public"),
                    "NEWSLETTER_VAR_DIR": str(self.folder / "var")}
        self.settings = load_settings(content, env=self.env)
        assert self.settings.uncertain_policy == self.policy and self.settings.delivery_batch_size == BATCH
        self._clock = frozen_clock(START)
        self.clock = self._clock.__enter__()
        self.engine = open_database(self.db_url)
        self.addresses = []
        for i in range(self.n_subscribers + self.n_weekly):
            address = f"sub{i}@example.com"
            store.add(self.engine, self.settings, address, name=NAMES[i % len(NAMES)],
                      frequency="weekly" if i >= self.n_subscribers else "daily", confirmed=True,
                      consent="I agree to receive the newsletter (property test).")
            self.addresses.append(address)
        return self

    def __exit__(self, *exc) -> None:
        self.relay.switch("accept")
        self._clock.__exit__(*exc)
        self.engine.dispose()

    # -- the actions --------------------------------------------------------------------------

    def today(self) -> date:
        from pipeline.scheduling import slots
        return slots.today(self.settings)

    def day(self, offset: int | None) -> str:
        """Today plus ``offset`` days; None: the next day something is scheduled (else today)."""
        if offset is None:
            from pipeline.scheduling import calendar
            coming = [e.day for e in calendar.entries(self.engine, start=self.today(), states=("scheduled",))]
            return min(coming, default=self.today()).isoformat()
        return (self.today() + timedelta(days=offset)).isoformat()

    def cli(self, *args: str):
        from pipeline.cli import cli
        from pipeline.errors import NewsletterError

        result = CliRunner().invoke(cli, ["--content", str(self.content_dir), *args], env=self.env)
        self.log.append(f"  {' '.join(args)} -> {result.exit_code}: {result.output.strip()[-300:]}")
        # bad input or a refused command is one line and a non-zero exit, never a traceback
        assert result.exception is None or isinstance(result.exception, (SystemExit, NewsletterError)), \
            (args, repr(result.exception), result.output)
        return result

    def wake(self) -> None:
        from pipeline.scheduling import schedule
        runs = schedule.wake(self.engine, self.settings, self.content_dir, HOLDER)
        self.log.append("  wake -> " + ", ".join(f"{r.day} {r.kind} {r.state} ({r.sent} sent; {r.error or ''})"
                                                 for r in runs if r is not None))

    def do(self, action: tuple) -> None:
        name, *args = action
        self.log.append(f"{self.clock.now().isoformat()} {action}")
        if name == "add":
            n, offset, at = args
            self.cli("schedule", "add", self.slugs[n], "--on", self.day(offset), *(("--at", at) if at else ()))
        elif name == "move":
            self.cli("schedule", "move", self.slugs[args[0]], "--to", self.day(args[1]))
        elif name == "cancel":
            self.cli("schedule", "cancel", self.slugs[args[0]])
        elif name == "send":
            offset, resume = args
            self.cli("send", "--date", self.day(offset), "--no-progress", *(("--resume",) if resume else ()))
        elif name == "wake":
            self.wake()
        elif name == "next-send":
            self.clock.set(self.next_seven() + timedelta(minutes=args[0]))
            self.wake()
        elif name == "jump":
            self.clock.advance(hours=args[0])
        elif name == "relay":
            mode, which = args
            self.relay.switch(mode, frozenset(self.addresses[i] for i in which if i < len(self.addresses)))
        elif name in ("pause", "resume"):
            self.cli(name)
        elif name == "kill":
            offset, resume, after = args
            self.in_subprocess(self.day(offset), resume, after, kill=True)
        elif name == "stop":
            offset, resume, after = args
            self.in_subprocess(self.day(offset), resume, after, kill=False)
        else:  # pragma: no cover
            raise AssertionError(action)

    def sends(self, day: str) -> bool:
        """Would ``send --date DAY`` send anything (the one decider, asked in process)?"""
        from pipeline.content.library import load_library
        from pipeline.errors import NewsletterError
        from pipeline.scheduling.plan import plan_day
        try:
            return plan_day(self.engine, self.settings, load_library(self.content_dir), date.fromisoformat(day)).sends
        except NewsletterError:
            return False

    def next_seven(self) -> datetime:
        """The next 07:00 in the newsletter's time zone after now."""
        from pipeline.scheduling import slots
        tz = slots.zone(self.settings)
        local = self.clock.now().astimezone(tz)
        candidate = local.replace(hour=7, minute=0, second=0, microsecond=0)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), candidate.time(), tzinfo=tz)
        return candidate.astimezone(UTC)

    def in_subprocess(self, day: str, resume: bool, after: int, *, kill: bool) -> None:
        """``newsletter send --date DAY`` in a real process on the same fake timeline, the
        relay slow; once ``after`` more messages reached the relay, SIGKILL it (``kill``)
        or ask it to stop with ``newsletter stop``."""
        if self.subprocesses >= SUBPROCESS_ACTIONS or not self.sends(day):
            return
        self.subprocesses += 1
        before_mode, before_list = self.relay.mode, self.relay.greylisted
        self.relay.switch("slow")
        base = self.relay.count()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_"))}
        env.update(self.env, NEWSLETTER_FAKE_NOW=self.clock.now().isoformat(), PYTHONUNBUFFERED="1")
        began = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--content", str(self.content_dir), "send",
                                 "--date", day, "--no-progress", *(("--resume",) if resume else ())],
                                env=env, cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and self.relay.count() < base + after and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                if kill:
                    proc.send_signal(signal.SIGKILL)
                    self.kills += 1
                else:
                    self.cli("stop", "--date", day, "--by", "Zoë Ångström")
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out.decode("utf-8", "replace")
        self.log.append(f"  subprocess send {day} resume={resume} {'kill' if kill else 'stop'} after {after} "
                        f"-> {proc.returncode}: {text.strip()[-300:]}")
        assert "Traceback" not in text, text
        if not kill:
            assert proc.returncode in (0, 1, 3, 4), text  # done, refused, stopped, unfinished
        # the process's clock ran on in real time: the frozen clock follows it
        self.clock.advance(seconds=time.monotonic() - began + 1)
        self.relay.switch(before_mode, before_list)

    # -- the end of the month ------------------------------------------------------------------

    def finish(self) -> None:
        """A healthy relay, sending released, then what the alerts say to do."""
        from pipeline.ops import status

        self.log.append(f"{self.clock.now().isoformat()} finish")
        from pipeline.scheduling import calendar
        from pipeline.delivery import ledger

        self.relay.switch("accept")
        self.cli("resume")
        self.wake()
        # the daemon lives on past every day something is planned or recorded for
        with self.engine.connect() as conn:
            days = [d for (d,) in conn.execute(select(ledger.ISSUES.c.date))]
        days += [e.day for e in calendar.entries(self.engine)]
        last = max(days, default=self.today())
        while self.today() <= last:
            self.clock.set(self.next_seven() + timedelta(minutes=1))
            self.wake()
        for _round in range(3):
            report = status.build(self.engine, self.settings).to_json()
            commands = {m.group(1) for a in report["alerts"] for m in RESUME.finditer(a["message"])}
            for command in sorted(commands):
                self.cli(*command.split()[1:], "--no-progress")
            self.clock.advance(minutes=6)
            self.wake()

    # -- the checks ------------------------------------------------------------------------------

    def rows(self) -> list[tuple]:
        """(issue, row id, subscriber id, email, state, uncertain, Message-ID) of every ledger row."""
        from pipeline.delivery import ledger
        from pipeline.delivery.send_loop import message_id_for

        found = []
        with self.engine.connect() as conn:
            issues = [ledger.IssueInfo.of(r) for r in conn.execute(select(ledger.ISSUES))]
            by_id = {i.id: i for i in issues}
            D = ledger.DELIVERIES
            for r in conn.execute(select(D.c.id, D.c.issue_id, D.c.subscriber_id, D.c.email, D.c.state,
                                         D.c.uncertain)):
                issue = by_id[r.issue_id]
                found.append((issue, r.id, r.subscriber_id, r.email, r.state, r.uncertain,
                              message_id_for(self.settings, issue, r.id)))
        return found

    def explain(self) -> str:
        return "\n".join(self.log[-60:])

    def check(self, final: bool = False) -> None:
        from pipeline.ops import status

        rows = self.rows()
        got = self.relay.received()
        known = {(email, mid) for _i, _r, _s, email, _st, _u, mid in rows}
        stray = [k for k in got if k not in known]
        assert not stray, f"the relay has messages no ledger row explains: {stray}\n{self.explain()}"
        # 1. a row reaches the relay twice only within the in-flight bound
        extra_total, uncertain_total = 0, 0
        reached: dict[tuple[str, str], set[str]] = defaultdict(set)  # (address, slug) -> issue keys
        for issue, _rid, _sid, email, state, uncertain, mid in rows:
            copies = got[(email, mid)]
            assert copies - 1 <= uncertain, \
                f"{email} got {copies} copies of issue {issue.key} (row uncertain {uncertain})\n{self.explain()}"
            extra_total += max(copies - 1, 0)
            uncertain_total += uncertain
            if copies:
                for slug in issue.articles:
                    reached[(email, slug)].add(issue.key)
        assert extra_total <= uncertain_total <= self.kills * BATCH * CONNECTIONS, \
            (extra_total, uncertain_total, self.kills, self.explain())
        # 2. no (subscriber, article) pair from two issues
        twice = {pair: keys for pair, keys in reached.items() if len(keys) > 1}
        assert not twice, f"delivered twice: {twice}\n{self.explain()}"
        # 3. status never says sent while the relay disagrees with the ledger
        report = status.build(self.engine, self.settings).to_json()
        by_key: dict[str, list] = defaultdict(list)
        for row in rows:
            by_key[row[0].key].append(row)
        for run in report["runs"]:
            issue_rows = by_key.get(run["issue_key"], [])
            sent = {r[1] for r in issue_rows if r[4] == "sent"}
            at_relay = {r[1] for r in issue_rows if got[(r[3], r[6])]}
            if issue_rows:
                assert run["counts"]["sent"] == len(sent), (run, self.explain())
            assert sent <= at_relay, f"ledger says sent, relay never got: {run}\n{self.explain()}"
            unexplained = {r[1] for r in issue_rows if r[1] in at_relay - sent
                           and not (r[5] > 0 or r[4] in ("uncertain", "sending"))}
            assert not unexplained, f"relay got rows the ledger does not count: {run}\n{self.explain()}"
            if run["state"] == "sent":
                assert all(r[4] in ("sent", "skipped", "uncertain", "failed", "bounced") for r in issue_rows), \
                    f"status says sent, ledger has rows to go: {run}\n{self.explain()}"
        if final:
            self.check_nobody_missed(rows, got, report)

    def check_nobody_missed(self, rows, got, report) -> None:
        from pipeline.delivery import ledger

        alerting = {a["day"] for a in report["alerts"]}
        by_issue: dict[str, list] = defaultdict(list)
        for row in rows:
            by_issue[row[0].key].append(row)
        with self.engine.connect() as conn:
            issues = [ledger.IssueInfo.of(r) for r in conn.execute(select(ledger.ISSUES))]
        for issue in issues:
            issue_rows = by_issue.get(issue.key, [])
            if issue.audience_topic is None and issue.state != "composed":
                frequency_count = self.n_subscribers if issue.kind == "daily" else self.n_weekly
                assert len(issue_rows) == frequency_count, (issue.key, len(issue_rows), self.explain())
            reached_anyone = any(got[(r[3], r[6])] or r[4] == "sent" for r in issue_rows)
            if not reached_anyone:
                continue
            allowed = ("sent", "skipped") + (("uncertain",) if self.policy == "skip" else ())
            left = [(r[3], r[4]) for r in issue_rows if r[4] not in allowed]
            assert not left or issue.date.isoformat() in alerting, \
                f"issue {issue.key} left {left} silently (no alert)\n{self.explain()}"
            if left:
                # every alert was followed before this check; rows still open mean an alert that
                # does not name the one action (test_a_partly_sent_paused_day_alert_names_its_resume)
                named = [a for a in report["alerts"] if a["day"] == issue.date.isoformat()
                         and RESUME.search(a["message"])]
                assert named, f"issue {issue.key} left {left}, and no alert names `send --resume`\n{self.explain()}"
                raise AssertionError(f"issue {issue.key} still has {left} after following every alert\n{self.explain()}")
            for r in issue_rows:
                assert r[4] != "sent" or got[(r[3], r[6])], (r, self.explain())
            for r in issue_rows:
                if r[4] == "uncertain":  # skip policy: the kill's bound, recorded in the ledger
                    assert r[5] > 0
