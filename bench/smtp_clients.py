"""Why pipeline.mail.transport has its own small SMTP client: the same pre-built message
sent to smtp-sink by three clients, in one run.

    .venv/bin/python bench/smtp_clients.py [--n 20000] [--connections 8] [--dkim]

- ours: ``SMTPConnection.send_batch`` (asyncio Protocol, PIPELINING across messages);
- with ``--dkim``, ours again with every message DKIM-signed (``DkimSigner.sign_batch``; a
  key is generated for the run), in the sending process and in worker processes;
- aiosmtplib: ``SMTP.sendmail`` on the same number of persistent connections;
- smtplib: one connection, ``sendmail`` (the issue's "about 2,000 per second" reference).

No database and no personalisation: only the client's cost per message.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.delivery import SINK, ensure_postfix_tools, wait_for_port  # noqa: E402


def message(settings) -> bytes:
    from pipeline.rendering.compose import compose_issue
    from pipeline.content.library import load_library
    from pipeline.rendering.issue import Personal
    from pipeline.delivery.message import MessageTemplate
    from pipeline.rendering.render import render_issue

    library = load_library(ROOT / "content")
    rendered = render_issue(compose_issue(library, date(2026, 3, 2), number=1), settings)
    url = settings.base_url + "/unsubscribe/" + "A" * 39
    return MessageTemplate(rendered, settings).render(to="reader@bench.example", personal=Personal(url, url),
                                                      message_id="<bench.1@my.klarity.health>")


async def ours(settings, data: bytes, n: int, connections: int, signer=None) -> int:
    from pipeline.mail.transport import SMTPConnection

    async def one(count: int) -> int:
        conn = await SMTPConnection.open(settings)
        sent = 0
        for start in range(0, count, 20):
            batch = [("reader@bench.example", data)] * min(20, count - start)
            if signer is not None:
                batch = [("reader@bench.example", m) for m in await signer.sign_batch([m for _, m in batch])]
            sent += sum(o.stage == "sent" for o in await conn.send_batch(settings.sender_address, batch, dot_safe=True))
        await conn.quit()
        return sent

    return sum(await asyncio.gather(*(one(n // connections) for _ in range(connections))))


async def with_aiosmtplib(settings, data: bytes, n: int, connections: int) -> int:
    import aiosmtplib

    async def one(count: int) -> int:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False)
        await client.connect()
        for _ in range(count):
            await client.sendmail(settings.sender_address, ["reader@bench.example"], data)
        await client.quit()
        return count

    return sum(await asyncio.gather(*(one(n // connections) for _ in range(connections))))


def with_smtplib(settings, data: bytes, n: int) -> int:
    conn = smtplib.SMTP(settings.smtp_host, settings.smtp_port)
    for _ in range(n):
        conn.sendmail(settings.sender_address, ["reader@bench.example"], data)
    conn.quit()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dkim", action="store_true", help="also ours with DKIM signing (in process, and in workers)")
    parser.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="worker processes for the signed run (default: one per core beyond the first)")
    args = parser.parse_args()
    ensure_postfix_tools()
    from pipeline.content.library import load_library

    settings = load_library(ROOT / "content").settings.replace(
        transport="smtp", smtp_host="127.0.0.1", smtp_port=args.port, smtp_timeout=60.0, secret_key="bench")
    data = message(settings)
    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{args.port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(args.port)
        print(f"{args.n:,} messages of {len(data):,} bytes, {args.connections} connections")
        runs = [("ours (pipelined asyncio)", lambda: asyncio.run(ours(settings, data, args.n, args.connections)))]
        if args.dkim:
            from pipeline.mail.dkim import DkimSigner
            key = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True).stdout
            for processes in (0, args.processes):
                signer = DkimSigner("bench", settings.sender_domain, key, processes=processes)
                runs.append((f"ours + DKIM, {processes} workers",
                             lambda signer=signer: asyncio.run(ours(settings, data, args.n, args.connections, signer))))
        runs += [("aiosmtplib", lambda: asyncio.run(with_aiosmtplib(settings, data, args.n, args.connections))),
                 ("smtplib, 1 connection", lambda: with_smtplib(settings, data, args.n // 4))]
        for name, run in runs:
            started = time.perf_counter()
            sent = run()
            elapsed = time.perf_counter() - started
            print(f"{name:26} {sent:>8,} sent in {elapsed:6.2f}s = {sent / elapsed:8,.0f} msg/s", flush=True)
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
