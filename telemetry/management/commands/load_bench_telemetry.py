"""Fill a tenant with generated telemetry for benchmarks and analytics (not for production data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from telemetry.benchdata import SIGNALS, UNITS, load_bench_telemetry


class Command(BaseCommand):
    help = (
        "Create N bench devices with M metrics in a tenant and write D days at F Hz ending yesterday "
        "(binary COPY into the partitions, rollups filled). The range must hold no points of these devices yet."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug (= schema)")
        parser.add_argument("--devices", type=int, default=1)
        parser.add_argument("--metrics", type=int, default=1, help=f"1..{len(SIGNALS)}: {', '.join(SIGNALS)}")
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--hz", type=float, default=1.0)
        parser.add_argument("--end", help="Last day loaded (YYYY-MM-DD, default yesterday UTC)")
        parser.add_argument("--prefix", default="bench", help="Device uid prefix")
        parser.add_argument("--seed", type=int, default=0)

    def handle(
        self,
        *args,
        tenant: str,
        devices: int,
        metrics: int,
        days: int,
        hz: float,
        end: str | None,
        prefix: str,
        seed: int,
        **options,
    ) -> None:
        from devices.models import Device, DeviceProfile, ProfileMetric
        from telemetry.models import Metric
        from tenants.models import Tenant

        if not 1 <= metrics <= len(SIGNALS):
            raise CommandError(f"--metrics must be within 1..{len(SIGNALS)}")
        if devices < 1 or days < 1 or not 0 < hz <= 100:
            raise CommandError("--devices and --days must be positive, --hz within (0, 100]")
        schema = Tenant.objects.filter(slug=tenant).values_list("schema_name", flat=True).first()
        if schema is None:
            raise CommandError(f"no tenant {tenant!r}")
        last_day = datetime.strptime(end, "%Y-%m-%d").date() if end else (datetime.now(UTC) - timedelta(days=1)).date()
        first_day = last_day - timedelta(days=days - 1)
        names = list(SIGNALS)[:metrics]
        with schema_context(schema):
            catalogue = [Metric.objects.get_or_create(name=name, defaults={"unit": UNITS[name]})[0] for name in names]
            profile, _ = DeviceProfile.objects.get_or_create(name=f"{prefix} profile")
            for metric in catalogue:
                ProfileMetric.objects.get_or_create(profile=profile, metric=metric)
            uids = [f"{prefix}-{index:05d}" for index in range(devices)]
            existing = set(Device.objects.filter(uid__in=uids).values_list("uid", flat=True))
            Device.objects.bulk_create(
                [Device(uid=uid, name=uid, profile=profile) for uid in uids if uid not in existing], batch_size=1000
            )
            device_ids = list(Device.objects.filter(uid__in=uids).order_by("uid").values_list("id", flat=True))
        series = [(device_id, metric.pk, metric.name) for device_id in device_ids for metric in catalogue]
        self.stdout.write(f"{schema}: {len(series)} series x {days} days at {hz} Hz from {first_day}")
        result = load_bench_telemetry(
            schema=schema, series=series, first_day=first_day, days=days, hz=hz, seed=seed, progress=self.stdout.write
        )
        self.stdout.write(f"{result.points} points in {result.seconds:.1f} s ({result.points / result.seconds:,.0f} points/s)")
