"""Broker-enforced identity on a real Mosquitto with the dynamic security plugin, as shipped."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from django.conf import settings
from django_tenants.utils import schema_context

from conftest import audit_entries
from devices import broker, services
from devices.broker_config import hash_password, password_matches, write_broker_config
from devices.models import DeviceCredential
from devices.tests.conftest import connect_peer, make_device
from iiot.testing.mosquitto import free_port

pytestmark = pytest.mark.django_db


def _issue(handle, device, role="admin"):
    response = handle.client(role).post(f"/api/v1/devices/{device.pk}/credentials")
    assert response.status_code == 201, response.content
    return response.json()


def test_credential_is_shown_once_and_only_its_hash_stored(alpha, mqtt_broker, mqtt_peers):
    device = make_device("alpha", uid="cred-1")
    body = _issue(alpha, device)
    secret = body["secret"]
    assert len(secret) >= 40
    assert body["mqtt"]["username"] == "alpha/cred-1"
    assert body["mqtt"]["port"] == mqtt_broker.port and body["mqtt"]["host"] == "127.0.0.1"
    assert body["mqtt"]["topics"] == {
        "telemetry": "iiot/alpha/cred-1/telemetry",
        "attributes": "iiot/alpha/cred-1/attributes",
        "status": "iiot/alpha/cred-1/status",
        "commands": "iiot/alpha/cred-1/commands",
        "commands_response": "iiot/alpha/cred-1/commands/response",
        "shared_attributes": "iiot/alpha/cred-1/attributes/shared",
    }
    with schema_context("alpha"):
        credential = DeviceCredential.objects.get(device=device, status="active")
        assert credential.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert credential.secret_prefix == secret[:6]
        stored = json.dumps(list(DeviceCredential.objects.filter(device=device).values()), default=str)
        assert secret not in stored
    # never shown again
    api = alpha.client("admin")
    assert secret not in api.get(f"/api/v1/devices/{device.pk}").content.decode()
    listed = api.get(f"/api/v1/devices/{device.pk}/credentials").json()
    assert [c["prefix"] for c in listed] == [secret[:6]] and secret not in json.dumps(listed)
    assert api.get(f"/api/v1/devices/{device.pk}").json()["credential"]["prefix"] == secret[:6]
    assert [e.action for e in audit_entries("alpha", target_id=str(device.pk), action__startswith="device.credential")] == [
        "device.credential.issue"
    ]
    assert services.authenticate_device(schema="alpha", device_uid="cred-1", secret=secret).pk == device.pk
    assert services.authenticate_device(schema="alpha", device_uid="cred-1", secret=secret + "x") is None
    assert mqtt_peers("alpha/cred-1", secret).accepted


def test_create_device_with_issue_credential(alpha, mqtt_broker, mqtt_peers):
    profile = make_device("alpha").profile
    response = alpha.client("admin").post(
        "/api/v1/devices", {"uid": "born-with-key", "name": "x", "profile": profile.pk, "issue_credential": True}, format="json"
    )
    assert response.status_code == 201, response.content
    secret = response.json()["secret"]["secret"]
    assert response.json()["credential"]["prefix"] == secret[:6]
    assert mqtt_peers("alpha/born-with-key", secret).accepted


def test_rotation_invalidates_the_old_secret_at_the_broker(alpha, mqtt_broker, mqtt_peers):
    device = make_device("alpha", uid="rot-1")
    old = _issue(alpha, device)["secret"]
    connected = mqtt_peers("alpha/rot-1", old)
    assert connected.accepted
    new = _issue(alpha, device, role="developer")["secret"]
    assert new != old
    assert connected.disconnected.wait(5), "the session opened with the old secret must be cut"
    assert not mqtt_peers("alpha/rot-1", old).accepted
    assert mqtt_peers("alpha/rot-1", new).accepted
    with schema_context("alpha"):
        assert list(DeviceCredential.objects.filter(device=device).values_list("status", flat=True)) == ["active", "revoked"]
    assert audit_entries("alpha", target_id=str(device.pk), action="device.credential.rotate")


def test_revocation_cuts_off_a_connected_device(alpha, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    device = make_device("alpha", uid="rev-1")
    secret = _issue(alpha, device)["secret"]
    peer = mqtt_peers("alpha/rev-1", secret)
    assert peer.accepted
    with django_capture_on_commit_callbacks(execute=True):
        response = alpha.client("admin").post(f"/api/v1/devices/{device.pk}/credentials/revoke")
    assert response.status_code == 200 and response.json()[0]["status"] == "revoked"
    assert peer.disconnected.wait(5)
    assert not mqtt_peers("alpha/rev-1", secret).accepted
    with schema_context("alpha"):
        assert not DeviceCredential.objects.filter(device=device, status="active").exists()
    # idempotent
    assert alpha.client("admin").post(f"/api/v1/devices/{device.pk}/credentials/revoke").json() == []
    assert len(audit_entries("alpha", target_id=str(device.pk), action="device.credential.revoke")) == 1


def test_disable_and_delete_cut_off_the_device(alpha, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    device = make_device("alpha", uid="dis-1")
    secret = _issue(alpha, device)["secret"]
    peer = mqtt_peers("alpha/dis-1", secret)
    api = alpha.client("admin")
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(f"/api/v1/devices/{device.pk}", {"enabled": False}, format="json").status_code == 200
    assert peer.disconnected.wait(5)
    assert not mqtt_peers("alpha/dis-1", secret).accepted
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(f"/api/v1/devices/{device.pk}", {"enabled": True}, format="json").status_code == 200
    peer = mqtt_peers("alpha/dis-1", secret)
    assert peer.accepted
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/devices/{device.pk}").status_code == 204
    assert peer.disconnected.wait(5)
    with broker.DynsecClient() as dynsec:
        assert "alpha/dis-1" not in {c.username for c in broker.list_device_clients(dynsec=dynsec)}


def test_device_may_use_only_its_own_topics(alpha, beta, mqtt_broker, mqtt_peers):
    mine = make_device("alpha", uid="acl-mine")
    other = make_device("alpha", uid="acl-other")
    foreign = make_device("beta", uid="acl-mine")  # same uid in another tenant
    secret = _issue(alpha, mine)["secret"]
    _issue(alpha, other)
    _issue(beta, foreign)
    service = mqtt_peers(mqtt_broker.service_username, mqtt_broker.service_password)
    assert service.accepted
    assert service.subscribe("iiot/#") == ["Granted QoS 1"]
    forbidden = [
        "iiot/alpha/acl-other/telemetry",
        "iiot/beta/acl-mine/telemetry",
        "iiot/alpha/acl-other/commands",
        "iiot/alpha/acl-mine/commands",  # only the platform sends commands
        "iiot/alpha/acl-mine/elsewhere",
        "other/topic",
    ]
    for topic in forbidden:
        intruder = mqtt_peers("alpha/acl-mine", secret)
        assert intruder.accepted
        intruder.client.publish(topic, b'{"temperature": 99}', qos=1)
        # Mosquitto 2.0 with dynsec drops the connection of a client publishing outside its ACL.
        assert intruder.disconnected.wait(5), topic
        intruder.close()
    device = mqtt_peers("alpha/acl-mine", secret)
    assert device.accepted
    device.publish("iiot/alpha/acl-mine/telemetry", b'{"temperature": 21}')
    assert service.wait_for_message("iiot/alpha/acl-mine/telemetry") == b'{"temperature": 21}'
    time.sleep(0.3)  # anything forbidden would have arrived before or with the allowed one
    assert {topic for topic, _ in service.messages} == {"iiot/alpha/acl-mine/telemetry"}

    # subscribing: its own command topic only
    assert device.subscribe("iiot/alpha/acl-mine/commands") == ["Granted QoS 1"]
    assert device.subscribe("iiot/alpha/acl-other/commands")[0] != "Granted QoS 1"
    assert device.subscribe("iiot/beta/acl-mine/commands")[0] != "Granted QoS 1"
    assert device.subscribe("iiot/alpha/#")[0] != "Granted QoS 1"
    broker.publish_qos1("iiot/alpha/acl-other/commands", b"for the other one")
    broker.publish_qos1("iiot/alpha/acl-mine/commands", b"for me")
    assert device.wait_for_message("iiot/alpha/acl-mine/commands") == b"for me"
    time.sleep(0.2)
    assert [t for t, _ in device.messages] == ["iiot/alpha/acl-mine/commands"]


def test_service_account_can_use_a_shared_subscription(mqtt_broker, mqtt_peers):
    service = mqtt_peers(mqtt_broker.service_username, mqtt_broker.service_password)
    assert service.subscribe("$share/ingest/iiot/#") == ["Granted QoS 1"]
    assert service.subscribe("$SYS/#")[0] != "Granted QoS 1"


def test_suspended_tenant_devices_are_refused(alpha, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    from tenants.services import reactivate_tenant, suspend_tenant

    device = make_device("alpha", uid="susp-1")
    disabled = make_device("alpha", uid="susp-off")
    secret = _issue(alpha, device)["secret"]
    off_secret = _issue(alpha, disabled)["secret"]
    with django_capture_on_commit_callbacks(execute=True):
        alpha.client("admin").patch(f"/api/v1/devices/{disabled.pk}", {"enabled": False}, format="json")
    peer = mqtt_peers("alpha/susp-1", secret)
    assert peer.accepted
    with django_capture_on_commit_callbacks(execute=True):
        suspend_tenant(actor=None, client=None, tenant=alpha.tenant, reason="unpaid")
    assert peer.disconnected.wait(5)
    assert not mqtt_peers("alpha/susp-1", secret).accepted
    # while suspended, a rotated credential is pushed disabled
    with django_capture_on_commit_callbacks(execute=True):
        reactivate_tenant(actor=None, client=None, tenant=alpha.tenant)
    assert mqtt_peers("alpha/susp-1", secret).accepted
    assert not mqtt_peers("alpha/susp-off", off_secret).accepted, "a disabled device stays refused after reactivation"


def test_broker_down_gives_503_and_stores_nothing(alpha, mqtt_broker):
    device = make_device("alpha", uid="down-1")
    saved = settings.MQTT_URL
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        response = alpha.client("admin").post(f"/api/v1/devices/{device.pk}/credentials")
        created = alpha.client("admin").post(
            "/api/v1/devices", {"uid": "down-2", "name": "x", "profile": device.profile_id, "issue_credential": True}, format="json"
        )
    finally:
        settings.MQTT_URL = saved
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert "nothing was stored" in response.json()["error"]["message"]
    assert created.status_code == 503
    with schema_context("alpha"):
        assert not DeviceCredential.objects.filter(device__uid__in=["down-1", "down-2"]).exists()
        from devices.models import Device

        assert not Device.objects.filter(uid="down-2").exists()
    assert not audit_entries("alpha", target_id=str(device.pk), action__startswith="device.credential")


def test_broker_restart_keeps_identities(alpha, mqtt_broker, mqtt_peers):
    device = make_device("alpha", uid="persist-1")
    secret = _issue(alpha, device)["secret"]
    mqtt_broker.restart()
    assert connect_peer(mqtt_broker, "alpha/persist-1", secret).accepted


def test_reconcile_disables_clients_without_active_credential(alpha, mqtt_broker, mqtt_peers):
    device = make_device("alpha", uid="rec-1")
    secret = _issue(alpha, device)["secret"]
    with schema_context("alpha"):
        # revoked behind the broker's back (say, an on_commit hook that never ran)
        DeviceCredential.objects.filter(device=device).update(status="revoked", revoked_at="2026-01-01T00:00:00Z")
    peer = mqtt_peers("alpha/rec-1", secret)
    assert peer.accepted
    result = services.reconcile_broker()
    assert "alpha/rec-1" in result.disabled
    assert peer.disconnected.wait(5)
    assert not mqtt_peers("alpha/rec-1", secret).accepted
    assert "alpha/rec-1" not in services.reconcile_broker().disabled  # idempotent


def test_dynsec_password_hash_matches_mosquitto_ctrl(tmp_path):
    files = write_broker_config(tmp_path, port=free_port(), admin_username="adm", admin_password="adm-pass-1")
    data = json.loads(files.dynsec_file.read_text())
    admin = next(c for c in data["clients"] if c["username"] == "adm")
    assert password_matches(admin, "adm-pass-1") and not password_matches(admin, "wrong")
    assert password_matches(hash_password("x"), "x")
    before = files.dynsec_file.read_text()
    write_broker_config(tmp_path, port=files.port, admin_username="adm", admin_password="adm-pass-1")
    assert files.dynsec_file.read_text() == before  # idempotent
    conf = files.config_file.read_text()
    assert f"listener {files.port} 127.0.0.1" in conf and "allow_anonymous false" in conf and "max_queued_messages 0" in conf


def test_shared_attributes_are_pushed_retained_to_the_device_only(alpha, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    from devices import tasks

    profile = make_device("alpha").profile
    with schema_context("alpha"):
        profile = services.update_profile(actor=None, client=None, profile=profile, default_attributes={"sample_rate_s": 5})
    with django_capture_on_commit_callbacks() as callbacks:
        device = make_device("alpha", uid="shared-1", profile=profile)
    # the profile's default shared attributes are pushed after commit
    assert sum("_push_shared_attributes" in callback.__qualname__ for callback in callbacks) == 1
    other = make_device("alpha", uid="shared-2", profile=profile)
    secret, other_secret = _issue(alpha, device)["secret"], _issue(alpha, other)["secret"]
    topic = "iiot/alpha/shared-1/attributes/shared"

    peer = mqtt_peers("alpha/shared-1", secret)
    assert peer.subscribe(topic) == ["Granted QoS 1"]
    # Another device may not subscribe to it, nor read it through a wildcard.
    intruder = mqtt_peers("alpha/shared-2", other_secret)
    assert intruder.subscribe(topic)[0] != "Granted QoS 1"
    assert intruder.subscribe("iiot/alpha/+/attributes/shared")[0] != "Granted QoS 1"

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alpha.client("admin").put(
            f"/api/v1/devices/{device.pk}/attributes", {"scope": "shared", "attributes": {"setpoint": 42.5, "mode": "eco"}}, format="json"
        )
    assert response.status_code == 200, response.content
    assert sum("_push_shared_attributes" in callback.__qualname__ for callback in callbacks) == 1  # only after commit
    with schema_context("alpha"):
        assert tasks.publish_shared_attributes(device.pk) == "published"
    payload = peer.wait_for_message(topic)
    assert payload is not None
    assert json.loads(payload)["attributes"] == {"mode": "eco", "sample_rate_s": 5, "setpoint": 42.5}

    # Retained: a device that (re)connects later gets the current set as soon as it subscribes.
    late = mqtt_peers("alpha/shared-1", secret)
    assert late.subscribe(topic) == ["Granted QoS 1"]
    assert json.loads(late.wait_for_message(topic))["attributes"]["setpoint"] == 42.5
    assert intruder.wait_for_message(topic, timeout=0.5) is None

    # Server attributes are not the device's business: nothing is enqueued for them.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alpha.client("admin").put(f"/api/v1/devices/{device.pk}/attributes", {"scope": "server", "attributes": {"note": "x"}}, format="json")
    assert not any("_push_shared_attributes" in callback.__qualname__ for callback in callbacks)

    # Deleting the device clears the retained message.
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        services.delete_device(actor=None, client=None, device=device)
    watcher = mqtt_peers(settings.MQTT_SERVICE_USERNAME, settings.MQTT_SERVICE_PASSWORD)
    assert watcher.subscribe(topic) == ["Granted QoS 1"]
    assert watcher.wait_for_message(topic, timeout=1.0) is None


def test_gone_device_shared_attributes_task_is_quiet(alpha, mqtt_broker):
    from devices import tasks

    with schema_context("alpha"):
        assert tasks.publish_shared_attributes(987654321) == "skipped"


def test_roles_from_an_older_release_gain_the_newer_acls(alpha, mqtt_broker, mqtt_peers):
    """A device role created without the shared-attributes ACLs (an older release) gets them from
    ensure_device_roles; running it again is harmless."""
    device = make_device("alpha", uid="old-role")
    secret = _issue(alpha, device)["secret"]
    role = broker.device_role_name("alpha", "old-role")
    topic = broker.device_topics("alpha", "old-role").shared_attributes
    with broker.DynsecClient() as dynsec:
        for acltype in ("subscribeLiteral", "publishClientReceive"):
            dynsec.execute([{"command": "removeRoleACL", "rolename": role, "acltype": acltype, "topic": topic}])
    assert mqtt_peers("alpha/old-role", secret).subscribe(topic)[0] != "Granted QoS 1"
    with broker.DynsecClient() as dynsec:
        broker.ensure_device_roles([("alpha", "old-role")], dynsec=dynsec)
        broker.ensure_device_roles([("alpha", "old-role")], dynsec=dynsec)
    assert mqtt_peers("alpha/old-role", secret).subscribe(topic) == ["Granted QoS 1"]
