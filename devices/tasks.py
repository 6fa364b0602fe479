"""Thin Celery wrappers around the device services."""

from __future__ import annotations

import logging

from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from devices import broker, services
from iiot.celery import app

logger = logging.getLogger(__name__)


def _active_tenant_schemas() -> list[str]:
    from tenants.models import Tenant

    with schema_context(get_public_schema_name()):
        return list(Tenant.objects.customers().active().values_list("schema_name", flat=True))


@app.task(
    name="devices.publish_command",
    acks_late=True,
    autoretry_for=(broker.BrokerUnavailable,),
    retry_backoff=1,
    retry_backoff_max=10,
    max_retries=5,
)
def publish_command(command_pk: int) -> str:
    """Publish a command (runs in the schema that enqueued it); quiet when it is gone or terminal."""
    return services.deliver_command(command_pk=command_pk)


@app.task(
    name="devices.publish_shared_attributes",
    acks_late=True,
    autoretry_for=(broker.BrokerUnavailable,),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=8,
)
def publish_shared_attributes(device_pk: int) -> str:
    """Push a device's shared attributes to it (retained MQTT message); quiet when it is gone."""
    return services.deliver_shared_attributes(device_pk=device_pk)


@app.task(name="devices.expire_commands")
def expire_commands() -> dict[str, int]:
    """Beat: time out commands the devices never answered, in every active tenant."""
    now = timezone.now()
    return {schema: services.expire_commands(schema=schema, now=now) for schema in _active_tenant_schemas()}


@app.task(name="devices.mark_stale_devices_offline")
def mark_stale_devices_offline() -> dict[str, int]:
    """Beat: devices silent longer than their profile's offline_after_s go offline."""
    now = timezone.now()
    return {schema: len(services.mark_stale_devices_offline(schema=schema, now=now)) for schema in _active_tenant_schemas()}


@app.task(name="devices.reconcile_broker", autoretry_for=(broker.BrokerUnavailable,), retry_backoff=5, max_retries=3)
def reconcile_broker() -> dict[str, list[str]]:
    """Beat: broker clients follow the registry (disabled without an active credential, an
    enabled device and an active tenant; removed with their device)."""
    result = services.reconcile_broker()
    if result.missing:
        logger.warning("devices with an active credential unknown to the broker: rotate their credentials", extra={"devices": result.missing[:50]})
    return {"disabled": result.disabled, "enabled": result.enabled, "removed": result.removed, "missing": result.missing}
