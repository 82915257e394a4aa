"""Delivery benchmark: our SMTP send against Postfix's smtp-source, same run, same sink.

    .venv/bin/python bench/delivery.py                 # 100,000 recipients, 8 connections
    .venv/bin/python bench/delivery.py --n 1000000     # memory stays flat: peak RSS is reported
    .venv/bin/python bench/delivery.py --dkim          # the cost of signing every message

It creates N synthetic confirmed subscribers in a fresh SQLite file, renders the
microneedling issue, starts ``smtp-sink`` on 127.0.0.1, and runs
``pipeline.delivery.deliver.send_issue`` (transport smtp) in a child process so its peak
RSS can be read from ``wait4``.  Then ``smtp-source`` sends the same number of
messages of the same size over the same number of connections to the same sink.
It prints both rates, their ratio and our peak RSS.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"
ISSUE_DATE = date(2026, 3, 2)


def ensure_postfix_tools() -> None:
    """Install Postfix for smtp-sink/smtp-source if missing, and leave no Postfix daemon running."""
    if not (Path(SINK).exists() and Path(SOURCE).exists()):
        print("installing postfix (for smtp-sink and smtp-source)...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"], check=True, env=env)
    stop_postfix_master()


def stop_postfix_master() -> None:
    """The package's post-install may start the master daemon; stop it (by its own pid file)."""
    if shutil.which("postfix") is None:
        return
    subprocess.run(["postfix", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = Path("/var/spool/postfix/pid/master.pid")
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return
        print(f"postfix master (pid {pid}) still running after `postfix stop`; stopping it", file=sys.stderr)
        os.kill(pid, signal.SIGTERM)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"smtp-sink did not start on port {port}")


def make_subscribers(engine, settings, n: int) -> None:
    """N confirmed daily subscribers, written in chunks (never N rows in memory)."""
    from sqlalchemy import insert
    from pipeline import clock
    from subscribers.models import Subscriber
    from subscribers.tokens import email_hash

    now = clock.now()
    table = Subscriber.__table__
    chunk = 20_000
    names = ("Amy Murtagh", "Zoë Brontë", 'Jo "JJ" Smith', None)
    with engine.begin() as conn:
        for start in range(0, n, chunk):
            rows = []
            for i in range(start, min(n, start + chunk)):
                email = f"reader{i}@bench.example"
                rows.append(dict(email=email, email_key=email, email_hash=email_hash(settings, email),
                                 name=names[i % len(names)], status="confirmed", frequency="daily",
                                 created_at=now, updated_at=now, pending_at=now, confirmed_at=now))
            conn.execute(insert(table), rows)


def child(args) -> None:
    """Runs in its own process: the send, so that its peak RSS is ours alone."""
    sys.path.insert(0, str(ROOT))
    from pipeline.content.library import load_library
    from pipeline.rendering.compose import compose_issue
    from pipeline.database import open_database
    from pipeline.delivery.deliver import send_issue
    from pipeline.rendering.render import render_issue

    settings = json.loads(args.child)
    library = load_library(ROOT / "content")
    s = library.settings.replace(**settings)
    engine = open_database(s.database_url)
    rendered = render_issue(compose_issue(library, ISSUE_DATE, number=1), s)
    if args.profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    summary = send_issue(engine, s, rendered, progress=False)
    elapsed = time.perf_counter() - started
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print(json.dumps({"sent": summary.sent, "deferred": summary.deferred, "failed": summary.failed,
                      "elapsed": elapsed, "error": summary.error}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="recipients (default 100,000)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="delivery_batch_size (default: the setting's default)")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dkim", action="store_true", help="sign every message (a key is generated for the run)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the send to stderr")
    parser.add_argument("--skip-source", action="store_true", help="do not run smtp-source")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT))
    ensure_postfix_tools()
    from pipeline.content.library import load_library
    from pipeline.rendering.compose import compose_issue
    from pipeline.database import open_database
    from pipeline.delivery.message import MessageTemplate
    from pipeline.rendering.render import render_issue

    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    db_url = f"sqlite:///{work / 'bench.db'}"
    overrides = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": args.port, "smtp_security": "none",
                 "smtp_connections": args.connections, "smtp_messages_per_connection": 1_000_000,
                 "database_url": db_url, "secret_key": "bench-secret-" + "x" * 32, "smtp_timeout": 60.0}
    if args.batch:
        overrides["delivery_batch_size"] = args.batch
    if args.dkim:
        overrides |= dkim_overrides(work)
    library = load_library(ROOT / "content")
    settings = library.settings.replace(**overrides)
    rendered = render_issue(compose_issue(library, ISSUE_DATE, number=1), settings)
    size = MessageTemplate(rendered, settings).size
    engine = open_database(db_url)
    t0 = time.perf_counter()
    make_subscribers(engine, settings, args.n)
    print(f"{args.n:,} subscribers written in {time.perf_counter() - t0:.1f}s; message {size:,} bytes; "
          f"{args.connections} connections", flush=True)
    engine.dispose()

    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{args.port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(args.port)
        ours = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(overrides)]
                                + (["--profile"] if args.profile else []), stdout=subprocess.PIPE)
        out = ours.stdout.read()
        _, status, usage = os.wait4(ours.pid, 0)
        ours.returncode = os.waitstatus_to_exitcode(status)
        if ours.returncode != 0:
            raise SystemExit(f"send failed (exit {ours.returncode})")
        result = json.loads(out)
        rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
        our_rate = result["sent"] / result["elapsed"]
        print(f"ours:        {result['sent']:,} sent in {result['elapsed']:.2f}s = {our_rate:,.0f} msg/s "
              f"(deferred {result['deferred']}, failed {result['failed']}), peak RSS {rss_mb:.0f} MB", flush=True)
        if result["error"]:
            print(f"  stopped early: {result['error']}")
        if args.skip_source:
            return
        started = time.perf_counter()
        subprocess.run([SOURCE, "-d", "-s", str(args.connections), "-m", str(args.n), "-l", str(size),
                        f"127.0.0.1:{args.port}"], check=True, stdout=subprocess.DEVNULL)
        source_elapsed = time.perf_counter() - started
        source_rate = args.n / source_elapsed
        print(f"smtp-source: {args.n:,} sent in {source_elapsed:.2f}s = {source_rate:,.0f} msg/s")
        print(f"ratio ours/smtp-source: {our_rate / source_rate:.2f} (target >= 0.5); "
              f"peak RSS {rss_mb:.0f} MB (target < 150 MB at 1,000,000)")
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


def dkim_overrides(work: Path) -> dict:
    """A throwaway 2048-bit key for the run (openssl), in the run's temporary folder."""
    key = work / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
    return {"dkim_selector": "bench", "dkim_private_key": key.read_text()}


if __name__ == "__main__":
    main()
