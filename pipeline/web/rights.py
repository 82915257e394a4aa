"""The web's data-rights pages: a one-time link (mailed from the preferences page) opens a page
from which a person downloads everything we hold about them, or erases it.

``DataRights`` is mixed into ``WebService`` (pipeline/web/service.py), whose page helpers it uses;
the work itself is ``pipeline.privacy.access`` (the links) and ``pipeline.privacy.rights``.
"""
from __future__ import annotations

import json
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import SubscriberError
from pipeline.privacy import access
from pipeline.web.http import FORM_MAX_AGE, NO_STORE, field, mask_email, read_form
from subscribers import tokens

class DataRights:
    """Handlers for /data/{token}, /data/{token}/export and /data/{token}/erase."""

    async def _link(self, token: str) -> access.Link | Response:
        try:
            link_id = self.read(tokens.DATA, token, int(self.settings.data_link_minutes) * 60)
            return await run_in_threadpool(access.open_link, self.engine, link_id)
        except SubscriberError as exc:
            return self.bad_link(f"{exc.message[:1].upper()}{exc.message[1:]}. You can ask for a new link on your "
                                 "preferences page (the link in any newsletter).")

    async def data_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        link = await self._link(token)
        if isinstance(link, Response):
            return link
        return self.page("data.html", headers=NO_STORE, here=self.url(f"/data/{token}"),
                         masked=mask_email(link.subscriber.email), csrf=tokens.form_token(self.settings, "data:" + token))

    async def _spend(self, request: Request, action: Callable) -> Response:
        token = request.path_params["token"]
        link = await self._link(token)
        if isinstance(link, Response):
            return link
        form = await read_form(request)
        if not tokens.check_form_token(self.settings, "data:" + token, field(form, "csrf"), FORM_MAX_AGE):
            return self.bad_link("This form has expired; nothing was done. Please open the link from the email again.")
        try:
            return await action(link, form)
        except SubscriberError as exc:
            return self.bad_link(f"{exc.message[:1].upper()}{exc.message[1:]}.")

    async def export(self, request: Request) -> Response:
        async def download(link, form) -> Response:
            data = await run_in_threadpool(access.export_once, self.engine, self.settings, link.id)
            return Response(json.dumps(data, indent=2, ensure_ascii=False), media_type="application/json",
                            headers={**NO_STORE, "content-disposition": 'attachment; filename="newsletter-data.json"'})
        return await self._spend(request, download)

    async def erase(self, request: Request) -> Response:
        async def delete(link, form) -> Response:
            if field(form, "confirm") != "yes":
                return self.message("Nothing was deleted", "Tick the box to confirm that all your data should be "
                                    "deleted.", status=400, headers=NO_STORE,
                                    links=(("Back", self.url(f"/data/{request.path_params['token']}")),))
            await run_in_threadpool(access.erase_once, self.engine, self.settings, link.id)
            return self.message("Your data has been deleted",
                                "We have deleted your subscription and everything we held about you. We keep only a "
                                "one-way coded form of your address so that we never email it again.", headers=NO_STORE)
        return await self._spend(request, delete)
