"""The editorial console under ``/admin``: staff sign in and plan, review, preview, test
and watch sends in the browser.  It sits on top of every stage (it uses the same
functions as the commands) and is mounted into the web service's ASGI app by
``newsletter serve`` and ``newsletter run``."""
