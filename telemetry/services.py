"""Telemetry upkeep: partitions ahead of time for every tenant (retention is the hook below).

Writes of points go through `telemetry.storage.TelemetryWriter` (the ingest hot path); this module
holds the slower, scheduled state changes of the telemetry tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from psycopg import sql

from telemetry.storage import PARTITION_LOCK_TIMEOUT, POINT_TABLE, ensure_partitions_sql

logger = logging.getLogger(__name__)


def ensure_partitions(*, schema: str, first_day: date, last_day: date) -> int:
    """Create the missing point/rollup partitions of `schema` for [first_day, last_day]; returns
    the number of point partitions created. Waits at most PARTITION_LOCK_TIMEOUT for locks."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(PARTITION_LOCK_TIMEOUT)).as_string())
        cursor.execute(ensure_partitions_sql(schema).as_string(), [schema, first_day, last_day])
        return int(cursor.fetchone()[0])


@dataclass(frozen=True)
class PartitionUpkeep:
    schema: str
    created: int
    error: str = ""


def partitions_ahead_for_tenants(*, ahead_days: int | None = None, today: date | None = None) -> list[PartitionUpkeep]:
    """Partitions from yesterday (late points) to `ahead_days` after today, for every active tenant.

    A tenant that fails (lock timeout, schema being dropped) is reported and the others still run.
    """
    from tenants.models import Tenant

    ahead_days = settings.TELEMETRY_PARTITIONS_AHEAD_DAYS if ahead_days is None else ahead_days
    today = today or datetime.now(UTC).date()
    results: list[PartitionUpkeep] = []
    for schema in Tenant.objects.active().customers().order_by("schema_name").values_list("schema_name", flat=True):
        try:
            created = ensure_partitions(
                schema=schema, first_day=today - timedelta(days=1), last_day=today + timedelta(days=ahead_days)
            )
        except Exception as exc:  # noqa: BLE001 - one tenant's failure must not stop the others
            logger.exception("telemetry partitions: tenant failed", extra={"schema": schema})
            results.append(PartitionUpkeep(schema=schema, created=0, error=str(exc)))
            continue
        if created:
            logger.info("telemetry partitions created", extra={"schema": schema, "created": created})
        results.append(PartitionUpkeep(schema=schema, created=created))
    return results


def point_partitions(*, schema: str) -> list[tuple[str, date]]:
    """(partition name, UTC day) of every daily point partition of `schema`, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = %s AND p.relname = %s ORDER BY c.relname",
            [schema, POINT_TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    prefix = f"{POINT_TABLE}_p"
    return [(name, datetime.strptime(name[len(prefix) :], "%Y%m%d").date()) for name in names if name.startswith(prefix)]


def expired_point_partitions(*, schema: str, keep_days: int, today: date | None = None) -> list[str]:
    """Retention hook: the point partitions entirely older than `keep_days` days.

    The retention issue drops (or archives, then drops) exactly these, one `DROP TABLE` per
    partition (DETACH ... CONCURRENTLY first), plus the 1-minute rollup partitions of the same
    days and 1-hour rollup months past their own retention. Never a DELETE.
    """
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=keep_days)
    return [name for name, day in point_partitions(schema=schema) if day < cutoff]
