"""Create telemetry partitions ahead of time (what Celery beat does hourly), for ops."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from telemetry import services


class Command(BaseCommand):
    help = "Create missing telemetry partitions from yesterday to N days ahead for every active tenant."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--ahead",
            type=int,
            default=settings.TELEMETRY_PARTITIONS_AHEAD_DAYS,
            help="Days ahead of today (default TELEMETRY_PARTITIONS_AHEAD_DAYS).",
        )

    def handle(self, *args, ahead: int, **options) -> None:
        if ahead < 0 or ahead > 366:
            raise CommandError("--ahead must be within 0..366")
        results = services.partitions_ahead_for_tenants(ahead_days=ahead)
        for result in results:
            status = f"error: {result.error}" if result.error else f"{result.created} point partition(s) created"
            self.stdout.write(f"{result.schema}: {status}")
        if any(result.error for result in results):
            raise CommandError("some tenants failed")
