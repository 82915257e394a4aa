"""Issue 10, section 8 "Round trip": a CSV that ``newsletter subscribers export``
wrote imports cleanly into a fresh database, on SQLite and on PostgreSQL, and the
store that comes back is the one that went out.  Also: the name rule at the CSV
and ``subscribers add`` edges."""
from __future__ import annotations

import csv
import io

import pytest

from pipeline.cli import main
from pipeline.database import open_database
from subscribers import csvio, store

from fixtures_subscribers import SECRET, subscriber_settings

PEOPLE = [  # address, name, topics, frequency, consent wording
    ("plain@example.com", "Plain Person", ("hair-loss", "wellbeing"), "weekly", "Ticked the box at the clinic"),
    ("+x@example.com", "=HYPERLINK(\"http://evil.example\",\"x\")", ("skin-care",), "daily", "=yes"),
    ("o'brien@example.com", "Zoë O’Brien – £5 café", (), "daily", "+Signed the paper form"),
    ("-dash@example.com", "-Minus Sign", ("wellbeing",), "weekly", "-agreed"),
    ("at@example.com", "@handle 山田 太郎 😀", ("hair-loss",), "daily", "@the front desk"),
    ("plus@example.com", "+44 Caller", (), "weekly", "\tIndented\twording, with a tab"),
    ("tab@example.com", "Tab\tIn\tName", ("skin-care", "wellbeing"), "daily", "Agreed, \"quoted\", with commas"),
    ("eq@example.com", " =Spaced", (), "daily", " =spaced wording"),
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


def snapshot(engine) -> dict:
    """Everything an export carries, per address."""
    people = list(store.iter_subscribers(engine))
    consents = store.latest_consents(engine, [p.id for p in people])
    return {p.email: (p.name, p.status, p.frequency, p.topics, consents[p.id]["wording"],
                      consents[p.id]["version"], consents[p.id]["at"]) for p in people}


def test_an_export_imports_cleanly_into_a_fresh_database(env, capsys, tmp_path, request, monkeypatch):
    engine = open_database(env.database_url)
    for address, name, topics, frequency, consent in PEOPLE:
        store.add(engine, env, address, name=name, topics=topics, frequency=frequency, confirmed=True,
                  consent=consent)
    before = snapshot(engine)
    assert before["tab@example.com"][0] == "Tab In Name"  # a tab in a name is only a space
    exported = tmp_path / "export.csv"
    code, _, err = run(capsys, "subscribers", "export", "--out", str(exported))
    assert code == 0, err
    for row in csv.reader(io.StringIO(exported.read_text(encoding="utf-8"))):
        assert not any(cell.lstrip(" ").startswith(csvio.FORMULA_START) for cell in row), row  # still escaped

    if "postgres" in request.node.callspec.id:
        fresh_url = request.getfixturevalue("postgres_server").create_database("fresh")
    else:
        fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    code, out, err = run(capsys, "subscribers", "import", str(exported))
    assert code == 0, out + err
    assert out.splitlines()[-1] == (f"{exported}: added {len(PEOPLE)}, updated 0, skipped as suppressed 0, "
                                    "rejected 0")
    after = snapshot(open_database(fresh_url))
    assert after == before


def test_a_cell_escaped_by_export_is_unescaped_and_a_raw_formula_is_still_refused(env):
    data = ("email,name,consent\n"
            "'+x@example.com,'=Bob,'@ok\n"
            "+y@example.com,Yvonne,yes\n"
            "z@example.com,=cmd|' /C calc'!A0,yes\n"
            "w@example.com,Walter,-1+1\n").encode()
    parsed = csvio.parse(env, data, "people.csv")
    assert [(r.email, r.name, r.consent) for r in parsed.rows] == [("+x@example.com", "=Bob", "@ok"),
                                                                  ("+y@example.com", "Yvonne", "yes")]
    assert [(p.line, p.reason.split(" and ")[0]) for p in parsed.rejected] == [
        (4, "cell 'name' starts with '='"), (5, "cell 'consent' starts with '-'")]


def test_a_hostile_name_in_a_csv_is_a_rejected_row_with_its_line(env, capsys, tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("email,name,consent\n"
                    "good@example.com,Zoë 山田,yes\n"
                    "eve@example.com,Eve =?utf-8?b?DQpSZXBseS1UbzogYUBldmlsLmV4YW1wbGU=?=,yes\n"
                    "sep@example.com,Eve\u2028Bcc: v@example.net,yes\n"
                    f"long@example.com,{'x' * 101},yes\n", encoding="utf-8")
    code, out, _ = run(capsys, "subscribers", "import", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}:3: rejected: the name contains \"=?\"")
    assert lines[1].startswith(f"{path}:4: rejected: the name contains a line break")
    assert lines[2] == f"{path}:5: rejected: the name is longer than 100 characters"
    assert [p.email for p in store.iter_subscribers(open_database(env.database_url))] == ["good@example.com"]


@pytest.mark.parametrize("name", ["=?utf-8?q?Eve=0D=0ABcc:_v@example.net?=", "Eve\rBcc: v@example.net", "y" * 101])
def test_subscribers_add_refuses_a_hostile_name_in_one_line(env, capsys, name):
    code, out, err = run(capsys, "subscribers", "add", "eve@example.com", "--name", name)
    assert code == 1 and err.startswith("error: the name ") and err.count("\n") == 1 and "Traceback" not in err
    assert store.get_by_email(open_database(env.database_url), "eve@example.com") is None


def test_preferences_refuse_a_hostile_name_and_keep_the_old_one(env):
    engine = open_database(env.database_url)
    info = store.add(engine, env, "amy@example.com", name="Amy", confirmed=True, consent="yes")
    with pytest.raises(store.SubscriberError, match="the name contains"):
        store.update_preferences(engine, env, info.id, name="Amy\u2029Bcc: v@example.net", topics=(),
                                 frequency="daily")
    assert store.get(engine, info.id).name == "Amy"
