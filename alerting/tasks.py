"""Thin Celery wrappers around the alerting services: notification deliveries."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from alerting import services
from iiot.celery import app


def retry_countdown(retries: int) -> float:
    """Exponential backoff: base, 2 x base, 4 x base, ... seconds (capped at 5 minutes)."""
    return min(settings.NOTIFICATION_RETRY_BACKOFF_S * (2**retries), 300.0)


@app.task(name="alerting.deliver_notification", bind=True, acks_late=True, max_retries=None)
def deliver_notification(self, delivery_pk: int) -> dict | None:
    """One attempt at a delivery (runs in the schema that enqueued it). Quiet when the delivery is
    gone or already final; retried with backoff while settings.NOTIFICATION_MAX_RETRIES allow."""
    retries = self.request.retries or 0
    try:
        outcome = services.attempt_delivery(delivery_pk=delivery_pk, last_attempt=retries >= settings.NOTIFICATION_MAX_RETRIES)
    except services.RetryDelivery as exc:
        raise self.retry(countdown=retry_countdown(retries), exc=exc) from exc
    return None if outcome is None else {"status": outcome.status, "attempts": outcome.attempts, "error": outcome.error}


def _active_tenant_schemas() -> list[str]:
    from tenants.models import Tenant

    with schema_context(get_public_schema_name()):
        return list(Tenant.objects.customers().active().values_list("schema_name", flat=True))


@app.task(name="alerting.requeue_stale_deliveries")
def requeue_stale_deliveries() -> dict[str, int]:
    """Beat: deliveries whose task was lost are enqueued again, in every active tenant."""
    now = timezone.now()
    return {schema: services.requeue_stale_deliveries(schema=schema, now=now) for schema in _active_tenant_schemas()}
