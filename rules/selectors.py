"""Read queries for rules: the API, the evaluators and the backtest share them (current schema)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from rules.models import Rule, TargetKind


def rules() -> QuerySet[Rule]:
    return Rule.objects.select_related("target_device", "target_profile")


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: int
    uid: str
    profile_id: int
    labels: dict
    enabled: bool


def device_rows() -> list[DeviceRow]:
    """Every device of the tenant, in one query (targets are resolved in memory from these)."""
    from devices.models import Device

    return [DeviceRow(*row) for row in Device.objects.order_by().values_list("id", "uid", "profile_id", "labels", "enabled")]


def resolve_targets(rule: Rule, devices: list[DeviceRow]) -> list[DeviceRow]:
    """The enabled devices a rule applies to."""
    if rule.target_kind == TargetKind.DEVICE:
        return [d for d in devices if d.id == rule.target_device_id and d.enabled]
    if rule.target_kind == TargetKind.PROFILE:
        return [d for d in devices if d.profile_id == rule.target_profile_id and d.enabled]
    wanted = rule.target_labels or {}
    return [d for d in devices if d.enabled and wanted and all((d.labels or {}).get(k) == v for k, v in wanted.items())]


def metric_ids() -> dict[str, int]:
    from telemetry.models import Metric

    return dict(Metric.objects.values_list("name", "id"))


def tenant_timezone(schema: str) -> str:
    from django_tenants.utils import get_public_schema_name, schema_context

    from tenants.models import Tenant

    with schema_context(get_public_schema_name()):
        zone = Tenant.objects.filter(schema_name=schema).values_list("timezone", flat=True).first()
    return zone or "UTC"
