"""Every write to alerts, their timelines, notification channels and deliveries.

The rules engine calls `raise_alert` / `clear_alert` (system actor, tenant schema already active);
the API and the admin call `acknowledge_alert`, `resolve_alert`, `add_note` and the channel
services with a user as `actor`. Each runs in one transaction, locks the alert it changes,
appends the timeline event in that transaction and schedules its side effects (notifications,
live push) with `transaction.on_commit`, so nothing leaves the process for a change that rolled back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.signals import post_save
from django.utils import timezone
from django_tenants.utils import schema_context

from accounts.models import User
from accounts.services import diff, record_audit
from alerting.choices import SEVERITY_RANK, Severity
from alerting.models import (
    DELIVERY_FINAL,
    OPEN_STATES,
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertState,
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
    NotificationDelivery,
    alert_can_move,
    alert_fingerprint,
)
from devices.models import Device
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo

logger = logging.getLogger(__name__)

MESSAGE_MAX = 1000


def alerts_group(schema: str) -> str:
    """Channel-layer group every alert event of a tenant is pushed to (dashboards listen)."""
    return f"{schema}.alerts"


# --- Payloads -----------------------------------------------------------------------------------


class AlertSummary(TypedDict):
    id: int
    state: str
    severity: str
    rule_id: int | None
    rule_name: str
    device_id: int | None
    device_uid: str
    message: str
    value: float | None
    count: int
    first_seen_at: str
    last_seen_at: str
    acknowledged_at: str | None
    resolved_at: str | None
    auto_resolved: bool
    details: dict[str, Any]
    url: str
    device_url: str


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _base_url() -> str:
    from tenants.models import Domain

    domain = (
        Domain.objects.filter(tenant__schema_name=connection.schema_name, is_primary=True)
        .values_list("domain", flat=True)
        .first()
    )
    return f"{settings.ALERT_LINK_SCHEME}://{domain}" if domain else ""


def alert_summary(alert: Alert, *, base_url: str | None = None) -> AlertSummary:
    base_url = _base_url() if base_url is None else base_url
    return {
        "id": alert.pk,
        "state": alert.state,
        "severity": alert.severity,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "device_id": alert.device_id,
        "device_uid": alert.device_uid,
        "message": alert.message,
        "value": alert.value,
        "count": alert.count,
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
        "acknowledged_at": _iso(alert.acknowledged_at),
        "resolved_at": _iso(alert.resolved_at),
        "auto_resolved": alert.auto_resolved,
        "details": alert.details,
        "url": f"{base_url}/api/v1/alerts/{alert.pk}" if base_url else "",
        "device_url": f"{base_url}/api/v1/devices/{alert.device_id}" if base_url and alert.device_id else "",
    }


# --- Timeline and live push ---------------------------------------------------------------------


_LIVE_SENDS: set[asyncio.Task] = set()  # strong references until the sends finish


class _LiveSender:
    """Live pushes from synchronous code (rule action workers, Celery tasks, sync views): one event
    loop thread per process sends them in order. `async_to_sync` on a plain thread would start an
    event loop per push and, with it, a new Redis connection of the channel layer (several round
    trips each time, on the rule engine's path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    def submit(self, layer, group: str, message: dict[str, Any]) -> None:
        loop, jobs = self._running()
        loop.call_soon_threadsafe(jobs.put_nowait, (layer, group, message))

    def _running(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None:  # first use, or a forked child (Celery)
                ready = threading.Event()
                threading.Thread(target=self._run, args=(ready,), name="alert-live-sender", daemon=True).start()
                ready.wait(5)
                self._pid = os.getpid()
            assert self._loop is not None and self._queue is not None
            return self._loop, self._queue

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop, self._queue = loop, asyncio.Queue()
        ready.set()
        loop.run_until_complete(self._drain(self._queue))

    @staticmethod
    async def _drain(jobs: asyncio.Queue) -> None:
        while True:
            layer, group, message = await jobs.get()
            try:
                await layer.group_send(group, message)
            except Exception:  # best effort, as below
                logger.warning("live alert push failed", extra={"group": group}, exc_info=True)


_LIVE_SENDER = _LiveSender()


def _push_live(schema: str, message: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    try:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:  # called on an event loop's thread: send on that loop, do not block it
            task = loop.create_task(layer.group_send(alerts_group(schema), message))
            _LIVE_SENDS.add(task)
            task.add_done_callback(_LIVE_SENDS.discard)
        else:
            _LIVE_SENDER.submit(layer, alerts_group(schema), message)
    except Exception:  # a dashboard update is best effort: never fail the change that caused it
        logger.warning("live alert push failed", extra={"schema": schema}, exc_info=True)


LIVE_DETAILS_MAX_BYTES = 4096


def _live_summary(alert: Alert) -> AlertSummary:
    """The summary dashboards get; large `details` stay out of the channel layer (fetch the alert)."""
    summary = alert_summary(alert, base_url="")
    if len(json.dumps(summary["details"], default=str)) > LIVE_DETAILS_MAX_BYTES:
        summary["details"] = {"truncated": True}
    return summary


def _record_event(
    alert: Alert,
    kind: str,
    *,
    actor: User | None = None,
    text: str = "",
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AlertEvent:
    actor_is_user = actor is not None and getattr(actor, "pk", None) is not None
    event = AlertEvent.objects.create(
        alert=alert,
        kind=kind,
        at=at or timezone.now(),
        actor=actor if actor_is_user else None,
        actor_email=actor.email if actor_is_user else "",
        text=text,
        data=data or {},
    )
    _push_event_on_commit(alert, event)
    return event


def _push_event_on_commit(alert: Alert, event: AlertEvent) -> None:
    """The event (with the alert's summary) to the tenant's live group once the transaction commits."""
    schema = connection.schema_name
    message = {
        "type": "alert.event",
        "event": {
            "id": event.pk,
            "kind": event.kind,
            "at": event.at.isoformat(),
            "actor": event.actor_email or None,
            "text": event.text,
            "data": event.data,
            "alert": _live_summary(alert),
        },
    }
    transaction.on_commit(lambda: _push_live(schema, message), robust=True)


# --- Notifications ------------------------------------------------------------------------------


def _severity_reaches(severity: str, minimum: str) -> bool:
    return not minimum or SEVERITY_RANK[severity] <= SEVERITY_RANK[minimum]


def _enqueue_deliveries(deliveries: list[NotificationDelivery]) -> None:
    if not deliveries:
        return
    pks = [delivery.pk for delivery in deliveries]
    schema = connection.schema_name  # the schema the rows live in, whatever is active at commit

    def enqueue() -> None:
        from alerting.tasks import deliver_notification

        for pk in pks:
            deliver_notification.apply_async(args=[pk], headers={"_schema_name": schema})

    # robust: a Celery broker outage must not fail the change (the ingest path commits here);
    # requeue_stale_deliveries (beat) sends what was never enqueued.
    transaction.on_commit(enqueue, robust=True)


def _notify(alert: Alert, event_kind: str, channel_ids: Sequence[int]) -> list[NotificationDelivery]:
    """One pending delivery per enabled channel whose severity floor the alert reaches."""
    if not channel_ids:
        return []
    channels = NotificationChannel.objects.enabled().filter(pk__in=list(channel_ids)).order_by("pk")
    summary = alert_summary(alert)
    payload = {"event": f"alert.{event_kind}", "tenant": connection.schema_name, "alert": summary}
    deliveries = NotificationDelivery.objects.bulk_create(
        [
            NotificationDelivery(channel=channel, alert=alert, event_kind=event_kind, payload=payload)
            for channel in channels
            if _severity_reaches(alert.severity, channel.min_severity)
        ]
    )
    _enqueue_deliveries(deliveries)
    return deliveries


# --- Raising and clearing (the rules engine) ----------------------------------------------------


def _validate_firing(severity: str, observed_at: datetime) -> None:
    if severity not in Severity.values:
        raise ValidationError({"severity": [f"Unknown severity {severity!r}."]})
    if timezone.is_naive(observed_at):
        raise ValidationError({"observed_at": ["Must be timezone-aware."]})


# Opening and auto-resolving an alert are what the rule engine does on the ingest path, where every
# round trip to a busy database costs milliseconds: each is one statement (the alert row, its
# timeline event and, on opening, its notification deliveries), atomic on its own and, inside a
# caller's transaction, part of it. Names are schema-qualified, so nothing depends on search_path.


def _table(model) -> str:
    return f'"{connection.schema_name}"."{model._meta.db_table}"'


_ALERT_FIELDS = list(Alert._meta.concrete_fields)
_ALERT_COLUMNS = ", ".join(field.column for field in _ALERT_FIELDS)

_OPEN_SQL = """
WITH created AS (
    INSERT INTO {alert} (fingerprint, rule_id, rule_name, device_id, device_uid, severity, state, message, value,
                         details, count, first_seen_at, last_seen_at, updated_at, auto_resolved)
    SELECT %(fingerprint)s, %(rule_id)s, %(rule_name)s, d.id, coalesce(d.uid, ''), %(severity)s, 'triggered', %(message)s,
           %(value)s, %(details)s::jsonb, 1, %(at)s, %(at)s, %(now)s, false
    FROM (SELECT 1) one LEFT JOIN {device} d ON d.id = %(device_id)s
    WHERE NOT EXISTS (SELECT 1 FROM {alert} o WHERE o.fingerprint = %(fingerprint)s AND o.state = ANY(%(open)s))
    ON CONFLICT DO NOTHING
    RETURNING {columns}
), event AS (
    INSERT INTO {event} (alert_id, kind, at, actor_email, text, data)
    SELECT id, %(kind)s, %(now)s, '', %(message)s, %(event_data)s::jsonb FROM created
    RETURNING id
), deliveries AS (
    INSERT INTO {delivery} (channel_id, alert_id, event_kind, status, attempts, payload, response_excerpt, error)
    SELECT c.id, created.id, 'triggered', 'pending', 0,
           jsonb_set(%(payload)s::jsonb, '{{alert}}', (%(payload)s::jsonb -> 'alert') || jsonb_build_object(
               'id', created.id, 'device_id', created.device_id, 'device_uid', created.device_uid,
               'url', CASE WHEN %(base_url)s = '' THEN '' ELSE %(base_url)s || '/api/v1/alerts/' || created.id END,
               'device_url', CASE WHEN %(base_url)s = '' OR created.device_id IS NULL THEN ''
                                  ELSE %(base_url)s || '/api/v1/devices/' || created.device_id END)),
           '', ''
    FROM created JOIN {channel} c ON c.id = ANY(%(channel_ids)s) AND c.enabled AND c.min_severity = ANY(%(floors)s)
    RETURNING id
)
SELECT {columns}, (SELECT id FROM event), ARRAY(SELECT id FROM deliveries ORDER BY id) FROM created
"""

_CLEAR_SQL = """
WITH target AS (
    SELECT id, state FROM {alert} WHERE fingerprint = %(fingerprint)s AND state = ANY(%(open)s) FOR UPDATE
), closed AS (
    UPDATE {alert} AS a SET state = 'resolved', resolved_at = GREATEST(%(at)s, a.first_seen_at), auto_resolved = true,
                            updated_at = %(now)s
    FROM target WHERE a.id = target.id
    RETURNING {alert_columns}, target.state AS previous
), event AS (
    INSERT INTO {event} (alert_id, kind, at, actor_email, text, data)
    SELECT id, %(kind)s, resolved_at, '', '', jsonb_build_object('value', %(value)s::jsonb, 'from', previous) FROM closed
    RETURNING id
)
SELECT {columns}, (SELECT id FROM event), previous FROM closed
"""


def _saved(instance, *, created: bool, update_fields=None) -> None:
    """post_save for a row the statement wrote, as a save() would send it (metrics observe these)."""
    post_save.send(sender=type(instance), instance=instance, created=created, update_fields=update_fields, raw=False,
                   using=connection.alias)  # fmt: skip


def _write_alert(statement: str, params: dict[str, Any]) -> tuple[Alert, tuple] | None:
    """Run `_OPEN_SQL` or `_CLEAR_SQL`: (the alert as written, the row's further columns), or None
    when it wrote nothing."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is None:
        return None
    width = len(_ALERT_FIELDS)
    return Alert.from_db(connection.alias, [field.attname for field in _ALERT_FIELDS], row[:width]), tuple(row[width:])


def _open_alert(
    *, fingerprint: str, rule_id, rule_name, device_id, severity, message, value, observed_at, details, channel_ids
) -> Alert | None:
    """Open a new alert in one statement: the alert, its 'triggered' event and one pending delivery
    per enabled channel whose severity floor it reaches (enqueued after commit). None when an alert
    of that fingerprint is open, or another process opened one at the same moment."""
    now = timezone.now()
    details = details or {}
    data = {"value": value, "severity": severity}
    channel_ids = [int(pk) for pk in channel_ids or ()]
    base_url = _base_url() if channel_ids else ""
    payload = "{}"
    if channel_ids:  # the statement fills in the alert's id, device and links
        draft = Alert(fingerprint=fingerprint, rule_id=rule_id, rule_name=(rule_name or "")[:200], severity=severity,
                      message=message, value=value, details=details, first_seen_at=observed_at, last_seen_at=observed_at)  # fmt: skip
        summary = {"event": "alert.triggered", "tenant": connection.schema_name, "alert": alert_summary(draft, base_url="")}
        payload = json.dumps(summary, default=str)
    statement = _OPEN_SQL.format(
        alert=_table(Alert), device=_table(Device), event=_table(AlertEvent), delivery=_table(NotificationDelivery),
        channel=_table(NotificationChannel), columns=_ALERT_COLUMNS,
    )  # fmt: skip
    params = {
        "fingerprint": fingerprint, "rule_id": rule_id, "rule_name": (rule_name or "")[:200], "device_id": device_id,
        "severity": severity, "message": message, "value": value, "details": json.dumps(details, default=str),
        "at": observed_at, "now": now, "open": list(OPEN_STATES), "kind": AlertEventKind.TRIGGERED,
        "event_data": json.dumps(data), "channel_ids": channel_ids, "base_url": base_url, "payload": payload,
        "floors": [""] + [name for name in Severity.values if SEVERITY_RANK[severity] <= SEVERITY_RANK[name]],
    }  # fmt: skip
    written = _write_alert(statement, params)
    if written is None:
        return None
    alert, (event_id, delivery_ids) = written
    event = AlertEvent(id=event_id, alert=alert, kind=AlertEventKind.TRIGGERED, at=now, actor_email="", text=message, data=data)
    _saved(alert, created=True)
    _saved(event, created=True)
    _push_event_on_commit(alert, event)
    _enqueue_deliveries([NotificationDelivery(id=pk) for pk in delivery_ids])
    return alert


def raise_alert(
    *,
    rule_id: int | None,
    rule_name: str,
    device_id: int | None,
    severity: str,
    message: str,
    value: float | None,
    observed_at: datetime,
    details: dict | None = None,
    channel_ids: Sequence[int] = (),
    actor=None,
) -> tuple[Alert, bool]:
    """Open a new alert for fingerprint (rule_id, device_id) or bump the open one (count,
    last_seen, value); returns (alert, created). Notifications to channel_ids (and the live push)
    go out after commit, only when the alert is new or its severity went up."""
    _validate_firing(severity, observed_at)
    fingerprint = alert_fingerprint(rule_id, device_id)
    message = (message or "")[:MESSAGE_MAX]
    opened = _open_alert(
        fingerprint=fingerprint, rule_id=rule_id, rule_name=rule_name, device_id=device_id, severity=severity,
        message=message, value=value, observed_at=observed_at, details=details, channel_ids=channel_ids,
    )  # fmt: skip
    if opened is not None:
        return opened, True
    # An alert of this fingerprint is open (or another process opened it a moment ago): bump it.
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(fingerprint=fingerprint, state__in=OPEN_STATES).first()
        created = False
        if alert is None:
            from devices.models import Device

            device_uid = (
                Device.objects.filter(pk=device_id).values_list("uid", flat=True).first() if device_id is not None else None
            )
            try:
                with transaction.atomic():  # savepoint: a racing opener wins, we fold into its alert
                    alert = Alert.objects.create(
                        fingerprint=fingerprint,
                        rule_id=rule_id,
                        rule_name=(rule_name or "")[:200],
                        device_id=device_id if device_uid is not None else None,
                        device_uid=device_uid or "",
                        severity=severity,
                        message=message,
                        value=value,
                        details=details or {},
                        first_seen_at=observed_at,
                        last_seen_at=observed_at,
                    )
                created = True
            except IntegrityError:
                alert = Alert.objects.select_for_update().get(fingerprint=fingerprint, state__in=OPEN_STATES)
        if created:
            _record_event(alert, AlertEventKind.TRIGGERED, actor=actor, text=message, data={"value": value, "severity": severity})
            _notify(alert, "triggered", channel_ids)
            return alert, True

        escalated_from = alert.severity if SEVERITY_RANK[severity] < SEVERITY_RANK[alert.severity] else None
        alert.count += 1
        alert.value = value
        alert.message = message or alert.message
        if details is not None:
            alert.details = details
        alert.first_seen_at = min(alert.first_seen_at, observed_at)
        alert.last_seen_at = max(alert.last_seen_at, observed_at)
        fields = ["count", "value", "message", "details", "first_seen_at", "last_seen_at", "updated_at"]
        if escalated_from:
            alert.severity = severity
            fields.append("severity")
        interval = settings.ALERT_REPEAT_EVENT_INTERVAL_S
        log_repeat = not escalated_from and (
            alert.repeat_logged_at is None or (timezone.now() - alert.repeat_logged_at).total_seconds() >= interval
        )
        if log_repeat:
            alert.repeat_logged_at = timezone.now()
            fields.append("repeat_logged_at")
        alert.save(update_fields=fields)
        if escalated_from:
            _record_event(
                alert,
                AlertEventKind.ESCALATED,
                actor=actor,
                text=message,
                data={"from": escalated_from, "to": severity, "value": value},
            )
            _notify(alert, "escalated", channel_ids)
        elif log_repeat:
            _record_event(alert, AlertEventKind.REPEATED, actor=actor, data={"count": alert.count, "value": value})
        return alert, False


def clear_alert(
    *, rule_id: int | None, device_id: int | None, observed_at: datetime, value: float | None = None, actor=None
) -> Alert | None:
    """Auto-resolve the open alert of that fingerprint (recorded as auto-resolved in its
    timeline); None when none is open. One statement (see `_open_alert`)."""
    now = timezone.now()
    statement = _CLEAR_SQL.format(
        alert=_table(Alert), event=_table(AlertEvent), columns=_ALERT_COLUMNS,
        alert_columns=", ".join(f"a.{field.column}" for field in _ALERT_FIELDS),
    )  # fmt: skip
    params = {"fingerprint": alert_fingerprint(rule_id, device_id), "open": list(OPEN_STATES), "at": observed_at, "now": now,
              "kind": AlertEventKind.AUTO_RESOLVED, "value": json.dumps(value)}  # fmt: skip
    written = _write_alert(statement, params)
    if written is None:
        return None
    alert, (event_id, previous) = written
    event = AlertEvent(id=event_id, alert=alert, kind=AlertEventKind.AUTO_RESOLVED, at=alert.resolved_at, actor_email="",
                       text="", data={"value": value, "from": previous})  # fmt: skip
    _saved(alert, created=False, update_fields=frozenset({"state", "resolved_at", "auto_resolved", "updated_at"}))
    _saved(event, created=True)
    _push_event_on_commit(alert, event)
    return alert


# --- Human transitions --------------------------------------------------------------------------


def _lock(alert_id: int) -> Alert:
    return Alert.objects.select_for_update().get(pk=alert_id)


def _refuse(alert: Alert, target: str) -> ServiceConflict:
    how = " (auto-resolved)" if alert.auto_resolved else ""
    return ServiceConflict(
        f"Alert #{alert.pk} is {alert.state}{how}; it cannot be {target} now.",
        "alert_state_conflict",
        state=alert.state,
    )


@transaction.atomic
def acknowledge_alert(*, actor: User | None, client: ClientInfo | None, alert_id: int, note: str = "") -> tuple[Alert, bool]:
    """Acknowledge an open alert; (alert, changed). Already acknowledged: no change. Resolved: 409."""
    alert = _lock(alert_id)
    if alert.state == AlertState.ACKNOWLEDGED:
        return alert, False
    if not alert_can_move(alert.state, AlertState.ACKNOWLEDGED):
        raise _refuse(alert, "acknowledged")
    previous = alert.state
    alert.state = AlertState.ACKNOWLEDGED
    alert.acknowledged_at = timezone.now()
    alert.acknowledged_by = actor if getattr(actor, "pk", None) else None
    alert.save(update_fields=["state", "acknowledged_at", "acknowledged_by", "updated_at"])
    _record_event(alert, AlertEventKind.ACKNOWLEDGED, actor=actor, text=note, at=alert.acknowledged_at)
    record_audit(
        "alert.acknowledge", actor=actor, client=client, target=alert, changes=diff({"state": previous}, {"state": alert.state})
    )
    return alert, True


@transaction.atomic
def resolve_alert(*, actor: User | None, client: ClientInfo | None, alert_id: int, note: str = "") -> tuple[Alert, bool]:
    """Resolve an open alert by hand; (alert, changed). Already resolved: no change."""
    alert = _lock(alert_id)
    if alert.state == AlertState.RESOLVED:
        return alert, False
    if not alert_can_move(alert.state, AlertState.RESOLVED):
        raise _refuse(alert, "resolved")
    previous = alert.state
    alert.state = AlertState.RESOLVED
    alert.resolved_at = timezone.now()
    alert.resolved_by = actor if getattr(actor, "pk", None) else None
    alert.save(update_fields=["state", "resolved_at", "resolved_by", "updated_at"])
    _record_event(alert, AlertEventKind.RESOLVED, actor=actor, text=note, at=alert.resolved_at)
    record_audit(
        "alert.resolve", actor=actor, client=client, target=alert, changes=diff({"state": previous}, {"state": alert.state})
    )
    return alert, True


@transaction.atomic
def add_note(*, actor: User | None, client: ClientInfo | None, alert_id: int, text: str) -> AlertEvent:
    """A note on the alert's timeline (any state: post-mortem notes on resolved alerts too)."""
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": ["A note cannot be empty."]})
    alert = _lock(alert_id)
    event = _record_event(alert, AlertEventKind.NOTE, actor=actor, text=text)
    record_audit("alert.note", actor=actor, client=client, target=alert, metadata={"event_id": event.pk})
    return event


# --- Channels -----------------------------------------------------------------------------------

CHANNEL_FIELDS = ("name", "kind", "enabled", "config", "min_severity")


def _channel_snapshot(channel: NotificationChannel) -> dict[str, Any]:
    return {field: getattr(channel, field) for field in CHANNEL_FIELDS}


def _new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


@transaction.atomic
def create_channel(*, actor: User | None, client: ClientInfo | None, **fields: Any) -> tuple[NotificationChannel, str | None]:
    """(channel, secret): a webhook channel gets a signing secret, returned here and never again."""
    channel = NotificationChannel(**{key: value for key, value in fields.items() if key in CHANNEL_FIELDS})
    channel.full_clean()
    secret = _new_secret() if channel.kind == ChannelKind.WEBHOOK else None
    channel.secret = secret or ""
    channel.save()
    record_audit(
        "notification_channel.create", actor=actor, client=client, target=channel, changes=diff({}, _channel_snapshot(channel))
    )
    return channel, secret


@transaction.atomic
def update_channel(
    *, actor: User | None, client: ClientInfo | None, channel: NotificationChannel, **fields: Any
) -> NotificationChannel:
    channel = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
    before = _channel_snapshot(channel)
    if "kind" in fields and fields["kind"] != channel.kind:
        raise ValidationError({"kind": ["A channel's kind cannot change; create a new channel."]})
    for key, value in fields.items():
        if key in CHANNEL_FIELDS:
            setattr(channel, key, value)
    channel.full_clean()
    channel.save()
    record_audit(
        "notification_channel.update",
        actor=actor,
        client=client,
        target=channel,
        changes=diff(before, _channel_snapshot(channel)),
    )
    return channel


@transaction.atomic
def rotate_channel_secret(*, actor: User | None, client: ClientInfo | None, channel: NotificationChannel) -> str:
    channel = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
    if channel.kind != ChannelKind.WEBHOOK:
        raise ServiceConflict("Only webhook channels have a signing secret.", "no_secret")
    channel.secret = _new_secret()
    channel.save(update_fields=["secret", "updated_at"])
    record_audit("notification_channel.rotate_secret", actor=actor, client=client, target=channel)
    return channel.secret


@transaction.atomic
def delete_channel(*, actor: User | None, client: ClientInfo | None, channel: NotificationChannel) -> None:
    channel = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
    record_audit(
        "notification_channel.delete", actor=actor, client=client, target=channel, changes=diff(_channel_snapshot(channel), {})
    )
    channel.delete()


@transaction.atomic
def send_test_notification(
    *, actor: User | None, client: ClientInfo | None, channel: NotificationChannel
) -> NotificationDelivery:
    """A test message through the channel (enabled or not), delivered by the same task as alerts."""
    payload = {
        "event": "test",
        "tenant": connection.schema_name,
        "message": f"Test notification from channel {channel.name}.",
        "requested_by": getattr(actor, "email", ""),
        "at": timezone.now().isoformat(),
    }
    delivery = NotificationDelivery.objects.create(channel=channel, event_kind="test", payload=payload)
    record_audit("notification_channel.test", actor=actor, client=client, target=channel, metadata={"delivery_id": delivery.pk})
    _enqueue_deliveries([delivery])
    return delivery


# --- Delivering (the Celery task) ---------------------------------------------------------------

STALE_DELIVERY_AFTER = timedelta(minutes=10)


def requeue_stale_deliveries(*, schema: str, now: datetime) -> int:
    """Enqueue again deliveries nothing has touched for a while (their task was lost: broker
    down at commit, worker killed past its retries). The task itself is idempotent."""
    from alerting.tasks import deliver_notification

    with schema_context(schema):
        cutoff = now - STALE_DELIVERY_AFTER
        stale = list(
            NotificationDelivery.objects.unfinished()
            .filter(Q(last_attempt_at__lt=cutoff) | Q(last_attempt_at__isnull=True, created_at__lt=cutoff))
            .values_list("pk", flat=True)[:1000]
        )
        for pk in stale:
            deliver_notification.apply_async(args=[pk], headers={"_schema_name": schema})
    return len(stale)


class RetryDelivery(Exception):
    """The attempt failed in a way that may pass later; the task retries with backoff."""


@dataclass(frozen=True)
class AttemptOutcome:
    delivery_id: int
    status: str
    attempts: int
    error: str = ""


def attempt_delivery(*, delivery_pk: int, last_attempt: bool) -> AttemptOutcome | None:
    """One attempt at a delivery. None when it is gone or already final (stale task: nothing to do).
    Raises RetryDelivery when the attempt failed, may pass later, and retries are left."""
    from alerting.notifiers import DeliveryFailed, Envelope, get_notifier

    with transaction.atomic():
        delivery = NotificationDelivery.objects.select_for_update().select_related("channel").filter(pk=delivery_pk).first()
        if delivery is None or delivery.status in DELIVERY_FINAL:
            return None
        channel = delivery.channel
        delivery.attempts += 1
        delivery.last_attempt_at = timezone.now()
        if not channel.enabled and delivery.event_kind != "test":
            return _finish(delivery, DeliveryStatus.FAILED, error="The channel is disabled.")
        delivery.save(update_fields=["attempts", "last_attempt_at"])
    # The network call runs outside any transaction: no row stays locked while we wait.
    envelope = Envelope(
        delivery_id=delivery.pk, event=delivery.payload.get("event", delivery.event_kind), payload=delivery.payload
    )
    try:
        result = get_notifier(channel.kind).send(channel, envelope)
    except DeliveryFailed as failure:
        retry = failure.retryable and not last_attempt
        with transaction.atomic():
            outcome = _finish(
                delivery,
                DeliveryStatus.RETRYING if retry else DeliveryStatus.FAILED,
                error=failure.message,
                response_code=failure.response_code,
                response_excerpt=failure.response_excerpt,
            )
        if retry:
            raise RetryDelivery(failure.message) from failure
        return outcome
    with transaction.atomic():
        return _finish(
            delivery, DeliveryStatus.SUCCEEDED, response_code=result.response_code, response_excerpt=result.response_excerpt
        )


def _finish(
    delivery: NotificationDelivery, status: str, *, error: str = "", response_code: int | None = None, response_excerpt: str = ""
) -> AttemptOutcome:
    delivery.status = status
    delivery.error = error[:1000]
    delivery.response_code = response_code
    delivery.response_excerpt = (response_excerpt or "")[:2000]
    delivery.finished_at = timezone.now() if status in DELIVERY_FINAL else None
    delivery.save(
        update_fields=["status", "attempts", "last_attempt_at", "error", "response_code", "response_excerpt", "finished_at"]
    )
    if delivery.alert_id is not None and status in DELIVERY_FINAL:
        alert = Alert.objects.filter(pk=delivery.alert_id).first()
        if alert is not None:
            kind = AlertEventKind.NOTIFICATION_SENT if status == DeliveryStatus.SUCCEEDED else AlertEventKind.NOTIFICATION_FAILED
            _record_event(
                alert,
                kind,
                text=error[:500],
                data={
                    "delivery_id": delivery.pk,
                    "channel_id": delivery.channel_id,
                    "channel": delivery.channel.name,
                    "attempts": delivery.attempts,
                    "response_code": response_code,
                },
            )
    return AttemptOutcome(delivery_id=delivery.pk, status=status, attempts=delivery.attempts, error=delivery.error)
