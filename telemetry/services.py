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

from telemetry.storage import (
    PARTITION_LOCK_TIMEOUT,
    POINT_TABLE,
    ROLLUP_1H_SEALED_TABLE,
    ROLLUP_1M_TABLE,
    ROLLUP_COLUMNS,
    ROLLUP_WATERMARK_TABLE,
    ensure_partitions_sql,
    rollup_from_rollup_sql,
    rollup_lock_sql,
)

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


# --- hourly rollups: sealing closed hours (migration 0005) ------------------------------------------
SEAL_CHUNK_HOURS = 6  # hours folded per transaction (writers wait for the exclusive lock meanwhile)


@dataclass(frozen=True)
class SealResult:
    schema: str
    sealed_through: datetime | None
    hours: int
    rows: int
    error: str = ""


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def seal_rollup_hours(*, schema: str, now: datetime | None = None, grace_s: float | None = None) -> SealResult:
    """Fold the closed hours of `schema` (before `now - grace`) from the minute rollups into the
    sealed hourly table and move the watermark; returns how far it got.

    Each chunk of up to SEAL_CHUNK_HOURS hours is one transaction under the tenant's rollup lock
    (exclusive): writers holding it shared have committed, so every minute row of those hours is
    read; writers after it see the new watermark and merge late points into the sealed hours
    themselves. Until an hour is sealed the `telemetry_rollup_1h` view computes it from the
    minutes, so readers never see a gap; sealing only keeps that part of the view short.
    """
    grace = settings.TELEMETRY_ROLLUP_SEAL_GRACE_S if grace_s is None else grace_s
    target = _hour_floor((now or datetime.now(UTC)) - timedelta(seconds=grace))
    watermark = sql.Identifier(schema, ROLLUP_WATERMARK_TABLE)
    fold = sql.SQL("INSERT INTO {sealed} ({columns}) {rows}").format(
        sealed=sql.Identifier(schema, ROLLUP_1H_SEALED_TABLE),
        columns=ROLLUP_COLUMNS,
        rows=rollup_from_rollup_sql(sql.Identifier(schema, ROLLUP_1M_TABLE), "1 hour", sql.SQL("bucket >= %s AND bucket < %s")),
    ).as_string()
    first_minute = sql.SQL("SELECT min(bucket) FROM {} WHERE bucket >= %s AND bucket < %s").format(
        sql.Identifier(schema, ROLLUP_1M_TABLE)
    ).as_string()
    hours = rows = 0
    through: datetime | None = None
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(rollup_lock_sql(shared=False).as_string(), [schema])
            cursor.execute(sql.SQL("SELECT sealed_through FROM {} FOR UPDATE").format(watermark).as_string())
            through = cursor.fetchone()[0]
            if through >= target:
                return SealResult(schema=schema, sealed_through=through, hours=hours, rows=rows)
            if target - through > timedelta(hours=SEAL_CHUNK_HOURS):
                # Far behind (beat stopped, an idle tenant): skip the hours without any minute rows.
                cursor.execute(first_minute, [through, target])
                first = cursor.fetchone()[0]
                start = target if first is None else max(through, _hour_floor(first))
            else:
                start = through
            upto = min(target, start + timedelta(hours=SEAL_CHUNK_HOURS))
            cursor.execute(fold, [through, upto])
            rows += max(cursor.rowcount, 0)
            cursor.execute(sql.SQL("UPDATE {} SET sealed_through = %s").format(watermark).as_string(), [upto])
            hours += int((upto - through) / timedelta(hours=1))
            through = upto


def seal_rollups_for_tenants(*, now: datetime | None = None) -> list[SealResult]:
    """`seal_rollup_hours` for every active tenant; one tenant's failure does not stop the others."""
    from tenants.models import Tenant

    results: list[SealResult] = []
    for schema in Tenant.objects.active().customers().order_by("schema_name").values_list("schema_name", flat=True):
        try:
            result = seal_rollup_hours(schema=schema, now=now)
        except Exception as exc:  # noqa: BLE001 - one tenant's failure must not stop the others
            logger.exception("hourly rollups: sealing failed", extra={"schema": schema})
            results.append(SealResult(schema=schema, sealed_through=None, hours=0, rows=0, error=str(exc)))
            continue
        if result.hours:
            logger.info(
                "hourly rollups sealed",
                extra={"schema": schema, "hours": result.hours, "rows": result.rows, "sealed_through": result.sealed_through.isoformat()},
            )
        results.append(result)
    return results
