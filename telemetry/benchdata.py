"""Bench and demo data: realistic series written straight into the daily partitions.

`load_bench_telemetry()` generates, per device and metric, a daily cycle plus slow drift, noise
and the occasional fault spike (numpy, seeded), encodes each day as PostgreSQL binary COPY rows in
(device, metric, ts) order and COPYs it into that day's point partition (no staging, no
ON CONFLICT: meant for empty ranges), then fills the rollups of the day with one INSERT ... SELECT
each (1-minute from the points, 1-hour from the 1-minute rows). 26 million points take minutes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql

from telemetry.storage import (
    POINT_TABLE,
    ROLLUP_1H_SEALED_TABLE,
    ROLLUP_1M_TABLE,
    ROLLUP_COLUMNS,
    ROLLUP_MERGE,
    database_conninfo,
    ensure_partitions_sql,
    rollup_from_points_sql,
    rollup_from_rollup_sql,
    rollup_lock_sql,
    sealed_through_sql,
)

logger = logging.getLogger(__name__)

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# One binary COPY tuple: field count, then (length, value) for int4, int4, timestamptz, float8.
_ROW = np.dtype(
    [("fields", ">i2"), ("l1", ">i4"), ("device", ">i4"), ("l2", ">i4"), ("metric", ">i4"),
     ("l3", ">i4"), ("ts", ">i8"), ("l4", ">i4"), ("value", ">f8")]
)  # fmt: skip

# Plant-like signals: (base, daily amplitude, noise, decimals)
SIGNALS: dict[str, tuple[float, float, float, int]] = {
    "temperature": (21.0, 4.0, 0.15, 2),
    "humidity": (45.0, 8.0, 0.6, 1),
    "pressure": (4.2, 0.3, 0.02, 3),
    "vibration": (2.5, 0.8, 0.3, 3),
    "current": (12.0, 3.0, 0.25, 2),
}
UNITS = {"temperature": "°C", "humidity": "%", "pressure": "bar", "vibration": "mm/s", "current": "A"}


@dataclass(frozen=True)
class LoadResult:
    points: int
    days: int
    seconds: float


def encode_rows(device_id: int, metric_id: int, ts_us: np.ndarray, values: np.ndarray) -> bytes:
    """Binary COPY tuples (no header) of one series; `ts_us` are microseconds since 2000-01-01 UTC."""
    rows = np.empty(len(ts_us), dtype=_ROW)
    rows["fields"], rows["l1"], rows["l2"], rows["l3"], rows["l4"] = 4, 4, 4, 8, 8
    rows["device"], rows["metric"], rows["ts"], rows["value"] = device_id, metric_id, ts_us, values
    return rows.tobytes()


def series_values(rng: np.random.Generator, signal: str, seconds_of_day: np.ndarray, day_index: int, phase: float) -> np.ndarray:
    base, amplitude, noise, decimals = SIGNALS.get(signal, SIGNALS["temperature"])
    values = base + amplitude * np.sin(2 * np.pi * (seconds_of_day / 86_400.0) + phase)
    values += 0.02 * amplitude * day_index  # slow drift
    values += rng.normal(0.0, noise, len(values))
    faults = rng.random(len(values)) < 2e-5
    values[faults] += amplitude * rng.uniform(3, 6, int(faults.sum()))
    return np.round(values, decimals)


def load_bench_telemetry(
    *,
    schema: str,
    series: Sequence[tuple[int, int, str]],
    first_day: date,
    days: int,
    hz: float,
    seed: int = 0,
    dsn: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Write `days` days from `first_day` of every (device_id, metric_id, signal) series at `hz`."""
    started = datetime.now(UTC)
    step_us = round(1_000_000 / hz)
    per_day = int(86_400_000_000 // step_us)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, len(series))
    total = 0
    with psycopg.connect(dsn or database_conninfo(), autocommit=False, options="-c timezone=UTC") as conn:
        for day_index in range(days):
            day = first_day + timedelta(days=day_index)
            conn.execute(ensure_partitions_sql(schema), (schema, day, day))
            conn.commit()
            partition = sql.Identifier(schema, f"{POINT_TABLE}_p{day:%Y%m%d}")
            day_start_us = int((datetime(day.year, day.month, day.day, tzinfo=UTC) - _PG_EPOCH).total_seconds()) * 1_000_000
            offsets = np.arange(per_day, dtype=np.int64) * step_us
            seconds_of_day = offsets / 1e6
            with conn.cursor() as cursor:
                with cursor.copy(
                    sql.SQL("COPY {} (device_id, metric_id, ts, value) FROM STDIN (FORMAT binary)").format(partition)
                ) as copy:
                    copy.write(_COPY_HEADER)
                    for index, (device_id, metric_id, signal) in enumerate(series):
                        values = series_values(rng, signal, seconds_of_day, day_index, phases[index])
                        copy.write(encode_rows(device_id, metric_id, day_start_us + offsets, values))
                    copy.write(_COPY_TRAILER)
                fill_rollups(cursor, schema, day)
            conn.commit()
            total += per_day * len(series)
            if progress:
                progress(f"{day}: {per_day * len(series)} points")
    return LoadResult(points=total, days=days, seconds=(datetime.now(UTC) - started).total_seconds())


def fill_rollups(cursor: psycopg.Cursor, schema: str, day: date) -> None:
    """The day's 1-minute rollups from its point partition, then its sealed hours from those minutes
    (hours from the watermark on are left to the `telemetry_rollup_1h` view, as the writer does)."""
    cursor.execute(rollup_lock_sql(shared=True), (schema,))
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    points = sql.Identifier(schema, f"{POINT_TABLE}_p{day:%Y%m%d}")
    minutes = sql.SQL("(SELECT * FROM {} WHERE bucket >= {} AND bucket < {}) AS m").format(
        sql.Identifier(schema, ROLLUP_1M_TABLE), sql.Literal(start), sql.Literal(end)
    )
    for table, rows in (
        (ROLLUP_1M_TABLE, rollup_from_points_sql(points, "1 minute")),
        (ROLLUP_1H_SEALED_TABLE, rollup_from_rollup_sql(minutes, "1 hour", sql.SQL("bucket < {}").format(sealed_through_sql(schema)))),
    ):
        cursor.execute(
            sql.SQL("INSERT INTO {} AS r ({}) {} {}").format(sql.Identifier(schema, table), ROLLUP_COLUMNS, rows, ROLLUP_MERGE)
        )
