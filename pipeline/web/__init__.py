"""The web service: sign-up with double opt-in, preferences, one-click unsubscribe.

``create_app(settings, engine)`` is a Starlette ASGI app; ``newsletter serve``
runs it under uvicorn (``newsletter run`` serves it next to the scheduler).
Pages are Jinja templates extending ``templates/web/base.html`` (the email's
look) and work without JavaScript.  Everything that is not one of the routes
below falls through to ``pipeline.site.static_files.StaticSite``, which serves
``public/`` (archive and feeds) with ETags.

Routes (the token in a path is an opaque signed token, ``subscribers.tokens``):

- ``GET/POST /subscribe``: the form (CSRF token bound to a cookie, Origin
  checked); a post records a sign-up request and queues its confirmation
  email, then redirects.  The answer is the same whether or not the address is
  known.  Limits per IP block and per address live in the database.
- ``GET /confirm/{token}``: a page with a button; ``POST`` confirms that request.
- ``GET /unsubscribe/{token}``: one button.  ``POST /unsubscribe/{token}``:
  RFC 8058 one-click: no cookies, no login, no CSRF token, 200 with no redirect,
  idempotent.
- ``GET/POST /preferences/{token}``: topics, frequency, name, time zone and
  delivery hour (``GET /assets/preferences.js``, optional, pre-selects the
  browser's zone when none is saved); ``POST
  .../data-link`` emails a one-time link to ``GET /data/{token}``, whose
  ``POST .../export`` and ``POST .../erase`` work once, within the hour.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the database answers).

Every route answers under base_url's path (``/newsletter/subscribe`` for
``https://my.klarity.health/newsletter``), or at ``/subscribe`` when started
with that path as root_path (``--root-path``, for a proxy that strips it); every
link, form action and redirect is built from base_url, never from the Host header.

Behind a reverse proxy, run uvicorn with ``--forwarded-allow-ips`` set to the
proxy so the client IP (rate limit, consent records) comes from
``X-Forwarded-For``; ``newsletter serve`` trusts only 127.0.0.1 by default.
"""
from __future__ import annotations

from pipeline.web.app import create_app, serve

__all__ = ["create_app", "serve"]
