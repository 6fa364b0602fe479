"""Telemetry read queries shared by the API, dashboards, rules and analytics.

Every query names its tables with the tenant schema it is given (never search_path), reads
through Django's connection (the caller's transaction and schema context), except the CSV export,
which streams over a connection of its own so a slow client never holds a request connection.

Series queries (`query_series`): a range holding at most `max_points` points per metric comes
back as raw points. Otherwise the range is cut into buckets of the smallest width from
`BUCKET_LADDER` that gives at most `max_points` buckets (aligned on `BUCKET_ORIGIN`), and each
bucket is aggregated from the coarsest stored level whose resolution divides the width:
1-hour rollups for whole hours, 1-minute rollups for whole minutes, raw points otherwise. The
parts of the range that do not cover a whole unit of that level (its two ends) are read from the
next finer level, so every aggregate equals the one computed from the raw points of the range.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import psycopg
from django.db import connection
from psycopg import sql

from telemetry.storage import (
    BUCKET_ORIGIN,
    POINT_TABLE,
    ROLLUP_1H_TABLE,
    ROLLUP_1M_TABLE,
    database_conninfo,
    read_latest,
)

Aggregate = Literal["avg", "min", "max", "sum", "count", "first", "last"]
AGGREGATES: tuple[str, ...] = ("avg", "min", "max", "sum", "count", "first", "last")
DEFAULT_MAX_POINTS = 1000
MAX_POINTS_CAP = 10_000
# Bucket widths in seconds, finest first; beyond the last, whole days.
BUCKET_LADDER: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


@dataclass(frozen=True)
class Level:
    name: str  # "raw", "rollup_1m", "rollup_1h": also what the API reports as the source
    table: str
    resolution_s: int  # 0 for raw points


RAW = Level("raw", POINT_TABLE, 0)
ROLLUP_1M = Level("rollup_1m", ROLLUP_1M_TABLE, 60)
ROLLUP_1H = Level("rollup_1h", ROLLUP_1H_TABLE, 3600)
LEVELS: tuple[Level, ...] = (RAW, ROLLUP_1M, ROLLUP_1H)  # finest first


@dataclass
class SeriesResult:
    source: str  # the level the buckets were read from ("raw" also for raw points)
    bucket_seconds: int | None  # None: raw points, not buckets
    agg: str | None
    points: dict[int, list[tuple[datetime, float]]] = field(default_factory=dict)  # metric_id -> [(ts, value)]


# --- time arithmetic (integers of microseconds since BUCKET_ORIGIN, exact) -------------------------

_US = 1_000_000


def _micros(ts: datetime) -> int:
    delta = ts - BUCKET_ORIGIN
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _from_micros(us: int) -> datetime:
    return BUCKET_ORIGIN + timedelta(microseconds=us)


def bucket_count(start: datetime, end: datetime, width_s: int) -> int:
    """Number of aligned buckets of `width_s` touching [start, end)."""
    if end <= start:
        return 0
    width = width_s * _US
    return (_micros(end) - 1) // width - _micros(start) // width + 1


def choose_bucket_seconds(start: datetime, end: datetime, max_points: int) -> int:
    """The finest bucket width giving at most `max_points` buckets over [start, end)."""
    for width in BUCKET_LADDER:
        if bucket_count(start, end, width) <= max_points:
            return width
    days = max(1, int((end - start).total_seconds() // 86_400 // max_points))
    while bucket_count(start, end, days * 86_400) > max_points:
        days += 1
    return days * 86_400


def level_for_bucket(width_s: int) -> Level:
    """The coarsest stored level whose resolution divides the bucket width."""
    for level in reversed(LEVELS):
        if level.resolution_s and width_s % level.resolution_s == 0:
            return level
    return RAW


def plan_segments(start: datetime, end: datetime, level: Level) -> list[tuple[Level, datetime, datetime]]:
    """Cover [start, end) with `level` where it holds whole units, finer levels at the ends."""
    if start >= end:
        return []
    if level.resolution_s == 0:
        return [(level, start, end)]
    finer = LEVELS[LEVELS.index(level) - 1]
    unit = level.resolution_s * _US
    first = -(-_micros(start) // unit) * unit  # ceil
    last = _micros(end) // unit * unit  # floor
    if first >= last:
        return plan_segments(start, end, finer)
    inner_start, inner_end = _from_micros(first), _from_micros(last)
    return [*plan_segments(start, inner_start, finer), (level, inner_start, inner_end), *plan_segments(inner_end, end, finer)]


# --- SQL --------------------------------------------------------------------------------------------


def _sql_text(statement: sql.Composable) -> str:
    return statement.as_string()


def _segment_sql(schema: str, level: Level, agg: str) -> sql.Composed:
    """Partial aggregates per (metric, bucket) of one segment; params: width, device, metrics, a, b."""
    need_first, need_last = agg == "first", agg == "last"
    table = sql.Identifier(schema, level.table)
    origin = sql.Literal(BUCKET_ORIGIN)
    if level is RAW:
        columns = sql.SQL(
            "count(*)::float8 AS count, min(value) AS min, max(value) AS max, sum(value) AS sum, "
            "{first} AS first, min(ts) AS first_ts, {last} AS last, max(ts) AS last_ts"
        ).format(
            first=sql.SQL("(array_agg(value ORDER BY ts))[1]" if need_first else "NULL::float8"),
            last=sql.SQL("(array_agg(value ORDER BY ts DESC))[1]" if need_last else "NULL::float8"),
        )
        time_column = sql.SQL("ts")
    else:
        columns = sql.SQL(
            "sum(count)::float8 AS count, min(min) AS min, max(max) AS max, sum(sum) AS sum, "
            "{first} AS first, min(first_ts) AS first_ts, {last} AS last, max(last_ts) AS last_ts"
        ).format(
            first=sql.SQL("(array_agg(first ORDER BY first_ts))[1]" if need_first else "NULL::float8"),
            last=sql.SQL("(array_agg(last ORDER BY last_ts DESC))[1]" if need_last else "NULL::float8"),
        )
        time_column = sql.SQL("bucket")
    return sql.SQL(
        "SELECT metric_id, date_bin(%s::interval, {time}, {origin}) AS bucket, {columns} FROM {table} "
        "WHERE device_id = %s AND metric_id = ANY(%s::int[]) AND {time} >= %s AND {time} < %s GROUP BY 1, 2"
    ).format(time=time_column, origin=origin, columns=columns, table=table)


_OUTER_AGG = {
    "avg": "sum(sum) / sum(count)",
    "min": "min(min)",
    "max": "max(max)",
    "sum": "sum(sum)",
    "count": "sum(count)",
    "first": "(array_agg(first ORDER BY first_ts))[1]",
    "last": "(array_agg(last ORDER BY last_ts DESC))[1]",
}


def raw_points(
    schema: str, device_id: int, metric_ids: Sequence[int], start: datetime, end: datetime, limit: int
) -> dict[int, list[tuple[datetime, float]]]:
    """Up to `limit` first points of each metric in [start, end), in time order."""
    statement = sql.SQL(
        "SELECT m.id, p.ts, p.value FROM unnest(%s::int[]) AS m(id) CROSS JOIN LATERAL ("
        "SELECT ts, value FROM {point} WHERE device_id = %s AND metric_id = m.id AND ts >= %s AND ts < %s "
        "ORDER BY ts LIMIT %s) p ORDER BY m.id, p.ts"
    ).format(point=sql.Identifier(schema, POINT_TABLE))
    points: dict[int, list[tuple[datetime, float]]] = {metric_id: [] for metric_id in metric_ids}
    with connection.cursor() as cursor:
        cursor.execute(_sql_text(statement), [list(metric_ids), device_id, start, end, limit])
        for metric_id, ts, value in cursor.fetchall():
            points[metric_id].append((ts.astimezone(UTC), value))
    return points


def bucketed_series(
    schema: str, device_id: int, metric_ids: Sequence[int], start: datetime, end: datetime, width_s: int, agg: str
) -> tuple[Level, dict[int, list[tuple[datetime, float]]]]:
    """Aggregates of `agg` per bucket of `width_s` over [start, end), one round trip."""
    level = level_for_bucket(width_s)
    segments = plan_segments(start, end, level)
    parts = [_segment_sql(schema, segment_level, agg) for segment_level, _a, _b in segments]
    statement = sql.SQL("SELECT metric_id, bucket, {agg} FROM ({parts}) AS u GROUP BY 1, 2 ORDER BY 1, 2").format(
        agg=sql.SQL(_OUTER_AGG[agg]), parts=sql.SQL(" UNION ALL ").join(parts)
    )
    params: list[object] = []
    for _level, segment_start, segment_end in segments:
        params.extend([f"{width_s} seconds", device_id, list(metric_ids), segment_start, segment_end])
    points: dict[int, list[tuple[datetime, float]]] = {metric_id: [] for metric_id in metric_ids}
    if not segments:
        return level, points
    with connection.cursor() as cursor:
        cursor.execute(_sql_text(statement), params)
        for metric_id, bucket, value in cursor.fetchall():
            points[metric_id].append((bucket.astimezone(UTC), float(value)))
    return level, points


def query_series(
    *,
    schema: str,
    device_id: int,
    metric_ids: Sequence[int],
    start: datetime,
    end: datetime,
    max_points: int = DEFAULT_MAX_POINTS,
    agg: str = "avg",
) -> SeriesResult:
    """Points of [start, end) per metric, never more than `max_points` per metric (module docstring)."""
    if agg not in AGGREGATES:
        raise ValueError(f"unknown aggregate {agg!r}")
    if not 1 <= max_points <= MAX_POINTS_CAP:
        raise ValueError(f"max_points must be within 1..{MAX_POINTS_CAP}")
    metric_ids = list(dict.fromkeys(metric_ids))
    raw = raw_points(schema, device_id, metric_ids, start, end, max_points + 1)
    if all(len(series) <= max_points for series in raw.values()):
        return SeriesResult(source=RAW.name, bucket_seconds=None, agg=None, points=raw)
    width = choose_bucket_seconds(start, end, max_points)
    level, points = bucketed_series(schema, device_id, metric_ids, start, end, width, agg)
    return SeriesResult(source=level.name, bucket_seconds=width, agg=agg, points=points)


# --- raw export pages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawCursor:
    """Position after the last row of a page: rows are ordered by (ts, metric_id)."""

    ts: datetime
    metric_id: int

    def encode(self) -> str:
        text = f"{_micros(self.ts)}:{self.metric_id}".encode()
        return base64.urlsafe_b64encode(text).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> RawCursor:
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            micros, metric_id = text.split(":")
            return cls(ts=_from_micros(int(micros)), metric_id=int(metric_id))
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError) as exc:
            raise ValueError("invalid cursor") from exc


def raw_page(
    *,
    schema: str,
    device_id: int,
    metric_ids: Sequence[int],
    start: datetime,
    end: datetime,
    page_size: int,
    after: RawCursor | None = None,
) -> tuple[list[tuple[datetime, int, float]], RawCursor | None]:
    """One page of raw rows (ts, metric_id, value) ordered by (ts, metric_id), and the next cursor.

    Each metric is read along its own index range (LATERAL ... LIMIT), then merged, so a page
    costs O(page_size x metrics) whatever the range holds.
    """
    after_ts = after.ts if after else start - timedelta(microseconds=1)
    after_metric = after.metric_id if after else -1
    statement = sql.SQL(
        "SELECT p.ts, m.id, p.value FROM unnest(%s::int[]) AS m(id) CROSS JOIN LATERAL ("
        "SELECT ts, value FROM {point} WHERE device_id = %s AND metric_id = m.id AND ts >= %s AND ts < %s "
        "AND (ts > %s OR (ts = %s AND m.id > %s)) ORDER BY ts LIMIT %s) p ORDER BY p.ts, m.id LIMIT %s"
    ).format(point=sql.Identifier(schema, POINT_TABLE))
    params = [list(metric_ids), device_id, start, end, after_ts, after_ts, after_metric, page_size + 1, page_size + 1]
    with connection.cursor() as cursor:
        cursor.execute(_sql_text(statement), params)
        rows = [(ts.astimezone(UTC), metric_id, value) for ts, metric_id, value in cursor.fetchall()]
    next_cursor = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_cursor = RawCursor(ts=rows[-1][0], metric_id=rows[-1][1])
    return rows, next_cursor


# --- CSV export --------------------------------------------------------------------------------------

CSV_CHUNK_BYTES = 64 * 1024


def export_csv(
    *,
    schema: str,
    device_id: int,
    metrics: Sequence[tuple[int, str, str]],
    start: datetime,
    end: datetime,
    header: bool = True,
) -> Iterator[bytes]:
    """CSV `ts,metric,value,unit` of [start, end), ordered by (ts, metric), in chunks of ~64 kB.

    `metrics` are (id, name, unit) as the caller resolved them. PostgreSQL formats the rows
    (COPY ... TO STDOUT) on a connection of its own, opened when the iteration starts and closed
    when it ends or is abandoned; nothing is held in memory but one chunk.
    """
    catalogue = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(sql.Literal(int(metric_id)), sql.Literal(name), sql.Literal(unit))
        for metric_id, name, unit in metrics
    )
    statement = sql.SQL(
        "COPY (SELECT to_char(p.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), m.name, p.value, m.unit "
        "FROM {point} p JOIN (VALUES {catalogue}) AS m(id, name, unit) ON m.id = p.metric_id "
        "WHERE p.device_id = {device} AND p.metric_id = ANY({metric_ids}) AND p.ts >= {start} AND p.ts < {end} "
        "ORDER BY p.ts, m.name) TO STDOUT (FORMAT csv)"
    ).format(
        point=sql.Identifier(schema, POINT_TABLE),
        catalogue=catalogue,
        device=sql.Literal(int(device_id)),
        metric_ids=sql.Literal([int(metric_id) for metric_id, _name, _unit in metrics]),
        start=sql.Literal(start),
        end=sql.Literal(end),
    )
    if header:
        yield b"ts,metric,value,unit\n"
    with psycopg.connect(database_conninfo(), autocommit=True, application_name="iiot-telemetry-export") as conn:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            buffer = bytearray()
            for data in copy:
                buffer += data
                if len(buffer) >= CSV_CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)


# --- latest values ---------------------------------------------------------------------------------


def latest_values(*, schema: str, device_ids: Sequence[int]) -> dict[int, dict[int, tuple[datetime, float]]]:
    """device_id -> metric_id -> (ts, value), from Redis (PostgreSQL for devices Redis does not know)."""
    return read_latest(schema, device_ids)


# --- sparklines (fleet overview) ---------------------------------------------------------------------


def sparklines(*, schema: str, pairs: dict[int, int], minutes: int = 60, now: datetime | None = None) -> dict[int, list[float | None]]:
    """device_id -> per-minute averages of its metric `pairs[device_id]` over the last `minutes`
    (None for empty minutes), from the 1-minute rollups: one query for a whole page of devices."""
    if not pairs:
        return {}
    end = (now or datetime.now(UTC)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    device_ids = list(pairs)
    statement = sql.SQL(
        """SELECT r.device_id, r.bucket, r.sum / NULLIF(r.count, 0)
             FROM {table} r JOIN unnest(%s::int[], %s::int[]) AS p(device_id, metric_id)
               ON r.device_id = p.device_id AND r.metric_id = p.metric_id
            WHERE r.bucket >= %s AND r.bucket < %s"""
    ).format(table=sql.Identifier(schema, ROLLUP_1M_TABLE))
    out: dict[int, list[float | None]] = {pk: [None] * minutes for pk in device_ids}
    with connection.cursor() as cursor:
        cursor.execute(_sql_text(statement), [device_ids, [pairs[pk] for pk in device_ids], start, end])
        for device_id, bucket, value in cursor.fetchall():
            index = int((bucket - start).total_seconds() // 60)
            if 0 <= index < minutes:
                out[device_id][index] = value
    return out
