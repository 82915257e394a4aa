"""Benchmark: importing subscribers from CSV, and the per-recipient token calls.

    .venv/bin/python bench/subscribers_import.py [--rows 100000] [--postgres URL]

Measures, in one run on a fresh SQLite file (and PostgreSQL when a URL is given):

- parsing and validating an N-row CSV (``csvio.parse``: email-validator per row),
- writing it (``store.import_rows``: executemany in chunks), then re-importing
  the same file (every row an update),
- two references measured in the same run, so the figures are ratios rather
  than absolute times that depend on the machine:
  the floor (``sqlite3`` executemany of the bare email and name into a plain
  table) and the naive way (one ``session.add`` per row and one commit, on a
  10,000-row sample, scaled to N),
- ``unsubscribe_url`` and ``read_token`` per call, against one bare
  HMAC-SHA256 of a short message.

Results are printed and written to ``bench/results/subscribers_import.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.database import dispose_all, open_database, transaction  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from subscribers import csvio, store, tokens  # noqa: E402
from subscribers.models import Subscriber  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


def make_csv(rows: int, topics: list[str]) -> bytes:
    rng = random.Random(5)
    lines = ["email,name,topics,frequency,consent,consent_version"]
    for i in range(rows):
        chosen = ";".join(rng.sample(topics, rng.randint(0, 2)))
        lines.append(f"person.{i}@example{i % 97}.org,Person {i},{chosen},{'weekly' if i % 5 == 0 else 'daily'},"
                     f"Ticked the box at the clinic,v1")
    return ("\n".join(lines) + "\n").encode()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def bench_database(url: str, settings, data: bytes, rows: int) -> dict:
    engine = open_database(url)
    parse_s, parsed = timed(csvio.parse, settings, data, "bench.csv")
    assert len(parsed.rows) == rows and not parsed.rejected, parsed.rejected[:3]
    import_s, outcome = timed(store.import_rows, engine, settings, parsed.rows)
    assert outcome.added == rows
    reimport_s, outcome = timed(store.import_rows, engine, settings, parsed.rows)
    assert outcome.updated == rows
    return {"url": url.split("@")[-1], "parse_s": round(parse_s, 3), "import_s": round(import_s, 3),
            "reimport_s": round(reimport_s, 3), "total_s": round(parse_s + import_s, 3)}


def floor_sqlite(folder: Path, rows: int) -> float:
    conn = sqlite3.connect(folder / "floor.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)")
    params = [(f"person.{i}@example.org", f"Person {i}") for i in range(rows)]
    start = time.perf_counter()
    with conn:
        conn.executemany("INSERT INTO t (email, name) VALUES (?, ?)", params)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def naive_orm(url: str, settings, sample: int) -> float:
    engine = open_database(url)
    now = store.clock.now()
    start = time.perf_counter()
    with transaction(engine) as session:
        for i in range(sample):
            address, key = store.normalise_email(f"naive.{i}@example.org")
            session.add(Subscriber(email=address, email_key=key, email_hash=tokens.email_hash(settings, key),
                                   name=f"Person {i}", status="confirmed", frequency="daily", created_at=now,
                                   updated_at=now, confirmed_at=now))
            session.flush()  # what a per-row "add" does: one INSERT round trip per person
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", help="postgresql://... URL of an empty database to run on as well")
    args = parser.parse_args()
    settings = load_settings(ROOT / "content", env={"NEWSLETTER_SECRET": SECRET})
    data = make_csv(args.rows, sorted(settings.topics))
    results: dict = {"rows": args.rows, "csv_bytes": len(data)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results["sqlite"] = bench_database(f"sqlite:///{folder / 'bench.db'}", settings, data, args.rows)
        if args.postgres:
            results["postgres"] = bench_database(args.postgres, settings, data, args.rows)
        floor = floor_sqlite(folder, args.rows)
        sample = min(10_000, args.rows)
        naive = naive_orm(f"sqlite:///{folder / 'naive.db'}", settings, sample) * args.rows / sample
        dispose_all()
    results["reference"] = {"sqlite3_executemany_s": round(floor, 3), "orm_add_per_row_s_scaled": round(naive, 3)}
    sqlite_total = results["sqlite"]["import_s"]
    results["ratios"] = {"import_vs_floor": round(sqlite_total / floor, 1),
                         "naive_vs_import": round(naive / sqlite_total, 1)}

    key = hashlib.sha256(b"k").digest()
    token = tokens.make_token(SECRET, tokens.UNSUBSCRIBE, 123456)
    n = 100_000
    results["tokens_us"] = {
        "unsubscribe_url": round(per_call_us(lambda i: tokens.unsubscribe_url(settings, i), n), 2),
        "read_token": round(per_call_us(lambda i: tokens.read_token(SECRET, tokens.UNSUBSCRIBE, token), n), 2),
        "email_hash": round(per_call_us(lambda i: tokens.email_hash(settings, "person@example.org"), n), 2),
        "reference_one_hmac_sha256": round(per_call_us(lambda i: hmac.new(key, b"123456", hashlib.sha256).digest(),
                                                       n), 2),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "subscribers_import.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
