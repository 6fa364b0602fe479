"""Alert and notification metrics, observed from the alerting models' saves (no code in alerting/).

    Alert created                        -> iiot_alerts_raised_total{tenant, severity}
    AlertEvent acknowledged/resolved/... -> iiot_alert_transitions_total{tenant, to_state}
    NotificationDelivery status saved    -> iiot_notification_deliveries_total{tenant, channel, outcome}
                                            (+ iiot_notification_retries_total when it will retry)

Counted after the transaction commits (a rolled-back alert was never raised). The tenant is the
schema the service ran in. Bulk writes (`update()`, `bulk_create`) send no signal and are not
counted: the alerting services save rows one by one.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection, transaction
from django.db.models.signals import post_save

from iiot import metrics

logger = logging.getLogger(__name__)

TRANSITION_EVENTS = {"acknowledged": "acknowledged", "resolved": "resolved", "auto_resolved": "resolved", "escalated": "escalated"}
DELIVERY_OUTCOMES = {"succeeded": "sent", "failed": "failed", "retrying": "retried"}

_connected = False


def _tenant() -> str:
    return getattr(connection, "schema_name", None) or "public"


def on_alert_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created:
        return
    tenant, severity = _tenant(), str(instance.severity)
    transaction.on_commit(lambda: metrics.ALERTS_RAISED.labels(tenant=tenant, severity=severity).inc())


def on_alert_event_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    state = TRANSITION_EVENTS.get(str(getattr(instance, "kind", "")))
    if not created or state is None:
        return
    tenant = _tenant()
    transaction.on_commit(lambda: metrics.ALERT_TRANSITIONS.labels(tenant=tenant, to_state=state).inc())


def on_delivery_saved(sender: Any, instance: Any, created: bool = False, update_fields: Any = None, **kwargs: Any) -> None:
    if created or (update_fields is not None and "status" not in update_fields):
        return
    outcome = DELIVERY_OUTCOMES.get(str(instance.status))
    if outcome is None:
        return
    channel = instance._state.fields_cache.get("channel")  # loaded by the service; never a query here
    kind = str(getattr(channel, "kind", "") or "unknown")
    tenant = _tenant()
    transaction.on_commit(lambda: metrics.record_notification(tenant=tenant, channel=kind, outcome=outcome))


def connect() -> None:
    global _connected
    from django.apps import apps

    if _connected or not apps.is_installed("alerting"):
        return
    receivers = (("Alert", on_alert_saved), ("AlertEvent", on_alert_event_saved), ("NotificationDelivery", on_delivery_saved))
    for model_name, receiver in receivers:
        try:
            model = apps.get_model("alerting", model_name)
        except LookupError:
            logger.warning("alerting model missing: its metrics are not recorded", extra={"model": model_name})
            continue
        post_save.connect(receiver, sender=model, weak=False, dispatch_uid=f"iiot.observability.{model_name}")
    _connected = True
