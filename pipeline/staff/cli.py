"""``newsletter staff add|list|disable|reset`` and ``newsletter audit``.

Staff commands are run by whoever operates the machine (the audit log names them
``cli:<user>``); the first admin is created here.  A password comes from
``NEWSLETTER_STAFF_PASSWORD`` or a hidden prompt, never from the command line
(where ``ps`` and the shell history would keep it).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import click

from pipeline.errors import StaffError
from pipeline.staff.models import ROLES

PASSWORD_ENV = "NEWSLETTER_STAFF_PASSWORD"


def _engine(obj):
    from pipeline.database import open_database
    return open_database(obj.settings().database_url)


def password_from_user(confirm: bool, prompt: str = "Password") -> str:
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)


def staff_identity(obj, address: str | None, role: str, what: str):
    """The staff member a CLI command acts as: ``--as EMAIL`` and their password
    (``NEWSLETTER_STAFF_PASSWORD`` or a prompt), checked like a console sign-in; they
    must hold ``role``.  Nobody is assumed."""
    from pipeline.staff.accounts import authenticate, require

    if not address:
        raise StaffError(f"say who you are: `--as EMAIL` (a staff account with the {role} role) to {what}")
    settings = obj.settings()
    staff = authenticate(_engine(obj), settings, address, password_from_user(False, f"Password for {address}"),
                         via="cli")
    require(staff, role, what)
    return staff


@click.group("staff")
def staff_group() -> None:
    """Staff accounts of the editorial console (roles: editor, reviewer, admin)."""


@staff_group.command("add")
@click.argument("email")
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(ROLES),
              help="A role (repeat for several).")
@click.option("--name", required=True, help="The person's name, as reviews and the audit log show it.")
@click.option("--credentials", default="", help="Clinical credentials a reviewer signs with (e.g. 'MBBS, MRCGP').")
@click.pass_obj
def add_cmd(obj, email: str, roles, name: str, credentials: str) -> None:
    """Create a staff account (the password from NEWSLETTER_STAFF_PASSWORD or a prompt)."""
    from pipeline.staff import accounts
    from pipeline.staff.audit import operator

    password = password_from_user(True)
    staff = accounts.add(_engine(obj), email, name=name, roles=roles, password=password, credentials=credentials,
                         actor=operator())
    click.echo(f"added {staff.email} ({', '.join(staff.roles)})")


@staff_group.command("list")
@click.pass_obj
def list_cmd(obj) -> None:
    """Every staff account, its roles and state."""
    from pipeline import clock
    from pipeline.staff import accounts

    now = clock.now()
    for s in accounts.all_staff(_engine(obj)):
        state = "disabled" if s.disabled else ("locked" if s.locked_until and s.locked_until > now else "active")
        who = s.name + (f", {s.credentials}" if s.credentials else "")
        click.echo(f"{s.email}\t{','.join(s.roles)}\t{state}\t{who}")


@staff_group.command("disable")
@click.argument("email")
@click.pass_obj
def disable_cmd(obj, email: str) -> None:
    """Stop an account signing in, and end its console sessions (its reviews stand)."""
    from pipeline.staff import accounts
    from pipeline.staff.audit import operator

    staff = accounts.disable(_engine(obj), email, actor=operator())
    click.echo(f"disabled {staff.email}")


@staff_group.command("reset")
@click.argument("email")
@click.option("--role", "roles", multiple=True, type=click.Choice(ROLES), help="Replace the roles (repeat for several).")
@click.pass_obj
def reset_cmd(obj, email: str, roles) -> None:
    """Set a new password (and roles); unlocks and re-enables the account, ends its sessions."""
    from pipeline.staff import accounts
    from pipeline.staff.audit import operator

    password = password_from_user(True, "New password")
    staff = accounts.reset(_engine(obj), email, password, actor=operator(), roles=roles or None)
    click.echo(f"reset {staff.email} ({', '.join(staff.roles)})")


def _since(_ctx, _param, value: str | None):
    if value is None:
        return None
    value = value.strip()
    if value[-1:] in ("d", "h") and value[:-1].isdigit():
        from pipeline import clock
        amount = int(value[:-1])
        return clock.now() - (timedelta(days=amount) if value[-1] == "d" else timedelta(hours=amount))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD, an ISO 8601 time, or 7d / 12h") from None
    if parsed.tzinfo is None:
        from zoneinfo import ZoneInfo
        tz = ZoneInfo(_ctx.obj.settings().timezone) if _ctx.obj else timezone.utc
        parsed = parsed.replace(tzinfo=tz)
    return parsed


@click.command("audit")
@click.option("--since", callback=_since, default=None, help="From this date or time (local), or 7d / 12h ago.")
@click.option("--actor", default=None, help="Only this actor (a staff address, or cli:USER).")
@click.option("--action", default=None, help="Only actions starting with this (e.g. review, staff, signin).")
@click.option("--limit", default=500, show_default=True, type=click.IntRange(1, 100000))
@click.pass_obj
def audit_cmd(obj, since, actor, action, limit) -> None:
    """Read the audit log: who changed what, when, before and after (oldest first)."""
    from pipeline.scheduling.slots import zone
    from pipeline.staff import audit

    settings = obj.settings()
    rows = audit.entries(_engine(obj), since=since, actor=actor, action=action, limit=limit)
    tz = zone(settings)
    for row in rows:
        click.echo(row.line(tz))
    if not rows:
        click.echo("no audit entries match", err=True)
