"""Telemetry storage figures on a bench tenant; prints one JSON object (last line).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/iiot_bench_storage \
        .venv/bin/python scripts/bench_storage.py [--tenant benchstore] [--days 30] [--devices 1000]

Use a database of its own (`createdb`, `manage.py migrate_schemas --shared`): the script provisions
the tenant if missing, loads 30 days of 1 Hz data for one metric with the bench loader (binary
COPY into partitions, rollups filled), writes one minute of 1,000 devices x 4 metrics through
TelemetryWriter (into a day of its own), then measures:
- bytes_per_point: pg_total_relation_size (heap + indexes + TOAST/FSM/VM) of the point
  partitions over their row count, after VACUUM ANALYZE (loaded days; the writer's day separately);
- query_30d_ms: p50 of `selectors.query_series` over 30 days into at most 1,000 points;
- latest_1000_ms: p50 of `storage.read_latest` for 1,000 devices (one pipelined Redis round trip);
- writer_points_per_s: TelemetryWriter.write throughput with batches of 20,000 points (4,000 series).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iiot.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", default="benchstore")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--devices", type=int, default=1000, help="devices written by the writer and read for latest")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django_tenants.utils import schema_context

    from devices.models import Device
    from telemetry import selectors
    from telemetry.models import Metric
    from telemetry.storage import Point, TelemetryWriter, latest_key, read_latest, redis_client
    from tenants.models import Tenant
    from tenants.services import ensure_public_tenant, provision_tenant

    ensure_public_tenant("localhost")
    if not Tenant.objects.filter(slug=args.tenant).exists():
        provision_tenant(
            actor=None, client=None, slug=args.tenant, name="Storage bench", domain=f"{args.tenant}.localhost",
            admin_email=f"admin@{args.tenant}.example.com", admin_password="Bench-Password-2026!",
        )  # fmt: skip
    schema = args.tenant
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=args.days)

    # 1. 30 days x 1 Hz x 1 metric through the bench loader (once).
    with schema_context(schema):
        loaded = Device.objects.filter(uid="bstore-00000").values_list("id", flat=True).first()
    if loaded is None:
        call_command("load_bench_telemetry", tenant=schema, devices=1, metrics=1, days=args.days, hz=1.0, prefix="bstore",
                     end=str(today - timedelta(days=1)), stdout=open(os.devnull, "w"))  # fmt: skip
    with schema_context(schema):
        device_id = Device.objects.get(uid="bstore-00000").pk
        metric_id = Metric.objects.get(name="temperature").pk

    # 2. Writer throughput: 1,000 devices x 4 metrics x 60 s, 20,000 points a batch, into a day of its
    # own (2099-01-01) whose partitions are dropped and re-created first, so every run starts alike.
    base = datetime(2099, 1, 1, 12, tzinfo=UTC)
    device_ids = [2_000_000 + index for index in range(args.devices)]
    with connection.cursor() as cursor:
        for table in ("telemetry_point_p20990101", "telemetry_rollup_1m_p20990101", "telemetry_rollup_1h_p209901"):
            cursor.execute(f'DROP TABLE IF EXISTS "{schema}".{table}')
    writes, points_written = 0.0, 0
    with TelemetryWriter() as writer:
        writer.ensure_partitions(schema, [base.date()])
        for second in range(0, 60, 5):
            batch = [
                Point(device, metric, base + timedelta(seconds=second + offset), 20.0 + (device % 17) + offset * 0.1)
                for offset in range(5) for device in device_ids for metric in (1, 2, 3, 4)
            ]  # fmt: skip
            started = time.perf_counter()
            result = writer.write(schema, batch)
            writes += time.perf_counter() - started
            points_written += result.inserted

    # 3. Bytes per point after VACUUM ANALYZE.
    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM ANALYZE "{schema}".telemetry_point')
        cursor.execute(f'VACUUM ANALYZE "{schema}".telemetry_rollup_1m')
        cursor.execute(f'VACUUM ANALYZE "{schema}".telemetry_rollup_1h_sealed')

        def size_per_row(days: list) -> tuple[int, int]:
            size = rows = 0
            for day in days:
                name = f'"{schema}".telemetry_point_p{day:%Y%m%d}'
                cursor.execute(f"SELECT to_regclass('{name}') IS NOT NULL")
                if not cursor.fetchone()[0]:
                    continue
                cursor.execute(f"SELECT pg_total_relation_size('{name}'), (SELECT count(*) FROM {name})")
                part_size, part_rows = cursor.fetchone()
                size, rows = size + part_size, rows + part_rows
            return size, rows

        loaded_size, loaded_rows = size_per_row([first_day + timedelta(days=i) for i in range(args.days)])
        writer_size, writer_rows = size_per_row([base.date()])

    # 4. 30 days of 1 Hz into at most 1,000 points, through the selector (not HTTP).
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC) + timedelta(seconds=17)
    end = start + timedelta(days=args.days)
    timings, result = [], None
    for run in range(args.runs + 1):
        started = time.perf_counter()
        result = selectors.query_series(
            schema=schema, device_id=device_id, metric_ids=[metric_id], start=start, end=end, max_points=1000
        )
        if run:  # the first run warms caches and the connection
            timings.append((time.perf_counter() - started) * 1000)
    assert result is not None and 0 < len(result.points[metric_id]) <= 1000

    # 5. Latest values of 1,000 devices.
    latest_timings = []
    for run in range(args.runs + 1):
        started = time.perf_counter()
        latest = read_latest(schema, device_ids)
        if run:
            latest_timings.append((time.perf_counter() - started) * 1000)
    assert len(latest) == len(device_ids)
    redis_client().delete(*[latest_key(schema, device) for device in device_ids])

    figures = {
        "bytes_per_point": round(loaded_size / loaded_rows, 1) if loaded_rows else None,
        "bytes_per_point_writer": round(writer_size / writer_rows, 1) if writer_rows else None,
        "query_30d_ms": p50(timings),
        "query_30d_source": result.source,
        "query_30d_points": len(result.points[metric_id]),
        "latest_1000_ms": p50(latest_timings),
        "writer_points_per_s": round(points_written / writes) if writes else None,
        "points_loaded": loaded_rows,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
