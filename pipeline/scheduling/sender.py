"""The daemon's two worker threads, apart from its scheduler.

- ``Sender``: does what is due (``Daemon.tick``, i.e. ``schedule.wake``) whenever
  the reconcile or the send-time job pokes it.  Pokes while it works are kept,
  so a send planned during a long send still happens right after it.  The
  scheduler's jobs only poke, so they never wait for SMTP.
- ``Heartbeat``: writes the daemon's heartbeat every ``reconcile_seconds``
  whatever else the process is doing, so ``newsletter status`` never calls a
  daemon dead in the middle of a send.
"""
from __future__ import annotations

import logging
import threading

from pipeline.delivery import leases

log = logging.getLogger("newsletter.run")


class Sender:
    def __init__(self, daemon):
        self.daemon = daemon
        self._poked = threading.Event()
        self._done = threading.Event()
        self._why = "reconcile"
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="newsletter-sender", daemon=True)
        self._thread.start()

    def poke(self, why: str) -> None:
        if why == "send time" or not self._poked.is_set():
            self._why = why
        self._poked.set()

    def _loop(self) -> None:
        while True:
            self._poked.wait()
            if self._done.is_set():
                return
            self._poked.clear()
            self._busy.set()
            try:
                self.daemon.tick(self._why)
            finally:
                self._busy.clear()

    def stop(self) -> None:
        """Wait for the work under way (a send starts no new message and records its replies in flight: the
        caller has set the stop flag) and end the thread."""
        self._done.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join()


class Heartbeat:
    def __init__(self, daemon):
        self.daemon = daemon
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="newsletter-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        d = self.daemon
        while not self._done.wait(max(float(d.settings.reconcile_seconds), 0.05)):
            try:
                leases.beat(d.engine, d.holder, d.started_at)
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("could not write the heartbeat: %s", exc)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
