"""The telemetry write path: batches of points into a tenant's partitioned tables, latest values to Redis.

Tables (per tenant schema, migrations 0002/0003): `telemetry_point (device_id, metric_id, ts,
value)` range-partitioned by UTC day with a unique index (device_id, metric_id, ts);
`telemetry_rollup_1m` / `telemetry_rollup_1h` with count, min, max, sum, sum_sq, first(+ts),
last(+ts) per (device, metric, bucket). Every statement names its tables with the schema
(`psycopg.sql.Identifier(schema, table)`); nothing here relies on search_path.

One `TelemetryWriter.write()` is one transaction:
0. the tenant's rollup lock, shared (`rollup_lock_sql`);
1. binary COPY of the batch into a session temp table (`pg_temp.telemetry_staging`, emptied at
   commit);
2. one statement: INSERT INTO telemetry_point SELECT ... ON CONFLICT DO NOTHING RETURNING the rows
   actually inserted, and from exactly those rows the 1-minute rollup upsert and, for hours already
   sealed (late points), the 1-hour one (so a redelivered batch inserts nothing and changes no
   rollup). Open hours are read from the minute rows by the `telemetry_rollup_1h` view; a beat job
   seals closed hours (`telemetry.services.seal_rollup_hours`, migration 0005);
3. commit. A point on a day without a partition makes step 2 fail; the writer rolls back, creates
   the partitions of the batch's days (`telemetry_ensure_partitions`) and runs the batch again.
Any other database error rolls back and is raised: nothing is half-written, the caller retries.

Latest values in Redis, after the commit (PostgreSQL stays the source of truth):
    key   `{schema}:latest:{device_id}`    (keys start with the tenant, DESIGN.md)
    hash  field `metric_id` -> "ts_ms:value"  (epoch milliseconds, value as Python repr)
A Lua script sets a field only when the new ts_ms is >= the stored one, so an out-of-order or
redelivered batch never replaces a newer value with an older one. All points of the batch are
offered (not only the inserted ones) so that retrying a batch after a Redis outage heals the cache.
A Redis failure is logged and does not fail the write: the points are committed and
`read_latest` falls back to PostgreSQL for devices Redis knows nothing about.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
import redis
from django.conf import settings
from psycopg import sql

logger = logging.getLogger(__name__)

POINT_TABLE = "telemetry_point"
ROLLUP_1M_TABLE = "telemetry_rollup_1m"
ROLLUP_1H_TABLE = "telemetry_rollup_1h"  # a view: sealed hours + open hours from the minutes (migration 0005)
ROLLUP_1H_SEALED_TABLE = "telemetry_rollup_1h_sealed"
ROLLUP_WATERMARK_TABLE = "telemetry_rollup_watermark"  # one row: sealed_through (hour-aligned)
# Key space of the per-tenant advisory lock between writers (shared) and the sealer (exclusive):
# pg_advisory_xact_lock[_shared](ROLLUP_LOCK_CLASS, hashtext(schema)).
ROLLUP_LOCK_CLASS = 0x1A11
ENSURE_PARTITIONS_FUNCTION = "telemetry_ensure_partitions"
# Buckets are aligned on this origin with date_bin, independent of the session time zone.
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
# Creating a partition waits at most this long for its locks; the caller retries the batch.
PARTITION_LOCK_TIMEOUT = "5s"
# Latest values are written in chunks of this many device keys per script call (one pipeline).
LATEST_KEYS_PER_CALL = 2000


class Point(NamedTuple):
    """One stored point. A named tuple, not a dataclass: the ingest builds hundreds of thousands a
    second and a tuple is five times cheaper to create than a frozen dataclass."""

    device_id: int
    metric_id: int
    ts: datetime  # aware, UTC
    value: float


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int


# PostgreSQL's binary COPY format (docs: sql-copy.html, "Binary Format"), encoded here rather
# than with psycopg's `write_row` (a Python-level loop over typed dumpers, five times slower):
# a header, then per row the field count and each field as length + big-endian value, then -1.
# timestamptz is int64 microseconds since 2000-01-01 UTC.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_ROW = struct.Struct("!hiiiiiqid")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


_DAY_MICROS = 86_400_000_000
_ROW_SIZE = _COPY_ROW.size  # 42: field count, then length + value for each of the four fields
_BLOCK_MIN_BYTES = 64 * 1024
_BLOCK_MAX_BYTES = 1024 * 1024
_STAGED_POINTS = 2048
_PG_EPOCH_DATE = _PG_EPOCH.date()


class PointBuffer:
    """A batch of points kept the way it will be sent: binary COPY rows, 42 bytes a point.

    The ingest appends each message's points as they arrive (`extend`), and a pending batch holds
    them as rows, not as Python objects (a `Point` with its float costs about 120 bytes and is
    tracked by the garbage collector; 400,000 pending points were 80 MB of a process). Alongside
    the rows it keeps what the writer needs besides them: the newest point of each series (latest
    values for Redis, one entry per series) and the UTC days the points fall on (partitions to
    create).

    `extend` only stages the points (a list); every _STAGED_POINTS they are encoded in one go, so
    the ingest's event loop pays no per-message encoding call (measured: packing each message on
    arrival cost the ingest 6-10 % more CPU than packing the batch in the writer thread) and at
    most that many points are held as objects. Rows are packed in place (`struct.pack_into`) into
    blocks allocated once: 64 KiB first, each next one twice as large up to 1 MiB, so a small
    batch stays small and a large one is never copied to grow.

    `TelemetryWriter.write` takes one as it takes a list of points; once handed to a writer it
    must not change (a failed write is retried with the same rows).
    """

    __slots__ = ("_staged", "_sealed", "_block", "_offset", "_count", "_newest", "_days", "_last_ts", "_last_micros")

    def __init__(self, points: Iterable[Point] = ()) -> None:
        self._staged: list[Point] = []
        self._sealed: list[memoryview] = []  # full blocks, each cut to its rows
        self._block = bytearray(0)
        self._offset = 0
        self._count = 0  # rows encoded
        self._newest: dict[tuple[int, int], Point] = {}  # (device_id, metric_id) -> its newest point
        self._days: set[int] = set()  # days since 2000-01-01 UTC
        self._last_ts: datetime | None = None
        self._last_micros = 0
        self.extend(points)

    def __len__(self) -> int:
        return self._count + len(self._staged)

    def extend(self, points: Iterable[Point]) -> None:
        staged = self._staged
        staged += points
        if len(staged) >= _STAGED_POINTS:
            self._encode(staged)
            staged.clear()

    @property
    def newest(self) -> dict[tuple[int, int], Point]:
        """(device_id, metric_id) -> the newest point of the batch."""
        self._settle()
        return self._newest

    def copy_chunks(self) -> list[bytes | memoryview]:
        """The binary COPY stream, as buffers to write one after the other (the rows are not copied)."""
        self._settle()
        return [_COPY_HEADER, *self._sealed, memoryview(self._block)[: self._offset], _COPY_TRAILER]

    def days(self) -> list[date]:
        """The UTC days the points fall on."""
        self._settle()
        return [_PG_EPOCH_DATE + timedelta(days=number) for number in sorted(self._days)]

    def _settle(self) -> None:
        if self._staged:
            self._encode(self._staged)
            self._staged.clear()

    def _encode(self, points: list[Point]) -> None:
        count = len(points)
        block, offset = self._block, self._offset
        if offset + count * _ROW_SIZE > len(block):
            if offset:
                self._sealed.append(memoryview(block)[:offset])
            grown = min(2 * len(block), _BLOCK_MAX_BYTES) if block else _BLOCK_MIN_BYTES
            block = self._block = bytearray(max(grown, count * _ROW_SIZE))
            offset = 0
        pack_into = _COPY_ROW.pack_into
        newest = self._newest
        get = newest.get
        last_ts, micros = self._last_ts, self._last_micros
        for point in points:
            device_id, metric_id, ts, value = point
            if ts is not last_ts:  # the points of one message share their timestamp object
                micros = (ts - _PG_EPOCH) // _ONE_MICROSECOND
                last_ts = ts
                self._days.add(micros // _DAY_MICROS)
            pack_into(block, offset, 4, 4, device_id, 4, metric_id, 8, micros, 8, value)
            offset += _ROW_SIZE
            key = (device_id, metric_id)
            current = get(key)
            if current is None or ts >= current[2]:
                newest[key] = point
        self._offset = offset
        self._count += count
        self._last_ts, self._last_micros = last_ts, micros


def latest_key(schema: str, device_id: int) -> str:
    return f"{schema}:latest:{device_id}"


def ts_to_ms(ts: datetime) -> int:
    # Integer arithmetic: float timestamps lose microseconds far from 1970.
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def ms_to_ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def database_conninfo(alias: str = "default") -> str:
    """A libpq conninfo string for the Django database `alias` (test database included)."""
    from django.db import connections

    params = connections[alias].settings_dict
    parts = {
        "dbname": params.get("NAME") or "",
        "user": params.get("USER") or "",
        "password": params.get("PASSWORD") or "",
        "host": params.get("HOST") or "",
        "port": str(params.get("PORT") or ""),
    }
    return psycopg.conninfo.make_conninfo(**{key: value for key, value in parts.items() if value})


def _connect(conninfo: str, application_name: str) -> psycopg.Connection:
    return psycopg.connect(conninfo, autocommit=False, application_name=application_name, options="-c timezone=UTC")


# --- SQL -----------------------------------------------------------------------------------------

_STAGING = sql.Identifier("pg_temp", "telemetry_staging")
_CREATE_STAGING = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging "
    "(device_id int4 NOT NULL, metric_id int4 NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL) "
    "ON COMMIT DELETE ROWS"
)
_COPY_STAGING = sql.SQL("COPY {} (device_id, metric_id, ts, value) FROM STDIN (FORMAT binary)").format(_STAGING)


ROLLUP_COLUMNS = sql.SQL("device_id, metric_id, bucket, count, min, max, sum, sum_sq, first, first_ts, last, last_ts")
ROLLUP_MERGE = sql.SQL(
    """ON CONFLICT (device_id, metric_id, bucket) DO UPDATE SET
            count = r.count + EXCLUDED.count,
            min = LEAST(r.min, EXCLUDED.min),
            max = GREATEST(r.max, EXCLUDED.max),
            sum = r.sum + EXCLUDED.sum,
            sum_sq = r.sum_sq + EXCLUDED.sum_sq,
            first = CASE WHEN EXCLUDED.first_ts < r.first_ts THEN EXCLUDED.first ELSE r.first END,
            first_ts = LEAST(r.first_ts, EXCLUDED.first_ts),
            last = CASE WHEN EXCLUDED.last_ts > r.last_ts THEN EXCLUDED.last ELSE r.last END,
            last_ts = GREATEST(r.last_ts, EXCLUDED.last_ts)"""
)


# PostgreSQL raises on float overflow and underflow, which would make a batch holding one extreme
# (finite) value fail for ever: a square that would overflow is stored as Infinity, one that would
# underflow as 0.
_SQUARE = sql.SQL(
    "CASE WHEN abs(value) >= 1e154 THEN 'Infinity'::float8 WHEN abs(value) < 1e-154 THEN 0::float8 ELSE value * value END"
)


def rollup_from_points_sql(source: sql.Composable, width: str) -> sql.Composed:
    """Rollup rows (in `ROLLUP_COLUMNS` order) of raw points `source` in buckets of `width`."""
    return sql.SQL(
        """SELECT device_id, metric_id, date_bin({width}, ts, {origin}) AS bucket, count(*) AS count, min(value) AS min,
               max(value) AS max, sum(value) AS sum, sum({square}) AS sum_sq,
               (array_agg(value ORDER BY ts))[1] AS first, min(ts) AS first_ts,
               (array_agg(value ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
        FROM {source} GROUP BY 1, 2, 3"""
    ).format(source=source, width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN), square=_SQUARE)


def rollup_from_unique_points_sql(source: sql.Composable, width: str) -> sql.Composed:
    """`rollup_from_points_sql` for a source without two points of one series at the same ts.

    first/last come from one array per group built in time order, instead of two per-group sorts
    (`array_agg(... ORDER BY ts)`, which PostgreSQL 15 runs even on presorted input: about 15 ms
    of a 24k-point batch). The order is the sorted subquery's: the planner groups it as it comes
    (its sort keys start with the group keys), and neither a temp table nor a data-modifying
    CTE is ever read in parallel.
    """
    return sql.SQL(
        """SELECT device_id, metric_id, bucket, count(*) AS count, min(value) AS min, max(value) AS max,
               sum(value) AS sum, sum({square}) AS sum_sq,
               (array_agg(value))[1] AS first, min(ts) AS first_ts,
               (array_agg(value))[count(*)::int] AS last, max(ts) AS last_ts
        FROM (SELECT device_id, metric_id, date_bin({width}, ts, {origin}) AS bucket, ts, value FROM {source}
              ORDER BY device_id, metric_id, bucket, ts) AS sorted
        GROUP BY device_id, metric_id, bucket"""
    ).format(source=source, width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN), square=_SQUARE)


def rollup_from_rollup_sql(source: sql.Composable, width: str, where: sql.Composable | None = None) -> sql.Composed:
    """Rollup rows of coarser buckets `width` merged from finer rollup rows `source` (`where`: a
    condition on the finer rows)."""
    return sql.SQL(
        """SELECT device_id, metric_id, date_bin({width}, bucket, {origin}) AS bucket, sum(count)::bigint AS count,
               min(min) AS min, max(max) AS max, sum(sum) AS sum, sum(sum_sq) AS sum_sq,
               (array_agg(first ORDER BY first_ts))[1] AS first, min(first_ts) AS first_ts,
               (array_agg(last ORDER BY last_ts DESC))[1] AS last, max(last_ts) AS last_ts
        FROM {source} {where} GROUP BY 1, 2, 3"""
    ).format(
        source=source, width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN),
        where=sql.SQL("WHERE {}").format(where) if where is not None else sql.SQL(""),
    )  # fmt: skip


def sealed_through_sql(schema: str) -> sql.Composed:
    """The tenant's watermark as a scalar subquery: hours before it are in the sealed table."""
    return sql.SQL("(SELECT sealed_through FROM {})").format(sql.Identifier(schema, ROLLUP_WATERMARK_TABLE))


def rollup_lock_sql(*, shared: bool) -> sql.Composed:
    """`SELECT pg_advisory_xact_lock[_shared](class, hashtext(%s))` (parameter: the schema).

    Writers of minute rollups hold it shared for their transaction, taken before their first
    statement reads the watermark; the sealer holds it exclusively while it folds hours and moves
    the watermark. So a writer's minute rows are either committed before a seal reads them or
    written knowing the new watermark (and merged into the sealed hour by the writer itself)."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    return sql.SQL("SELECT {}({}, hashtext(%s))").format(sql.Identifier(function), sql.Literal(ROLLUP_LOCK_CLASS))


def insert_statement(schema: str, *, skip_duplicates: bool) -> sql.Composed:
    """Staging -> points -> rollups of exactly the inserted rows, in one statement.

    With `skip_duplicates` the insert is ON CONFLICT DO NOTHING (a redelivered point is a no-op);
    without it the insert is about twice as fast and fails on the first duplicate, which the
    writer uses as its optimistic first try (redeliveries are rare).

    Rows go in sorted by the primary key: each series' points then land next to each other in the
    index and the heap (a batch interleaves all devices), the rollup's sort gets presorted input,
    and the statement runs about 20 % faster (100,000 points over 4,000 series: 186k -> 225k
    points/s on the bench machine). Queries of one series read fewer heap pages too. `ctid` (the
    staging table's arrival order) breaks ties, so of two points of a series with the same ts in
    one batch the first one received is stored, as before the sort.

    Hourly rows are merged only for hours before the tenant's watermark (late points); open hours
    are read from the minute rows through the `telemetry_rollup_1h` view (migration 0005). The
    caller holds `rollup_lock_sql(shared=True)` for the transaction.
    """
    if skip_duplicates:
        # Rollups of exactly the rows inserted (RETURNING): a redelivered point changes nothing.
        conflict = sql.SQL("ON CONFLICT (device_id, metric_id, ts) DO NOTHING")
        returning = sql.SQL("device_id, metric_id, ts, value")
        minute_rows = rollup_from_points_sql(sql.Identifier("inserted"), "1 minute")
    else:
        # The plain insert fails on any duplicate (the batch's own included), so when it succeeds
        # every staging row was inserted, each once. The minutes come from the rows it returns,
        # which are in the insert's (device, metric, ts) order: the rollup's sort then finds its
        # input presorted and only checks it (about 1 ms instead of 11 for 24k points), where
        # reading the staging table again meant a second full sort.
        conflict = sql.SQL("")
        returning = sql.SQL("device_id, metric_id, ts, value")
        minute_rows = rollup_from_unique_points_sql(sql.Identifier("inserted"), "1 minute")
    return sql.SQL(
        """WITH inserted AS (
            INSERT INTO {point} (device_id, metric_id, ts, value)
            SELECT device_id, metric_id, ts, value FROM {staging} ORDER BY device_id, metric_id, ts, ctid
            {conflict}
            RETURNING {returning}
        ), minute_rows AS MATERIALIZED ({minute_rows}),
        minute AS (INSERT INTO {rollup_1m} AS r ({columns}) SELECT * FROM minute_rows {merge} RETURNING 1),
        hour AS (INSERT INTO {rollup_1h} AS r ({columns}) {hour_rows} {merge} RETURNING 1)
        SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM minute), (SELECT count(*) FROM hour)"""
    ).format(
        point=sql.Identifier(schema, POINT_TABLE),
        staging=_STAGING,
        conflict=conflict,
        returning=returning,
        minute_rows=minute_rows,
        hour_rows=rollup_from_rollup_sql(
            sql.Identifier("minute_rows"), "1 hour", sql.SQL("bucket < {}").format(sealed_through_sql(schema))
        ),
        rollup_1m=sql.Identifier(schema, ROLLUP_1M_TABLE),
        rollup_1h=sql.Identifier(schema, ROLLUP_1H_SEALED_TABLE),
        columns=ROLLUP_COLUMNS,
        merge=ROLLUP_MERGE,
    )


def ensure_partitions_sql(schema: str) -> sql.Composed:
    """`SELECT <schema>.telemetry_ensure_partitions(%s, %s, %s)` (schema, from, to)."""
    return sql.SQL("SELECT {}(%s, %s::date, %s::date)").format(sql.Identifier(schema, ENSURE_PARTITIONS_FUNCTION))


def _is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.errors.CheckViolation) and "no partition" in str(exc)


def _contiguous_ranges(days: Iterable[date]) -> list[tuple[date, date]]:
    """Sorted days grouped into [first, last] runs, so a stray far-off point creates one partition."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and (day - ranges[-1][1]).days == 1:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


# --- Redis ---------------------------------------------------------------------------------------

# KEYS: device hashes. ARGV: for each key, the number of fields n, then n triples
# (metric_id, ts_ms, "ts_ms:value"). A field is replaced only by a value at least as new.
_SET_LATEST_LUA = """
local a = 1
local changed = 0
for i = 1, #KEYS do
  local n = tonumber(ARGV[a]); a = a + 1
  for j = 1, n do
    local field, ts, packed = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
    a = a + 3
    local current = redis.call('HGET', KEYS[i], field)
    if (not current) or tonumber(string.match(current, '^(-?%d+):')) <= ts then
      redis.call('HSET', KEYS[i], field, packed)
      changed = changed + 1
    end
  end
end
return changed
"""

_redis_clients: dict[str, redis.Redis] = {}


def redis_client(url: str | None = None) -> redis.Redis:
    """One client (connection pool) per URL and process."""
    url = url or settings.REDIS_URL
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    return client


def _by_device(newest: dict[tuple[int, int], Point]) -> dict[int, dict[int, Point]]:
    """(device_id, metric_id) -> point, as device_id -> metric_id -> point."""
    by_device: dict[int, dict[int, Point]] = {}
    for (device_id, metric_id), point in newest.items():
        per_device = by_device.get(device_id)
        if per_device is None:
            per_device = by_device[device_id] = {}
        per_device[metric_id] = point
    return by_device


def store_latest(client: redis.Redis, schema: str, points: Iterable[Point] | PointBuffer) -> int:
    """Offer the batch's newest values to Redis in one pipelined round trip; returns fields changed."""
    buffer = points if isinstance(points, PointBuffer) else PointBuffer(points)
    newest = _by_device(buffer.newest)
    if not newest:
        return 0
    calls: list[tuple[list[str], list[Any]]] = []
    devices = list(newest.items())
    for start in range(0, len(devices), LATEST_KEYS_PER_CALL):
        keys: list[str] = []
        args: list[Any] = []
        for device_id, per_metric in devices[start : start + LATEST_KEYS_PER_CALL]:
            keys.append(latest_key(schema, device_id))
            args.append(len(per_metric))
            for metric_id, point in per_metric.items():
                ms = ts_to_ms(point.ts)
                args.extend((metric_id, ms, f"{ms}:{point.value!r}"))
        calls.append((keys, args))
    return sum(_run_script(client, _SET_LATEST_LUA, calls))


def _run_script(client: redis.Redis, source: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run a Lua script once per (keys, args): one EVALSHA, or one pipeline when there are several."""
    script = client.register_script(source)
    if len(calls) == 1:
        keys, args = calls[0]
        return [script(keys=keys, args=args)]
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        script(keys=keys, args=args, client=pipe)
    return pipe.execute()


# KEYS: device hashes. Returns one flat [field, value, ...] array per key: a single command whose
# reply hiredis parses in one go, where a pipeline of HGETALLs costs a command object per key.
_GET_LATEST_LUA = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
"""
# Devices per script call when reading (bounds the time Redis spends in one script).
LATEST_READ_KEYS_PER_CALL = 2000


def _parse_latest(flat: list[bytes]) -> dict[int, tuple[datetime, float]]:
    values: dict[int, tuple[datetime, float]] = {}
    for index in range(0, len(flat), 2):
        ms, _, value = flat[index + 1].partition(b":")
        values[int(flat[index])] = (_EPOCH + timedelta(milliseconds=int(ms)), float(value))
    return values


def read_latest(
    schema: str, device_ids: Sequence[int], *, client: redis.Redis | None = None
) -> dict[int, dict[int, tuple[datetime, float]]]:
    """device_id -> metric_id -> (ts, value): newest value per metric.

    One Redis round trip (a read-only script over the device hashes, pipelined in chunks);
    devices Redis knows nothing about (cache flushed, Redis down) are answered from PostgreSQL
    with one query. Devices without any data are left out.
    """
    device_ids = list(dict.fromkeys(int(device_id) for device_id in device_ids))
    if not device_ids:
        return {}
    result: dict[int, dict[int, tuple[datetime, float]]] = {}
    missing = device_ids
    try:
        client = client or redis_client()
        chunks = [
            [latest_key(schema, device_id) for device_id in device_ids[start : start + LATEST_READ_KEYS_PER_CALL]]
            for start in range(0, len(device_ids), LATEST_READ_KEYS_PER_CALL)
        ]
        replies = [flat for reply in _run_script(client, _GET_LATEST_LUA, [(keys, []) for keys in chunks]) for flat in reply]
        missing = []
        for device_id, flat in zip(device_ids, replies, strict=True):
            if flat:
                result[device_id] = _parse_latest(flat)
            else:
                missing.append(device_id)
    except redis.RedisError:
        logger.warning("latest values: Redis unavailable, reading PostgreSQL", extra={"schema": schema})
    if missing:
        result.update(latest_from_database(schema, missing))
    return result


def latest_from_database(schema: str, device_ids: Sequence[int]) -> dict[int, dict[int, tuple[datetime, float]]]:
    """Newest value per (device, metric) from PostgreSQL, one query.

    Reads the hourly rollups' `last`/`last_ts` (the view: open hours come from the minute rows,
    written in the same transaction as the points), so the newest bucket's last value is the newest
    point, and the sealed table has few (monthly) partitions where the raw table has one per day.
    """
    from django.db import connection

    statement = sql.SQL(
        """SELECT DISTINCT ON (r.device_id, r.metric_id) r.device_id, r.metric_id, r.last_ts, r.last
        FROM {rollup} r WHERE r.device_id = ANY(%s::int[])
        ORDER BY r.device_id, r.metric_id, r.bucket DESC"""
    ).format(rollup=sql.Identifier(schema, ROLLUP_1H_TABLE))
    result: dict[int, dict[int, tuple[datetime, float]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(), [list(device_ids)])
        for device_id, metric_id, ts, value in cursor.fetchall():
            result.setdefault(device_id, {})[metric_id] = (ts.astimezone(UTC), value)
    return result


# --- The writer ----------------------------------------------------------------------------------


class TelemetryWriter:
    """Writes batches of points for one tenant schema at a time (see the module docstring).

    Not thread-safe: one writer per thread or task. It owns its PostgreSQL connection (not
    Django's) and reconnects on the next `write()` after the connection dropped.
    """

    def __init__(self, *, dsn: str | None = None, redis_url: str | None = None) -> None:
        self._conninfo = dsn or database_conninfo()
        self._redis_url = redis_url or settings.REDIS_URL
        self._conn: psycopg.Connection | None = None
        self._redis: redis.Redis | None = None
        self._statements: dict[tuple[str, bool], bytes] = {}
        self._lock_statement = rollup_lock_sql(shared=True).as_bytes()

    # connection handling
    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = _connect(self._conninfo, "iiot-telemetry-writer")
            with conn.cursor() as cursor:
                cursor.execute(_CREATE_STAGING)
            conn.commit()
        return conn

    def _redis_client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self._redis_url, socket_timeout=5, socket_connect_timeout=2)
        return self._redis

    def _statement(self, schema: str, *, skip_duplicates: bool) -> bytes:
        key = (schema, skip_duplicates)
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = insert_statement(schema, skip_duplicates=skip_duplicates).as_bytes()
        return statement

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # writing
    def write(self, schema: str, points: Sequence[Point] | PointBuffer) -> WriteResult:
        """Store a batch (a list of points, or a PointBuffer the ingest filled) in one transaction."""
        buffer = points if isinstance(points, PointBuffer) else PointBuffer(points)
        if not buffer:
            return WriteResult(inserted=0, duplicates=0)
        try:
            inserted = self._write_once(schema, buffer)
        except psycopg.Error as exc:
            if not _is_missing_partition(exc):
                raise
            self.ensure_partitions(schema, buffer.days())
            inserted = self._write_once(schema, buffer)
        try:
            store_latest(self._redis_client(), schema, buffer)
        except redis.RedisError:
            logger.warning("latest values not stored: Redis unavailable", extra={"schema": schema}, exc_info=True)
        return WriteResult(inserted=inserted, duplicates=len(buffer) - inserted)

    def _write_once(self, schema: str, buffer: PointBuffer) -> int:
        conn = self._connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute(self._lock_statement, (schema,))
                with cursor.copy(_COPY_STAGING) as copy:
                    for chunk in buffer.copy_chunks():
                        copy.write(chunk)
                # Optimistic: a plain insert, undone to the savepoint if the batch holds a duplicate.
                cursor.execute("SAVEPOINT telemetry_batch")
                try:
                    cursor.execute(self._statement(schema, skip_duplicates=False))
                except psycopg.errors.UniqueViolation:
                    cursor.execute("ROLLBACK TO SAVEPOINT telemetry_batch")
                    cursor.execute(self._statement(schema, skip_duplicates=True))
                row = cursor.fetchone()
            conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        return int(row[0]) if row else 0

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()  # reconnect on the next write

    def ensure_partitions(self, schema: str, days: Iterable[date]) -> int:
        """Create the missing partitions for `days` (each run of consecutive days in one call)."""
        conn = self._connection()
        created = 0
        statement = ensure_partitions_sql(schema)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(PARTITION_LOCK_TIMEOUT)))
                for first, last in _contiguous_ranges(days):
                    cursor.execute(statement, (schema, first, last))
                    row = cursor.fetchone()
                    created += int(row[0]) if row else 0
            conn.commit()
        except psycopg.errors.UniqueViolation:
            # Another writer created the same partition at the same moment: it exists now.
            self._rollback_quietly()
        except BaseException:
            self._rollback_quietly()
            raise
        return created
