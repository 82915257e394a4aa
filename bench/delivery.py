"""Delivery benchmark: our SMTP send against Postfix's smtp-source, same run, same sink, same message size.

    .venv/bin/python bench/delivery.py                   # 100,000 recipients, 8 connections, unsigned
    .venv/bin/python bench/delivery.py --dkim            # unsigned, then DKIM-signed, each against smtp-source
    .venv/bin/python bench/delivery.py --dkim --n 1000000
    .venv/bin/python bench/delivery.py --dkim --signed-only --processes 0   # signing in the sending process

It creates N synthetic confirmed subscribers in a fresh SQLite file, renders the
microneedling issue and starts ``smtp-sink`` on 127.0.0.1.  Each variant (unsigned;
with ``--dkim`` also signed, with a key generated for the run) runs
``pipeline.delivery.deliver.send_issue`` (transport smtp) in a child process on its own
copy of the database, so its peak RSS and CPU time can be read from ``wait4``; right
after it, ``smtp-source`` sends N messages of that variant's size over the same number
of connections to the same sink.  Each ratio compares two adjacent runs, so a busy
machine weighs on both sides.  See bench/README.md.
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
    """Runs in its own process: the send, so that its peak RSS and CPU time are ours alone."""
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
        pstats.Stats(profiler, stream=sys.stderr).sort_stats(os.environ.get("PROF_SORT", "tottime")).print_stats(int(os.environ.get("PROF_N", "25")))
    import gc
    gc.collect()  # the signer goes, and with it its worker processes (joined, so wait4 counts their CPU)
    import resource
    me, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"sent": summary.sent, "deferred": summary.deferred, "failed": summary.failed,
                      "elapsed": elapsed, "error": summary.error, "sender_cpu": me.ru_utime + me.ru_stime,
                      "workers_cpu": workers.ru_utime + workers.ru_stime}))


def timed(argv: list[str], **popen) -> tuple[subprocess.Popen, bytes, float, object]:
    """Run ``argv``; (process, its stdout, wall seconds, rusage from wait4: the process and its children)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, **popen)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc, out, time.perf_counter() - started, usage


def run_ours(overrides: dict, profile: bool) -> dict:
    proc, out, _, usage = timed([sys.executable, __file__, "--child", json.dumps(overrides)]
                                + (["--profile"] if profile else []))
    if proc.returncode != 0:
        raise SystemExit(f"send failed (exit {proc.returncode})")
    result = json.loads(out)
    result["rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    result["cpu"] = usage.ru_utime + usage.ru_stime
    return result


def run_source(n: int, connections: int, size: int, port: int) -> dict:
    proc, _, elapsed, usage = timed([SOURCE, "-d", "-s", str(connections), "-m", str(n), "-l", str(size),
                                     f"127.0.0.1:{port}"])
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed (exit {proc.returncode})")
    return {"elapsed": elapsed, "cpu": usage.ru_utime + usage.ru_stime}


def message_size(rendered, settings) -> int:
    """Bytes of one message as sent (signed when the settings sign)."""
    from pipeline.delivery.message import MessageTemplate, dkim_signer
    from pipeline.delivery.send_loop import personal_for

    data = MessageTemplate(rendered, settings).render_to("reader1@bench.example", "Zoë Brontë",
                                                         personal=personal_for(settings, 1, "Zoë Brontë"),
                                                         message_id=f"<bench.1@{settings.sender_domain}>")
    signer = dkim_signer(settings)
    return len(signer.sign(data) if signer is not None else data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="recipients (default 100,000)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="delivery_batch_size (default: the setting's default)")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dkim", action="store_true", help="also run a DKIM-signed send (a key is generated)")
    parser.add_argument("--signed-only", action="store_true", help="with --dkim: skip the unsigned send")
    parser.add_argument("--processes", type=int, default=None,
                        help="dkim_sign_processes for the signed send (default: the setting's default)")
    parser.add_argument("--ed25519", action="store_true", help="with --dkim: add the Ed25519 second signature")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each send to stderr")
    parser.add_argument("--skip-source", action="store_true", help="do not run smtp-source")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", default=None, metavar="1,2,4",
                        help="N sender processes sharing one send on PostgreSQL instead (bench/nodes.py)")
    if "--nodes" in sys.argv[1:]:  # the sender nodes benchmark has its own options (bench/nodes.py --help)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import nodes
        return nodes.main(sys.argv[1:])
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT))
    ensure_postfix_tools()
    from pipeline.content.library import load_library
    from pipeline.rendering.compose import compose_issue
    from pipeline.database import open_database
    from pipeline.rendering.render import render_issue

    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    base = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": args.port, "smtp_security": "none",
            "smtp_connections": args.connections, "smtp_messages_per_connection": 1_000_000,
            "secret_key": "bench-secret-" + "x" * 32, "smtp_timeout": 60.0}
    if args.batch:
        base["delivery_batch_size"] = args.batch
    variants = []
    if not (args.dkim and args.signed_only):
        variants.append(("unsigned", {}))
    if args.dkim:
        signed = dkim_overrides(work, args.ed25519)
        if args.processes is not None:
            signed["dkim_sign_processes"] = args.processes
        variants.append(("signed" + (" (RSA + Ed25519)" if args.ed25519 else ""), signed))
    library = load_library(ROOT / "content")
    settings = library.settings.replace(**base)
    rendered = render_issue(compose_issue(library, ISSUE_DATE, number=1), settings)
    first = work / "bench-0.db"
    engine = open_database(f"sqlite:///{first}")
    t0 = time.perf_counter()
    make_subscribers(engine, settings, args.n)
    engine.dispose()
    for i in range(1, len(variants)):  # each send gets its own copy of the untouched database
        shutil.copyfile(first, work / f"bench-{i}.db")
    print(f"{args.n:,} subscribers written in {time.perf_counter() - t0:.1f}s; {args.connections} connections; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)

    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{args.port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_for_port(args.port)
        for i, (name, extra) in enumerate(variants):
            overrides = base | extra | {"database_url": f"sqlite:///{work / f'bench-{i}.db'}"}
            size = message_size(rendered, settings.replace(**overrides))
            ours = run_ours(overrides, args.profile)
            rate = ours["sent"] / ours["elapsed"]
            print(f"{name:9} ours:        {ours['sent']:,} x {size:,} bytes in {ours['elapsed']:.2f}s = "
                  f"{rate:,.0f} msg/s, {1000 * ours['cpu'] / max(ours['sent'], 1):.2f} ms CPU/msg (deferred "
                  f"{ours['deferred']}, failed {ours['failed']}), peak RSS {ours['rss_mb']:.0f} MB", flush=True)
            if ours["workers_cpu"]:
                print(f"{'':9} CPU/msg: sender {1000 * ours['sender_cpu'] / max(ours['sent'], 1):.2f} ms, signing "
                      f"workers {1000 * ours['workers_cpu'] / max(ours['sent'], 1):.2f} ms", flush=True)
            if ours["error"]:
                print(f"  stopped early: {ours['error']}")
            if args.skip_source:
                continue
            source = run_source(args.n, args.connections, size, args.port)
            source_rate = args.n / source["elapsed"]
            print(f"{name:9} smtp-source: {args.n:,} x {size:,} bytes in {source['elapsed']:.2f}s = "
                  f"{source_rate:,.0f} msg/s, {1000 * source['cpu'] / args.n:.2f} ms CPU/msg", flush=True)
            rows.append((name, rate, source_rate, ours["rss_mb"]))
        for name, rate, source_rate, rss in rows:
            print(f"ratio {name} ours/smtp-source: {rate / source_rate:.2f} (target >= 0.5); peak RSS {rss:.0f} MB "
                  f"(target < 150 MB at 1,000,000)")
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


def dkim_overrides(work: Path, ed25519: bool = False) -> dict:
    """Throwaway keys for the run (openssl): RSA-2048, and Ed25519 if asked, in the run's temporary folder."""
    key = work / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    values = {"dkim_selector": "bench", "dkim_private_key": key.read_text()}
    if ed25519:
        ed = work / "dkim-ed25519.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(ed)], check=True,
                       capture_output=True)
        values |= {"dkim_ed25519_selector": "bench-ed", "dkim_ed25519_private_key": ed.read_text()}
    return values


if __name__ == "__main__":
    main()
