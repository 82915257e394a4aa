"""Issue 15, delivery at each reader's local time, the subscriber side: the time zone and
delivery hour columns (migration 0007), the one cleaning rule, saving them as a
consent-neutral preference, and the groups among an issue's recipients in SQL, on SQLite
and PostgreSQL."""
from __future__ import annotations

import json
from datetime import date, datetime

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, select, text

from pipeline import clock
from pipeline.database import MIGRATIONS, engine_for, open_database
from pipeline.delivery import ledger
from pipeline.errors import SubscriberError
from pipeline.scheduling import waves
from subscribers import delivery_time, store
from subscribers.delivery_time import Group, GroupCount, clean_hour, clean_zone
from subscribers.models import Subscriber

from fixtures_subscribers import sub_settings  # noqa: F401


@pytest.fixture
def engine(store_url):
    return open_database(store_url)


# -- the rule ----------------------------------------------------------------------------

def test_offered_zones_are_places_and_old_names_are_taken_as_the_zone_they_name(settings):
    zones = delivery_time.offered_zones()
    for name in ("Europe/London", "America/New_York", "Asia/Kolkata", "Pacific/Auckland", "Europe/Amsterdam",
                 "Europe/Kyiv", "UTC"):
        assert name in zones
    assert not any(z.startswith("Etc/") or "/" not in z for z in zones if z != "UTC")
    assert clean_zone(settings, " Asia/Kolkata ") == "Asia/Kolkata"
    assert clean_zone(settings, "Asia/Calcutta") == "Asia/Kolkata"  # what older browsers report
    assert clean_zone(settings, "US/Eastern") == "America/New_York"
    assert clean_zone(settings, "Europe/Kiev") == "Europe/Kyiv"
    # the editors' zone, or nothing: NULL, "as the editors"
    assert clean_zone(settings, "Europe/London") is None and clean_zone(settings, "") is None
    assert clean_zone(settings.replace(timezone="Asia/Kolkata"), "Europe/London") == "Europe/London"


@pytest.mark.parametrize("bad", ["EST5EDT", "Etc/GMT+5", "GB", "Mars/Olympus", "europe/london", "../../etc/passwd",
                                 "Asia/Kolkata\r\nBcc: x", "Europe/\u2028London", "=?utf-8?q?Asia/Kolkata?=", "東京", "🌍" * 300])
def test_a_bad_zone_is_one_plain_line(settings, bad):
    with pytest.raises(SubscriberError) as caught:
        clean_zone(settings, bad)
    message = caught.value.message
    assert "\n" not in message and "\r" not in message.replace("\\r", "") and len(message) < 200
    assert "Europe/London" in message  # says what would do


def test_hours(settings):
    assert [clean_hour(v) for v in ("0", "7", "07", "07:00", " 23 ", 23, "", None)] == [0, 7, 7, 7, 23, 23, None, None]
    for bad in ("24", "-1", "7:30", "seven", "7.0", "٧", "+7", "1e1", True, "99999999999999999999"):
        with pytest.raises(SubscriberError, match="whole hour from 0 to 23"):
            clean_hour(bad)


def test_labels(settings):
    assert delivery_time.editors_time_label(settings) == "The editors' time (07:00 UK time)"
    assert delivery_time.zone_label("America/Argentina/Buenos_Aires") == "America / Argentina / Buenos Aires"
    other = settings.replace(timezone="Asia/Kolkata", send_time="06:30")
    assert delivery_time.editors_time_label(other) == "The editors' time (06:30 Asia / Kolkata time)"
    assert json.loads(delivery_time.aliases_json())["Asia/Calcutta"] == "Asia/Kolkata"


# -- the schema ------------------------------------------------------------------------------

def test_migration_0007_adds_two_null_columns_and_keeps_everyone(store_url, request, tmp_path):
    engine = engine_for(store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO subscribers (email, email_key, email_hash, name, status, frequency, "
                          "created_at, updated_at) VALUES ('zoë@example.com', 'zoë@example.com', 'h', "
                          "'Zoë 山田 – £5', 'confirmed', 'daily', '2026-03-01 07:00:00+00:00', "
                          "'2026-03-01 07:00:00+00:00')"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    columns = {c["name"]: c for c in inspect(engine).get_columns("subscribers")}
    assert columns["time_zone"]["nullable"] and columns["delivery_hour"]["nullable"]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT name, time_zone, delivery_hour FROM subscribers")).one()
    assert tuple(row) == ("Zoë 山田 – £5", None, None)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert "time_zone" not in {c["name"] for c in inspect(engine).get_columns("subscribers")}
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


# -- saving -------------------------------------------------------------------------------------

def person(engine, settings, address="zoe@example.com", **kw):
    return store.add(engine, settings, address, name="Zoë O’Brien – 山田", confirmed=True, consent="Ticked", **kw)


def test_saving_a_time_is_a_consent_neutral_preference(engine, sub_settings, frozen):  # noqa: F811
    info = person(engine, sub_settings)
    assert (info.time_zone, info.delivery_hour) == (None, None)
    same = dict(name=info.name, topics=info.topics, frequency=info.frequency)
    saved, changed = store.update_preferences(engine, sub_settings, info.id, **same, time_zone="Asia/Calcutta",
                                              delivery_hour="06", ip="203.0.113.9")
    assert changed and (saved.time_zone, saved.delivery_hour) == ("Asia/Kolkata", 6)
    assert (store.get(engine, info.id).time_zone, store.get(engine, info.id).delivery_hour) == ("Asia/Kolkata", 6)
    record = store.consent_records(engine, info.id)[-1]
    assert record["action"] == "preferences" and record["wording"] is None and record["wording_version"] is None
    assert (record["detail"]["time_zone"], record["detail"]["delivery_hour"]) == ("Asia/Kolkata", 6)
    # the same again records nothing; leaving the time out keeps it
    assert store.update_preferences(engine, sub_settings, info.id, **same, time_zone="Asia/Kolkata",
                                    delivery_hour=6)[1] is False
    kept, changed = store.update_preferences(engine, sub_settings, info.id, **{**same, "frequency": "weekly"})
    assert changed and (kept.time_zone, kept.delivery_hour) == ("Asia/Kolkata", 6)
    last = store.consent_records(engine, info.id)[-1]
    assert last["wording"] is not None and "time_zone" not in last["detail"]  # a real choice change carries wording
    # back to the editors': NULL
    back, _ = store.update_preferences(engine, sub_settings, info.id, **same, time_zone="Europe/London",
                                       delivery_hour="")
    assert (back.time_zone, back.delivery_hour) == (None, None)
    count = len(store.consent_records(engine, info.id))
    with pytest.raises(SubscriberError):
        store.update_preferences(engine, sub_settings, info.id, **same, time_zone="EST5EDT")
    with pytest.raises(SubscriberError):
        store.update_preferences(engine, sub_settings, info.id, **same, delivery_hour="24")
    assert len(store.consent_records(engine, info.id)) == count  # a refusal writes nothing


def test_the_data_export_carries_the_time(engine, sub_settings, frozen):  # noqa: F811
    from pipeline.database import transaction
    info = person(engine, sub_settings)
    store.update_preferences(engine, sub_settings, info.id, name=info.name, topics=(), frequency="daily",
                             time_zone="Pacific/Auckland", delivery_hour=5)
    with transaction(engine) as s:
        held = store.export_record(s, sub_settings, info.id)
    assert (held["subscriber"]["time_zone"], held["subscriber"]["delivery_hour"]) == ("Pacific/Auckland", 5)


# -- the groups among an issue's recipients -----------------------------------------------------------

def test_waves_of_an_issues_recipients_and_one_insert_select_per_wave(engine, sub_settings, frozen):  # noqa: F811
    chosen = {  # address: (zone, hour)
        "london@example.com": (None, None), "london2@example.com": (None, None),
        "ny@example.com": ("America/New_York", None), "ny7@example.com": ("America/New_York", None),
        "kolkata@example.com": ("Asia/Kolkata", None), "auckland@example.com": ("Pacific/Auckland", 6),
        "early@example.com": (None, 1), "weekly@example.com": ("Asia/Tokyo", 8),
    }
    for address, (zone, hour) in chosen.items():
        info = person(engine, sub_settings, address, frequency="weekly" if address.startswith("weekly") else "daily")
        store.update_preferences(engine, sub_settings, info.id, name=info.name, topics=(), frequency=info.frequency,
                                 time_zone=zone, delivery_hour=hour)
    gone = person(engine, sub_settings, "gone@example.com")
    store.update_preferences(engine, sub_settings, gone.id, name=None, topics=(), frequency="daily",
                             time_zone="Asia/Kolkata", delivery_hour=9)
    store.unsubscribe(engine, sub_settings, gone.id)  # not a recipient: not a group

    recipients = ledger._recipients_query(None, "daily", None, clock.now())
    found = delivery_time.waves_of(engine, recipients)
    assert found == [GroupCount(Group(None, None), 2), GroupCount(Group(None, 1), 1),
                     GroupCount(Group("America/New_York", None), 2), GroupCount(Group("Asia/Kolkata", None), 1),
                     GroupCount(Group("Pacific/Auckland", 6), 1)]
    assert sum(g.count for g in found) == ledger.count_recipients(engine, "daily")
    assert delivery_time.waves_of(engine, ledger._recipients_query(None, "weekly", None, clock.now())) == [
        GroupCount(Group("Asia/Tokyo", 8), 1)]

    # what the ledger integration will do: each wave's rows by INSERT ... SELECT, with its instant
    instants = waves.release_instants(date(2026, 3, 29), "daily", sub_settings, [g.group for g in found])
    sub = Subscriber.__table__
    written: dict[datetime, list[str]] = {}
    with engine.connect() as conn:
        for g in found:
            rows = conn.execute(recipients.where(delivery_time.group_condition(g.group))).all()
            assert len(rows) == g.count
            written.setdefault(instants[g.group], []).extend(r.email for r in rows)
    everyone = [e for emails in written.values() for e in emails]
    assert sorted(everyone) == sorted(a for a in chosen if not a.startswith("weekly"))  # each once, nobody left out
    assert len(written) == len(found)
    with engine.connect() as conn:
        assert conn.execute(select(sub.c.email).where(delivery_time.group_condition(Group(None, None)))
                            .where(sub.c.status == "confirmed").order_by(sub.c.email)).scalars().all() == [
            "london2@example.com", "london@example.com"]
