"""When each subscriber's issue arrives: their time zone and delivery hour.

Two nullable columns on ``subscribers`` (migration 0006): ``time_zone`` (an IANA
name) and ``delivery_hour`` (0..23, a wall-clock hour in that zone).  NULL means
"as the editors": ``settings.timezone`` and ``settings.send_time``.  One rule
cleans them at every edge (the preferences page, CSV import):

- **Zones offered** are the ones the tz database lists for a country or region
  (``zone.tab`` of the ``tzdata`` package, ~420 names such as ``Europe/London``,
  ``Asia/Kolkata``, ``Pacific/Auckland``), plus ``UTC``.  A reader picks a place,
  not an offset, so legacy names (``EST5EDT``, ``Etc/GMT+5``, ``GB``) are refused.
  An old name for an offered zone (``Asia/Calcutta``, ``US/Eastern``,
  ``Europe/Kiev``), as older browsers and spreadsheets still give, is taken as the
  zone it names (``Asia/Kolkata``...).
- **The editors' zone is stored as NULL**: choosing ``settings.timezone`` means
  "as the editors", so saving the preferences page without JavaScript (where the
  select shows the editors' zone) never pins anyone to a zone they did not pick.
- **An hour** is a whole hour, 0..23 (``7``, ``07`` and ``07:00`` are all 7);
  empty is the editors' send time.

``waves_of`` groups an issue's recipients by (time_zone, delivery_hour) in SQL,
``group_condition`` selects one group, and ``release_column`` is the CASE over the
groups that the ledger adds to its ``INSERT ... SELECT`` as ``release_at``;
``pipeline.scheduling.waves`` gives each group's release instant.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from zoneinfo import available_timezones

from sqlalchemy import Engine, and_, case, func, literal, select
from sqlalchemy.sql import ColumnElement, Select

from pipeline.errors import SubscriberError
from subscribers.models import Subscriber

HOURS = tuple(range(24))
_HOUR = re.compile(r"([0-9]{1,2})(?::00)?")


@lru_cache(maxsize=None)
def _tzdata(name: str) -> str:
    try:
        return resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):  # pragma: no cover - tzdata is a dependency
        return ""


@lru_cache(maxsize=1)
def offered_zones() -> tuple[str, ...]:
    """The zones a reader may choose, sorted: every zone.tab entry the system knows, and UTC."""
    known = available_timezones()
    listed = {line.split("\t")[2] for line in _tzdata("zone.tab").splitlines()
              if line and not line.startswith("#") and len(line.split("\t")) >= 3}
    if not listed:  # pragma: no cover - no zone.tab: fall back to the region/city names
        listed = {n for n in known if "/" in n and not n.startswith(("Etc/", "SystemV/", "posix/", "right/"))}
    return tuple(sorted((listed & known) | {"UTC"}))


@lru_cache(maxsize=1)
def aliases() -> dict[str, str]:
    """Old or alternative names (``Asia/Calcutta``) -> the offered zone they are a link to."""
    offered = set(offered_zones())
    links = {}
    for line in _tzdata("tzdata.zi").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L":
            links[parts[2]] = parts[1]
    found = {}
    for alias, target in links.items():
        seen = 0
        while target not in offered and target in links and seen < 5:  # a link to a link
            target, seen = links[target], seen + 1
        # only region/city names: "EST5EDT" or "Etc/GMT+5" would mean an offset, not a place
        if target in offered and alias not in offered and "/" in alias and not alias.startswith("Etc/"):
            found[alias] = target
    return found


def aliases_json() -> str:
    """The alias table for the preferences page's script (browsers may give ``Asia/Calcutta``)."""
    return json.dumps(aliases(), sort_keys=True, separators=(",", ":"))


def zone_label(name: str) -> str:
    """What a reader sees for a zone: ``America/New_York`` -> ``America / New York``."""
    return " / ".join(part.replace("_", " ") for part in name.split("/"))


def editors_zone_label(settings) -> str:
    return "UK time" if settings.timezone == "Europe/London" else f"{zone_label(settings.timezone)} time"


def editors_time_label(settings) -> str:
    """``The editors' time (07:00 UK time)``: the hour select's first choice."""
    return f"The editors' time ({settings.send_time} {editors_zone_label(settings)})"


def clean_zone(settings, value: str | None) -> str | None:
    """The zone to store: an offered name, None for empty or the editors' own zone;
    ``SubscriberError`` (plain words, the value quoted briefly) otherwise."""
    text = (value or "").strip()
    if not text:
        return None
    if text not in offered_zones():
        canonical = aliases().get(text)
        if canonical is None:
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise SubscriberError(f"time zone {shown!r} is not one we offer: choose a place such as Europe/London "
                                  "or Asia/Kolkata")
        text = canonical
    return None if text == settings.timezone else text


def clean_hour(value: str | int | None) -> int | None:
    """A delivery hour 0..23, or None (empty: the editors' send time)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = str(value).strip()
    if not text:
        return None
    match = _HOUR.fullmatch(text)
    if not match or int(match.group(1)) > 23:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise SubscriberError(f"delivery hour {shown!r} must be a whole hour from 0 to 23 (e.g. 7 or 07:00), "
                              "or empty for the editors' time")
    return int(match.group(1))


# -- the groups among an issue's recipients ----------------------------------------------

@dataclass(frozen=True)
class Group:
    """Recipients who share one release instant: a zone and an hour, NULL meaning the editors'."""

    time_zone: str | None
    delivery_hour: int | None


@dataclass(frozen=True)
class GroupCount:
    group: Group
    count: int


def group_condition(group: Group, table=None) -> ColumnElement:
    """The WHERE clause for one group on the ``subscribers`` table (NULL matched with IS NULL),
    to add to the recipients query of an ``INSERT ... SELECT``."""
    sub = Subscriber.__table__ if table is None else table
    zone = sub.c.time_zone.is_(None) if group.time_zone is None else sub.c.time_zone == group.time_zone
    hour = sub.c.delivery_hour.is_(None) if group.delivery_hour is None else sub.c.delivery_hour == group.delivery_hour
    return and_(zone, hour)


def waves_of(engine: Engine, recipients: Select) -> list[GroupCount]:
    """The distinct (time_zone, delivery_hour) groups among the subscribers ``recipients``
    selects (any SELECT whose first column is ``subscribers.id``, such as the ledger's
    recipients query), with their sizes; the editors' group first, then by zone and hour."""
    sub = Subscriber.__table__
    ids = recipients.with_only_columns(recipients.selected_columns[0]).order_by(None)
    query = (select(sub.c.time_zone, sub.c.delivery_hour, func.count())
             .where(sub.c.id.in_(ids)).group_by(sub.c.time_zone, sub.c.delivery_hour))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = [GroupCount(Group(zone, hour), count) for zone, hour, count in rows]
    return sorted(found, key=lambda g: (g.group.time_zone is not None, g.group.time_zone or "",
                                        g.group.delivery_hour is not None, g.group.delivery_hour or 0))


def release_column(conn, recipients: Select, releases) -> ColumnElement | None:
    """The ``release_at`` column for an ``INSERT ... SELECT`` of ``recipients`` (a SELECT on
    ``subscribers`` whose second column is ``subscribers.id``, the ledger's): the groups
    among them are counted in SQL on ``conn``, ``releases(groups)`` gives {group: UTC
    instant}, and the result is one CASE with a branch per group (else NULL: at once).
    None when there are no recipients.  Nothing per row in Python."""
    from pipeline.database import AwareDateTime

    sub = Subscriber.__table__
    ids = recipients.with_only_columns(sub.c.id).order_by(None)
    found = conn.execute(select(sub.c.time_zone, sub.c.delivery_hour).where(sub.c.id.in_(ids))
                         .group_by(sub.c.time_zone, sub.c.delivery_hour)).all()
    instants = releases([Group(zone, hour) for zone, hour in found]) if found else {}
    if not instants:
        return None
    return case(*[(group_condition(g, sub), literal(at, AwareDateTime())) for g, at in instants.items()],
                else_=literal(None, AwareDateTime()))
