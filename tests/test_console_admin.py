"""The console's admin and repair pages (in process, Starlette's TestClient, under base_url's
path prefix): staff accounts and the read-only settings view (admin only), Correct and
Retract on the library page and the corrections list (editor), the retry of an issue's
deferred rows (``newsletter send --resume`` run as a real child process, refused while the
issue's lease is held), and the audit rows of ``newsletter correct|retract`` from the CLI."""
from __future__ import annotations

import hashlib
import os
import warnings
from datetime import date, timedelta
from pathlib import Path

import pytest
from lxml import html as lxml_html

from fixtures_console import PASSWORD, add_staff, cheap_hashing
from fixtures_corrections import world as corrections_world  # noqa: F401  (fixture)
from fixtures_subscribers import SECRET, outbox_messages
from test_console import ADMIN, BASE, client, csrf_of, sign_in, signed_in, world  # noqa: F401  (fixture)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SLUG = "microneedling"
NOTE = "The dose was 0.5 mm – it is 0.25 mm; ‘£30’, café, 微针 🙂 <script>alert(1)</script>"


def page_of(c, path: str):
    answer = c.get(ADMIN + path)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return answer, lxml_html.fromstring(answer.text)


def post(c, path: str, form_page: str, data: dict):
    _, doc = page_of(c, form_page)
    return c.post(ADMIN + path, data={"csrf": doc.cssselect("input[name=csrf]")[0].get("value"), **data})


def message_of(answer) -> str:
    return " ".join(lxml_html.fromstring(answer.text).cssselect("main [role=alert]")[0].text_content().split())


def sha(content_dir, slug: str) -> str:
    return hashlib.sha256((content_dir / "articles" / f"{slug}.md").read_bytes()).hexdigest()


# -- 4. the CLI's corrections are audited ---------------------------------------------------------------

def test_cli_correct_and_retract_write_an_audit_row_with_operator_note_and_hashes(corrections_world):
    from pipeline.corrections import records
    from pipeline.staff import audit

    w = corrections_world
    w.invoke("build")  # the first published version is recorded
    first = sha(w.content, SLUG)
    assert "has not changed" in w.refused("correct", SLUG, "--note", "x")
    assert audit.entries(w.engine(), action="correction") == []  # a refusal writes nothing
    w.edit(SLUG, "Microneedling", "Micro-needling")
    w.invoke("correct", SLUG, "--note", NOTE, "--significant", "--by", "Dr Zoë Ó’Brien", "--no-build")
    w.invoke("retract", SLUG, "--note", "Withdrawn:\u2028the evidence was misread.", "--no-build")
    assert "already retracted" in w.refused("retract", SLUG, "--note", "twice")
    rows = audit.entries(w.engine(), action="correction") + audit.entries(w.engine(), action="retraction")
    assert [(r.action, r.subject, r.actor, r.via) for r in rows] == [
        ("correction.record", SLUG, audit.operator(), "cli"), ("retraction.record", SLUG, audit.operator(), "cli")]
    corrected, retracted = rows
    (c1, c2) = records.listing(w.engine(), SLUG)
    assert corrected.before == {"content": first}
    assert corrected.after == {"id": c1.id, "kind": "correction", "significant": True, "note": NOTE,
                               "content": sha(w.content, SLUG), "by": "Dr Zoë Ó’Brien"}
    assert retracted.after["note"] == "Withdrawn: the evidence was misread." and retracted.after["id"] == c2.id
    assert "\n" not in corrected.line() and "\u2028" not in retracted.line()


# -- 3. corrections in the console ----------------------------------------------------------------------

def test_console_correct_and_retract_refuse_like_the_cli_and_are_audited(world):
    from pipeline.content.library import load_library
    from pipeline.corrections import records
    from pipeline.staff import audit

    library = load_library(world.content_dir, world.settings)
    records.remember(world.engine, [library.article(SLUG)], records.SITE)  # the version that went out
    reviewer, editor = signed_in(world, "rev@example.org"), signed_in(world, "ed@example.org")

    _, doc = page_of(reviewer, "/library")
    assert not doc.cssselect(f"form[action$='/library/{SLUG}/correct']")  # no editor role: no form
    assert post(reviewer, f"/library/{SLUG}/correct", "/library", {"note": "x"}).status_code == 403
    _, doc = page_of(editor, "/library")
    assert doc.cssselect(f"form[action='{BASE}/admin/library/{SLUG}/correct'] textarea[name=note]")
    assert doc.cssselect(f"form[action='{BASE}/admin/library/{SLUG}/retract'] textarea[name=note]")
    assert editor.post(f"{ADMIN}/library/{SLUG}/correct", data={"note": "no token"}).status_code == 403
    assert post(editor, f"/library/{SLUG}/bogus", "/library", {"note": "x"}).status_code == 404

    unchanged = post(editor, f"/library/{SLUG}/correct", "/library", {"note": "x"})
    assert unchanged.status_code == 400 and "has not changed since the version that went out" in message_of(unchanged)
    assert "note is empty" in message_of(post(editor, f"/library/{SLUG}/retract", "/library", {"note": " \u2028 "}))
    assert "unknown article" in message_of(post(editor, "/library/nope/retract", "/library", {"note": "x"}))
    assert records.listing(world.engine) == [] and audit.entries(world.engine, action="correction") == []

    path = world.content_dir / "articles" / f"{SLUG}.md"
    path.write_text(path.read_text(encoding="utf-8").replace("Microneedling", "Micro-needling", 1), encoding="utf-8")
    done = post(editor, f"/library/{SLUG}/correct", "/library", {"note": NOTE, "significant": "yes"})
    assert done.status_code == 303 and done.headers["location"] == f"{BASE}/admin/corrections?done=correction-1"
    (row,) = records.listing(world.engine, SLUG)
    assert (row.note, row.significant, row.created_by, row.after_hash) == (NOTE, True, "Ed Itor", sha(world.content_dir, SLUG))
    (entry,) = audit.entries(world.engine, action="correction")
    assert (entry.actor, entry.via, entry.subject) == ("ed@example.org", "web", SLUG)
    assert entry.after["note"] == NOTE and entry.after["content"] == row.after_hash and entry.before["content"]
    article_page = lxml_html.fromstring((Path(world.settings.public_dir) / "articles" / SLUG / "index.html")
                                        .read_text("utf-8"))
    assert NOTE in article_page.text_content() and not article_page.xpath("//script[not(@type)]")  # rebuilt, as text

    retracted = post(editor, f"/library/{SLUG}/retract", "/library", {"note": "Withdrawn – misread evidence"})
    assert retracted.status_code == 303
    again = post(editor, f"/library/{SLUG}/retract", "/library", {"note": "twice"})
    assert again.status_code == 400 and "already retracted" in message_of(again)
    assert [r.kind for r in records.listing(world.engine)] == ["correction", "retraction"]

    _, doc = page_of(reviewer, "/corrections?done=retraction-2")  # every role reads the list
    cells = [[" ".join(td.text_content().split()) for td in tr.cssselect("td")] for tr in doc.cssselect("tbody tr")]
    assert [c[0] for c in cells] == ["1", "2"]
    assert cells[0][3] == "Correction (significant)" and cells[0][4] == NOTE and cells[1][3] == "Retraction"
    assert "not sent" in cells[0][6] and "newsletter send --correction 1" in cells[0][6]
    assert not doc.xpath("//main//script")


# -- 2. admin pages ----------------------------------------------------------------------------------

def test_staff_accounts_from_the_console_are_admin_only_audited_and_take_effect(world):
    from pipeline.staff import accounts, audit

    editor, boss = signed_in(world, "ed@example.org"), signed_in(world, "boss@example.org")
    for path in ("/staff", "/settings"):
        assert editor.get(ADMIN + path).status_code == 403
    assert post(editor, "/staff/add", "/library", {"email": "x@example.org"}).status_code == 403
    _, doc = page_of(boss, "/staff")
    rows = {tr.cssselect("td")[0].text_content(): tr for tr in doc.cssselect("tbody tr")}
    assert set(rows) == {"ed@example.org", "rev@example.org", "boss@example.org"}
    assert not rows["boss@example.org"].cssselect("form[action$='/staff/disable']")  # not oneself

    new = {"email": "Sian.Nurse@Example.org", "name": "Siân Ó’Brien 🩺", "credentials": "RN", "role": ["editor", "reviewer"],
           "password": PASSWORD, "password2": PASSWORD}
    for change, words in (({"password2": PASSWORD + "!"}, "passwords differ"),
                          ({"password": "short", "password2": "short"}, "too short"),
                          ({"name": "Evil\r\nBcc: x@y.z"}, "name"), ({"role": []}, "at least one role"),
                          ({"role": ["owner"]}, "unknown role"), ({"email": "not an address"}, "staff address")):
        answer = post(boss, "/staff/add", "/staff", {**new, **change})
        assert answer.status_code == 400 and words in message_of(answer), (change, message_of(answer))
    assert len(accounts.all_staff(world.engine)) == 3
    assert post(boss, "/staff/add", "/staff", new).headers["location"] == f"{BASE}/admin/staff?done=add"
    duplicate = post(boss, "/staff/add", "/staff", new)
    assert duplicate.status_code == 400 and "already has a staff account" in message_of(duplicate)
    added = [s for s in accounts.all_staff(world.engine) if s.name == "Siân Ó’Brien 🩺"][0]
    assert added.roles == ("editor", "reviewer") and added.credentials == "RN"

    nurse = signed_in(world, added.email)  # the new account signs in
    assert nurse.get(ADMIN + "/library").status_code == 200
    assert post(boss, "/staff/disable", "/staff", {"email": added.email}).status_code == 303
    assert nurse.get(ADMIN + "/library").status_code == 303  # their session ended
    assert sign_in(client(world), added.email).status_code == 401
    selfish = post(boss, "/staff/disable", "/staff", {"email": "boss@example.org"})
    assert selfish.status_code == 400 and "your own account" in message_of(selfish)

    fresh = "a new passphrase – £ é 微 ✓"
    assert post(boss, "/staff/reset", "/staff", {"email": added.email, "password": fresh, "password2": fresh,
                                                 "role": ["reviewer"]}).status_code == 303
    assert sign_in(client(world), added.email).status_code == 401  # the old password no longer works
    assert sign_in(client(world), added.email, fresh).status_code == 303  # re-enabled, new password
    assert accounts.all_staff(world.engine)[-1].roles == ("reviewer",)
    rows = audit.entries(world.engine, action="staff.", actor="boss@example.org")
    assert [(r.action, r.via) for r in rows] == [("staff.add", "web"), ("staff.disable", "web"), ("staff.reset", "web")]
    assert all("password" not in str(r.after) and PASSWORD not in str(r.after) for r in rows)


def test_the_settings_view_says_where_each_value_came_from_and_never_shows_a_secret(tmp_path, content_dir, monkeypatch):
    from pipeline.console.app import create_console
    from pipeline.database import open_database
    from pipeline.settings import SETTINGS, load_settings
    from pipeline.web.app import create_app

    cheap_hashing(monkeypatch)
    url = f"sqlite:///{tmp_path / 's.db'}"
    secret = "s3cret-value-that-must-never-show-✓"
    settings = load_settings(content_dir, env={"DATABASE_URL": url, "NEWSLETTER_SECRET": secret,
                                               "NEWSLETTER_BASE_URL": BASE, "NEWSLETTER_SMTP_PORT": "2525"})
    engine = open_database(url)
    add_staff(engine, "boss@example.org", "admin", name="Zoë Boss")
    add_staff(engine, "ed@example.org", "editor", name="Ed Itor")
    app = create_app(settings, engine, admin=create_console(settings, engine, content_dir), mail_worker=False)
    c = TestClient(app, base_url="https://my.klarity.health", follow_redirects=False)
    assert sign_in(c, "boss@example.org").status_code == 303
    answer, doc = page_of(c, "/settings")
    assert secret not in answer.text and "s3cret" not in answer.text
    rows = {tr.cssselect("td")[0].text_content(): [" ".join(td.text_content().split()) for td in tr.cssselect("td")]
            for tr in doc.cssselect("tbody tr")}
    assert list(rows) == [s.name for s in SETTINGS]  # every setting, in the table's order
    assert rows["secret_key"][1:3] == ["set (secret)", "environment NEWSLETTER_SECRET"]
    assert rows["database_url"][1:3] == [url, "environment DATABASE_URL"]
    assert rows["smtp_port"][1:3] == ["2525", "environment NEWSLETTER_SMTP_PORT"]
    site_line = next(n for n, line in enumerate((content_dir / "site.yaml").read_text("utf-8").splitlines(), 1)
                     if line.startswith("publication_name:"))
    assert rows["publication_name"][2] == f"site.yaml line {site_line}"
    assert rows["console_idle_minutes"][1:3] == ["30", "default"]
    for s in SETTINGS:
        if s.secret and s.name != "secret_key":
            assert rows[s.name][1] in ("set (secret)", "not set (secret)"), s.name
    ed = TestClient(app, base_url="https://my.klarity.health", follow_redirects=False)
    sign_in(ed, "ed@example.org")
    assert ed.get(ADMIN + "/settings").status_code == 403


# -- 1. retry deferred rows -----------------------------------------------------------------------------

@pytest.fixture
def retry_world(tmp_path, content_dir, monkeypatch):
    """The service's settings come from the content folder and the environment, as in
    production, so the child ``newsletter send`` the console starts loads the same ones."""
    from pipeline.console.app import create_console
    from pipeline.database import open_database
    from pipeline.settings import load_settings
    from pipeline.web.app import create_app

    for name in list(os.environ):
        if name.startswith(("NEWSLETTER_", "SMTP_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_BASE_URL": BASE,
           "NEWSLETTER_TRANSPORT": "outbox", "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
           "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cheap_hashing(monkeypatch)
    settings = load_settings(content_dir)
    engine = open_database(settings.database_url)
    add_staff(engine, "ed@example.org", "editor", name="Ed Itor")
    add_staff(engine, "rev@example.org", "reviewer")
    console = create_console(settings, engine, content_dir)
    app = create_app(settings, engine, admin=console, mail_worker=False)
    return type("World", (), dict(app=app, engine=engine, settings=settings, console=console.state.console,
                                  content_dir=content_dir))


def _unfinished_issue(w, people: list[str], deferred: int):
    """A recorded daily issue of today whose ledger has the first rows sent and the last
    ``deferred`` rows deferred after their attempts ran out (as an SMTP outage leaves them)."""
    from sqlalchemy import update

    from pipeline.content.library import load_library
    from pipeline.delivery import ledger
    from pipeline.rendering.compose import compose_issue
    from pipeline.scheduling.slots import today
    from subscribers import store

    for n, address in enumerate(people):
        store.add(w.engine, w.settings, address, name=f"Reader {n} ✓", confirmed=True, consent="yes (test)")
    library = load_library(w.content_dir, w.settings)
    issue = ledger.record_issue(w.engine, compose_issue(library, today(w.settings), number=1, scheduled=[SLUG]),
                                "What Is Microneedling? – £ é")
    owner = ledger.acquire_lease(w.engine, issue.id)
    assert ledger.write_recipients(w.engine, issue.id, "daily", owner=owner) == len(people)
    ledger.release_lease(w.engine, issue.id, owner)
    D = ledger.DELIVERIES
    with w.engine.begin() as conn:
        ids = [r.id for r in conn.execute(D.select().where(D.c.issue_id == issue.id).order_by(D.c.id))]
        conn.execute(update(D).where(D.c.id.in_(ids[:-deferred])).values(state=ledger.SENT, attempts=1))
        conn.execute(update(D).where(D.c.id.in_(ids[-deferred:])).values(
            state=ledger.DEFERRED, attempts=int(w.settings.smtp_max_attempts), last_reply="421 try later"))
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == issue.id).values(state="unfinished"))
    return issue


def test_retry_deferred_rows_runs_send_resume_once_refused_while_a_send_holds_the_lease(retry_world):
    from sqlalchemy import update

    from pipeline import clock, holders
    from pipeline.delivery import ledger
    from pipeline.staff import audit

    w = retry_world
    people = ["ann@example.com", "bjorn@example.com", "chloe.o'neil@example.com", "dev@例え.jp", "eve@example.com"]
    issue = _unfinished_issue(w, people, deferred=3)
    key = issue.key
    c = TestClient(w.app, base_url="https://my.klarity.health", follow_redirects=False)
    assert sign_in(c, "ed@example.org").status_code == 303
    _, doc = page_of(c, f"/sends/{key}")
    assert doc.cssselect(f"form[action='{BASE}/admin/sends/{key}/retry'] button")

    reviewer = TestClient(w.app, base_url="https://my.klarity.health", follow_redirects=False)
    sign_in(reviewer, "rev@example.org")
    assert post(reviewer, f"/sends/{key}/retry", f"/sends/{key}", {}).status_code == 403
    assert c.post(f"{ADMIN}/sends/{key}/retry", data={}).status_code == 403  # no CSRF token

    # a live sender holds the issue's lease: refused, nothing started
    with w.engine.begin() as conn:
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == issue.id).values(
            lease_owner=holders.new_holder(), lease_expires_at=clock.now() + timedelta(seconds=120)))
    busy = post(c, f"/sends/{key}/retry", f"/sends/{key}", {})
    assert busy.status_code == 409 and "is being sent now" in message_of(busy)
    assert w.console.retries.get(key) is None and audit.entries(w.engine, action="send.retry") == []
    with w.engine.begin() as conn:
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == issue.id).values(
            lease_owner=None, lease_expires_at=None))

    started = post(c, f"/sends/{key}/retry", f"/sends/{key}", {})
    assert started.status_code == 303 and started.headers["location"] == f"{BASE}/admin/sends/{key}?done=retry-started"
    second = post(c, f"/sends/{key}/retry", f"/sends/{key}", {})  # while it runs, or after: never a second send
    assert second.status_code == 409
    live = c.get(f"{ADMIN}/sends/{key}.json").json()
    assert live["retry"]["by"] == "ed@example.org" and "--resume" in live["retry"]["command"]
    assert w.console.retries.wait(key, timeout=90) == 0, w.console.retries.get(key).output

    live = c.get(f"{ADMIN}/sends/{key}.json").json()
    assert live["retry"]["running"] is False and live["retry"]["exit_code"] == 0 and live["done"] is True
    assert live["counts"]["sent"] == 5 and live["counts"]["deferred"] == 0 and live["state"] == "sent"
    _, doc = page_of(c, f"/sends/{key}")
    assert "finished with exit code 0" in doc.cssselect("[data-figure=retry]")[0].text_content()
    assert not doc.cssselect(f"form[action$='/retry']")  # nothing deferred any more
    messages = outbox_messages(w.settings)
    wire = [f"{a.partition('@')[0]}@{a.partition('@')[2].encode('idna').decode()}" for a in people[-3:]]
    assert sorted(str(m["To"]).rpartition("<")[2].rstrip(">") for m in messages) == sorted(wire)  # each once
    after = post(c, f"/sends/{key}/retry", f"/sends/{key}", {})
    assert after.status_code == 409 and "no deferred rows" in message_of(after)
    actions = [(r.action, r.actor) for r in audit.entries(w.engine, action="send")]
    assert actions[0] == ("send.retry", "ed@example.org") and ("send.retry.finished", "ed@example.org") in actions
    assert ("send", audit.operator()) in actions  # the child is `newsletter send`, which audits itself


def test_the_retry_runs_the_command_an_operator_would_for_each_kind_of_issue():
    from pipeline.console.retry import command_for
    from pipeline.delivery.ledger import IssueInfo
    from pipeline.errors import DeliveryError

    def issue(kind, number=7, topic=None):
        return IssueInfo(1, "k", kind, date(2026, 3, 3), number, "s", (), topic, None, "unfinished", 3)

    assert command_for(issue("daily")) == ("send", "--date", "2026-03-03", "--resume", "--no-progress")
    assert command_for(issue("daily", topic="mental-health")) == (
        "send", "--date", "2026-03-03", "--topic", "mental-health", "--resume", "--no-progress")
    assert command_for(issue("correction", 12)) == ("send", "--correction", "12", "--resume", "--no-progress")
    with pytest.raises(DeliveryError, match="weekly issue"):
        command_for(issue("weekly"))
