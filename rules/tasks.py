"""Celery tasks of the rules app (thin: the work is in rules.services)."""

from __future__ import annotations

import logging
import time

from django_tenants.utils import get_public_schema_name, schema_context

from iiot.celery import app
from rules import metrics, services

logger = logging.getLogger(__name__)


def _tenants_with_windowed_rules() -> list[str]:
    from tenants.models import Tenant

    with schema_context(get_public_schema_name()):
        return list(Tenant.objects.customers().active().values_list("schema_name", flat=True))


LAST_RUN_KEY = "rules:windowed:last_run"


def _due_since(now: float) -> float | None:
    """When this run was due: the previous run's start plus the interval (shared through Redis,
    whichever worker ran it); None on the first run or without Redis."""
    from django.conf import settings

    from telemetry.storage import redis_client

    try:
        previous = redis_client().getset(LAST_RUN_KEY, repr(now))
    except Exception:  # noqa: BLE001 - the lag metric is best effort
        return None
    return float(previous) + settings.RULES_WINDOW_INTERVAL_S if previous else None


@app.task(name="rules.evaluate_windowed", ignore_result=True, acks_late=False)
def evaluate_windowed(scheduled_at: float | None = None) -> dict[str, int]:
    """Beat, every RULES_WINDOW_INTERVAL_S: windowed rules of every active tenant (one SQL
    statement per tenant). Not acks_late: a lost run is replaced by the next tick."""
    started = time.time()
    if scheduled_at is None:
        scheduled_at = _due_since(started)
    if scheduled_at is not None:
        metrics.WINDOW_LAG.set(max(0.0, started - scheduled_at))
    fired: dict[str, int] = {}
    for schema in _tenants_with_windowed_rules():
        try:
            run = services.evaluate_windowed_rules(schema=schema)
        except Exception:
            logger.exception("windowed rules not evaluated", extra={"schema": schema})
            continue
        if run.rules:
            fired[schema] = run.fired
    return fired
