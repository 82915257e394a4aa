"""The web service's handlers: sign-up, confirmation, unsubscribe, preferences, data rights."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from jinja2 import Environment
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from pipeline.errors import DeliveryError, SubscriberError
from pipeline.settings import Settings
from pipeline.web.http import NO_STORE, TokenBucket, client_ip, field, fields, is_one_click, read_form
from subscribers import messages, store, tokens

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "web"  # shared with the archive pages
FORM_MAX_AGE = 2 * 3600  # seconds a preferences form stays valid (its CSRF token)


@dataclass
class WebService:
    """The app's state: settings, database, how mail is sent, the templates."""

    settings: Settings
    engine: Engine
    send: Callable
    limiter: TokenBucket
    env: Environment

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

    @property
    def secret(self) -> str:
        return tokens.secret(self.settings)

    def read(self, purpose: str, token: str, max_age: int | None = None) -> int:
        return tokens.read_token(self.secret, purpose, token, max_age)

    # -- sign-up -------------------------------------------------------------------

    def subscribe_form(self, status: int = 200, error: str | None = None, values: dict | None = None) -> HTMLResponse:
        wording, version = store.consent_wording(self.settings)
        values = {"email": "", "name": "", "topics": (), "frequency": "daily", **(values or {})}
        return self.page("subscribe.html", status, error=error, values=values, wording=wording, version=version,
                         topics_wording=store.topics_consent_wording(self.settings),
                         topics=sorted(self.settings.topics.items()))

    async def get_subscribe(self, request: Request) -> Response:
        return self.subscribe_form()

    async def post_subscribe(self, request: Request) -> Response:
        ip = client_ip(request)
        if not self.limiter.allow(ip or "unknown"):
            return self.message("Too many requests", "Please wait a minute and try again.", status=429,
                                headers={"retry-after": "60"})
        form = await read_form(request)
        values = {"email": field(form, "email"), "name": field(form, "name"), "topics": fields(form, "topics"),
                  "frequency": field(form, "frequency") or "daily", "topics_consent": field(form, "topics_consent")}
        _, version = store.consent_wording(self.settings)
        if field(form, "consent") != "yes":
            return self.subscribe_form(400, "Please tick the box to agree to receive the newsletter.", values)
        if field(form, "consent_version") != version:
            return self.subscribe_form(400, "The consent wording has changed since this page was loaded; "
                                            "please read it again and resubmit.", values)
        # Topic choices can reveal health conditions (special-category data): none is
        # stored without its own explicit tick.
        topics_consent = values["topics_consent"] == "yes"
        if any(t.strip() for t in values["topics"]) and not topics_consent:
            return self.subscribe_form(400, "You ticked some topics. To let us keep them, please also tick the box "
                                            "agreeing to that, or untick the topics.", values)
        try:
            result = await run_in_threadpool(partial(
                store.sign_up, self.engine, self.settings, values["email"], name=values["name"] or None,
                topics=values["topics"], frequency=values["frequency"], ip=ip, topics_consent=topics_consent))
        except SubscriberError as exc:
            return self.subscribe_form(400, exc.message, values)
        if result.send != "none":
            message = messages.confirmation_message(self.settings, result.subscriber, already=result.send == "already")
            try:
                await run_in_threadpool(self.send, self.settings, message)
            except DeliveryError as exc:
                log.error("confirmation email to subscriber %s not sent: %s", result.subscriber.id, exc)
                return self.message("Please try again later", "We could not send the confirmation email just now. "
                                    "Nothing has been lost; please try again in a few minutes.", status=503)
            await run_in_threadpool(store.mark_confirmation_sent, self.engine, result.subscriber.id)
        # The same answer for a new, pending, confirmed or suppressed address.
        return self.message("Check your inbox", "If the address can receive our newsletter, an email is on its way "
                            "with a link to confirm your subscription. The link works for "
                            f"{self.settings.confirm_token_days} days. Until you click it, you will not be subscribed.")

    async def confirm(self, request: Request) -> Response:
        if request.method == "HEAD":  # link scanners probe with HEAD: nothing happens without a GET
            return Response(status_code=200, headers=NO_STORE, media_type="text/html")
        try:
            sid = self.read(tokens.CONFIRM, request.path_params["token"], tokens.confirm_max_age(self.settings))
            info, changed = await run_in_threadpool(partial(store.confirm, self.engine, self.settings, sid,
                                                            method="web", ip=client_ip(request)))
        except SubscriberError as exc:
            return self.bad_link(f"{exc.message[:1].upper()}{exc.message[1:]}. Nothing has been changed. "
                                 "You can sign up again on the subscription page.")
        if changed:
            welcome = messages.welcome_message(self.settings, info, messages.latest_issue_url(self.settings))
            try:
                await run_in_threadpool(self.send, self.settings, welcome)
            except DeliveryError as exc:  # the confirmation stands; the welcome is a courtesy
                log.error("welcome email to subscriber %s not sent: %s", info.id, exc)
        title = "You are subscribed" if changed else "Already confirmed"
        return self.message(title, "Thank you: your subscription is confirmed." if changed
                            else "This subscription was already confirmed; nothing has changed.",
                            links=(("Your preferences", tokens.preferences_url(self.settings, info.id)),
                                   ("Read the latest issue", messages.latest_issue_url(self.settings))),
                            headers=NO_STORE)

    # -- leaving ---------------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        try:
            sid = self.read(tokens.UNSUBSCRIBE, request.path_params["token"])
        except SubscriberError:
            return self.bad_link("This unsubscribe link is not valid. Please use the link from your most recent email.")
        if request.method in ("GET", "HEAD"):
            info = await run_in_threadpool(store.get, self.engine, sid)
            return self.page("unsubscribe.html", headers=NO_STORE,
                             left=info is None or info.status in store.SUPPRESSED_STATUSES)
        one_click = await is_one_click(request)
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
        # from base_url (this form is also shown in answer to .../erase, and may sit under a prefix)
        here = self.settings.url(f"/preferences/{token}")
        return self.page("preferences.html", status, NO_STORE, info=info, error=error, notice=notice, here=here,
                         csrf=tokens.form_token(self.settings, token), topics=sorted(self.settings.topics.items()),
                         unsubscribe_url=tokens.unsubscribe_url(self.settings, info.id))

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

    async def preferences(self, request: Request) -> Response:
        token = request.path_params["token"]
        info = await self._subscriber(token)
        if isinstance(info, Response):
            return info
        if request.method in ("GET", "HEAD"):
            return self.preferences_form(request, info)
        form = await read_form(request)
        if not tokens.check_form_token(self.settings, token, field(form, "csrf"), FORM_MAX_AGE):
            return self.preferences_form(request, info, 400, "This form has expired; please make your changes again.")
        try:
            info = await run_in_threadpool(partial(
                store.update_preferences, self.engine, self.settings, info.id, name=field(form, "name") or None,
                topics=fields(form, "topics"), frequency=field(form, "frequency"), ip=client_ip(request)))
        except SubscriberError as exc:
            return self.preferences_form(request, info, 400, exc.message)
        return self.preferences_form(request, info, notice="Your preferences are saved.")

    async def export(self, request: Request) -> Response:
        info = await self._subscriber(request.path_params["token"])
        if isinstance(info, Response):
            return info
        data = await run_in_threadpool(store.export_data, self.engine, self.settings, info.id)
        return Response(json.dumps(data, indent=2, ensure_ascii=False), media_type="application/json",
                        headers={**NO_STORE, "content-disposition": 'attachment; filename="newsletter-data.json"'})

    async def erase(self, request: Request) -> Response:
        token = request.path_params["token"]
        info = await self._subscriber(token)
        if isinstance(info, Response):
            return info
        form = await read_form(request)
        if not tokens.check_form_token(self.settings, token, field(form, "csrf"), FORM_MAX_AGE):
            return self.preferences_form(request, info, 400, "This form has expired; nothing was deleted. Please try again.")
        if field(form, "confirm") != "yes":
            return self.preferences_form(request, info, 400, "Tick the box to confirm that all your data should be deleted.")
        await run_in_threadpool(partial(store.erase, self.engine, self.settings, info.id, method="web"))
        return self.message("Your data has been deleted",
                            "We have deleted your subscription and everything we held about you. We keep only a "
                            "one-way coded form of your address so that we never email it again.", headers=NO_STORE)

    # -- operations -------------------------------------------------------------------

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


