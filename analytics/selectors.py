"""Analytics read queries: PostgreSQL does the aggregation, Python gets a handful of numbers back.

Every endpoint reads one "series" of a device's metric over [start, end): raw points for short
ranges, or buckets of the rollup resolution (1 minute, 1 hour) for long ones (`choose_level`).
A bucketed series is built like `telemetry.selectors.bucketed_series`: the whole units of the
range come from the rollup table, its ragged ends from the next finer level, so a bucket's count,
sum, min and max are exactly those of the raw points it covers. Each series row carries

    ts (point time or bucket start), n (points), s (sum), ss (sum of squares), lo, hi, value (s / n)

and the statistics, trend and forecast queries aggregate those rows in SQL (two-pass variance,
PostgreSQL's Youngs-Cramer regression aggregates, percentile_cont), so a month of 1 Hz data
costs the few hundred rollup rows it spans, not millions of points. Tables are named with the
tenant schema (never search_path), like every telemetry query.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from psycopg import sql

from telemetry.selectors import LEVELS, RAW, ROLLUP_1H, ROLLUP_1M, Level, level_for_bucket, plan_segments
from telemetry.storage import BUCKET_ORIGIN, POINT_TABLE

# Ranges up to RAW_MAX_SPAN are read from raw points, up to MINUTE_MAX_SPAN from 1-minute
# rollups, longer ones from 1-hour rollups (the "auto" resolution).
RAW_MAX_SPAN = timedelta(hours=6)
MINUTE_MAX_SPAN = timedelta(days=7)
# Raw points on request only for ranges up to this long (a percentile over millions of points
# costs seconds).
RAW_REQUEST_MAX_SPAN = timedelta(days=2)
RESOLUTIONS: dict[str, Level | None] = {"auto": None, "raw": RAW, "1m": ROLLUP_1M, "1h": ROLLUP_1H}
PERCENTILES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95)

# Squares that would overflow or underflow a float8 (PostgreSQL raises on both): as the writer does.
_SQUARE = sql.SQL(
    "CASE WHEN abs(value) >= 1e154 THEN 'Infinity'::float8 WHEN abs(value) < 1e-154 THEN 0::float8 ELSE value * value END"
)


def square(expression: sql.Composable) -> sql.Composed:
    """expression^2 without PostgreSQL's float underflow/overflow errors (0 / Infinity instead)."""
    return sql.SQL(
        "(CASE WHEN abs({e}) < 1e-154 THEN 0::float8 WHEN abs({e}) >= 1e154 THEN 'Infinity'::float8 ELSE ({e}) * ({e}) END)"
    ).format(e=expression)


def choose_level(start: datetime, end: datetime, resolution: str = "auto") -> Level:
    level = RESOLUTIONS[resolution]
    if level is not None:
        return level
    span = end - start
    if span <= RAW_MAX_SPAN:
        return RAW
    if span <= MINUTE_MAX_SPAN:
        return ROLLUP_1M
    return ROLLUP_1H


@dataclass(frozen=True)
class SeriesSpec:
    """One metric of one device over [start, end) at `level` (buckets of `width_s` when not raw)."""

    schema: str
    device_id: int
    metric_id: int
    start: datetime
    end: datetime
    level: Level

    @property
    def width_s(self) -> int:
        return self.level.resolution_s


def series_sql(spec: SeriesSpec) -> tuple[sql.Composed, list[Any]]:
    """SELECT ts, n, s, ss, lo, hi, value of the series (unordered) and its parameters."""
    point = sql.Identifier(spec.schema, POINT_TABLE)
    if spec.level is RAW:
        statement = sql.SQL(
            "SELECT ts, 1::float8 AS n, value AS s, {square} AS ss, value AS lo, value AS hi, value FROM {point} "
            "WHERE device_id = %s AND metric_id = %s AND ts >= %s AND ts < %s"
        ).format(square=_SQUARE, point=point)
        return statement, [spec.device_id, spec.metric_id, spec.start, spec.end]
    width = f"{spec.width_s} seconds"
    origin = sql.Literal(BUCKET_ORIGIN)
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for level, segment_start, segment_end in plan_segments(spec.start, spec.end, spec.level):
        if level is RAW:
            parts.append(
                sql.SQL(
                    "SELECT date_bin(%s::interval, ts, {origin}) AS ts, count(*)::float8 AS n, sum(value) AS s, "
                    "sum({square}) AS ss, min(value) AS lo, max(value) AS hi FROM {point} "
                    "WHERE device_id = %s AND metric_id = %s AND ts >= %s AND ts < %s GROUP BY 1"
                ).format(origin=origin, square=_SQUARE, point=point)
            )
        else:
            parts.append(
                sql.SQL(
                    "SELECT date_bin(%s::interval, bucket, {origin}) AS ts, sum(count)::float8 AS n, sum(sum) AS s, "
                    "sum(sum_sq) AS ss, min(min) AS lo, max(max) AS hi FROM {table} "
                    "WHERE device_id = %s AND metric_id = %s AND bucket >= %s AND bucket < %s GROUP BY 1"
                ).format(origin=origin, table=sql.Identifier(spec.schema, level.table))
            )
        params.extend([width, spec.device_id, spec.metric_id, segment_start, segment_end])
    if not parts:  # empty range: no rows
        return sql.SQL(
            "SELECT ts, 1::float8 AS n, value AS s, value AS ss, value AS lo, value AS hi, value FROM {} WHERE false"
        ).format(point), []
    statement = sql.SQL(
        "SELECT ts, sum(n) AS n, sum(s) AS s, sum(ss) AS ss, min(lo) AS lo, max(hi) AS hi, sum(s) / sum(n) AS value "
        "FROM ({parts}) AS u GROUP BY ts"
    ).format(parts=sql.SQL(" UNION ALL ").join(parts))
    return statement, params


def _fetchone(statement: sql.Composable, params: list[Any]) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(), params)
        return cursor.fetchone()


def _fetchall(statement: sql.Composable, params: list[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(), params)
        return cursor.fetchall()


# --- statistics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    count: int  # points (not buckets)
    buckets: int  # series rows: points when raw
    mean: float | None
    variance: float | None  # sample variance (n - 1)
    min: float | None
    max: float | None
    percentiles: dict[float, float]  # of the series values: points, or bucket means


def summary(spec: SeriesSpec, *, percentiles: bool = True) -> Summary:
    """Count, mean, sample variance (two-pass: within-bucket from the sums of squares plus
    between-bucket around the grand mean), min, max and percentiles, in one statement."""
    series, params = series_sql(spec)
    percentile_sql = (
        sql.SQL("percentile_cont({}::float8[]) WITHIN GROUP (ORDER BY b.value)").format(sql.Literal(list(PERCENTILES)))
        if percentiles
        else sql.SQL("NULL::float8[]")
    )
    statement = sql.SQL(
        """WITH b AS MATERIALIZED ({series}),
        t AS (SELECT sum(n) AS total, sum(s) / sum(n) AS mean FROM b)
        SELECT t.total, count(*), t.mean,
               CASE WHEN t.total > 1 THEN
                 ({within} + sum(b.n * {between})) / (t.total - 1)
               END,
               min(b.lo), max(b.hi), {percentiles}
        FROM b CROSS JOIN t GROUP BY t.total, t.mean"""
    ).format(
        series=series,
        percentiles=percentile_sql,
        # raw points: one point per row, nothing within a row
        within=sql.SQL("0") if spec.level is RAW else sql.SQL("sum(GREATEST(b.ss - {} / b.n, 0))").format(square(sql.SQL("b.s"))),
        between=square(sql.SQL("b.value - t.mean")),
    )
    row = _fetchone(statement, params)
    if row is None:
        return Summary(count=0, buckets=0, mean=None, variance=None, min=None, max=None, percentiles={})
    total, buckets, mean, variance, low, high, values = row
    return Summary(
        count=int(total or 0),
        buckets=int(buckets),
        mean=mean,
        variance=variance,
        min=low,
        max=high,
        percentiles=dict(zip(PERCENTILES, values, strict=True)) if values else {},
    )


# --- trend -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    n: int  # series rows (points, or buckets)
    avg_x: float | None  # minutes since start
    avg_y: float | None
    sxx: float | None
    syy: float | None
    sxy: float | None
    sse: float | None  # sum of squared residuals (second pass)
    first_ts: datetime | None
    last_ts: datetime | None
    median_step_s: float | None  # median interval between consecutive rows


def regression(spec: SeriesSpec, *, residuals: bool = False, step: bool = False) -> Regression:
    """Least squares of value on x = minutes since `spec.start`, over the series rows.

    regr_sxx/syy/sxy/avgx/avgy are PostgreSQL's Youngs-Cramer accumulations (no cancellation);
    the residual sum of squares is a second pass over the rows against the fitted line.
    """
    series, params = series_sql(spec)
    x = sql.SQL("(extract(epoch FROM b.ts - {start}::timestamptz)::float8 / 60.0)").format(start=sql.Literal(spec.start))
    sse = (
        sql.SQL("(SELECT sum({}) FROM b WHERE f.sxx > 0)").format(
            square(sql.SQL("b.value - (f.avgy + f.sxy / f.sxx * ({x} - f.avgx))").format(x=x))
        )
        if residuals
        else sql.SQL("NULL::float8")
    )
    median_step = (
        sql.SQL(
            "(SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) FROM "
            "(SELECT extract(epoch FROM b.ts - lag(b.ts) OVER (ORDER BY b.ts))::float8 AS d FROM b) AS steps WHERE d IS NOT NULL)"
        )
        if step
        else sql.SQL("NULL::float8")
    )
    statement = sql.SQL(
        """WITH b AS MATERIALIZED ({series}),
        f AS (SELECT regr_count(b.value, {x}) AS n, regr_avgx(b.value, {x}) AS avgx, regr_avgy(b.value, {x}) AS avgy,
                     regr_sxx(b.value, {x}) AS sxx, regr_syy(b.value, {x}) AS syy, regr_sxy(b.value, {x}) AS sxy,
                     min(b.ts) AS first_ts, max(b.ts) AS last_ts FROM b)
        SELECT f.n, f.avgx, f.avgy, f.sxx, f.syy, f.sxy, {sse}, f.first_ts, f.last_ts, {median_step} FROM f"""
    ).format(series=series, x=x, sse=sse, median_step=median_step)
    n, avg_x, avg_y, sxx, syy, sxy, sse_value, first_ts, last_ts, median_step_s = _fetchone(statement, params)
    return Regression(
        n=int(n or 0),
        avg_x=avg_x,
        avg_y=avg_y,
        sxx=sxx,
        syy=syy,
        sxy=sxy,
        sse=sse_value,
        first_ts=first_ts.astimezone(UTC) if first_ts else None,
        last_ts=last_ts.astimezone(UTC) if last_ts else None,
        median_step_s=median_step_s,
    )


def series_values(spec: SeriesSpec) -> list[tuple[datetime, float]]:
    """The series rows (ts, value) in time order (for models that need the values themselves)."""
    series, params = series_sql(spec)
    rows = _fetchall(sql.SQL("SELECT ts, value FROM ({series}) AS b ORDER BY ts").format(series=series), params)
    return [(ts.astimezone(UTC), float(value)) for ts, value in rows]


# --- moving average and rate of change, in pages ----------------------------------------------------

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PageCursor:
    """The time of the first row of the next page."""

    ts: datetime

    def encode(self) -> str:
        delta = self.ts - BUCKET_ORIGIN
        micros = (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds
        return base64.urlsafe_b64encode(f"a:{micros}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageCursor:
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            tag, micros = text.split(":")
            if tag != "a":
                raise ValueError("not an analytics cursor")
            return cls(ts=BUCKET_ORIGIN + timedelta(microseconds=int(micros)))
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError) as exc:
            raise ValueError("invalid cursor") from exc


@dataclass(frozen=True)
class MovingRow:
    ts: datetime
    value: float
    moving_average: float | None
    rate_per_minute: float | None


def moving_page(
    spec: SeriesSpec,
    *,
    window_points: int | None,
    window_seconds: int | None,
    page_size: int,
    after: datetime | None = None,
) -> tuple[list[MovingRow], datetime | None, int | None]:
    """One page of (ts, value, moving average, rate of change per minute) from `after` on.

    Point windows average the current row and the `window_points - 1` rows before it (null until
    the range holds that many); time windows average the rows in (ts - window, ts]. The rate is
    (value - previous value) / minutes between them, null for the range's first row. Only rows of
    [start, end) take part. Raw series read just the rows a page needs (the window's lead-in, the
    page, one more to know there is a next page) along the index; bucketed series are short.
    """
    cursor_ts = after or spec.start
    lower, upper = spec.start, spec.end
    params: list[Any]
    if spec.level is RAW:
        point = sql.Identifier(spec.schema, POINT_TABLE)
        lead_in = max((window_points or 1) - 1, 1)
        bounds = sql.SQL(
            "SELECT (SELECT min(ts) FROM (SELECT ts FROM {point} WHERE device_id = %s AND metric_id = %s AND ts >= %s AND ts < %s "
            "ORDER BY ts DESC LIMIT %s) AS before),"
            " (SELECT ts FROM {point} WHERE device_id = %s AND metric_id = %s AND ts >= %s AND ts < %s ORDER BY ts OFFSET %s LIMIT 1)"
        ).format(point=point)
        ids = [spec.device_id, spec.metric_id]
        before_first, page_last = _fetchone(bounds, [*ids, spec.start, cursor_ts, lead_in, *ids, cursor_ts, spec.end, page_size])
        lower = before_first or cursor_ts
        if window_seconds is not None:
            lower = max(spec.start, min(lower, cursor_ts - timedelta(seconds=window_seconds)))
        if page_last is not None:
            upper = page_last + timedelta(microseconds=1)
        inner = SeriesSpec(spec.schema, spec.device_id, spec.metric_id, lower, upper, RAW)
        series, params = series_sql(inner)
    else:
        series, params = series_sql(spec)
    if window_seconds is not None:
        # (ts - window, ts] at microsecond resolution
        frame = sql.SQL("RANGE BETWEEN {} PRECEDING AND CURRENT ROW").format(
            sql.Literal(timedelta(seconds=window_seconds) - timedelta(microseconds=1))
        )
        moving = sql.SQL("avg(value) OVER w")
    else:
        frame = sql.SQL("ROWS BETWEEN {} PRECEDING AND CURRENT ROW").format(sql.Literal(int(window_points or 1) - 1))
        moving = sql.SQL("CASE WHEN count(*) OVER w = {} THEN avg(value) OVER w END").format(sql.Literal(int(window_points or 1)))
    statement = sql.SQL(
        """SELECT (extract(epoch FROM ts) * 1000000)::bigint, value, moving, rate, total FROM (
            SELECT ts, value, {moving} AS moving, count(*) OVER () AS total,
                   (value - lag(value) OVER o) / (extract(epoch FROM ts - lag(ts) OVER o)::float8 / 60.0) AS rate
            FROM ({series}) AS b WINDOW o AS (ORDER BY ts), w AS (ORDER BY ts {frame})
        ) AS m WHERE ts >= %s ORDER BY ts LIMIT %s"""
    ).format(moving=moving, series=series, frame=frame)
    rows = _fetchall(statement, [*params, cursor_ts, page_size + 1])
    # epoch microseconds load far faster than timestamptz through Django's cursor
    result = [
        MovingRow(ts=_EPOCH + timedelta(microseconds=micros), value=value, moving_average=moving_value, rate_per_minute=rate)
        for micros, value, moving_value, rate, _total in rows
    ]
    # rows of the series: exact for bucketed series (computed over the whole range), not for raw pages
    total = int(rows[0][4]) if rows and spec.level is not RAW else None
    next_ts = None
    if len(result) > page_size:
        next_ts = result[page_size].ts
        result = result[:page_size]
    return result, next_ts, total


def bucket_grid(
    schema: str, device_id: int, metric_ids: list[int], start: datetime, end: datetime, width_s: int
) -> tuple[Level, dict[int, tuple[list[int], list[float]]]]:
    """Bucket averages of several metrics of one device over [start, end), one statement.

    metric_id -> (bucket starts in epoch seconds, means), in time order. Buckets are read from
    the coarsest level whose resolution divides `width_s` (ragged ends from finer levels, as in
    `telemetry.selectors.bucketed_series`); each metric comes back as two arrays, which is far
    cheaper to load than one row (and one datetime) per bucket.
    """
    level = level_for_bucket(width_s)
    width = f"{width_s} seconds"
    origin = sql.Literal(BUCKET_ORIGIN)
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for segment_level, segment_start, segment_end in plan_segments(start, end, level):
        if segment_level is RAW:
            parts.append(
                sql.SQL(
                    "SELECT metric_id, date_bin(%s::interval, ts, {origin}) AS ts, count(*)::float8 AS n, sum(value) AS s "
                    "FROM {table} WHERE device_id = %s AND metric_id = ANY(%s::int[]) AND ts >= %s AND ts < %s GROUP BY 1, 2"
                ).format(origin=origin, table=sql.Identifier(schema, POINT_TABLE))
            )
        else:
            parts.append(
                sql.SQL(
                    "SELECT metric_id, date_bin(%s::interval, bucket, {origin}) AS ts, sum(count)::float8 AS n, sum(sum) AS s "
                    "FROM {table} WHERE device_id = %s AND metric_id = ANY(%s::int[]) AND bucket >= %s AND bucket < %s GROUP BY 1, 2"
                ).format(origin=origin, table=sql.Identifier(schema, segment_level.table))
            )
        params.extend([width, device_id, list(metric_ids), segment_start, segment_end])
    result: dict[int, tuple[list[int], list[float]]] = {metric_id: ([], []) for metric_id in metric_ids}
    if not parts:
        return level, result
    union = (
        parts[0]
        if len(parts) == 1
        else sql.SQL("SELECT metric_id, ts, sum(n) AS n, sum(s) AS s FROM ({}) AS u GROUP BY 1, 2").format(
            sql.SQL(" UNION ALL ").join(parts)
        )
    )
    statement = sql.SQL(
        "SELECT metric_id, array_agg(extract(epoch FROM ts)::bigint ORDER BY ts), array_agg(s / n ORDER BY ts) "
        "FROM ({union}) AS b GROUP BY metric_id"
    ).format(union=union)
    for metric_id, stamps, means in _fetchall(statement, params):
        result[metric_id] = (stamps, means)
    return level, result


def count_rows(spec: SeriesSpec, *, limit: int) -> int:
    """Series rows in the range, counting no further than `limit` (cheap: LIMIT on the index)."""
    series, params = series_sql(spec)
    statement = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM ({series}) AS b LIMIT %s) AS c").format(series=series)
    return int(_fetchone(statement, [*params, limit])[0])


__all__ = [
    "LEVELS",
    "MovingRow",
    "PageCursor",
    "Regression",
    "SeriesSpec",
    "Summary",
    "choose_level",
    "count_rows",
    "moving_page",
    "regression",
    "series_sql",
    "series_values",
    "summary",
]
