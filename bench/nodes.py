"""Sender nodes benchmark: N processes share one send on one PostgreSQL, against smtp-sink.

    .venv/bin/python bench/delivery.py --nodes 1,2,4            # 20,000 recipients, 4 connections a node
    .venv/bin/python bench/nodes.py --nodes 1,2,4 --n 50000 --connections 8

It starts a throwaway PostgreSQL server (initdb + pg_ctl, PostgreSQL's default
durability: fsync and synchronous_commit on) and ``smtp-sink`` on 127.0.0.1.  For
each N it creates a fresh database with the same synthetic subscribers, then starts
N processes at once, each running ``pipeline.delivery.deliver.send_issue`` (so each
joins the send as a node, ``pipeline/delivery/claims.py``).  It reports the
aggregate rate (messages over the time from the first node's start of sending to
the last node's end), each node's share, and where the time went: the nodes' CPU
(``wait4``), PostgreSQL's CPU (the postmaster's own and its exited backends',
``/proc``), smtp-sink's CPU, and the machine's idle time.  Then ``smtp-source``
sends the same number of messages of the same size over as many connections as
the largest run used, to the same sink: the ceiling of this machine and sink.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from delivery import (ISSUE_DATE, SINK, ensure_postfix_tools, make_subscribers, message_size,  # noqa: E402
                      run_source, wait_for_port)

TICK = os.sysconf("SC_CLK_TCK")


def pg_bin(name: str) -> str:
    import glob
    found = shutil.which(name) or (sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [None])[-1]
    if not found:
        raise SystemExit(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return found


class Postgres:
    """A PostgreSQL server in a temporary folder on a free port (as nobody when run as root)."""

    def __init__(self, port: int):
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="bench-nodes-pg-"))
        self.user: dict = {}
        if os.geteuid() == 0:
            import pwd
            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            self.user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.data = self.folder / "data"
        self.env = {**os.environ, "LC_ALL": "C", "HOME": str(self.folder)}

    def run(self, *argv: str) -> None:
        subprocess.run(argv, cwd=self.folder, env=self.env, check=True, capture_output=True, timeout=120, **self.user)

    def start(self) -> None:
        self.run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-locale")
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o",
                 f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=200", "start")

    def stop(self) -> None:
        subprocess.run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], cwd=self.folder,
                       env=self.env, capture_output=True, timeout=60, **self.user)
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create(self, db: str) -> str:
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
            conn.execute(f'CREATE DATABASE "{db}"')
        return self.url(db)

    def commits(self, db: str) -> int:
        """Transactions committed in ``db`` so far (pg_stat_database)."""
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,)).fetchone()[0]

    def cpu(self) -> float:
        """Seconds of CPU of the postmaster and every backend it has reaped, plus the live ones."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        total = proc_cpu(master, children=True)
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != master:
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().split()
                except OSError:
                    continue
                if stat[3] == str(master):
                    total += (int(stat[13]) + int(stat[14])) / TICK
        return total


def proc_cpu(pid: int, children: bool = False) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    fields = [int(x) for x in stat[11:15]]  # utime stime cutime cstime
    return sum(fields if children else fields[:2]) / TICK


def idle_seconds() -> float:
    """The machine's idle CPU seconds so far (all cores)."""
    return int(Path("/proc/stat").read_text().split()[4]) / TICK


def child(overrides: dict) -> None:
    """One node: render the issue and send it (it joins the send under way)."""
    from pipeline.content.library import load_library
    from pipeline.database import open_database
    from pipeline.delivery.deliver import send_issue
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue

    library = load_library(ROOT / "content")
    s = library.settings.replace(**overrides)
    engine = open_database(s.database_url)
    rendered = render_issue(compose_issue(library, ISSUE_DATE, number=1), s)
    started = time.time()
    summary = send_issue(engine, s, rendered, progress=False)
    ended = time.time()
    engine.dispose()
    print(json.dumps({"sent": summary.sent, "state": summary.state, "error": summary.error, "started": started,
                      "ended": ended}))


def run_nodes(count: int, overrides: dict) -> dict:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(overrides)], stdout=subprocess.PIPE)
             for _ in range(count)]
    results = []
    for proc in procs:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"a node failed (exit {os.waitstatus_to_exitcode(status)})")
        results.append(json.loads(out) | {"cpu": usage.ru_utime + usage.ru_stime})
    return {"nodes": results, "sent": sum(r["sent"] for r in results),
            "elapsed": max(r["ended"] for r in results) - min(r["started"] for r in results),
            "cpu": sum(r["cpu"] for r in results)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,4", help="node counts to run, e.g. 1,2,4")
    parser.add_argument("--n", type=int, default=20_000, help="recipients (default 20,000)")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per node (default 4)")
    parser.add_argument("--port", type=int, default=2526, help="smtp-sink's port")
    parser.add_argument("--pg-port", type=int, default=5499)
    parser.add_argument("--skip-source", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    counts = [int(x) for x in args.nodes.split(",") if x.strip()]
    ensure_postfix_tools()
    from pipeline.content.library import load_library
    from pipeline.database import open_database
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue

    base = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": args.port, "smtp_security": "none",
            "smtp_connections": args.connections, "smtp_messages_per_connection": 1_000_000,
            "secret_key": "bench-secret-" + "x" * 32, "smtp_timeout": 60.0, "send_nodes": "share"}
    library = load_library(ROOT / "content")
    settings = library.settings.replace(**base)
    size = message_size(render_issue(compose_issue(library, ISSUE_DATE, number=1), settings), settings)
    pg = Postgres(args.pg_port)
    pg.start()
    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{args.port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(args.port)
        print(f"{args.n:,} recipients x {size:,} bytes; {args.connections} connections a node; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        for count in counts:
            url = pg.create(f"bench_nodes_{count}")
            engine = open_database(url)
            make_subscribers(engine, settings, args.n)
            engine.dispose()
            pg_before, sink_before, idle_before = pg.cpu(), proc_cpu(sink.pid), idle_seconds()
            commits = pg.commits(f"bench_nodes_{count}")
            result = run_nodes(count, base | {"database_url": url})
            pg_cpu, sink_cpu = pg.cpu() - pg_before, proc_cpu(sink.pid) - sink_before
            time.sleep(0.6)  # the backends' statistics reach pg_stat_database within half a second
            commits = pg.commits(f"bench_nodes_{count}") - commits
            idle = idle_seconds() - idle_before
            rate = result["sent"] / result["elapsed"]
            shares = sorted(r["sent"] for r in result["nodes"])
            print(f"{count} node(s): {result['sent']:,} sent in {result['elapsed']:.2f}s = {rate:,.0f} msg/s; "
                  f"shares {shares}; CPU s: nodes {result['cpu']:.1f}, PostgreSQL {pg_cpu:.1f}, smtp-sink "
                  f"{sink_cpu:.1f}, machine idle {idle:.1f} (load {os.getloadavg()[0]:.1f}); "
                  f"{commits / max(result['sent'], 1):.2f} commits/msg; ms CPU/msg: nodes "
                  f"{1000 * result['cpu'] / max(result['sent'], 1):.2f}, PostgreSQL "
                  f"{1000 * pg_cpu / max(result['sent'], 1):.2f}", flush=True)
            rows.append((count, rate))
        if not args.skip_source:
            sessions = max(counts) * args.connections
            source = run_source(args.n, sessions, size, args.port)
            ceiling = args.n / source["elapsed"]
            print(f"smtp-source: {args.n:,} x {size:,} bytes over {sessions} connections in {source['elapsed']:.2f}s "
                  f"= {ceiling:,.0f} msg/s (the ceiling), {1000 * source['cpu'] / args.n:.2f} ms CPU/msg", flush=True)
        one = rows[0][1] if rows and rows[0][0] == 1 else None
        for count, rate in rows:
            if one and count != 1:
                print(f"{count} nodes / 1 node: {rate / one:.2f}x")
    finally:
        sink.terminate()
        sink.wait()
        pg.stop()


if __name__ == "__main__":
    main()
