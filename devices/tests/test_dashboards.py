"""Fleet overview and device page: content, filters, permissions, tenant isolation, and query counts
with 1,000 devices (in the operator pages and the admin)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from django.conf import settings
from django.test import Client
from django_tenants.utils import schema_context

from devices.models import Device, DeviceCommand, DeviceStatus
from devices.tests.conftest import make_device, make_profile

pytestmark = pytest.mark.django_db


def web_client(handle, role: str | None) -> Client:
    client = Client(HTTP_HOST=handle.domain)
    if role is not None:
        with schema_context(handle.slug):
            client.force_login(handle.users[role])
    return client


@pytest.fixture
def plant(alpha):
    from telemetry.storage import Point, store_latest

    profile = make_profile("alpha", metrics=[{"name": "temperature", "unit": "°C"}, {"name": "pressure", "unit": "bar"}])
    boiler = make_device("alpha", uid="boiler-1", profile=profile, labels={"area": "boilers"}, location="Hall A")
    pump = make_device("alpha", uid="pump-7", profile=make_profile("alpha", name="pumps", metrics=[{"name": "temperature"}]))
    with schema_context("alpha"):
        Device.objects.filter(pk=boiler.pk).update(status=DeviceStatus.ONLINE)
        from telemetry.models import Metric

        temperature = Metric.objects.get(name="temperature")
    store_latest(redis.Redis.from_url(settings.REDIS_URL), "alpha",
                 [Point(device_id=boiler.pk, metric_id=temperature.pk, ts=datetime.now(UTC), value=73.25)])  # fmt: skip
    return {"profile": profile, "boiler": boiler, "pump": pump}


def test_fleet_needs_login_and_devices_read(alpha, plant):
    response = Client(HTTP_HOST=alpha.domain).get("/devices/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    with schema_context("alpha"):
        from accounts import services

        nobody = services.create_user(actor=None, client=None, email="nobody@alpha.example.com", password="Correct-Horse-Battery-9", roles=[])
    client = Client(HTTP_HOST=alpha.domain)
    with schema_context("alpha"):
        client.force_login(nobody)
    assert client.get("/devices/").status_code == 403
    assert client.get(f"/devices/{plant['boiler'].pk}/").status_code == 403


def test_fleet_shows_devices_status_values_and_open_alerts(alpha, plant):
    from alerting import services as alerting

    with schema_context("alpha"):
        alerting.raise_alert(rule_id=None, rule_name="too hot", device_id=plant["boiler"].pk, severity="major", message="hot",
                             value=73.25, observed_at=datetime.now(UTC))  # fmt: skip
    response = web_client(alpha, "viewer").get("/devices/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "boiler-1" in html and "pump-7" in html
    assert "73.25" in html and "°C" in html
    row = html[html.index(f'data-device="{plant["boiler"].pk}"'):]
    row = row[: row.index("</tr>")]
    assert "status-online" in row and "area:boilers" in row and 'data-alerts>1<' in row
    assert "/static/vendor/htmx/htmx.min.js" in html and "/static/js/fleet.js" in html
    assert "http://" not in html and "https://" not in html  # no CDN


@pytest.mark.parametrize(
    ("query", "expected", "absent"),
    [
        ("q=boiler", "boiler-1", "pump-7"),
        ("q=hall+a", "boiler-1", "pump-7"),
        ("label=area:boilers", "boiler-1", "pump-7"),
        ("label=area", "boiler-1", "pump-7"),
        ("status=online", "boiler-1", "pump-7"),
        ("status=unknown", "pump-7", "boiler-1"),
    ],
)
def test_fleet_filters(alpha, plant, query, expected, absent):
    html = web_client(alpha, "viewer").get(f"/devices/?{query}").content.decode()
    assert expected in html and absent not in html


def test_fleet_filter_by_profile_and_htmx_partial(alpha, plant):
    client = web_client(alpha, "viewer")
    response = client.get(f"/devices/?profile={plant['profile'].pk}", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html  # just the rows
    assert "boiler-1" in html and "pump-7" not in html
    assert client.get("/devices/?status=exploded").status_code == 200  # bad filter: ignored, not a 500


def test_device_page_for_operator_has_the_command_form_and_sends(alpha, plant):
    client = web_client(alpha, "operator")
    device = plant["boiler"]
    html = client.get(f"/devices/{device.pk}/").content.decode()
    assert "Send command" in html and 'data-range="30d"' in html and 'data-range="15m"' in html
    assert "temperature" in html and "73.25" in html
    response = client.post(f"/devices/{device.pk}/commands", {"name": "reboot", "params": '{"delay": 5}', "timeout_s": "30"})
    assert response.status_code == 200
    with schema_context("alpha"):
        command = DeviceCommand.objects.get(device_id=device.pk)
    assert command.name == "reboot" and command.params == {"delay": 5} and command.created_by_email == alpha.email("operator")
    assert "reboot" in response.content.decode()
    bad = client.post(f"/devices/{device.pk}/commands", {"name": "reboot now!", "params": "{nope", "timeout_s": "0"})
    assert bad.status_code == 422
    text = bad.content.decode()
    assert "Not valid JSON" in text and "Letters, digits" in text


def test_viewer_sees_no_write_controls_and_is_refused_anyway(alpha, plant):
    client = web_client(alpha, "viewer")
    device = plant["boiler"]
    html = client.get(f"/devices/{device.pk}/").content.decode()
    assert "Send command" not in html and "data-write" not in html
    response = client.post(f"/devices/{device.pk}/commands", {"name": "reboot", "timeout_s": "30"})
    assert response.status_code == 403
    with schema_context("alpha"):
        assert not DeviceCommand.objects.filter(device_id=device.pk).exists()


def test_another_tenants_device_is_not_shown(alpha, beta, plant):
    secret = make_device("beta", uid="beta-secret-device")
    response = web_client(alpha, "admin").get(f"/devices/{secret.pk}/")
    assert b"beta-secret-device" not in response.content
    with schema_context("alpha"):
        exists_in_alpha = Device.objects.filter(pk=secret.pk).exists()
    assert response.status_code == (200 if exists_in_alpha else 404)
    assert web_client(alpha, "admin").get("/devices/999999/").status_code == 404
    assert b"beta-secret-device" not in web_client(alpha, "admin").get("/devices/?q=beta-secret").content


@pytest.fixture
def thousand_devices(alpha):
    profile = make_profile("alpha", name="bulk", metrics=[{"name": "temperature"}, {"name": "humidity"}, {"name": "pressure"}])
    with schema_context("alpha"):
        Device.objects.bulk_create(
            Device(uid=f"bulk-{n:04d}", name=f"Bulk {n}", profile=profile, labels={"line": str(n % 7)}, status=DeviceStatus.ONLINE)
            for n in range(1000)
        )
    return profile


# Statements per page whatever the number of devices: 11 queries on the fleet page (domain, user,
# roles, count, page, profile metrics, latest-values fallback, sparklines, open alerts, status
# counts, profiles), each preceded by django-tenants' `SET search_path`.
MAX_STATEMENTS = 24


def test_fleet_and_device_pages_with_1000_devices_query_count_and_time(alpha, thousand_devices, django_assert_max_num_queries):
    client = web_client(alpha, "admin")
    client.get("/devices/")  # warm-up (templates, connections)
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get("/devices/")
    assert response.status_code == 200 and b"bulk-0000" in response.content and b"page 1 of" in response.content
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get("/devices/?label=line:3")
    assert response.status_code == 200 and b"bulk-0003" in response.content and b"bulk-0004" not in response.content
    with schema_context("alpha"):
        device = Device.objects.filter(uid="bulk-0500").first()
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get(f"/devices/{device.pk}/")
    assert response.status_code == 200
    # Server time with 1,000 devices is measured by `make bench` (page_*_ms), not asserted here.


def test_admin_device_and_profile_lists_with_1000_devices(alpha, thousand_devices, django_assert_max_num_queries):
    client = Client(HTTP_HOST=alpha.domain)
    with schema_context("alpha"):
        client.force_login(alpha.users["admin"])
    client.get("/admin/devices/device/")  # warm-up
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get("/admin/devices/device/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "1000 devices" in html or "1,000 devices" in html  # the change list's total
    assert "bulk-0000" in html
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get("/admin/devices/device/?q=bulk-0999")
    assert response.status_code == 200 and "bulk-0999" in response.content.decode()
    with django_assert_max_num_queries(MAX_STATEMENTS):
        response = client.get("/admin/devices/deviceprofile/")
    assert response.status_code == 200 and "bulk" in response.content.decode()
