"""Partition upkeep: created ahead for every active tenant (beat task, command), retention hook."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from io import StringIO

from django.conf import settings
from django.core.management import call_command
from django.db import connection

from telemetry import services, tasks


def _exists(schema: str, table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.{table}"])
        return cursor.fetchone()[0]


def test_partitions_created_ahead_for_every_active_tenant(alpha, beta):
    today = date(2033, 4, 29)
    results = services.partitions_ahead_for_tenants(ahead_days=3, today=today)
    assert {r.schema: r.created for r in results} == {"alpha": 5, "beta": 5}  # yesterday .. today + 3
    for schema in ("alpha", "beta"):
        for day in ("20330428", "20330502"):
            assert _exists(schema, f"telemetry_point_p{day}") and _exists(schema, f"telemetry_rollup_1m_p{day}")
        assert _exists(schema, "telemetry_rollup_1h_p203304") and _exists(schema, "telemetry_rollup_1h_p203305")
        assert not _exists(schema, "telemetry_point_p20330503")
    # idempotent
    assert {r.created for r in services.partitions_ahead_for_tenants(ahead_days=3, today=today)} == {0}


def _fillfactor(schema: str, table: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", [f"{schema}.{table}"])
        options = cursor.fetchone()[0] or []
    return next((o.split("=", 1)[1] for o in options if o.startswith("fillfactor=")), None)


def test_rollup_partitions_leave_room_for_hot_updates_point_partitions_do_not(alpha):
    services.partitions_ahead_for_tenants(ahead_days=1, today=date(2034, 7, 1))
    assert _fillfactor("alpha", "telemetry_rollup_1m_p20340701") == "50"
    assert _fillfactor("alpha", "telemetry_rollup_1h_p203407") == "50"
    assert _fillfactor("alpha", "telemetry_point_p20340701") is None  # default 100: points are never updated
    # partitions made before the migration (at schema creation) were given the room too
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'alpha.telemetry_rollup_1m'::regclass AND NOT coalesce(c.reloptions, '{}') @> '{fillfactor=50}'"
        )
        assert cursor.fetchone()[0] == 0


def test_suspended_tenant_is_skipped(alpha, beta):
    from tenants.services import suspend_tenant

    suspend_tenant(actor=None, client=None, tenant=beta.tenant, reason="test")
    assert [r.schema for r in services.partitions_ahead_for_tenants(ahead_days=0, today=date(2034, 1, 1))] == ["alpha"]


def test_task_and_command_use_the_setting(alpha, beta):
    assert settings.CELERY_BEAT_SCHEDULE["telemetry-partitions-ahead"]["task"] == "telemetry.ensure_partitions_ahead"
    ahead = settings.TELEMETRY_PARTITIONS_AHEAD_DAYS
    tasks.ensure_partitions_ahead()  # runs in the test's transaction, rolled back afterwards
    last = datetime.now(UTC).date() + timedelta(days=ahead)
    assert _exists("alpha", f"telemetry_point_p{last:%Y%m%d}") and _exists("beta", f"telemetry_point_p{last:%Y%m%d}")
    out = StringIO()
    call_command("telemetry_partitions", ahead=ahead + 2, stdout=out)
    assert "alpha:" in out.getvalue() and _exists("alpha", f"telemetry_point_p{last + timedelta(days=2):%Y%m%d}")


def test_retention_hook_lists_expired_partitions(alpha):
    services.ensure_partitions(schema="alpha", first_day=date(2020, 1, 1), last_day=date(2020, 1, 3))
    expired = services.expired_point_partitions(schema="alpha", keep_days=2, today=date(2020, 1, 4))
    assert {"telemetry_point_p20200101"} <= set(expired) and "telemetry_point_p20200102" not in expired
