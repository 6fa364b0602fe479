"""Server time of the operator pages and the admin with 1,000 devices (issue: live operations).

    .venv/bin/python bench/pages_bench.py            # 30 requests per page
    .venv/bin/python bench/pages_bench.py --quick    # 10 requests per page

A tenant with 1,000 devices of one profile (4 metrics, latest values in Redis as ingest keeps
them, a day of 1-minute rollups for the device shown), 50 rules and 300 open alerts. Each page is
requested through Django's test client (URL routing, tenant middleware, session auth, templates,
every query) after one warm-up request; the time is the server's, without a network or browser.

`run(quick)` returns (and `__main__` prints as the last line, JSON) `page_<name>_p95_ms` per page
and `pages_slowest_p95_ms`. The work runs in a child process on a database of its own
(iiot_bench_pages, dropped before and after) and Redis db 9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.analytics_bench import p95, run_in_child  # noqa: E402 - the same child-process scheme

DB_NAME = "iiot_bench_pages"
TENANT = "benchpages"
DEVICES = 1000
BENCH_ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "IIOT_ENV_FILE": "/nonexistent",
    "SECRET_KEY": "bench-pages",
    "DEBUG": "0",
    "IIOT_STATIC_MANIFEST": "0",
    "REDIS_URL": "redis://127.0.0.1:6379/9",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/9",
    "CHANNEL_LAYER_URL": "redis://127.0.0.1:6379/9",
    "LIVE_REDIS_URL": "redis://127.0.0.1:6379/9",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "iiot.settings",
}
METRICS = ("temperature", "humidity", "pressure", "vibration")


def run(quick: bool) -> dict:
    """Run the bench in a child process (own database and settings); its figures as a dict."""
    return run_in_child(Path(__file__), BENCH_ENV, DB_NAME, quick, "pages bench")


def _child(quick: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from django.core.management import call_command
    from django.test import Client
    from django_tenants.utils import schema_context

    from accounts.models import User
    from alerting.services import raise_alert
    from devices.models import Device, DeviceProfile, DeviceStatus, ProfileMetric
    from rules import services as rule_services
    from rules.models import Rule
    from telemetry.models import Metric
    from telemetry.storage import Point, TelemetryWriter, redis_client, store_latest
    from tenants.services import ensure_public_tenant, provision_tenant

    runs = 10 if quick else 30
    started = time.monotonic()
    call_command("migrate_schemas", "--shared", verbosity=0)
    ensure_public_tenant("localhost")
    email = f"admin@{TENANT}.example.com"
    provision_tenant(
        actor=None, client=None, slug=TENANT, name="Pages bench", domain=f"{TENANT}.localhost",
        admin_email=email, admin_password="Bench-Password-2026!",
    )  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0)
    with schema_context(TENANT):
        metrics = [Metric.objects.create(name=name, unit="") for name in METRICS]
        profile = DeviceProfile.objects.create(name="pages bench")
        ProfileMetric.objects.bulk_create([ProfileMetric(profile=profile, metric=metric) for metric in metrics])
        Device.objects.bulk_create(
            Device(uid=f"pg-{n:04d}", name=f"Press {n}", profile=profile, labels={"line": str(n % 10)},
                   location=f"Hall {n % 4}", status=DeviceStatus.ONLINE if n % 9 else DeviceStatus.OFFLINE)
            for n in range(DEVICES)
        )  # fmt: skip
        devices = list(Device.objects.order_by("uid"))
        shown = devices[500]
        store_latest(
            redis_client(), TENANT,
            [Point(device.pk, metric.pk, now, float(n)) for n, device in enumerate(devices) for metric in metrics],
        )  # fmt: skip
        for n in range(50):
            rule_services.create_rule(
                actor=None, client=None, name=f"Rule {n}", type="threshold", severity="major", target_kind="profile",
                target_profile=profile, condition={"metric": METRICS[n % 4], "op": "gt", "value": 100 + n},
            )  # fmt: skip
        rule = Rule.objects.order_by("pk").first()
        for device in devices[:300]:
            raise_alert(
                rule_id=rule.pk, rule_name=rule.name, device_id=device.pk, severity="major",
                message=f"{device.uid} temperature above 100", value=101.0, observed_at=now,
            )  # fmt: skip
        user = User.objects.get(email=email)
    # A day of points (one a minute) for the device shown: its charts read them.
    with TelemetryWriter() as writer:
        writer.write(
            TENANT,
            [Point(shown.pk, metric.pk, now - timedelta(minutes=m), 20.0 + m % 7) for m in range(1440) for metric in metrics],
        )
    setup_s = time.monotonic() - started

    client = Client(HTTP_HOST=f"{TENANT}.localhost")
    with schema_context(TENANT):
        client.force_login(user)
        rule_id = rule.pk
    pages = {
        "fleet": "/devices/",
        "fleet_filtered": "/devices/?label=line:3&status=online",
        "device": f"/devices/{shown.pk}/",
        "alerts": "/alerts/",
        "rules": "/rules/",
        "rule_edit": f"/rules/{rule_id}/",
        "admin_devices": "/admin/devices/device/",
    }
    figures: dict = {}
    for name, url in pages.items():
        response = client.get(url)  # warm-up
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
        samples = []
        for _ in range(runs):
            began = time.perf_counter()
            response = client.get(url)
            if hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)
            samples.append((time.perf_counter() - began) * 1000)
        figures[f"page_{name}_p95_ms"] = p95(samples)
    figures["pages_slowest_p95_ms"] = max(figures.values())
    figures["pages_devices"] = DEVICES
    figures["pages_setup_s"] = round(setup_s, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 requests per page instead of 30")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(json.dumps(_child(args.quick) if args.child else run(args.quick)))


if __name__ == "__main__":
    main()
