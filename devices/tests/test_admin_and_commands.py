"""Tenant admin (services behind the actions) and the broker management commands."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django_tenants.utils import schema_context

from conftest import PASSWORD, audit_entries
from devices import broker
from devices.models import Device, DeviceCredential
from devices.tests.conftest import make_device
from iiot.testing.mosquitto import free_port

pytestmark = pytest.mark.django_db


def _login(client, handle):
    response = client.post("/admin/login/", {"username": handle.email("admin"), "password": PASSWORD}, HTTP_HOST=handle.domain)
    assert response.status_code == 302


def test_admin_lists_filters_and_runs_actions_through_services(alpha, client, mqtt_broker, mqtt_peers, django_capture_on_commit_callbacks):
    device = make_device("alpha", uid="adm-1")
    other = make_device("alpha", uid="adm-2")
    _login(client, alpha)
    page = client.get("/admin/devices/device/?status__exact=unknown&q=adm-", HTTP_HOST=alpha.domain)
    assert page.status_code == 200 and b"adm-1" in page.content and b"adm-2" in page.content

    response = client.post(
        "/admin/devices/device/",
        {"action": "rotate_credentials", "_selected_action": [device.pk]},
        HTTP_HOST=alpha.domain,
        follow=True,
    )
    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    secret = text.split("new secret ")[1].split(" ")[0]
    assert mqtt_peers("alpha/adm-1", secret).accepted

    with django_capture_on_commit_callbacks(execute=True):
        client.post("/admin/devices/device/", {"action": "disable_devices", "_selected_action": [device.pk, other.pk]}, HTTP_HOST=alpha.domain)
    with schema_context("alpha"):
        assert not Device.objects.filter(pk__in=[device.pk, other.pk], enabled=True).exists()
    assert not mqtt_peers("alpha/adm-1", secret).accepted
    assert len(audit_entries("alpha", action="device.update", changes__enabled=[True, False])) >= 2
    assert audit_entries("alpha", action="device.credential.issue", target_id=str(device.pk))


def test_public_admin_has_no_devices(platform, db, client):
    client.post("/admin/login/", {"username": "staff@platform.example.com", "password": PASSWORD}, HTTP_HOST="localhost")
    assert client.get("/admin/devices/device/", HTTP_HOST="localhost").status_code in (403, 404)


def test_mqtt_broker_config_command_is_idempotent(tmp_path, settings):
    port = free_port()
    call_command("mqtt_broker_config", "--dir", str(tmp_path), "--port", str(port))
    dynsec = json.loads((tmp_path / "dynamic-security.json").read_text())
    usernames = {c["username"] for c in dynsec["clients"]}
    assert usernames == {settings.MQTT_ADMIN_USERNAME, settings.MQTT_SERVICE_USERNAME}
    assert dynsec["defaultACLAccess"]["publishClientSend"] is False
    first = (tmp_path / "dynamic-security.json").read_text()
    call_command("mqtt_broker_config", "--dir", str(tmp_path), "--port", str(port))
    assert (tmp_path / "dynamic-security.json").read_text() == first
    assert f"listener {port} 127.0.0.1" in (tmp_path / "mosquitto.conf").read_text()


def test_mqtt_sync_reports_devices_it_cannot_restore(alpha, mqtt_broker, capsys):
    device = make_device("alpha", uid="sync-1")
    with schema_context("alpha"):
        DeviceCredential.objects.create(device=device, secret_hash="0" * 64, secret_prefix="abcdef")
    call_command("mqtt_sync")
    out = capsys.readouterr().out
    assert "alpha/sync-1" in out and "rotate" in out
    with broker.DynsecClient() as dynsec:
        roles = dynsec.execute([{"command": "getRole", "rolename": broker.device_role_name("alpha", "sync-1")}])
    assert roles[0]["data"]["role"]["rolename"] == "device:alpha/sync-1"
