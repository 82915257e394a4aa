"""The editorial console in process (Starlette's TestClient) under base_url's path prefix:
sign-in, sessions (signed, revocable, idle timeout, no fixation), CSRF on every form, roles,
the pages, the audit trail, and Hypothesis throwing requests at every console route."""
from __future__ import annotations

import re
import warnings
from datetime import date, datetime, timezone
from http.cookies import SimpleCookie

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from lxml import html as lxml_html

from fixtures_console import PASSWORD, add_staff, cheap_hashing
from fixtures_subscribers import subscriber_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BASE = "https://my.klarity.health/newsletter"  # a path prefix and https, as shipped
ADMIN = "/newsletter/admin"
UTC = timezone.utc


@pytest.fixture
def world(settings, tmp_path, content_dir):
    from pipeline.clock import frozen_clock
    from pipeline.console.app import create_console
    from pipeline.database import open_database
    from pipeline.web.app import create_app

    with pytest.MonkeyPatch.context() as mp, frozen_clock(datetime(2026, 3, 2, 6, 0, tzinfo=UTC)) as clock:
        cheap_hashing(mp)
        wsettings = subscriber_settings(settings, tmp_path, base_url=BASE, database_url=f"sqlite:///{tmp_path / 'c.db'}",
                                        review_required=True)
        engine = open_database(wsettings.database_url)
        sent = []
        console = create_console(wsettings, engine, content_dir, send_test=lambda s, r, to: sent.append((r, to)))
        app = create_app(wsettings, engine, admin=console, mail_worker=False)
        add_staff(engine, "ed@example.org", "editor", name="Ed Itor", credentials="")
        add_staff(engine, "rev@example.org", "reviewer")
        add_staff(engine, "boss@example.org", "admin", "editor", name="Zoë Boss 🩺", credentials="")
        yield type("World", (), dict(app=app, engine=engine, settings=wsettings, clock=clock, sent=sent,
                                      content_dir=content_dir))


def client(world):
    return TestClient(world.app, base_url="https://my.klarity.health", follow_redirects=False)


def csrf_of(page: str) -> str:
    return lxml_html.fromstring(page).cssselect("input[name=csrf]")[0].get("value")


def sign_in(c, email: str, password: str = PASSWORD):
    page = c.get(f"{ADMIN}/login")
    assert page.status_code == 200
    return c.post(f"{ADMIN}/login", data={"email": email, "password": password, "csrf": csrf_of(page.text)})


def signed_in(world, email: str):
    c = client(world)
    answer = sign_in(c, email)
    assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/admin/"
    return c


def test_signed_out_requests_get_the_login_page(world):
    c = client(world)
    for path in ("/", "/library", "/calendar?view=month", "/preview", "/sends", "/subscribers", "/audit",
                 "/sends/2026-03-03-daily.json"):
        answer = c.get(ADMIN + path)
        assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/admin/login", path
    posted = c.post(f"{ADMIN}/calendar/add", data={"slug": "microneedling", "day": "2026-03-04"})
    assert posted.status_code == 303
    from pipeline.scheduling import calendar
    assert calendar.entries(world.engine) == []


def test_the_session_cookie_is_secure_httponly_strict_and_scoped_to_the_console(world):
    c = client(world)
    answer = sign_in(c, "ed@example.org")
    raw = [v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("nl_console=")][0]
    cookie = SimpleCookie(raw)["nl_console"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "strict"
    assert cookie["path"] == "/newsletter/admin"
    # the public pages set no cookie of the console and are served as before
    for path in ("/newsletter/healthz", "/newsletter/subscribe/sent"):
        public = c.get(path)
        assert public.status_code < 500 and "nl_console" not in public.headers.get("set-cookie", "")


def test_a_failed_sign_in_says_nothing_more_and_is_audited(world):
    from pipeline.staff import audit
    c = client(world)
    answer = sign_in(c, "ed@example.org", "wrong wrong wrong")
    assert answer.status_code == 401 and "sign-in refused" in answer.text and "nl_console=" not in str(answer.headers)
    assert audit.entries(world.engine, action="signin.failed")[0].via == "web"


def test_lockout_after_repeated_failures(world):
    c = client(world)
    for _ in range(world.settings.staff_lockout_failures):
        assert sign_in(c, "ed@example.org", "wrong wrong wrong").status_code == 401
    assert sign_in(c, "ed@example.org").status_code == 401  # the right password, locked out


def test_forged_expired_and_revoked_sessions_get_the_login_page(world):
    c = signed_in(world, "ed@example.org")
    assert c.get(f"{ADMIN}/library").status_code == 200
    good = c.cookies.get("nl_console")
    token, sig = good.split(".")
    forged = client(world)
    forged.cookies.set("nl_console", f"{token[:-2]}AA.{sig}", domain="my.klarity.health", path="/newsletter/admin")
    assert forged.get(f"{ADMIN}/library").status_code == 303
    world.clock.advance(minutes=world.settings.console_idle_minutes + 1)  # idle too long
    assert c.get(f"{ADMIN}/library").status_code == 303
    c2 = signed_in(world, "ed@example.org")
    page = c2.get(f"{ADMIN}/library")
    assert c2.post(f"{ADMIN}/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    replay = client(world)
    replay.cookies.set("nl_console", c2.cookies.get("nl_console") or good, domain="my.klarity.health",
                       path="/newsletter/admin")
    assert replay.get(f"{ADMIN}/library").status_code == 303


def test_sign_in_makes_a_new_session_whatever_cookie_came_with_it(world):
    """Session fixation: a cookie planted before sign-in (even a real session of someone else)
    is never the session the sign-in makes."""
    attacker = signed_in(world, "ed@example.org")
    planted = attacker.cookies.get("nl_console")
    victim = client(world)
    victim.cookies.set("nl_console", planted, domain="my.klarity.health", path="/newsletter/admin")
    assert sign_in(victim, "rev@example.org").status_code == 303
    mine = victim.cookies.get("nl_console")
    assert mine != planted
    assert attacker.get(f"{ADMIN}/library").status_code == 303  # the planted session ended
    assert "Siân" in victim.get(f"{ADMIN}/library").text


def test_every_form_needs_the_sessions_csrf_token(world):
    from pipeline.scheduling import calendar
    ed = signed_in(world, "ed@example.org")
    other = signed_in(world, "boss@example.org")
    foreign = csrf_of(other.get(f"{ADMIN}/calendar").text)
    # "\x80" and "é": found by the fuzzer as a 500 (compare_digest refuses non-ASCII str)
    for token in (None, "", foreign, "0" * 64, "\x80", "é" * 64):
        data = {"slug": "microneedling", "day": "2026-03-04"} | ({"csrf": token} if token is not None else {})
        assert ed.post(f"{ADMIN}/calendar/add", data=data).status_code == 403
    mine = csrf_of(ed.get(f"{ADMIN}/calendar").text)
    cross = ed.post(f"{ADMIN}/calendar/add", data={"slug": "microneedling", "day": "2026-03-04", "csrf": mine},
                    headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert calendar.entries(world.engine) == []
    # the sign-in form too: no token, no sign-in
    c = client(world)
    assert c.post(f"{ADMIN}/login", data={"email": "ed@example.org", "password": PASSWORD}).status_code == 403


def test_roles_an_editor_cannot_approve_a_reviewer_cannot_change_the_calendar(world):
    from pipeline.review import reviews
    from pipeline.scheduling import calendar
    from pipeline.content.library import load_library

    ed = signed_in(world, "ed@example.org")
    token = csrf_of(ed.get(f"{ADMIN}/library").text)
    assert ed.post(f"{ADMIN}/review/microneedling", data={"decision": "approve", "csrf": token}).status_code == 403
    rev = signed_in(world, "rev@example.org")
    token = csrf_of(rev.get(f"{ADMIN}/calendar").text)
    assert rev.post(f"{ADMIN}/calendar/add", data={"slug": "microneedling", "day": "2026-03-04", "csrf": token}
                    ).status_code == 403
    assert rev.get(f"{ADMIN}/audit").status_code == 403
    article = load_library(world.content_dir, world.settings).article("microneedling")
    assert reviews.status(world.engine, article).state == reviews.AWAITING
    assert calendar.entries(world.engine) == []


def test_the_editorial_day_in_the_console_is_audited(world):
    rev = signed_in(world, "rev@example.org")
    library = rev.get(f"{ADMIN}/library")
    assert "awaiting review" in library.text
    done = rev.post(f"{ADMIN}/review/microneedling", data={"decision": "approve", "csrf": csrf_of(library.text)})
    assert done.status_code == 303
    assert "approved by Dr Siân O’Connor-Müller, MBBS, MRCGP" in rev.get(done.headers["location"]).text
    ed = signed_in(world, "ed@example.org")
    token = csrf_of(ed.get(f"{ADMIN}/calendar").text)
    past = ed.post(f"{ADMIN}/calendar/add", data={"slug": "microneedling", "day": "2026-03-01", "csrf": token})
    assert past.status_code == 400 and "is in the past" in past.text
    added = ed.post(f"{ADMIN}/calendar/add", data={"slug": "microneedling", "day": "2026-03-04", "at": "08:30",
                                                   "csrf": token})
    assert added.status_code == 303
    week = ed.get(f"{ADMIN}/calendar").text
    row = next(r for r in lxml_html.fromstring(week).cssselect("tbody tr") if "2026-03-04" in r.text_content())
    assert "microneedling @08:30" in row.text_content() and "08:30 GMT" in row.text_content()
    month = ed.get(f"{ADMIN}/calendar?view=month").text
    assert "microneedling" in lxml_html.fromstring(month).cssselect("table.month")[0].text_content()
    preview = ed.get(f"{ADMIN}/preview?date=2026-03-04")
    tree = lxml_html.fromstring(preview.text)
    assert "What Is Microneedling?" in tree.text_content() and "Medically reviewed by" in tree.cssselect("pre.text")[0].text
    frames = tree.cssselect("iframe")
    assert sorted(f.get("class") for f in frames) == ["w375", "w600"]
    frame = ed.get(frames[0].get("src").removeprefix("https://my.klarity.health"))
    assert frame.status_code == 200 and "frame-ancestors 'self'" in frame.headers["content-security-policy"]
    assert "<h1" in frame.text
    sent = ed.post(f"{ADMIN}/preview/test", data={"date": "2026-03-04", "to": "rev@example.org",
                                                  "csrf": csrf_of(preview.text)})
    assert sent.status_code == 303 and world.sent[0][1] == "rev@example.org"
    outsider = ed.post(f"{ADMIN}/preview/test", data={"date": "2026-03-04", "to": "someone@example.com",
                                                      "csrf": csrf_of(preview.text)})
    assert outsider.status_code == 400 and len(world.sent) == 1
    boss = signed_in(world, "boss@example.org")
    log = boss.get(f"{ADMIN}/audit").text
    actions = [r.cssselect("td")[2].text_content() for r in lxml_html.fromstring(log).cssselect("tbody tr")]
    for action in ("signin", "review.approve", "calendar.add", "send.test"):
        assert action in actions, (action, actions)
    filtered = boss.get(f"{ADMIN}/audit?actor=ed@example.org&action=calendar").text
    assert [r.cssselect("td")[2].text_content() for r in lxml_html.fromstring(filtered).cssselect("tbody tr")] \
        == ["calendar.add"]


def test_subscriber_counts_and_the_admins_logged_look_up(world):
    from subscribers import store
    from pipeline.staff import audit

    for n, topics in enumerate([("skin-care",), ("skin-care", "mental-health"), ()]):
        store.add(world.engine, world.settings, f"p{n}@example.com", topics=topics, confirmed=True,
                  consent="yes (test)")
    ed = signed_in(world, "ed@example.org")
    page = ed.get(f"{ADMIN}/subscribers").text
    assert "p0@example.com" not in page and "Look up" not in page
    assert re.search(r"topic: Mental health</td><td>1<", page)
    boss = signed_in(world, "boss@example.org")
    token = csrf_of(boss.get(f"{ADMIN}/subscribers").text)
    found = boss.post(f"{ADMIN}/subscribers/lookup", data={"email": "P1@example.com", "csrf": token})
    assert found.status_code == 200 and "p1@example.com" in found.text
    assert boss.post(f"{ADMIN}/subscribers/lookup", data={"email": "not an address", "csrf": token}).status_code == 200
    assert ed.post(f"{ADMIN}/subscribers/lookup", data={"email": "p1@example.com",
                                                        "csrf": csrf_of(page)}).status_code == 403
    lookups = audit.entries(world.engine, action="subscriber.lookup")
    assert [r.actor for r in lookups] == ["boss@example.org", "boss@example.org"]
    assert "@example.com" not in " ".join(r.line() for r in lookups)


@pytest.mark.parametrize("who", [None, "boss@example.org"])
def test_fuzzed_console_requests_never_get_a_server_error(world, who):
    c = signed_in(world, who) if who else client(world)
    token = csrf_of(c.get(f"{ADMIN}/calendar").text) if who else ""
    paths = st.sampled_from(["/", "/login", "/logout", "/library", "/review/microneedling", "/review/%00x",
                             "/calendar", "/calendar/add", "/calendar/move", "/calendar/cancel", "/calendar/pause",
                             "/calendar/nope", "/preview", "/preview/frame", "/preview/test", "/sends",
                             "/sends/2026-03-03-daily", "/sends/x.json", "/subscribers", "/subscribers/lookup",
                             "/audit", "/static/console.css", "/static/../x"])
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
    fields = st.dictionaries(st.sampled_from(["slug", "day", "at", "until", "email", "password", "decision",
                                              "comment", "to", "date", "article", "csrf"]), text, max_size=6)
    query = st.dictionaries(st.sampled_from(["view", "date", "article", "actor", "action", "since", "done"]), text,
                            max_size=3)

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]), path=paths, data=fields, params=query,
           with_token=st.booleans())
    def fuzz(method, path, data, params, with_token):
        if with_token and token:
            data = {**data, "csrf": token}
        if path == "/logout":
            data = {k: v for k, v in data.items() if k != "csrf"}  # stay signed in
        answer = c.request(method, ADMIN + path, params=params, data=data if method in ("POST", "PUT") else None)
        assert answer.status_code < 500, (method, path, data, params, answer.text[:300])

    fuzz()


def test_a_held_day_says_why_and_offers_the_articles_own_preview(world):
    from pipeline.scheduling import calendar

    calendar.add_entry(world.engine, "microneedling", date(2026, 3, 4), None)
    ed = signed_in(world, "ed@example.org")
    held = lxml_html.fromstring(ed.get(f"{ADMIN}/preview?date=2026-03-04").text)
    assert "held, not sent: awaiting medical review: microneedling" in held.cssselect("p.note")[0].text_content()
    assert not held.cssselect("iframe")
    (link,) = [a.get("href") for a in held.cssselect("main a") if "on its own" in a.text_content()]
    own = lxml_html.fromstring(ed.get(link.removeprefix("https://my.klarity.health")).text)
    assert len(own.cssselect("iframe")) == 2 and "Medically reviewed" not in own.cssselect("pre.text")[0].text
    week = lxml_html.fromstring(ed.get(f"{ADMIN}/calendar").text)
    row = next(r for r in week.cssselect("tbody tr") if "2026-03-04" in r.text_content())
    assert row.cssselect("td")[4].text_content().strip() == "awaiting review"
