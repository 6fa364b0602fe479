"""Read queries the API, the admin, tasks and the ingest service share (one tenant schema each)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery

from devices.models import (
    AttributeScope,
    CredentialStatus,
    Device,
    DeviceAttribute,
    DeviceCommand,
    DeviceCredential,
    DeviceProfile,
    ProfileMetric,
)


def profiles() -> QuerySet[DeviceProfile]:
    """Profiles with their metrics (and catalogue entries) and device counts: two queries for a page."""
    return DeviceProfile.objects.annotate(device_count=Count("devices", distinct=True)).prefetch_related(
        Prefetch("metrics", queryset=ProfileMetric.objects.select_related("metric").order_by("metric__name"))
    )


def devices() -> QuerySet[Device]:
    """Devices with their profile and active credential's prefix: one query for a page, whatever its size."""
    active = DeviceCredential.objects.filter(device=OuterRef("pk"), status=CredentialStatus.ACTIVE)
    return Device.objects.select_related("profile").annotate(
        credential_prefix=Subquery(active.values("secret_prefix")[:1]),
        credential_created_at=Subquery(active.values("created_at")[:1]),
    )


def filter_by_labels(queryset: QuerySet[Device], labels: list[str]) -> QuerySet[Device]:
    """`key:value` pairs (all must match); a bare `key` matches devices that have the label."""
    for item in labels:
        key, sep, value = item.partition(":")
        queryset = queryset.filter(labels__contains={key: value}) if sep else queryset.filter(labels__has_key=key)
    return queryset


def device_attributes(device: Device) -> dict[str, dict[str, Any]]:
    """{"client": {...}, "server": {...}, "shared": {...}}."""
    out: dict[str, dict[str, Any]] = {scope: {} for scope in AttributeScope.values}
    for scope, key, value in DeviceAttribute.objects.filter(device=device).values_list("scope", "key", "value"):
        out[scope][key] = value
    return out


def device_credentials(device: Device) -> QuerySet[DeviceCredential]:
    return device.credentials.all()


def device_commands(device: Device) -> QuerySet[DeviceCommand]:
    return DeviceCommand.objects.filter(device=device).order_by("-created_at", "-id")


def device_by_uid(device_uid: str) -> Device | None:
    return Device.objects.select_related("profile").filter(uid=device_uid).first()


def fleet(*, search: str = "", profile_id: int | None = None, labels: list[str] | None = None, status: str = "") -> QuerySet[Device]:
    """The fleet overview's devices: filtered, with the profile and its metrics (two queries a page)."""
    from django.db.models import Q

    queryset = Device.objects.select_related("profile").prefetch_related(
        Prefetch("profile__metrics", queryset=ProfileMetric.objects.select_related("metric").order_by("metric__name"))
    )
    if search:
        queryset = queryset.filter(Q(uid__icontains=search) | Q(name__icontains=search) | Q(location__icontains=search))
    if profile_id is not None:
        queryset = queryset.filter(profile_id=profile_id)
    if labels:
        queryset = filter_by_labels(queryset, labels)
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("uid")


def fleet_status_counts() -> dict[str, int]:
    return dict(Device.objects.values_list("status").annotate(n=Count("id")).order_by())
