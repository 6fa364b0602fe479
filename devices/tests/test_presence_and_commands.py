"""Bulk presence functions for the ingest service, and the command lifecycle over the real broker."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import audit_entries
from devices import services, tasks
from devices.models import CommandStatus, Device, DeviceCommand
from devices.tests.conftest import make_device, make_profile

pytestmark = pytest.mark.django_db


def _reload(device):
    with schema_context("alpha"):
        return Device.objects.get(pk=device.pk)


# --- presence -------------------------------------------------------------------------------------


# One statement per call whatever the batch size; django-tenants adds `SET search_path` around
# cursors and the transaction adds a savepoint, hence the bound of 6 round trips.
def test_mark_devices_seen_in_bulk(alpha, django_assert_max_num_queries):
    profile = make_profile("alpha")
    devices = [make_device("alpha", uid=f"seen-{i}", profile=profile) for i in range(50)]
    t0 = timezone.now() - timedelta(minutes=5)
    with schema_context("alpha"):
        Device.objects.filter(pk=devices[0].pk).update(status="online", status_changed_at=t0, last_seen_at=t0 + timedelta(minutes=1))
    seen = {device.pk: t0 + timedelta(seconds=i) for i, device in enumerate(devices)}
    with django_assert_max_num_queries(6):
        changed = services.mark_devices_seen(schema="alpha", seen=seen)
    assert changed == sorted(d.pk for d in devices[1:])
    first = _reload(devices[0])
    assert first.last_seen_at == t0 + timedelta(minutes=1), "never moves back"
    assert first.status_changed_at == t0
    second = _reload(devices[1])
    assert second.status == "online" and second.last_seen_at == t0 + timedelta(seconds=1) == second.status_changed_at
    # all online now: nothing changes status, last_seen moves forward
    later = {device.pk: t0 + timedelta(minutes=2) for device in devices}
    with django_assert_max_num_queries(6):
        assert services.mark_devices_seen(schema="alpha", seen=later) == []
    assert _reload(devices[0]).last_seen_at == t0 + timedelta(minutes=2)
    assert services.mark_devices_seen(schema="alpha", seen={}) == []
    assert services.mark_devices_seen(schema="alpha", seen={987654321: t0}) == []


def test_set_device_connection(alpha):
    device = make_device("alpha", uid="conn-1")
    now = timezone.now()
    assert services.set_device_connection(schema="alpha", device_uid="conn-1", online=True, at=now) is True
    assert services.set_device_connection(schema="alpha", device_uid="conn-1", online=True, at=now) is False  # idempotent
    assert _reload(device).status == "online"
    # a late will message from before the last change is ignored
    assert services.set_device_connection(schema="alpha", device_uid="conn-1", online=False, at=now - timedelta(seconds=5)) is False
    assert services.set_device_connection(schema="alpha", device_uid="conn-1", online=False, at=now + timedelta(seconds=1)) is True
    reloaded = _reload(device)
    assert reloaded.status == "offline" and reloaded.status_changed_at == now + timedelta(seconds=1)
    assert services.set_device_connection(schema="alpha", device_uid="nobody", online=True, at=now) is False


def test_mark_stale_devices_offline_uses_the_profile(alpha, django_assert_max_num_queries):
    quick, slow = make_profile("alpha", offline_after_s=60), make_profile("alpha", offline_after_s=3600)
    a = make_device("alpha", uid="stale-a", profile=quick)
    b = make_device("alpha", uid="stale-b", profile=slow)
    c = make_device("alpha", uid="stale-c", profile=quick)
    now = timezone.now()
    services.mark_devices_seen(schema="alpha", seen={a.pk: now - timedelta(seconds=120), b.pk: now - timedelta(seconds=120), c.pk: now})
    with django_assert_max_num_queries(6):
        assert services.mark_stale_devices_offline(schema="alpha", now=now) == [a.pk]
    assert _reload(a).status == "offline" and _reload(a).status_changed_at == now
    assert _reload(b).status == "online" and _reload(c).status == "online"
    assert services.mark_stale_devices_offline(schema="alpha", now=now) == []
    assert tasks.mark_stale_devices_offline()["alpha"] == 0


# --- commands -------------------------------------------------------------------------------------


def test_every_command_transition_pair():
    allowed = {
        ("pending", "delivered"),
        ("pending", "succeeded"),
        ("pending", "failed"),
        ("pending", "timed_out"),
        ("delivered", "succeeded"),
        ("delivered", "failed"),
        ("delivered", "timed_out"),
    }
    for current, target in itertools.product(CommandStatus.values, repeat=2):
        assert services.command_can_move(current, target) == ((current, target) in allowed), (current, target)


def _device_with_peer(alpha, mqtt_peers, uid):
    device = make_device("alpha", uid=uid)
    secret = alpha.client("admin").post(f"/api/v1/devices/{device.pk}/credentials").json()["secret"]
    peer = mqtt_peers(f"alpha/{uid}", secret)
    assert peer.accepted
    assert peer.subscribe(f"iiot/alpha/{uid}/commands") == ["Granted QoS 1"]
    return device, peer


def test_command_lifecycle_pending_delivered_succeeded(alpha, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    device, peer = _device_with_peer(alpha, mqtt_peers, "cmd-1")
    api = alpha.client("operator")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(f"/api/v1/devices/{device.pk}/commands", {"name": "set_speed", "params": {"rpm": 1200}, "timeout_s": 60}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending" and body["created_by_email"] == alpha.email("operator")
    assert len(callbacks) == 1  # publish_command is enqueued only after commit
    command_id = body["command_id"]
    assert audit_entries("alpha", action="device.command.send", metadata__command_id=command_id)

    with schema_context("alpha"):
        pk = DeviceCommand.objects.get(command_id=command_id).pk
        assert tasks.publish_command(pk) == "delivered"
        assert tasks.publish_command(pk) == "skipped"  # idempotent
    message = json.loads(peer.wait_for_message("iiot/alpha/cmd-1/commands"))
    assert message["command_id"] == command_id and message["name"] == "set_speed" and message["params"] == {"rpm": 1200}
    assert "sent_at" in message
    detail = api.get(f"/api/v1/devices/{device.pk}/commands/{command_id}").json()
    assert detail["status"] == "delivered" and detail["delivered_at"]

    # another device's answer, unknown ids and junk are ignored
    other = make_device("alpha", uid="cmd-other")
    assert services.record_command_response(schema="alpha", device_uid=other.uid, payload={"command_id": command_id, "status": "ok"}) is None
    assert services.record_command_response(schema="alpha", device_uid="cmd-1", payload={"command_id": str(uuid.uuid4()), "status": "ok"}) is None
    assert services.record_command_response(schema="alpha", device_uid="cmd-1", payload={"command_id": "junk"}) is None

    done = services.record_command_response(
        schema="alpha", device_uid="cmd-1", payload={"command_id": command_id, "status": "ok", "result": {"rpm": 1200}}
    )
    assert done is not None and done.status == "succeeded"
    # terminal: a repeat (or a contrary answer) changes nothing
    assert services.record_command_response(schema="alpha", device_uid="cmd-1", payload={"command_id": command_id, "status": "error"}) is None
    detail = api.get(f"/api/v1/devices/{device.pk}/commands/{command_id}").json()
    assert detail["status"] == "succeeded" and detail["response"] == {"rpm": 1200} and detail["completed_at"]
    listed = api.get(f"/api/v1/devices/{device.pk}/commands").json()["results"]
    assert [c["command_id"] for c in listed] == [command_id]


def test_command_failure_and_response_before_delivery(alpha, mqtt_broker):
    device = make_device("alpha", uid="cmd-fail")
    with schema_context("alpha"):
        command = services.send_command(actor=None, client=None, device=device, name="reboot")
    failed = services.record_command_response(
        schema="alpha", device_uid="cmd-fail", payload={"command_id": str(command.command_id), "status": "error", "error": "busy"}
    )
    assert failed.status == "failed" and failed.error == "busy" and failed.delivered_at is not None
    with schema_context("alpha"):
        assert tasks.publish_command(command.pk) == "skipped"  # terminal: not published


def test_command_timeout(alpha, mqtt_broker):
    device = make_device("alpha", uid="cmd-slow")
    with schema_context("alpha"):
        pending = services.send_command(actor=None, client=None, device=device, name="a", timeout_s=10)
        delivered = services.send_command(actor=None, client=None, device=device, name="b", timeout_s=10)
        fresh = services.send_command(actor=None, client=None, device=device, name="c", timeout_s=3600)
        DeviceCommand.objects.filter(pk=delivered.pk).update(status="delivered", delivered_at=timezone.now())
        created = pending.created_at
    assert services.expire_commands(schema="alpha", now=created + timedelta(seconds=5)) == 0
    assert services.expire_commands(schema="alpha", now=created + timedelta(seconds=11)) == 2
    assert services.expire_commands(schema="alpha", now=created + timedelta(seconds=12)) == 0  # idempotent
    with schema_context("alpha"):
        statuses = dict(DeviceCommand.objects.filter(device=device).values_list("name", "status"))
        assert statuses == {"a": "timed_out", "b": "timed_out", "c": "pending"}
        assert tasks.publish_command(pending.pk) == "skipped"
        # a pending command past its timeout is not published even before the beat expires it
        DeviceCommand.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - timedelta(hours=2))
        assert tasks.publish_command(fresh.pk) == "expired"
    late = services.record_command_response(schema="alpha", device_uid="cmd-slow", payload={"command_id": str(pending.command_id), "status": "ok"})
    assert late is None
    assert tasks.expire_commands()["alpha"] == 1


def test_command_to_disabled_device_is_refused(alpha):
    device = make_device("alpha", uid="cmd-off", enabled=False)
    response = alpha.client("operator").post(f"/api/v1/devices/{device.pk}/commands", {"name": "x"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "device_disabled"


def test_command_validation(alpha):
    device = make_device("alpha")
    api = alpha.client("operator")
    response = api.post(f"/api/v1/devices/{device.pk}/commands", {"name": "", "timeout_s": 0}, format="json")
    assert response.status_code == 400
    assert {"name", "timeout_s"} <= set(response.json()["error"]["fields"])
