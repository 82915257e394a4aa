"""Several processes open one fresh database at once (nodes starting together, or `serve` beside `run`):
exactly one migrates, the others wait and find nothing to do (issue 15: nodes on one PostgreSQL). A database that
a newer release has migrated is refused with one line, not half-used."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy import create_engine, text

from conftest import ROOT

OPEN = textwrap.dedent("""
    import sys, time
    from pipeline.database import open_database
    start = float(sys.argv[2])
    while time.time() < start:  # every process begins its migration at the same instant
        time.sleep(0.001)
    open_database(sys.argv[1])
""")


def _open_together(url: str, count: int) -> list[subprocess.CompletedProcess]:
    import time

    start = time.time() + 2.5  # after every interpreter has imported SQLAlchemy and Alembic
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url, str(start)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


def _heads(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_six_processes_migrate_one_fresh_database_at_once(store_url):
    results = _open_together(store_url, 6)
    failures = [r.stderr.strip().splitlines()[-1] for r in results if r.returncode != 0]
    assert failures == []
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pipeline.database import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert _heads(store_url) == [ScriptDirectory.from_config(config).get_current_head()]


def test_a_database_migrated_by_a_newer_release_is_refused_in_one_line(tmp_path, content_dir):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    assert _open_together(url, 1)[0].returncode == 0
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(content_dir), "status"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "0099_from_the_future" in lines[0] and "newer release" in lines[0]
