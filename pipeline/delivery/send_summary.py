"""What one send reports: the ``SendSummary`` it returns and the live progress bar.

``pipeline.delivery.deliver.send_issue`` fills a ``SendSummary`` as the run goes (the
counts of this run, the issue's state afterwards, why it stopped early); the
CLI prints its ``lines()``.  ``ProgressBar`` shows the run on stderr.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline import clock


@dataclass
class SendSummary:
    issue_key: str
    recipients: int = 0  # rows in the ledger (or, for a dry run, who would get it)
    sent: int = 0  # this run
    deferred: int = 0  # rows left deferred at the end
    failed: int = 0  # this run
    bounced: int = 0  # this run
    skipped: int = 0  # this run
    uncertain: int = 0  # rows left uncertain in the ledger at the end (not resent, not closed)
    in_doubt: int = 0  # rows of the issue ever uncertain (in flight at a crash, or no reply in time)
    recovered: int = 0  # rows found in flight from a dead process at the start of this run
    decided: int = 0  # uncertain rows resent or closed by `--uncertain` at the start of this run
    pool: str = ""  # "the relay refused 4 connection(s) ...: sent on 4 of 8" when it took fewer
    previously_sent: int = 0  # rows already sent before this run
    elapsed: float = 0.0
    dry_run: bool = False
    state: str = ""  # the issue's state afterwards: sent or unfinished
    error: str = ""  # why the run stopped early, if it did
    stopped: str = ""  # "stopped by NAME at HH:MM, 904 of 3,000 sent" when a stop request ended it
    lease_lost: bool = False  # another process took the issue over; this run wrote nothing more

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def lines(self) -> list[str]:
        if self.dry_run:
            return [f"issue {self.issue_key}: dry run, {self.recipients} recipient(s), nothing sent"]
        out = [f"issue {self.issue_key}: {self.state or 'not finished'}",
               f"  sent {self.sent}  deferred {self.deferred}  failed {self.failed}  bounced {self.bounced}  "
               f"skipped {self.skipped}  uncertain {self.uncertain}",
               f"  recipients {self.recipients} (sent before this run {self.previously_sent})  "
               f"elapsed {self.elapsed:.1f}s  {self.rate:.0f} messages/s"]
        if self.recovered or self.in_doubt:
            out.append(f"  {self.recovered} found in flight from a stopped process; {self.in_doubt} row(s) of this "
                       f"issue were ever uncertain (the relay may have had them when they were sent again)")
        if self.pool:
            out.append(f"  {self.pool}")
        if self.stopped:
            out.append(f"  {self.stopped}")
        elif self.error:
            out.append(f"  stopped: {self.error}")
        return out


class ProgressBar:
    """A rich progress bar on stderr: done/total, percent, rate, elapsed, ETA."""

    def __init__(self, total: int, key: str):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn(f"issue {key}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        self.task = self.progress.add_task("send", total=total, rate="")
        self.started = clock.monotonic()
        self.done = 0

    def __enter__(self) -> "ProgressBar":
        self.progress.start()
        return self

    def advance(self, count: int) -> None:
        self.done += count
        rate = self.done / max(clock.monotonic() - self.started, 1e-6)
        self.progress.update(self.task, advance=count, rate=f"{rate:,.0f} msg/s")

    def __exit__(self, *exc) -> None:
        self.progress.stop()
