"""Staff accounts, sign-in limits and the audit log (issue 12, step 1), on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from fixtures_console import PASSWORD, REVIEWER, add_staff, cheap_hashing, cli


@pytest.fixture(autouse=True)
def _cheap(request, monkeypatch):
    if "production_hash" not in request.keywords:
        cheap_hashing(monkeypatch)


@pytest.fixture
def store_url(db_url):
    """SQLite for most tests here; the tests that take ``pg_url`` too run on PostgreSQL."""
    return db_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def both_url(request, db_url):
    return db_url if request.param == "sqlite" else request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def engine(store_url):
    from pipeline.database import open_database
    return open_database(store_url)


@pytest.fixture
def staff_settings(settings, store_url):
    return settings.replace(database_url=store_url)


@pytest.mark.production_hash
def test_password_is_hashed_with_argon2id_and_never_stored(engine):
    from sqlalchemy import select
    from pipeline.database import transaction
    from pipeline.staff.models import StaffRecord

    add_staff(engine, "Editor.Emilie@Bücher.Example", "editor", name="Émilie Zoë 李")
    with transaction(engine) as session:
        row = session.scalars(select(StaffRecord)).one()
    assert row.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")  # argon2-cffi's RFC 9106 default
    assert PASSWORD not in row.password_hash
    assert row.email_key == "editor.emilie@xn--bcher-kva.example"  # IDNA: the form mail carries
    assert row.name == "Émilie Zoë 李"


@pytest.mark.parametrize("bad, why", [
    ("short", "too short"),
    ("x" * 2000, "too long"),
])
def test_weak_or_oversized_passwords_are_refused(engine, bad, why):
    from pipeline.errors import StaffError
    with pytest.raises(StaffError, match=why):
        add_staff(engine, "a@example.org", "editor", password=bad)


@pytest.mark.parametrize("name", ["=?utf-8?q?Admin?=", "Line\r\nBcc: x@example.org", "Bidi \u202eevil", "x" * 201])
def test_hostile_names_are_refused(engine, name):
    from pipeline.errors import StaffError
    with pytest.raises(StaffError):
        add_staff(engine, "a@example.org", "reviewer", name=name)


def test_roles_are_checked_and_an_address_is_one_account(engine):
    from pipeline.errors import StaffError
    with pytest.raises(StaffError, match="unknown role"):
        add_staff(engine, "a@example.org", "superuser")
    add_staff(engine, "a@example.org", "editor", "reviewer")
    with pytest.raises(StaffError, match="already has a staff account"):
        add_staff(engine, "A@EXAMPLE.ORG", "admin")


def test_sign_in_succeeds_and_is_audited(engine, staff_settings):
    from pipeline.staff import accounts, audit

    add_staff(engine, "rev@example.org", "reviewer")
    staff = accounts.authenticate(engine, staff_settings, "REV@example.org", PASSWORD, via="web", ip="203.0.113.9")
    assert staff.has("reviewer") and not staff.has("editor")
    assert staff.signature == f"{REVIEWER}, MBBS, MRCGP"
    rows = audit.entries(engine, action="signin")
    assert [(r.actor, r.action, r.ip) for r in rows] == [("rev@example.org", "signin", "203.0.113.9")]


def test_lockout_after_repeated_failures_refuses_even_the_right_password(both_url, settings, frozen):
    from pipeline.database import open_database
    engine, staff_settings = open_database(both_url), settings.replace(database_url=both_url)
    from pipeline.errors import StaffError
    from pipeline.staff import accounts, audit

    add_staff(engine, "rev@example.org", "reviewer")
    for _ in range(staff_settings.staff_lockout_failures):
        with pytest.raises(StaffError, match="sign-in refused"):
            accounts.authenticate(engine, staff_settings, "rev@example.org", "wrong password!!", via="web",
                                  ip="198.51.100.1")
    with pytest.raises(StaffError) as refused:
        accounts.authenticate(engine, staff_settings, "rev@example.org", PASSWORD, via="web", ip="198.51.100.2")
    # the answer is the same as for a wrong password: it reveals neither the lock nor the account
    assert str(refused.value) == accounts.REFUSED
    failures = audit.entries(engine, action="signin.failed")
    assert len(failures) == staff_settings.staff_lockout_failures + 1
    assert failures[-1].after == {"reason": "account locked"}
    frozen.advance(minutes=staff_settings.staff_lockout_minutes + 1)
    assert accounts.authenticate(engine, staff_settings, "rev@example.org", PASSWORD, via="web", ip="198.51.100.2")


def test_unknown_account_gets_the_same_answer(engine, staff_settings):
    from pipeline.errors import StaffError
    from pipeline.staff import accounts

    with pytest.raises(StaffError) as refused:
        accounts.authenticate(engine, staff_settings, "nobody@example.org", PASSWORD, via="web", ip="192.0.2.1")
    assert str(refused.value) == accounts.REFUSED


def test_per_ip_and_per_account_rate_limits_live_in_the_database(both_url, settings, frozen):
    from pipeline.database import open_database
    engine, staff_settings = open_database(both_url), settings.replace(database_url=both_url)
    from pipeline.errors import StaffError
    from pipeline.staff import accounts, audit

    add_staff(engine, "rev@example.org", "reviewer")
    tight = staff_settings.replace(staff_login_rate_per_ip=3, staff_login_rate_per_account=5,
                                   staff_lockout_failures=100)
    for n in range(3):  # three tries from one IPv6 /64, each from another address in it
        with pytest.raises(StaffError):
            accounts.authenticate(engine, tight, f"x{n}@example.org", "nope nope nope", via="web",
                                  ip=f"2001:db8::{n + 1}")
    with pytest.raises(StaffError):  # the right password, from the same /64: refused by the IP limit
        accounts.authenticate(engine, tight, "rev@example.org", PASSWORD, via="web", ip="2001:db8::ff")
    assert audit.entries(engine, action="signin.failed")[-1].after == {"reason": "too many attempts from this address"}
    # per account: five tries from five addresses, then even a new address is refused
    for n in range(4):
        with pytest.raises(StaffError):
            accounts.authenticate(engine, tight, "rev@example.org", "nope nope nope", via="web", ip=f"192.0.2.{n}")
    assert accounts.authenticate(engine, tight, "rev@example.org", PASSWORD, via="web", ip="192.0.2.50")
    with pytest.raises(StaffError):
        accounts.authenticate(engine, tight, "rev@example.org", PASSWORD, via="web", ip="192.0.2.51")
    assert audit.entries(engine, action="signin.failed")[-1].after == {"reason": "too many attempts for this account"}
    frozen.advance(hours=1, minutes=1)
    assert accounts.authenticate(engine, tight, "rev@example.org", PASSWORD, via="web", ip="192.0.2.51")


def test_staff_commands_add_list_disable_reset_and_audit(content_dir, both_url):
    store_url = both_url
    env = {"DATABASE_URL": store_url, "NEWSLETTER_STAFF_PASSWORD": PASSWORD}
    added = cli(content_dir, "staff", "add", "admin@bücher.example", "--role", "admin", "--role", "editor",
                "--name", "Zoë Ådmin 🩺", env=env)
    assert added.exit_code == 0, added.output
    assert "added admin@xn--bcher-kva.example (editor, admin)" in added.output
    listed = cli(content_dir, "staff", "list", env=env)
    assert "admin@xn--bcher-kva.example\teditor,admin\tactive\tZoë Ådmin 🩺" in listed.output
    # the password comes from a hidden prompt when the environment has none (asked twice)
    prompted = cli(content_dir, "staff", "add", "rev@example.org", "--role", "reviewer", "--name", REVIEWER,
                   "--credentials", "MBBS", env={"DATABASE_URL": store_url}, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    assert PASSWORD not in prompted.output
    assert cli(content_dir, "staff", "disable", "rev@example.org", env=env).exit_code == 0
    assert "rev@example.org\treviewer\tdisabled" in cli(content_dir, "staff", "list", env=env).output
    reset = cli(content_dir, "staff", "reset", "rev@example.org", "--role", "reviewer", "--role", "editor",
                env={**env, "NEWSLETTER_STAFF_PASSWORD": "another long passphrase"})
    assert reset.exit_code == 0, reset.output
    assert "rev@example.org\teditor,reviewer\tactive" in cli(content_dir, "staff", "list", env=env).output
    bad = cli(content_dir, "staff", "add", "not-an-address", "--role", "editor", "--name", "X", env=env)
    assert bad.exit_code == 1 and bad.error_line.startswith("error: staff address:")
    log = cli(content_dir, "audit", env=env).stdout.splitlines()
    assert [line.split("  ")[2] for line in log] == ["staff.add", "staff.add", "staff.disable", "staff.reset"]
    assert all("  cli:" in line for line in log)
    assert '"disabled": true' in log[2] and '"roles": "editor,reviewer"' in log[3]
    only = cli(content_dir, "audit", "--action", "staff.disable", env=env).output.splitlines()
    assert len(only) == 1 and "rev@example.org" in only[0]
    assert cli(content_dir, "audit", "--actor", "nobody@example.org", env=env).stdout == ""
    assert cli(content_dir, "audit", "--since", "2999-01-01", env=env).stdout == ""
    assert len(cli(content_dir, "audit", "--since", "1d", env=env).stdout.splitlines()) == 4


def test_disable_and_reset_end_console_sessions(engine):
    from sqlalchemy import select
    from pipeline import clock
    from pipeline.database import transaction
    from pipeline.staff import accounts
    from pipeline.staff.models import StaffSession

    staff = add_staff(engine, "ed@example.org", "editor")
    with transaction(engine) as session:
        session.add(StaffSession(id="a" * 64, staff_id=staff.id, created_at=clock.now(), last_seen=clock.now()))
    accounts.disable(engine, "ed@example.org", actor="cli:test")
    with transaction(engine) as session:
        assert session.scalars(select(StaffSession.revoked_at)).one() is not None


def test_audit_fields_stay_one_line(engine):
    from pipeline.staff import audit

    audit.write(engine, "cli:x\r\nforged", "calendar.add", "slug\u2028next", after={"note": "a\nb"})
    (row,) = audit.entries(engine)
    assert "\n" not in row.line() and "\r" not in row.line() and "\u2028" not in row.line()
    assert row.actor == "cli:x  forged"


def test_subscriber_lookup_is_audited_without_the_address(content_dir, store_url, engine):
    env = {"DATABASE_URL": store_url, "NEWSLETTER_SECRET": "s" * 32}
    assert cli(content_dir, "subscribers", "add", "jo@example.org", "--confirmed", "--consent", "yes",
               env=env).exit_code == 0
    assert cli(content_dir, "subscribers", "show", "jo@example.org", env=env).exit_code == 0
    (row,) = [r for r in __import__("pipeline.staff.audit", fromlist=["x"]).entries(engine)
              if r.action == "subscriber.lookup"]
    assert row.subject.startswith("subscriber #") and "jo@" not in row.line()
