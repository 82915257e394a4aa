"""CSV import and export, and the ``newsletter subscribers`` commands, through the real CLI."""
from __future__ import annotations

import csv
import io

import pytest

from pipeline.cli import main
from pipeline.database import open_database
from subscribers import csvio, store

from fixtures_subscribers import SECRET, outbox_messages, subscriber_settings, text_part
from pipeline.privacy import rights


@pytest.fixture
def env(monkeypatch, content_dir, tmp_path, settings):
    """Environment for the CLI: a private database, outbox and secret."""
    s = subscriber_settings(settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("NEWSLETTER_CONTENT", str(content_dir))
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", s.database_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", s.outbox_dir)
    monkeypatch.setenv("NEWSLETTER_VAR_DIR", s.var_dir)
    return s


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


GOOD_AND_BAD = (
    "email,name,topics,frequency,consent,consent_version,consented_at\r\n"
    "amy@example.com,Amy,hair-loss;wellbeing,weekly,Ticked the box at the clinic,v1,2025-06-01T09:00:00+01:00\r\n"
    'bob@example.com,"Smith, Bob",,daily,Ticked the box at the clinic,v1,\r\n'
    "not-an-address,X,,,yes,,\r\n"
    "AMY@example.com,Amy again,,,yes,,\r\n"
    "carol@example.com,=cmd|' /C calc'!A0,,,yes,,\r\n"
    "dan@example.com,Dan,cancer,,yes,,\r\n"
    'eve@example.com,"Eve,,,yes,,\r\n'
    "fay@example.com,Fay, Smith,wellbeing,daily,yes,,\r\n"
    "gus@example.com,Gus,,,,,\r\n"
    "hal@example.com,Hal,,hourly,yes,,\r\n"
    "ida@example.com,Ida,,,yes,,2025-06-01 09:00\r\n"
    "\r\n"
    "  +jo@example.com,Jo,,,yes,,\r\n"
).encode() + "kim@example.com,K\xe9vin,,,yes,,\r\n".encode("latin-1") + (
    "lee@example.com,Lee,skin-care,,yes,,\r\n"
).encode()


def test_import_reports_each_bad_row_and_imports_the_good_ones(env, capsys, tmp_path):
    path = tmp_path / "people.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_AND_BAD)  # with a BOM, as Excel writes it
    code, out, err = run(capsys, "subscribers", "import", str(path))
    assert code == 1  # some rows were rejected
    lines = out.splitlines()
    expected = {
        4: "That email address looks incomplete: it needs an @",
        5: "duplicate: AMY@example.com is already on line 2",
        6: "cell 'name' starts with '=' and would run as a spreadsheet formula",
        7: "unknown topic 'cancer'",
        8: "malformed row: unexpected end of data",
        9: "malformed row: 8 cells but the header has 7",
        10: "no consent wording",
        11: "frequency must be daily or weekly, not 'hourly'",
        12: "has no UTC offset",
        15: "not UTF-8: byte 0xe9 at column 18",
    }
    for number, reason in expected.items():
        matching = [line for line in lines if line.startswith(f"{path}:{number}: rejected: ")]
        assert len(matching) == 1 and reason in matching[0], (number, lines)
    assert lines[-1] == f"{path}: added 4, updated 0, skipped as suppressed 0, rejected {len(expected)}"
    engine = open_database(env.database_url)
    # "+jo@example.com" is an address (the email cell is validated as one), not a formula
    assert sorted(i.email for i in store.iter_subscribers(engine)) == ["+jo@example.com", "amy@example.com",
                                                                       "bob@example.com", "lee@example.com"]
    amy = store.get_by_email(engine, "amy@example.com")
    assert (amy.status, amy.name, amy.topics, amy.frequency) == ("confirmed", "Amy", ("hair-loss", "wellbeing"), "weekly")
    record = store.consent_records(engine, amy.id)[0]
    assert (record["wording"], record["wording_version"], record["at"]) == (
        "Ticked the box at the clinic", "v1", "2025-06-01T08:00:00+00:00")
    assert store.get_by_email(engine, "bob@example.com").name == "Smith, Bob"


def test_import_skips_suppressed_and_updates_existing(env, capsys, tmp_path):
    engine = open_database(env.database_url)
    gone = store.add(engine, env, "gone@example.com", confirmed=True, consent="y")
    rights.erase(engine, env, gone.id)
    left = store.add(engine, env, "left@example.com", confirmed=True, consent="y")
    store.unsubscribe(engine, env, left.id)
    store.add(engine, env, "stay@example.com", name="Stay", confirmed=True, consent="y")
    path = tmp_path / "again.csv"
    path.write_text("email,name,frequency\ngone@example.com,G,\nLEFT@example.com,L,\nstay@example.com,,weekly\n"
                    "new@example.com,N,\n")
    code, out, _ = run(capsys, "subscribers", "import", str(path), "--consent", "Signed the paper form")
    assert code == 0, out
    assert out.splitlines() == [
        f"{path}:2: skipped: gone@example.com is suppressed (erased); not re-subscribed",
        f"{path}:3: skipped: LEFT@example.com is suppressed (unsubscribed); not re-subscribed",
        f"{path}:5: added 1, updated 1, skipped as suppressed 2, rejected 0".replace(":5:", ":"),
    ]
    assert store.get_by_email(engine, "gone@example.com") is None
    assert store.get_by_email(engine, "left@example.com").status == "unsubscribed"
    stay = store.get_by_email(engine, "stay@example.com")
    assert (stay.name, stay.frequency) == ("Stay", "weekly")  # empty cells keep what was held


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"name,topics\nA,\n", "the header has no 'email' column"),
    (b"email,phone\na@example.com,1\n", "unknown column 'phone'"),
    (b"email,email\na@example.com,b@example.com\n", "column 'email' appears twice"),
    (b"em\xe9il\n", "not UTF-8"),
])
def test_a_bad_header_is_one_line_and_nothing_is_imported(env, capsys, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    code, out, err = run(capsys, "subscribers", "import", str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and message in err
    assert store.counts(open_database(env.database_url)) == {}


def test_missing_file_is_one_line(env, capsys, tmp_path):
    code, _, err = run(capsys, "subscribers", "import", str(tmp_path / "nope.csv"))
    assert code == 1 and err.startswith("error: ") and "cannot read the file" in err and err.count("\n") == 1


def test_export_escapes_formula_cells_and_round_trips(env, capsys, tmp_path):
    engine = open_database(env.database_url)
    store.add(engine, env, "plain@example.com", name="Plain Person", topics=["wellbeing", "hair-loss"],
              frequency="weekly", confirmed=True, consent="Yes please")
    store.add(engine, env, "+plus@example.com", name="=HYPERLINK(\"http://evil.example\")", confirmed=True,
              consent="@SUM(1)")
    store.add(engine, env, "tab@example.com", name="\t-2+3", confirmed=True, consent="-yes")
    out_file = tmp_path / "export.csv"
    code, _, err = run(capsys, "subscribers", "export", "--out", str(out_file))
    assert code == 0 and "exported 3 subscriber(s)" in err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text(encoding="utf-8"))))
    assert list(rows[0]) == list(csvio.EXPORT_COLUMNS)
    by_email = {r["email"].lstrip("'"): r for r in rows}
    assert by_email["plain@example.com"]["topics"] == "hair-loss;wellbeing"
    assert by_email["plain@example.com"]["consent"] == "Yes please"
    assert by_email["+plus@example.com"]["email"] == "'+plus@example.com"
    assert by_email["+plus@example.com"]["name"] == "'=HYPERLINK(\"http://evil.example\")"
    assert by_email["+plus@example.com"]["consent"] == "'@SUM(1)"
    assert by_email["tab@example.com"]["name"] == "'-2+3"  # the tab became a space, then was stripped
    assert by_email["tab@example.com"]["consent"] == "'-yes"
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(csvio.FORMULA_START)
    # stdout export is the same document
    code, out, _ = run(capsys, "subscribers", "export")
    assert out == out_file.read_text(encoding="utf-8")
    # an export is importable: into a fresh database every row comes back as it was,
    # the escape undone (the full round trip is tests/test_csv_roundtrip.py)
    fresh = tmp_path / "fresh.db"
    parsed = csvio.parse(env, out_file.read_bytes(), out_file)
    assert parsed.rejected == ()
    assert sorted(r.email for r in parsed.rows) == ["+plus@example.com", "plain@example.com", "tab@example.com"]
    engine2 = open_database(f"sqlite:///{fresh}")
    store.import_rows(engine2, env, parsed.rows)
    back = store.get_by_email(engine2, "plain@example.com")
    assert (back.name, back.topics, back.frequency) == ("Plain Person", ("hair-loss", "wellbeing"), "weekly")
    assert store.get_by_email(engine2, "+plus@example.com").name == "=HYPERLINK(\"http://evil.example\")"
    assert store.get_by_email(engine2, "tab@example.com").name == "-2+3"


def test_cli_add_list_show_unsubscribe_erase(env, capsys):
    code, out, _ = run(capsys, "subscribers", "add", "New@Example.com", "--name", "New", "--topics",
                       "hair-loss,wellbeing", "--frequency", "weekly")
    assert code == 0 and out == "added New@example.com (pending: confirmation email sent)\n"
    (message,) = outbox_messages(env)
    assert message["To"].addresses[0].addr_spec == "New@example.com"
    assert "/confirm/" in text_part(message)
    code, out, _ = run(capsys, "subscribers", "add", "c@example.com", "--confirmed", "--consent", "Paper form")
    assert (code, out) == (0, "added c@example.com (confirmed)\n")
    code, out, _ = run(capsys, "subscribers", "list")
    assert out.splitlines() == ["1\tpending\tweekly\tNew@example.com\tNew", "2\tconfirmed\tdaily\tc@example.com\t"]
    code, out, _ = run(capsys, "subscribers", "list", "--status", "confirmed")
    assert out.splitlines() == ["2\tconfirmed\tdaily\tc@example.com\t"]
    code, out, _ = run(capsys, "subscribers", "show", "C@EXAMPLE.COM")
    assert '"wording": "Paper form"' in out and '"status": "confirmed"' in out
    code, out, _ = run(capsys, "subscribers", "unsubscribe", "c@example.com")
    assert (code, out) == (0, "c@example.com: unsubscribed\n")
    code, out, _ = run(capsys, "subscribers", "erase", "c@example.com", "--yes")
    assert code == 0 and out.startswith("erased c@example.com")
    code, _, err = run(capsys, "subscribers", "show", "c@example.com")
    assert code == 1 and err == "error: no subscriber c@example.com (the address is suppressed: erased)\n"


@pytest.mark.parametrize("args, message", [
    (["add", "nope"], "That email address looks incomplete"),
    (["add", "a@example.com", "--topics", "cancer"], "unknown topic 'cancer'"),
    (["add", "a@example.com", "--confirmed"], "--confirmed needs --consent"),
    (["add", "a@example.com", "--consent", "x"], "--consent is only used with --confirmed"),
    (["unsubscribe", "nobody@example.com"], "no subscriber nobody@example.com"),
    (["erase", "nobody@example.com", "--yes"], "no subscriber nobody@example.com"),
    (["show", "nobody@example.com"], "no subscriber nobody@example.com"),
])
def test_cli_bad_input_is_one_clear_line(env, capsys, args, message):
    code, out, err = run(capsys, "subscribers", *args)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_cli_erase_asks_first(env, capsys, monkeypatch):
    engine = open_database(env.database_url)
    store.add(engine, env, "a@example.com", confirmed=True, consent="y")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = run(capsys, "subscribers", "erase", "a@example.com")
    assert code == 1 and "aborted" in err
    assert store.get_by_email(engine, "a@example.com") is not None
