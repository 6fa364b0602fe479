"""Celery tasks of the telemetry app (thin: the work is in telemetry.services)."""

from __future__ import annotations

from celery import shared_task

from telemetry import services


@shared_task(name="telemetry.ensure_partitions_ahead", acks_late=True, ignore_result=True)
def ensure_partitions_ahead(ahead_days: int | None = None) -> dict[str, int]:
    """Beat, hourly: partitions up to TELEMETRY_PARTITIONS_AHEAD_DAYS ahead for every active tenant.

    Idempotent (existing partitions are kept), so a retried or doubled run is harmless.
    """
    return {result.schema: result.created for result in services.partitions_ahead_for_tenants(ahead_days=ahead_days)}


@shared_task(name="telemetry.seal_rollups", acks_late=True, ignore_result=True)
def seal_rollups() -> dict[str, int]:
    """Beat, every few minutes: fold each tenant's closed hours into the sealed hourly rollups.

    Safe to run twice at once or to retry: the hours and the watermark move under a lock."""
    return {result.schema: result.hours for result in services.seal_rollups_for_tenants()}
