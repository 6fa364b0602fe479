"""Every write to the device registry: profiles, devices, credentials, attributes, presence and
commands. Views, the admin, tasks and the ingest service call these and nothing else.

API-facing services take a keyword-only `actor` and `client`, run in one transaction and write
their audit entry in it. The ingest-facing ones (presence, client attributes, command responses)
take the tenant's schema name, set it themselves, and are built for bulk use: a fixed number of
queries whatever the batch size.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import DateTimeField, Exists, ExpressionWrapper, F, OuterRef
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from accounts.models import User
from accounts.services import diff, record_audit
from devices import broker
from devices.models import (
    COMMAND_TERMINAL,
    AttributeScope,
    CommandStatus,
    CredentialStatus,
    Device,
    DeviceAttribute,
    DeviceCommand,
    DeviceCredential,
    DeviceProfile,
    DeviceStatus,
    ProfileMetric,
)
from iiot.errors import ServiceConflict
from iiot.live.events import announce_device_status
from iiot.request_context import ClientInfo
from telemetry.models import Metric

logger = logging.getLogger(__name__)

# --- States -------------------------------------------------------------------------------------

DEVICE_STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    DeviceStatus.UNKNOWN: frozenset({DeviceStatus.ONLINE, DeviceStatus.OFFLINE}),
    DeviceStatus.ONLINE: frozenset({DeviceStatus.OFFLINE}),
    DeviceStatus.OFFLINE: frozenset({DeviceStatus.ONLINE}),
}

# A device may answer before the publishing task has recorded the PUBACK: pending may go
# straight to succeeded/failed. Terminal states never move again.
COMMAND_TRANSITIONS: dict[str, frozenset[str]] = {
    CommandStatus.PENDING: frozenset({CommandStatus.DELIVERED, CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.TIMED_OUT}),
    CommandStatus.DELIVERED: frozenset({CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.TIMED_OUT}),
    CommandStatus.SUCCEEDED: frozenset(),
    CommandStatus.FAILED: frozenset(),
    CommandStatus.TIMED_OUT: frozenset(),
}
OPEN_COMMAND_STATES = (CommandStatus.PENDING, CommandStatus.DELIVERED)
API_WRITABLE_SCOPES = (AttributeScope.SERVER, AttributeScope.SHARED)


def command_can_move(current: str, target: str) -> bool:
    return target in COMMAND_TRANSITIONS.get(current, frozenset())


def current_tenant() -> str:
    """The tenant of the current schema: its slug doubles as the schema name and the MQTT prefix."""
    return connection.schema_name


# --- Profiles -----------------------------------------------------------------------------------


class MetricSpec(TypedDict, total=False):
    name: str
    unit: str
    min: float | None
    max: float | None


def _resolve_metrics(specs: Sequence[MetricSpec]) -> list[tuple[Metric, MetricSpec]]:
    """Get or create the tenant's catalogue metrics by name (one query to read, one to add)."""
    names = [spec["name"] for spec in specs]
    if len(set(names)) != len(names):
        raise ValidationError({"metrics": ["Each metric may appear once per profile."]})
    existing = {metric.name: metric for metric in Metric.objects.filter(name__in=names)}
    missing = []
    for spec in specs:
        metric = existing.get(spec["name"])
        unit = spec.get("unit") or ""
        if metric is None:
            metric = Metric(name=spec["name"], unit=unit)
            metric.full_clean(validate_unique=False)
            missing.append(metric)
            existing[metric.name] = metric
        elif unit and metric.unit and metric.unit != unit:
            raise ValidationError({"metrics": [f'Metric "{metric.name}" is measured in {metric.unit!r} in this tenant, not {unit!r}.']})
        elif unit and not metric.unit:
            metric.unit = unit
            metric.save(update_fields=["unit"])
    if missing:
        Metric.objects.bulk_create(missing, update_conflicts=True, unique_fields=["name"], update_fields=["name"])
        for metric in Metric.objects.filter(name__in=[m.name for m in missing]):
            existing[metric.name] = metric
    return [(existing[spec["name"]], spec) for spec in specs]


def _registry_changed() -> None:
    from telemetry.registry import publish_registry_change

    publish_registry_change(connection.schema_name)


def _replace_profile_metrics(profile: DeviceProfile, specs: Sequence[MetricSpec]) -> None:
    resolved = _resolve_metrics(specs)
    rows = []
    for metric, spec in resolved:
        row = ProfileMetric(profile=profile, metric=metric, min_value=spec.get("min"), max_value=spec.get("max"))
        row.full_clean(exclude=["profile", "metric"], validate_unique=False, validate_constraints=False)
        if row.min_value is not None and row.max_value is not None and row.min_value > row.max_value:
            raise ValidationError({"metrics": [f'"{metric.name}": min must not be greater than max.']})
        rows.append(row)
    ProfileMetric.objects.filter(profile=profile).exclude(metric__in=[m for m, _ in resolved]).delete()
    ProfileMetric.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["profile", "metric"], update_fields=["min_value", "max_value"]
    )
    _registry_changed()  # bulk writes send no model signals: tell the ingest processes ourselves


def _profile_snapshot(profile: DeviceProfile) -> dict[str, Any]:
    metrics = {
        pm.metric.name: [pm.metric.unit, pm.min_value, pm.max_value]
        for pm in ProfileMetric.objects.filter(profile=profile).select_related("metric")
    }
    return {
        "name": profile.name,
        "description": profile.description,
        "auto_register_metrics": profile.auto_register_metrics,
        "default_attributes": profile.default_attributes,
        "offline_after_s": profile.offline_after_s,
        "metrics": metrics,
    }


PROFILE_FIELDS = ("name", "description", "auto_register_metrics", "default_attributes", "offline_after_s")


@transaction.atomic
def create_profile(
    *, actor: User | None, client: ClientInfo | None, name: str, metrics: Sequence[MetricSpec] = (), **fields: Any
) -> DeviceProfile:
    profile = DeviceProfile(name=name, **{k: v for k, v in fields.items() if k in PROFILE_FIELDS})
    profile.full_clean()
    profile.save()
    _replace_profile_metrics(profile, metrics)
    record_audit("device_profile.create", actor=actor, client=client, target=profile, changes=diff({}, _profile_snapshot(profile)))
    return profile


@transaction.atomic
def update_profile(
    *, actor: User | None, client: ClientInfo | None, profile: DeviceProfile, metrics: Sequence[MetricSpec] | None = None, **fields: Any
) -> DeviceProfile:
    profile = DeviceProfile.objects.select_for_update().get(pk=profile.pk)
    before = _profile_snapshot(profile)
    for key, value in fields.items():
        if key in PROFILE_FIELDS:
            setattr(profile, key, value)
    profile.full_clean()
    profile.save()
    if metrics is not None:
        _replace_profile_metrics(profile, metrics)
    record_audit("device_profile.update", actor=actor, client=client, target=profile, changes=diff(before, _profile_snapshot(profile)))
    return profile


@transaction.atomic
def delete_profile(*, actor: User | None, client: ClientInfo | None, profile: DeviceProfile) -> None:
    profile = DeviceProfile.objects.select_for_update().get(pk=profile.pk)
    in_use = profile.devices.count()
    if in_use:
        raise ServiceConflict(f'Profile "{profile.name}" is used by {in_use} device(s); move or delete them first.', "profile_in_use")
    record_audit("device_profile.delete", actor=actor, client=client, target=profile, changes=diff(_profile_snapshot(profile), {}))
    profile.delete()


# --- Devices ------------------------------------------------------------------------------------

DEVICE_FIELDS = ("uid", "name", "profile", "location", "latitude", "longitude", "labels", "enabled")


def _device_snapshot(device: Device) -> dict[str, Any]:
    return {
        "uid": device.uid,
        "name": device.name,
        "profile": device.profile_id,
        "location": device.location,
        "latitude": device.latitude,
        "longitude": device.longitude,
        "labels": device.labels,
        "enabled": device.enabled,
    }


def validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise ValidationError({"labels": ["Expected an object of string labels."]})
    for key, value in labels.items():
        if not isinstance(key, str) or not key or len(key) > 64 or ":" in key:
            raise ValidationError({"labels": [f"Label names are 1-64 characters without ':' ({key!r})."]})
        if not isinstance(value, str) or len(value) > 200:
            raise ValidationError({"labels": [f'Label "{key}" must be a string of at most 200 characters.']})
    return labels


def _after_commit_broker(action: str, func, *args: Any, **kwargs: Any) -> None:
    """Broker changes that follow a committed change; the reconciliation task repairs misses."""

    def run() -> None:
        try:
            func(*args, **kwargs)
        except (broker.BrokerUnavailable, broker.BrokerCommandError) as exc:
            logger.warning("broker update failed; reconcile_broker will retry", extra={"action": action, "error": str(exc)})

    transaction.on_commit(run)


@transaction.atomic
def create_device(*, actor: User | None, client: ClientInfo | None, uid: str, name: str, profile: DeviceProfile, **fields: Any) -> Device:
    fields = {k: v for k, v in fields.items() if k in DEVICE_FIELDS}
    if "labels" in fields:
        validate_labels(fields["labels"])
    device = Device(uid=uid, name=name, profile=profile, **fields)
    device.full_clean()
    device.save()
    if profile.default_attributes:
        DeviceAttribute.objects.bulk_create(
            [DeviceAttribute(device=device, scope=AttributeScope.SHARED, key=k, value=v) for k, v in profile.default_attributes.items()]
        )
        _push_shared_attributes_after_commit(device.pk)
    record_audit("device.create", actor=actor, client=client, target=device, changes=diff({}, _device_snapshot(device)))
    return device


@transaction.atomic
def update_device(*, actor: User | None, client: ClientInfo | None, device: Device, **fields: Any) -> Device:
    device = Device.objects.select_for_update().get(pk=device.pk)
    before = _device_snapshot(device)
    if "uid" in fields and fields["uid"] != device.uid:
        # The uid is the device's MQTT identity (username and topics): a new uid is a new device.
        raise ValidationError({"uid": ["The uid cannot be changed; create a new device instead."]})
    if "labels" in fields:
        validate_labels(fields["labels"])
    for key, value in fields.items():
        if key in DEVICE_FIELDS:
            setattr(device, key, value)
    device.full_clean()
    device.save()
    changes = diff(before, _device_snapshot(device))
    record_audit("device.update", actor=actor, client=client, target=device, changes=changes)
    if "enabled" in changes and device.credentials.filter(status=CredentialStatus.ACTIVE).exists():
        tenant = current_tenant()
        _after_commit_broker("device.enable" if device.enabled else "device.disable", broker.set_devices_enabled,
                             [(tenant, device.uid)], enabled=device.enabled and tenant_is_active(tenant))
    return device


@transaction.atomic
def disable_devices(*, actor: User | None, client: ClientInfo | None, devices: Iterable[Device]) -> int:
    """Disable several devices (admin action): each audited, their broker clients disabled after commit."""
    ids = sorted(device.pk for device in devices)
    locked = list(Device.objects.select_for_update().filter(pk__in=ids, enabled=True).order_by("pk"))
    for device in locked:
        Device.objects.filter(pk=device.pk).update(enabled=False, updated_at=timezone.now())
        record_audit("device.update", actor=actor, client=client, target=device, changes={"enabled": [True, False]})
    if locked:
        _registry_changed()
        tenant = current_tenant()
        _after_commit_broker("device.disable", broker.set_devices_enabled, [(tenant, d.uid) for d in locked], enabled=False)
    return len(locked)


@transaction.atomic
def delete_device(*, actor: User | None, client: ClientInfo | None, device: Device) -> None:
    device = Device.objects.select_for_update().get(pk=device.pk)
    record_audit("device.delete", actor=actor, client=client, target=device, changes=diff(_device_snapshot(device), {}))
    tenant, uid = current_tenant(), device.uid
    device.delete()
    _after_commit_broker("device.delete", broker.remove_devices, [(tenant, uid)])
    # An empty retained message removes the retained shared attributes from the broker.
    _after_commit_broker("device.delete.shared_attributes", broker.publish_qos1, broker.device_topics(tenant, uid).shared_attributes, b"", retain=True)


# --- Credentials --------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits (token_urlsafe(32)): guessing it is hopeless whatever the
    # hash costs, so a plain SHA-256 suffices; a slow hash (Argon2) protects low-entropy human
    # passwords and would only slow down every device authentication here.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedCredential:
    credential: DeviceCredential
    secret: str  # shown once, never stored
    username: str
    url: str
    topics: broker.DeviceTopics


def tenant_is_active(schema: str) -> bool:
    from tenants.services import tenant_is_active as is_active

    return is_active(schema)


@transaction.atomic
def issue_credential(*, actor: User | None, client: ClientInfo | None, device: Device) -> IssuedCredential:
    """Issue the device's first secret or rotate it: the previous one is revoked at once.

    The broker gets the plaintext password while it is still in hand, before the transaction
    commits; if the broker does not answer, `broker.BrokerUnavailable` propagates and nothing is
    stored (the API answers 503).
    """
    from django.conf import settings

    device = Device.objects.select_for_update().get(pk=device.pk)
    now = timezone.now()
    revoked = list(device.credentials.filter(status=CredentialStatus.ACTIVE).values_list("secret_prefix", flat=True))
    if revoked:
        device.credentials.filter(status=CredentialStatus.ACTIVE).update(status=CredentialStatus.REVOKED, revoked_at=now)
    secret = secrets.token_urlsafe(32)
    credential = DeviceCredential.objects.create(device=device, secret_hash=hash_secret(secret), secret_prefix=secret[:6])
    record_audit(
        "device.credential.rotate" if revoked else "device.credential.issue",
        actor=actor,
        client=client,
        target=device,
        metadata={"prefix": credential.secret_prefix, "revoked_prefixes": revoked},
    )
    tenant = current_tenant()
    broker.push_device_credential(
        tenant=tenant, device_uid=device.uid, password=secret, enabled=device.enabled and tenant_is_active(tenant)
    )
    return IssuedCredential(
        credential=credential,
        secret=secret,
        username=broker.device_username(tenant, device.uid),
        url=settings.MQTT_DEVICE_URL,
        topics=broker.device_topics(tenant, device.uid),
    )


@transaction.atomic
def revoke_credential(*, actor: User | None, client: ClientInfo | None, device: Device) -> list[DeviceCredential]:
    """Revoke the device's active credential (idempotent); the broker cuts the device off after commit."""
    device = Device.objects.select_for_update().get(pk=device.pk)
    active = list(device.credentials.filter(status=CredentialStatus.ACTIVE))
    if not active:
        return []
    now = timezone.now()
    DeviceCredential.objects.filter(pk__in=[c.pk for c in active]).update(status=CredentialStatus.REVOKED, revoked_at=now)
    for credential in active:
        credential.status, credential.revoked_at = CredentialStatus.REVOKED, now
    record_audit("device.credential.revoke", actor=actor, client=client, target=device, metadata={"prefixes": [c.secret_prefix for c in active]})
    _after_commit_broker("device.credential.revoke", broker.set_devices_enabled, [(current_tenant(), device.uid)], enabled=False)
    return active


def authenticate_device(*, schema: str, device_uid: str, secret: str) -> Device | None:
    """The enabled device whose active credential is `secret`, or None (for non-MQTT transports)."""
    with schema_context(schema):
        return (
            Device.objects.filter(
                uid=device_uid, enabled=True, credentials__status=CredentialStatus.ACTIVE, credentials__secret_hash=hash_secret(secret)
            )
            .select_related("profile")
            .first()
        )


# --- Attributes ---------------------------------------------------------------------------------


def _upsert_attributes(device_id: int, scope: str, attributes: dict[str, Any]) -> None:
    deleted = [key for key, value in attributes.items() if value is None]
    kept = {key: value for key, value in attributes.items() if value is not None}
    if deleted:
        DeviceAttribute.objects.filter(device_id=device_id, scope=scope, key__in=deleted).delete()
    if kept:
        now = timezone.now()
        DeviceAttribute.objects.bulk_create(
            [DeviceAttribute(device_id=device_id, scope=scope, key=key, value=value, updated_at=now) for key, value in kept.items()],
            update_conflicts=True,
            unique_fields=["device", "scope", "key"],
            update_fields=["value", "updated_at"],
        )


def _validate_attribute_keys(attributes: dict[str, Any]) -> None:
    for key in attributes:
        if not isinstance(key, str) or not key or len(key) > 100:
            raise ValidationError({"attributes": [f"Attribute names are 1-100 characters ({key!r})."]})


@transaction.atomic
def set_attributes(*, actor: User | None, client: ClientInfo | None, device: Device, scope: str, attributes: dict[str, Any]) -> None:
    """Upsert server or shared attributes (a null value deletes the key). Client attributes
    belong to the device: it reports them, the API cannot write them."""
    if scope not in API_WRITABLE_SCOPES:
        raise ValidationError({"scope": ["Only server and shared attributes can be written; client attributes come from the device."]})
    _validate_attribute_keys(attributes)
    device = Device.objects.select_for_update().get(pk=device.pk)
    before = dict(DeviceAttribute.objects.filter(device=device, scope=scope, key__in=list(attributes)).values_list("key", "value"))
    _upsert_attributes(device.pk, scope, attributes)
    if scope == AttributeScope.SHARED:
        _push_shared_attributes_after_commit(device.pk)
    record_audit(
        "device.attributes.update",
        actor=actor,
        client=client,
        target=device,
        changes=diff(before, {k: v for k, v in attributes.items() if v is not None}),
        metadata={"scope": scope},
    )


def _push_shared_attributes_after_commit(device_pk: int) -> None:
    from devices.tasks import publish_shared_attributes

    transaction.on_commit(lambda: publish_shared_attributes.delay(device_pk))


def shared_attributes_message(device: Device, now: datetime) -> bytes:
    import json

    shared = dict(DeviceAttribute.objects.filter(device=device, scope=AttributeScope.SHARED).order_by("key").values_list("key", "value"))
    return json.dumps({"attributes": shared, "sent_at": now.isoformat()}).encode()


def deliver_shared_attributes(*, device_pk: int) -> str:
    """Publish the device's whole set of shared attributes, retained, to its `.../attributes/shared`
    topic (QoS 1). Reads the set when it runs, so of several quick changes the last publish
    carries the newest state; the device subscribes once and gets the current set on every
    (re)connection. Quiet when the device is gone."""
    device = Device.objects.filter(pk=device_pk).first()
    if device is None:
        return "skipped"
    topic = broker.device_topics(current_tenant(), device.uid).shared_attributes
    broker.publish_qos1(topic, shared_attributes_message(device, timezone.now()), retain=True)
    return "published"


def update_client_attributes(*, schema: str, device_uid: str, attributes: dict) -> None:
    """Client-reported attributes from the device's attributes topic (upsert; null deletes)."""
    if not attributes:
        return
    _validate_attribute_keys(attributes)
    with schema_context(schema), transaction.atomic():
        device_id = Device.objects.filter(uid=device_uid).values_list("pk", flat=True).first()
        if device_id is None:
            return
        _upsert_attributes(device_id, AttributeScope.CLIENT, attributes)


# --- Presence -----------------------------------------------------------------------------------


def mark_devices_seen(*, schema: str, seen: dict[int, datetime]) -> list[int]:
    """Move last_seen_at forward (never back) for many devices in one statement; those not online
    become online. Returns the ids whose status changed."""
    if not seen:
        return []
    ids = sorted(seen)
    times = [seen[pk] for pk in ids]
    table = Device._meta.db_table
    with schema_context(schema), transaction.atomic(), connection.cursor() as cursor:
        # Rows are locked in id order so concurrent ingest processes cannot deadlock; RETURNING
        # reads the pre-update status from the locked snapshot.
        cursor.execute(
            f"""
            WITH seen AS (SELECT unnest(%s::bigint[]) AS id, unnest(%s::timestamptz[]) AS ts),
                 previous AS (
                    SELECT d.id, d.status FROM {table} d JOIN seen USING (id) ORDER BY d.id FOR UPDATE OF d
                 )
            UPDATE {table} d
               SET last_seen_at = GREATEST(d.last_seen_at, seen.ts),
                   status = %s,
                   status_changed_at = CASE WHEN previous.status <> %s THEN seen.ts ELSE d.status_changed_at END
              FROM seen JOIN previous USING (id)
             WHERE d.id = seen.id
         RETURNING d.id, previous.status
            """,
            [ids, times, DeviceStatus.ONLINE, DeviceStatus.ONLINE],
        )
        changed = sorted(pk for pk, previous in cursor.fetchall() if previous != DeviceStatus.ONLINE)
        announce_device_status(schema=schema, changes=[(pk, None, DeviceStatus.ONLINE, seen[pk]) for pk in changed])
        return changed


def set_device_connection(*, schema: str, device_uid: str, online: bool, at: datetime) -> bool:
    """From the device's status topic or its MQTT will message. Returns whether the status changed.

    An event older than the last status change (a late will message after a reconnect) is ignored.
    """
    target = DeviceStatus.ONLINE if online else DeviceStatus.OFFLINE
    with schema_context(schema), transaction.atomic():
        device = Device.objects.select_for_update().filter(uid=device_uid).first()
        if device is None:
            return False
        fields = []
        if online and (device.last_seen_at is None or at > device.last_seen_at):
            device.last_seen_at = at
            fields.append("last_seen_at")
        changed = (
            device.status != target
            and target in DEVICE_STATUS_TRANSITIONS[device.status]
            and (device.status_changed_at is None or at >= device.status_changed_at)
        )
        if changed:
            device.status, device.status_changed_at = target, at
            fields += ["status", "status_changed_at"]
        if fields:
            Device.objects.filter(pk=device.pk).update(**{name: getattr(device, name) for name in fields})
        if changed:
            announce_device_status(schema=schema, changes=[(device.pk, device.uid, target, at)])
        return changed


def mark_stale_devices_offline(*, schema: str, now: datetime) -> list[int]:
    """Online devices silent for longer than their profile's offline_after_s go offline."""
    table, profiles = Device._meta.db_table, DeviceProfile._meta.db_table
    with schema_context(schema), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} d SET status = %s, status_changed_at = %s
              FROM {profiles} p
             WHERE d.profile_id = p.id AND d.status = %s
               AND (d.last_seen_at IS NULL OR d.last_seen_at < %s - p.offline_after_s * interval '1 second')
         RETURNING d.id
            """,
            [DeviceStatus.OFFLINE, now, DeviceStatus.ONLINE, now],
        )
        offline = sorted(row[0] for row in cursor.fetchall())
        announce_device_status(schema=schema, changes=[(pk, None, DeviceStatus.OFFLINE, now) for pk in offline])
        return offline


# --- Commands -----------------------------------------------------------------------------------


class CommandMessage(TypedDict):
    command_id: str
    name: str
    params: Any
    sent_at: str


@transaction.atomic
def send_command(
    *, actor: User | None, client: ClientInfo | None, device: Device, name: str, params: Any = None, timeout_s: int = 30
) -> DeviceCommand:
    """Create a pending command; after commit a task publishes it to the device's command topic."""
    device = Device.objects.select_for_update().get(pk=device.pk)
    if not device.enabled:
        raise ServiceConflict(f'Device "{device.uid}" is disabled; enable it before sending commands.', "device_disabled")
    command = DeviceCommand(
        device=device,
        name=name,
        params={} if params is None else params,
        timeout_s=timeout_s,
        created_by_id=actor.pk if actor is not None and actor.pk else None,
        created_by_email=getattr(actor, "email", "") or "",
    )
    command.full_clean(exclude=["created_at"])
    command.save()
    command.refresh_from_db(fields=["created_at"])
    record_audit(
        "device.command.send",
        actor=actor,
        client=client,
        target=device,
        metadata={"command_id": str(command.command_id), "name": name, "timeout_s": timeout_s},
    )
    from devices.tasks import publish_command

    transaction.on_commit(lambda: publish_command.delay(command.pk))
    return command


def command_message(command: DeviceCommand, sent_at: datetime) -> CommandMessage:
    return {"command_id": str(command.command_id), "name": command.name, "params": command.params, "sent_at": sent_at.isoformat()}


def deliver_command(*, command_pk: int) -> str:
    """Publish a pending command at QoS 1 and mark it delivered once the broker acknowledged it.

    Idempotent: a command that is gone, no longer pending or past its timeout is left alone. A
    retry after a lost PUBACK publishes again; the device dedupes by command_id.
    """
    import json

    command = DeviceCommand.objects.select_related("device").filter(pk=command_pk).first()
    if command is None or command.status != CommandStatus.PENDING:
        return "skipped"
    now = timezone.now()
    if command.created_at + timedelta(seconds=command.timeout_s) <= now:
        return "expired"
    topics = broker.device_topics(current_tenant(), command.device.uid)
    broker.publish_qos1(topics.commands, json.dumps(command_message(command, now)))
    with transaction.atomic():
        command = DeviceCommand.objects.select_for_update().get(pk=command_pk)
        if not command_can_move(command.status, CommandStatus.DELIVERED):
            return "skipped"
        command.status, command.delivered_at = CommandStatus.DELIVERED, timezone.now()
        command.save(update_fields=["status", "delivered_at"])
    return "delivered"


def record_command_response(*, schema: str, device_uid: str, payload: dict) -> DeviceCommand | None:
    """The device's answer on `.../commands/response`: pending/delivered -> succeeded/failed.

    Unknown command ids, another device's commands and commands already terminal are ignored
    (None). Payload: {"command_id": "<uuid>", "status": "ok"|"error", "result": ..., "error": "..."}.
    """
    import uuid

    try:
        command_id = uuid.UUID(str(payload.get("command_id")))
    except (ValueError, TypeError, AttributeError):
        return None
    target = CommandStatus.SUCCEEDED if payload.get("status") == "ok" else CommandStatus.FAILED
    with schema_context(schema), transaction.atomic():
        command = DeviceCommand.objects.select_for_update().filter(command_id=command_id, device__uid=device_uid).first()
        if command is None or not command_can_move(command.status, target):
            return None
        command.status = target
        command.completed_at = timezone.now()
        if command.delivered_at is None:
            command.delivered_at = command.completed_at
        command.response = payload.get("result")
        error = payload.get("error")
        command.error = str(error)[:500] if error and target == CommandStatus.FAILED else ""
        command.save(update_fields=["status", "completed_at", "delivered_at", "response", "error"])
        return command


def expire_commands(*, schema: str, now: datetime) -> int:
    """Pending or delivered commands past created_at + timeout_s become timed out (one UPDATE;
    PostgreSQL re-checks the status of a row a concurrent response has just locked)."""
    with schema_context(schema):
        deadline = ExpressionWrapper(F("created_at") + F("timeout_s") * timedelta(seconds=1), output_field=DateTimeField())
        return (
            DeviceCommand.objects.alias(deadline=deadline)
            .filter(status__in=OPEN_COMMAND_STATES, deadline__lte=now)
            .update(status=CommandStatus.TIMED_OUT, completed_at=now, error="No response from the device in time.")
        )


assert set(COMMAND_TERMINAL) == {s for s, targets in COMMAND_TRANSITIONS.items() if not targets}


# --- Broker state ---------------------------------------------------------------------------------


@dataclass
class ReconcileResult:
    disabled: list[str]
    enabled: list[str]
    removed: list[str]
    missing: list[str]  # devices with an active credential the broker does not know: rotate them


def _desired_broker_state() -> tuple[dict[str, bool], set[str]]:
    """username -> should be enabled, for every device of every tenant; and the active tenants."""
    from tenants.models import Tenant

    with schema_context(get_public_schema_name()):
        tenants = list(Tenant.objects.customers().values_list("schema_name", "status"))
    desired: dict[str, bool] = {}
    active = {schema for schema, status in tenants if status == "active"}
    for schema, _status in tenants:
        with schema_context(schema):
            has_credential = Exists(DeviceCredential.objects.filter(device=OuterRef("pk"), status=CredentialStatus.ACTIVE))
            rows = Device.objects.annotate(has_credential=has_credential).values_list("uid", "enabled", "has_credential").order_by()
            for uid, enabled, credential in rows:
                desired[broker.device_username(schema, uid)] = schema in active and enabled and credential
    return desired, active


def reconcile_broker(*, ensure_roles: bool = False) -> ReconcileResult:
    """Make the broker's device clients match the registry: a client is enabled only when its
    device exists, is enabled, has an active credential and its tenant is active; clients of
    deleted devices are removed. Passwords cannot be restored (only hashes are stored): devices
    reported `missing` need their credential rotated."""
    desired, _active = _desired_broker_state()
    result = ReconcileResult(disabled=[], enabled=[], removed=[], missing=[])
    with broker.DynsecClient() as dynsec:
        if ensure_roles:
            broker.ensure_service_account(dynsec=dynsec)
        clients = {info.username: info for info in broker.list_device_clients(dynsec=dynsec)}
        for username, info in clients.items():
            want = desired.get(username)
            if want is None:
                result.removed.append(username)
            elif want and info.disabled:
                result.enabled.append(username)
            elif not want and not info.disabled:
                result.disabled.append(username)
        as_pairs = lambda names: [broker.parse_username(n) for n in names]  # noqa: E731
        broker.set_devices_enabled(as_pairs(result.disabled), enabled=False, dynsec=dynsec)
        broker.set_devices_enabled(as_pairs(result.enabled), enabled=True, dynsec=dynsec)
        broker.remove_devices(as_pairs(result.removed), dynsec=dynsec)
        if ensure_roles:
            broker.ensure_device_roles([broker.parse_username(n) for n in desired], dynsec=dynsec)
        result.missing = sorted(name for name, want in desired.items() if want and name not in clients)
    return result


def set_tenant_broker_access(*, schema: str, enabled: bool) -> int:
    """Suspension and reactivation: disable (and so disconnect) or re-enable a tenant's devices at
    the broker. Only devices that are enabled and hold an active credential come back."""
    with schema_context(schema):
        qs = Device.objects.all()
        if enabled:
            qs = qs.filter(enabled=True, credentials__status=CredentialStatus.ACTIVE)
        uids = list(qs.values_list("uid", flat=True).distinct())
    broker.set_devices_enabled([(schema, uid) for uid in uids], enabled=enabled)
    return len(uids)


def tenant_broker_access_on_commit(*, schema: str, enabled: bool) -> None:
    """For tenants.services: apply `set_tenant_broker_access` once the status change commits."""
    _after_commit_broker("tenant.broker_access", set_tenant_broker_access, schema=schema, enabled=enabled)
