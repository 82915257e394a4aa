"""Issue 15, delivery at each reader's local time: ``newsletter subscribers import|export``
carry ``time_zone`` and ``delivery_hour``; a bad value is that row's error (line and
reason), the others are imported; an export imports back the same times, on SQLite and
PostgreSQL, with names in ’ – £ é, CJK and emoji."""
from __future__ import annotations

import csv
import io

import pytest

from pipeline.cli import main
from pipeline.database import open_database
from subscribers import csvio, store

from fixtures_subscribers import SECRET, subscriber_settings

PEOPLE = [  # address, name, zone, hour
    ("london@example.com", "Zoë O’Brien – £5 café", None, None),
    ("kolkata@example.com", "प्रिया शर्मा", "Asia/Kolkata", None),
    ("ny@example.com", "=Not A Formula", "America/New_York", 7),
    ("auckland@example.com", "山田 太郎 🌿", "Pacific/Auckland", 0),
    ("late@example.com", "Ève – night owl", None, 23),
]


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(monkeypatch, content_dir, tmp_path, settings, store_url):
    s = subscriber_settings(settings, tmp_path, database_url=store_url)
    monkeypatch.setenv("NEWSLETTER_CONTENT", str(content_dir))
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", s.database_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", s.outbox_dir)
    monkeypatch.setenv("NEWSLETTER_VAR_DIR", s.var_dir)
    return s


def times(engine) -> dict[str, tuple]:
    return {p.email: (p.name, p.time_zone, p.delivery_hour) for p in store.iter_subscribers(engine)}


def test_an_export_with_times_imports_back_the_same_times(env, capsys, tmp_path, request, monkeypatch):
    engine = open_database(env.database_url)
    for address, name, zone, hour in PEOPLE:
        info = store.add(engine, env, address, name=name, confirmed=True, consent="Ticked")
        store.update_preferences(engine, env, info.id, name=name, topics=(), frequency="daily", time_zone=zone,
                                 delivery_hour=hour)
    before = times(engine)
    assert before["ny@example.com"] == ("=Not A Formula", "America/New_York", 7)
    exported = tmp_path / "export.csv"
    code, _, err = run(capsys, "subscribers", "export", "--out", str(exported))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8"))))
    assert list(rows[0]) == list(csvio.EXPORT_COLUMNS)
    by_email = {r["email"]: r for r in rows}
    assert (by_email["auckland@example.com"]["time_zone"], by_email["auckland@example.com"]["delivery_hour"]) == (
        "Pacific/Auckland", "0")
    assert (by_email["london@example.com"]["time_zone"], by_email["london@example.com"]["delivery_hour"]) == ("", "")

    if "postgres" in request.node.callspec.id:
        fresh_url = request.getfixturevalue("postgres_server").create_database("fresh")
    else:
        fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    code, out, err = run(capsys, "subscribers", "import", str(exported))
    assert code == 0, out + err
    assert out.splitlines()[-1].endswith(f"added {len(PEOPLE)}, updated 0, skipped as suppressed 0, rejected 0")
    assert times(open_database(fresh_url)) == before


def test_bad_times_are_rejected_by_line_and_the_good_rows_imported(env, capsys, tmp_path):
    source = tmp_path / "people.csv"
    source.write_text(
        "email,name,time_zone,delivery_hour,consent\n"          # 1
        "ok@example.com,Zoë 山田,Asia/Kolkata,6,Ticked\n"        # 2
        "zone@example.com,Bad Zone,EST5EDT,7,Ticked\n"          # 3
        "hour@example.com,Bad Hour,Europe/Paris,24,Ticked\n"    # 4
        "half@example.com,Half Hour,,7:30,Ticked\n"             # 5
        "old@example.com,Old Name,Asia/Calcutta,07:00,Ticked\n"  # 6
        "editors@example.com,Editors,Europe/London,,Ticked\n"   # 7
        "formula@example.com,Formula,=cmd|' /C calc'!A0,,Ticked\n"  # 8
        "cjk@example.com,Tokyo,東京,,Ticked\n",                 # 9
        encoding="utf-8")
    code, out, err = run(capsys, "subscribers", "import", str(source))
    assert code == 1 and "Traceback" not in out + err
    lines = out.splitlines()
    assert lines[-1] == f"{source}: added 3, updated 0, skipped as suppressed 0, rejected 5"
    rejected = {int(line.split(":")[1]): line for line in lines[:-1]}
    assert sorted(rejected) == [3, 4, 5, 8, 9]
    assert "time zone 'EST5EDT' is not one we offer" in rejected[3]
    assert "delivery hour '24' must be a whole hour from 0 to 23" in rejected[4]
    assert "delivery hour '7:30'" in rejected[5]
    assert "would run as a spreadsheet formula" in rejected[8]
    assert "time zone '東京' is not one we offer" in rejected[9]
    assert all(line.startswith(f"{source}:") and ": rejected: " in line for line in rejected.values())
    held = times(open_database(env.database_url))
    assert held == {"ok@example.com": ("Zoë 山田", "Asia/Kolkata", 6), "old@example.com": ("Old Name", "Asia/Kolkata", 7),
                    "editors@example.com": ("Editors", None, None)}


def test_an_import_update_keeps_times_for_empty_cells_and_the_editors_zone_resets(env, capsys, tmp_path):
    engine = open_database(env.database_url)
    info = store.add(engine, env, "amy@example.com", name="Amy", confirmed=True, consent="Ticked")
    store.update_preferences(engine, env, info.id, name="Amy", topics=(), frequency="daily",
                             time_zone="Asia/Tokyo", delivery_hour=8)
    keep = tmp_path / "keep.csv"
    keep.write_text("email,name,time_zone,delivery_hour,consent\namy@example.com,Amy Two,,,Ticked\n", encoding="utf-8")
    assert run(capsys, "subscribers", "import", str(keep))[0] == 0
    assert times(engine)["amy@example.com"] == ("Amy Two", "Asia/Tokyo", 8)
    reset = tmp_path / "reset.csv"
    reset.write_text("email,time_zone,delivery_hour,consent\namy@example.com,Europe/London,21,Ticked\n",
                     encoding="utf-8")
    assert run(capsys, "subscribers", "import", str(reset))[0] == 0
    assert times(engine)["amy@example.com"] == ("Amy Two", None, 21)
