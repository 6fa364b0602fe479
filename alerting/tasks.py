"""Thin Celery wrappers around the alerting services: notification deliveries."""

from __future__ import annotations

from django.conf import settings

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
