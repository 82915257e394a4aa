"""The web service's handlers: sign-up, confirmation, unsubscribe, preferences (data rights: ``rights.py``).

No handler talks to the mail relay: mail is written to the queue in the same
transaction as the consent record (``subscribers.mailqueue``), and ``notify``
wakes this process's queue worker.  Every link and form action is built from
``settings.base_url``.  A form post that changes something answers with a
redirect to a page (POST-redirect-GET), so a reload never posts it again;
one-click unsubscribe (RFC 8058) is the exception, and it is idempotent.
"""
from __future__ import annotations

import logging
import secrets as pysecrets
import threading
from dataclasses import dataclass, field as dc_field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from jinja2 import Environment
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from pipeline import keys
from pipeline.database import transaction
from pipeline.errors import SubscriberError
from pipeline.settings import Settings
from pipeline.web.http import FORM_MAX_AGE, NO_STORE, client_ip, field, fields, read_form, mask_email
from pipeline.web.rights import DataRights
from pipeline.privacy import access
from subscribers import delivery_time, limits, mailqueue, signup, store, tokens
from subscribers.conflicts import retrying

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "web"  # shared with the archive pages
FORM_COOKIE = "nl_form"  # binds the sign-up form's CSRF token to the browser that loaded the form


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme.lower()}://{host}{port}"


@dataclass
class WebService(DataRights):
    """The app's state: settings, database, how queued mail is sent, the templates."""

    settings: Settings
    engine: Engine
    send: Callable
    env: Environment
    rate_per_minute: int | None = None  # overrides subscribe_rate_per_minute (tests)
    mail_worker: bool = True
    worker: mailqueue.MailWorker | None = None
    _worker_lock: threading.Lock = dc_field(default_factory=threading.Lock)

    # -- rendering ---------------------------------------------------------------

    def page(self, template: str, status: int = 200, headers: dict | None = None, **values) -> HTMLResponse:
        body = self.env.get_template(template).render(settings=self.settings, **values)
        return HTMLResponse(body, status_code=status, headers=headers)

    def message(self, title: str, text: str, status: int = 200, links: tuple = (), headers: dict | None = None,
                **extra) -> HTMLResponse:
        if not links:  # never a dead end: an error leads back to the form, every page to the archive
            links = ((("Go to the sign-up form", self.settings.url("/subscribe")),) if status >= 400 else ()) + (
                ("Read the newsletter", self.settings.url("/")),)
        return self.page("message.html", status, headers, title=title, text=text, links=links, **extra)

    def bad_link(self, why: str) -> HTMLResponse:
        return self.message("This link does not work", why, status=400, headers=NO_STORE)

    def url(self, path: str) -> str:
        return self.settings.url(path)

    def see_other(self, url: str) -> Response:
        return RedirectResponse(url, status_code=303, headers=NO_STORE)

    @property
    def secret(self) -> str:
        return keys.secret(self.settings)

    def read(self, purpose: str, token: str, max_age: int | None = None) -> int:
        return tokens.read_token(self.secret, purpose, token, max_age)

    # -- the mail queue worker ------------------------------------------------------

    def start_worker(self) -> None:
        with self._worker_lock:
            if self.mail_worker and self.worker is None:
                self.worker = mailqueue.MailWorker(self.engine, self.settings, self.send).start()

    def stop_worker(self) -> None:
        with self._worker_lock:
            if self.worker is not None:
                self.worker.stop()
                self.worker = None

    def notify(self) -> None:
        """Mail was queued: this process's worker sends it now rather than at its next poll."""
        self.start_worker()
        if self.worker is not None:
            self.worker.wake()

    # -- sign-up -------------------------------------------------------------------

    def subscribe_form(self, request: Request, status: int = 200, error: str | None = None,
                       values: dict | None = None) -> HTMLResponse:
        wording, version = store.consent_wording(self.settings)
        values = {"email": "", "name": "", "topics": (), "frequency": "daily", **(values or {})}
        cookie = request.cookies.get(FORM_COOKIE, "")
        if not (16 <= len(cookie) <= 64 and cookie.isalnum()):
            cookie = pysecrets.token_hex(16)
        response = self.page("subscribe.html", status, {"referrer-policy": "same-origin"}, error=error, values=values,
                             wording=wording, version=version, topics=sorted(self.settings.topics.items()),
                             topics_wording=store.topics_consent_wording(self.settings),
                             action=self.url("/subscribe"), csrf=tokens.form_token(self.settings, "subscribe:" + cookie))
        base = urlsplit(self.settings.base_url)
        response.set_cookie(FORM_COOKIE, cookie, max_age=FORM_MAX_AGE, path=base.path or "/",
                            secure=base.scheme == "https", httponly=True, samesite="strict")
        return response

    async def get_subscribe(self, request: Request) -> Response:
        return self.subscribe_form(request)

    def same_origin(self, request: Request) -> bool:
        """Origin (or, without it, Referer) must be our own when the browser sends one."""
        ours = origin_of(self.settings.base_url)
        origin = request.headers.get("origin")
        if origin is not None:
            return origin.strip().lower() == ours
        referer = request.headers.get("referer")
        return referer is None or origin_of(referer) == ours

    def ip_allowed(self, ip: str | None) -> bool:
        per_minute = self.settings.subscribe_rate_per_minute if self.rate_per_minute is None else self.rate_per_minute
        if int(per_minute) <= 0:
            return True
        bucket = limits.ip_bucket(ip)

        def write() -> bool:
            with transaction(self.engine) as s:
                return (limits.take(s, f"signup-ip-minute:{bucket}", int(per_minute), timedelta(minutes=1))
                        and limits.take(s, f"signup-ip-hour:{bucket}", int(self.settings.subscribe_rate_per_hour),
                                        timedelta(hours=1)))
        return retrying(write)

    async def post_subscribe(self, request: Request) -> Response:
        ip = client_ip(request)
        form = await read_form(request)
        cookie = request.cookies.get(FORM_COOKIE, "")
        if not self.same_origin(request) or not cookie or not tokens.check_form_token(
                self.settings, "subscribe:" + cookie, field(form, "csrf"), FORM_MAX_AGE):
            return self.message("Please use the form again", "This form was sent from another site, or it has "
                                "expired. Nothing was done; please fill in the subscription form again.", status=403,
                                links=(("The subscription form", self.url("/subscribe")),))
        if not await run_in_threadpool(self.ip_allowed, ip):
            return self.message("Too many requests", "Please wait a minute and try again.", status=429,
                                headers={"retry-after": "60"})
        values = {"email": field(form, "email"), "name": field(form, "name"), "topics": fields(form, "topics"),
                  "frequency": field(form, "frequency") or "daily", "topics_consent": field(form, "topics_consent")}
        _, version = store.consent_wording(self.settings)
        if field(form, "consent") != "yes":
            return self.subscribe_form(request, 400, "Please tick the box to agree to receive the newsletter.", values)
        if field(form, "consent_version") != version:
            return self.subscribe_form(request, 400, "The consent wording has changed since this page was loaded; "
                                       "please read it again and resubmit.", values)
        # Topic choices can reveal health conditions (special-category data): none is
        # stored without its own explicit tick.
        topics_consent = values["topics_consent"] == "yes"
        if any(t.strip() for t in values["topics"]) and not topics_consent:
            return self.subscribe_form(request, 400, "You ticked some topics. To let us keep them, please also tick "
                                       "the box agreeing to that, or untick the topics.", values)
        try:
            outcome = await run_in_threadpool(partial(
                signup.sign_up, self.engine, self.settings, values["email"], name=values["name"] or None,
                topics=values["topics"], frequency=values["frequency"], ip=ip, topics_consent=topics_consent))
        except SubscriberError as exc:
            return self.subscribe_form(request, 400, exc.message, values)
        if outcome.mailed != "none":
            self.notify()
        # The same answer for a new, pending, confirmed, suppressed or limited address.
        return self.see_other(self.url("/subscribe/sent"))

    async def subscribe_sent(self, request: Request) -> Response:
        return self.message("Check your inbox", "If the address can receive our newsletter, an email is on its way "
                            "with a link to confirm your subscription. The link works for "
                            f"{self.settings.confirm_token_days} days. Until you confirm, you will not be subscribed.")

    # -- confirmation ------------------------------------------------------------------

    def _request_id(self, token: str) -> int:
        return self.read(tokens.CONFIRM, token, tokens.confirm_max_age(self.settings))

    def _confirm_failed(self, exc: SubscriberError) -> Response:
        return self.bad_link(f"{exc.message[:1].upper()}{exc.message[1:]}. Nothing has been changed. "
                             "You can sign up again on the subscription page.")

    async def confirm_page(self, request: Request) -> Response:
        """GET (and a link scanner's HEAD): a page with a button; nothing changes."""
        token = request.path_params["token"]
        try:
            view = await run_in_threadpool(signup.get_request, self.engine, self._request_id(token))
            if view is None:
                raise SubscriberError("this confirmation link is no longer valid")
        except SubscriberError as exc:
            return self._confirm_failed(exc)
        if view.confirmed or view.subscriber_status == "confirmed":
            return self.message("You are subscribed", "Thank you: your subscription is confirmed.",
                                links=(("Your preferences", tokens.preferences_url(self.settings, view.subscriber_id)),
                                       ("Read the latest issue", self.latest_issue())),
                                headers=NO_STORE)
        names = [(self.settings.topics.get(t) or {}).get("name", t) for t in view.topics]
        return self.page("confirm.html", headers=NO_STORE, action=self.url(f"/confirm/{token}"), view=view,
                         topic_names=names)

    async def confirm(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            _, changed = await run_in_threadpool(partial(signup.confirm, self.engine, self.settings,
                                                         self._request_id(token), method="web", ip=client_ip(request)))
        except SubscriberError as exc:
            return self._confirm_failed(exc)
        if changed:
            self.notify()
        return self.see_other(self.url(f"/confirm/{token}"))

    def latest_issue(self) -> str:
        from subscribers.messages import latest_issue_url
        return latest_issue_url(self.settings)

    # -- leaving ---------------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            sid = self.read(tokens.UNSUBSCRIBE, token)
        except SubscriberError:
            return self.bad_link("This unsubscribe link is not valid. Please use the link from your most recent email.")
        if request.method in ("GET", "HEAD"):
            info = await run_in_threadpool(store.get, self.engine, sid)
            return self.page("unsubscribe.html", headers=NO_STORE, action=self.url(f"/unsubscribe/{token}"),
                             csrf=tokens.form_token(self.settings, "unsubscribe:" + token),
                             left=info is None or info.status in store.SUPPRESSED_STATUSES)
        form = await read_form(request)
        # RFC 8058's POST carries only List-Unsubscribe=One-Click; our page's button sends its form token
        by_button = tokens.check_form_token(self.settings, "unsubscribe:" + token, field(form, "csrf"), FORM_MAX_AGE)
        one_click = not by_button and "csrf" not in form and field(form, "List-Unsubscribe") == "One-Click"
        info = await run_in_threadpool(partial(store.unsubscribe, self.engine, self.settings, sid,
                                               method="one-click" if one_click else "web", ip=client_ip(request)))
        # 200 and no redirect (RFC 8058), whether this is the first request or a repeat
        return self.message("You are unsubscribed",
                            "You will not receive the newsletter any more." if info is not None
                            else "We hold no subscription for this link, so you will not receive the newsletter.",
                            headers=NO_STORE)

    # -- preferences -------------------------------------------------------------------

    def preferences_form(self, request: Request, info: store.SubscriberInfo, status: int = 200,
                         error: str | None = None, notice: str | None = None) -> HTMLResponse:
        token = request.path_params["token"]
        here = self.url(f"/preferences/{token}")
        return self.page("preferences.html", status, NO_STORE, info=info, error=error, notice=notice, here=here,
                         masked=mask_email(info.email), csrf=tokens.form_token(self.settings, token),
                         topics_wording=store.topics_consent_wording(self.settings),
                         topics=sorted(self.settings.topics.items()),
                         unsubscribe_url=tokens.unsubscribe_url(self.settings, info.id), **self.time_choices(info))

    def time_choices(self, info: store.SubscriberInfo) -> dict:
        """The "when it arrives" selects: every offered zone (the saved one, else the editors', selected)."""
        zones = delivery_time.offered_zones()
        if self.settings.timezone not in zones:
            zones = tuple(sorted((*zones, self.settings.timezone)))
        return {"zones": [(z, delivery_time.zone_label(z)) for z in zones],
                # a stored zone no longer offered shows (and would save) the editors'
                "zone_selected": info.time_zone if info.time_zone in zones else self.settings.timezone,
                "zone_aliases": delivery_time.aliases_json(),
                "editors_time": delivery_time.editors_time_label(self.settings)}

    async def _subscriber(self, token: str) -> store.SubscriberInfo | Response:
        try:
            sid = self.read(tokens.PREFERENCES, token)
        except SubscriberError:
            return self.bad_link("This preferences link is not valid. Please use the link from your most recent email.")
        info = await run_in_threadpool(store.get, self.engine, sid)
        if info is None:
            return self.message("Nothing held", "We hold no data for this link: the subscription has been deleted.",
                                status=404, headers=NO_STORE)
        return info

    NOTICES = {"saved": "Your preferences are saved.",
               "sent": "We have emailed you a link to download or delete your data. It works once, for one hour."}

    async def preferences(self, request: Request) -> Response:
        token = request.path_params["token"]
        info = await self._subscriber(token)
        if isinstance(info, Response):
            return info
        if request.method in ("GET", "HEAD"):
            notice = next((text for key, text in self.NOTICES.items() if request.query_params.get(key) == "1"), None)
            return self.preferences_form(request, info, notice=notice)
        form = await read_form(request)
        if not tokens.check_form_token(self.settings, token, field(form, "csrf"), FORM_MAX_AGE):
            return self.preferences_form(request, info, 400, "This form has expired; please make your changes again.")
        chosen = fields(form, "topics")
        topics_consent = field(form, "topics_consent") == "yes"
        if {t.strip() for t in chosen} & set(self.settings.topics) - set(info.topics) and not topics_consent:
            # a topic newly chosen here is health data too: its own explicit tick, as at sign-up
            return self.preferences_form(request, info, 400, "You ticked a new topic. To let us keep it, please also "
                                         "tick the box agreeing to that, or untick it.")
        # A form without the time selects (an older page) leaves the saved time alone.
        when = {key: field(form, key) for key in ("time_zone", "delivery_hour") if key in form}
        try:
            await run_in_threadpool(partial(
                store.update_preferences, self.engine, self.settings, info.id, name=field(form, "name") or None,
                topics=chosen, frequency=field(form, "frequency"), ip=client_ip(request),
                topics_consent=topics_consent, **when))
        except SubscriberError as exc:
            return self.preferences_form(request, info, 400, exc.message)
        return self.see_other(self.url(f"/preferences/{token}?saved=1"))

    async def data_link(self, request: Request) -> Response:
        """POST from the preferences page: email a one-time export/erase link."""
        token = request.path_params["token"]
        info = await self._subscriber(token)
        if isinstance(info, Response):
            return info
        form = await read_form(request)
        if not tokens.check_form_token(self.settings, token, field(form, "csrf"), FORM_MAX_AGE):
            return self.preferences_form(request, info, 400, "This form has expired; nothing was sent. Please try again.")
        if await run_in_threadpool(access.request_link, self.engine, self.settings, info.id):
            self.notify()
        return self.see_other(self.url(f"/preferences/{token}?sent=1"))

    # -- operations -------------------------------------------------------------------

    ASSETS = {"preferences.js": "text/javascript; charset=utf-8"}  # served from our origin (the CSP allows 'self')

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.ASSETS:
            raise HTTPException(404)
        body = await run_in_threadpool((TEMPLATES / "assets" / name).read_bytes)
        return Response(body, media_type=self.ASSETS[name], headers={"cache-control": "public, max-age=3600"})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        try:
            await run_in_threadpool(ping)
        except Exception as exc:  # any database failure means "not ready", never a crash
            log.warning("readiness check failed: %s", exc)
            return PlainTextResponse("database unavailable", status_code=503)
        return PlainTextResponse("ready")

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Request too large"}
        texts = {404: "There is no page at this address.",
                 405: "This address does not take that kind of request.",
                 413: "What was sent is far larger than any of our forms; nothing was saved."}
        return self.message(titles.get(exc.status_code, "Error"),
                            texts.get(exc.status_code, "The request could not be handled."), status=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return self.message("Something went wrong", "Please try again later.", status=500)


