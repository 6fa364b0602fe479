"""Analytics latency on a month of 1 Hz data: one device, 10 metrics, about 26 million points.

    .venv/bin/python bench/analytics_bench.py            # 30 days (~26M points), a few minutes
    .venv/bin/python bench/analytics_bench.py --quick    # 3 days (~2.6M points)

`run(quick)` returns (and `__main__` prints as the last line, JSON):
- analytics_30d_p95_ms: p95 of the slowest of the five endpoints (timeseries, trends, statistics,
  correlation of the 10 metrics, linear forecast) over the whole loaded range (30 days, or the
  quick run's days: `analytics_days`);
- analytics_1h_p95_ms: the same over one hour;
- analytics_points: points loaded; plus the per-endpoint p95s, Holt-Winters over the long range
  and a cached (hit) request, reported apart.
Requests go through Django's test client (routing, JWT, permission, rate-limit counter,
serialisation) with the result cache off, so every request computes. The ranges start 17 s past
a minute so the rollup queries also read their ragged ends from finer levels.

The work runs in a child process on a database of its own (iiot_bench_analytics, dropped before
and after) and Redis db 8, so it collides neither with bench/run.py nor with a configured Django.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "iiot_bench_analytics"
TENANT = "benchanalytics"
BENCH_ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "IIOT_ENV_FILE": "/nonexistent",
    "SECRET_KEY": "bench-analytics",
    "DEBUG": "0",
    "IIOT_STATIC_MANIFEST": "0",
    "REDIS_URL": "redis://127.0.0.1:6379/8",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/8",
    "CHANNEL_LAYER_URL": "redis://127.0.0.1:6379/8",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "iiot.settings",
}
# Ten metrics: the loader's five signals twice (names and units of their own).
METRICS = (
    ("temperature", "temperature", "°C"),
    ("humidity", "humidity", "%"),
    ("pressure", "pressure", "bar"),
    ("vibration", "vibration", "mm/s"),
    ("current", "current", "A"),
    ("temperature_out", "temperature", "°C"),
    ("humidity_out", "humidity", "%"),
    ("pressure_line", "pressure", "bar"),
    ("vibration_axial", "vibration", "mm/s"),
    ("current_aux", "current", "A"),
)
ENDPOINTS = ("timeseries", "trends", "statistics", "correlation", "forecast")


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))], 2)


def admin_execute(statement: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)


def run_in_child(script: Path, env: dict, db_name: str, quick: bool, what: str) -> dict:
    """Run `script --child` with `env` on a fresh database `db_name` (dropped after); the JSON
    object of its last output line."""
    command = [sys.executable, str(script.resolve()), "--child"] + (["--quick"] if quick else [])
    try:
        admin_execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        admin_execute(f"CREATE DATABASE {db_name}")
        completed = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
        if completed.returncode:
            raise RuntimeError(f"{what} exited with {completed.returncode}: {completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        admin_execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


def run(quick: bool) -> dict:
    """Run the bench in a child process (own database and settings); its figures as a dict."""
    return run_in_child(Path(__file__), BENCH_ENV, DB_NAME, quick, "analytics bench")


def _child(quick: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django_tenants.utils import schema_context

    from accounts.services import issue_tokens
    from devices.models import Device, DeviceProfile, ProfileMetric
    from telemetry.benchdata import load_bench_telemetry
    from telemetry.models import Metric
    from tenants.services import ensure_public_tenant, provision_tenant

    started = time.monotonic()
    days = 3 if quick else 30
    runs = 10 if quick else 20
    call_command("migrate_schemas", "--shared", verbosity=0)
    ensure_public_tenant("localhost")
    email = f"admin@{TENANT}.example.com"
    provision_tenant(
        actor=None, client=None, slug=TENANT, name="Analytics bench", domain=f"{TENANT}.localhost",
        admin_email=email, admin_password="Bench-Password-2026!",
    )  # fmt: skip
    setup_s = time.monotonic() - started
    with schema_context(TENANT):
        catalogue = [Metric.objects.create(name=name, unit=unit) for name, _signal, unit in METRICS]
        profile = DeviceProfile.objects.create(name="analytics bench")
        ProfileMetric.objects.bulk_create([ProfileMetric(profile=profile, metric=metric) for metric in catalogue])
        device = Device.objects.create(uid="analytics-00000", name="analytics bench device", profile=profile)
        from accounts.models import User

        token = issue_tokens(User.objects.get(email=email))["access"]
    last_day = (datetime.now(UTC) - timedelta(days=1)).date()
    first_day = last_day - timedelta(days=days - 1)
    series = [(device.pk, metric.pk, signal) for metric, (_name, signal, _unit) in zip(catalogue, METRICS, strict=True)]
    loaded = load_bench_telemetry(schema=TENANT, series=series, first_day=first_day, days=days, hz=1.0)
    with connection.cursor() as cursor:
        for table in ("telemetry_point", "telemetry_rollup_1m", "telemetry_rollup_1h_sealed"):
            cursor.execute(f'VACUUM ANALYZE "{TENANT}".{table}')
    load_s = loaded.seconds
    # A live system has the latest values in Redis (ingest writes them); the loader does not.
    from telemetry.storage import Point, latest_from_database, redis_client, store_latest

    newest = latest_from_database(TENANT, [device.pk]).get(device.pk, {})
    store_latest(redis_client(), TENANT, [Point(device.pk, metric_id, ts, value) for metric_id, (ts, value) in newest.items()])

    settings.ANALYTICS_CACHE_TTL = 0
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "analytics": "1000000/m"}
    client = Client(HTTP_HOST=f"{TENANT}.localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
    origin = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC) + timedelta(seconds=17)
    ranges = {
        "30d": (origin, origin + timedelta(days=days) - timedelta(seconds=34)),
        "1h": (origin + timedelta(days=days - 1, hours=12), origin + timedelta(days=days - 1, hours=13)),
    }
    device_id = device.pk

    def url(endpoint: str, start: datetime, end: datetime, extra: str = "") -> str:
        path = f"correlation/{device_id}" if endpoint == "correlation" else f"{endpoint}/{device_id}/temperature"
        query = f"start={start.isoformat().replace('+00:00', 'Z')}&end={end.isoformat().replace('+00:00', 'Z')}{extra}"
        return f"/api/v1/analytics/{path}?{query}"

    def timed(target: str, count: int) -> tuple[list[float], dict]:
        samples, body = [], {}
        for index in range(count + 1):
            began = time.perf_counter()
            response = client.get(target)
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{target}: {response.status_code} {response.content[:500]!r}")
            if index:  # the first request warms connections and caches
                samples.append(elapsed)
            else:
                body = response.json()
        return samples, body

    figures: dict = {}
    sources: dict = {}
    for label, (start, end) in ranges.items():
        for endpoint in ENDPOINTS:
            samples, body = timed(url(endpoint, start, end), runs)
            figures[f"analytics_{label}_{endpoint}_p95_ms"] = p95(samples)
            sources[f"{label}_{endpoint}"] = f"{body.get('source')}/{body.get('resolution')}"
        figures[f"analytics_{label}_p95_ms"] = max(figures[f"analytics_{label}_{endpoint}_p95_ms"] for endpoint in ENDPOINTS)
    start, end = ranges["30d"]
    if days >= 2:
        samples, _body = timed(url("forecast", start, end, "&method=holt_winters"), max(5, runs // 2))
        figures["analytics_30d_holt_winters_p95_ms"] = p95(samples)
    settings.ANALYTICS_CACHE_TTL = 30
    samples, _body = timed(url("statistics", start, end), runs)
    figures["analytics_cached_p95_ms"] = p95(samples)
    return {
        "analytics_30d_p95_ms": figures.pop("analytics_30d_p95_ms"),
        "analytics_1h_p95_ms": figures.pop("analytics_1h_p95_ms"),
        "analytics_points": loaded.points,
        "analytics_days": days,
        "analytics_metrics": len(METRICS),
        **figures,
        "analytics_sources": sources,
        "analytics_load_s": round(load_s, 1),
        "analytics_setup_s": round(setup_s, 1),
        "analytics_total_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 days instead of 30")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = _child(args.quick)
    else:
        result = run(args.quick)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
