"""Device registry API: CRUD, validation with field errors, filters, RBAC, tenant isolation, query counts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from conftest import audit_entries
from devices.models import Device, DeviceAttribute, DeviceCommand, DeviceProfile, ProfileMetric
from devices.tests.conftest import make_device, make_profile
from telemetry.models import Metric

pytestmark = pytest.mark.django_db


def _profile_body(name="Pump", **extra):
    return {
        "name": name,
        "offline_after_s": 120,
        "metrics": [
            {"name": "temperature", "unit": "°C", "min": -40, "max": 150},
            {"name": "vibration", "unit": "mm/s"},
        ],
        **extra,
    }


# --- profiles -------------------------------------------------------------------------------------


def test_profile_crud_with_nested_metrics_get_or_creates_catalogue(alpha):
    api = alpha.client("admin")
    response = api.post("/api/v1/device-profiles", _profile_body(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["metrics"] == [
        {"name": "temperature", "unit": "°C", "min": -40.0, "max": 150.0},
        {"name": "vibration", "unit": "mm/s", "min": None, "max": None},
    ]
    with schema_context("alpha"):
        assert set(Metric.objects.filter(name__in=["temperature", "vibration"]).values_list("name", flat=True)) == {"temperature", "vibration"}
    # a second profile reuses the catalogue entry
    assert api.post("/api/v1/device-profiles", _profile_body("Fan", metrics=[{"name": "temperature"}]), format="json").status_code == 201
    with schema_context("alpha"):
        assert Metric.objects.filter(name="temperature").count() == 1

    pid = body["id"]
    response = api.patch(f"/api/v1/device-profiles/{pid}", {"metrics": [{"name": "pressure", "unit": "bar", "min": 0, "max": 16}]}, format="json")
    assert response.status_code == 200, response.content
    assert [m["name"] for m in response.json()["metrics"]] == ["pressure"]
    assert api.get(f"/api/v1/device-profiles/{pid}").json()["offline_after_s"] == 120
    assert api.delete(f"/api/v1/device-profiles/{pid}").status_code == 204
    assert [e.action for e in audit_entries("alpha", target_type="devices.deviceprofile", target_id=str(pid))] == [
        "device_profile.create",
        "device_profile.update",
        "device_profile.delete",
    ]


def test_profile_validation_errors(alpha):
    api = alpha.client("admin")
    response = api.post("/api/v1/device-profiles", _profile_body(metrics=[{"name": "t", "min": 5, "max": 1}]), format="json")
    assert response.status_code == 400
    assert "metrics.0.max" in response.json()["error"]["fields"]
    response = api.post("/api/v1/device-profiles", _profile_body(metrics=[{"name": "9bad"}]), format="json")
    assert "metrics.0.name" in response.json()["error"]["fields"]
    response = api.post("/api/v1/device-profiles", _profile_body(metrics=[{"name": "a"}, {"name": "a"}]), format="json")
    assert "metrics" in response.json()["error"]["fields"]
    assert api.post("/api/v1/device-profiles", _profile_body("Same"), format="json").status_code == 201
    response = api.post("/api/v1/device-profiles", _profile_body("Same"), format="json")
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]


def test_profile_in_use_cannot_be_deleted(alpha):
    device = make_device("alpha")
    response = alpha.client("admin").delete(f"/api/v1/device-profiles/{device.profile_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "profile_in_use"


# --- devices --------------------------------------------------------------------------------------


def test_device_crud_and_audit(alpha):
    profile = make_profile("alpha", default_attributes={"sample_rate_s": 10})
    api = alpha.client("developer")
    response = api.post(
        "/api/v1/devices",
        {"uid": "pump-1", "name": "Pump 1", "profile": profile.pk, "labels": {"line": "2"}, "location": "Hall A"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["uid"] == "pump-1" and body["status"] == "unknown" and body["credential"] is None
    assert body["mqtt_username"] == "alpha/pump-1"
    assert "secret" not in body
    device_id = body["id"]
    with schema_context("alpha"):
        assert DeviceAttribute.objects.get(device_id=device_id, scope="shared", key="sample_rate_s").value == 10

    response = api.patch(f"/api/v1/devices/{device_id}", {"name": "Pump one", "enabled": False}, format="json")
    assert response.status_code == 200 and response.json()["name"] == "Pump one" and response.json()["enabled"] is False
    response = api.put(
        f"/api/v1/devices/{device_id}", {"uid": "pump-1", "name": "Pump 1", "profile": profile.pk}, format="json"
    )
    assert response.status_code == 200, response.content
    response = api.patch(f"/api/v1/devices/{device_id}", {"uid": "pump-2"}, format="json")
    assert response.status_code == 400 and "uid" in response.json()["error"]["fields"]
    assert api.get(f"/api/v1/devices/{device_id}").json()["name"] == "Pump 1"
    assert api.delete(f"/api/v1/devices/{device_id}").status_code == 204
    assert api.get(f"/api/v1/devices/{device_id}").status_code == 404
    actions = [e.action for e in audit_entries("alpha", target_type="devices.device", target_id=str(device_id))]
    assert actions == ["device.create", "device.update", "device.update", "device.delete"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"uid": "a/b"}, "uid"),
        ({"uid": "a+b"}, "uid"),
        ({"uid": ""}, "uid"),
        ({"profile": 987654321}, "profile"),
        ({"labels": {"line": 2}}, "labels"),
        ({"labels": ["x"]}, "labels"),
        ({"latitude": "north"}, "latitude"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_device_validation_field_errors(alpha, body, field):
    profile = make_profile("alpha")
    payload = {"uid": "ok-1", "name": "Ok", "profile": profile.pk, **body}
    response = alpha.client("admin").post("/api/v1/devices", payload, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error


def test_duplicate_uid_is_a_field_error(alpha):
    device = make_device("alpha", uid="dup-1")
    response = alpha.client("admin").post("/api/v1/devices", {"uid": "dup-1", "name": "x", "profile": device.profile_id}, format="json")
    assert response.status_code == 400
    assert "uid" in response.json()["error"]["fields"]


def test_device_filters_and_search(alpha):
    p1, p2 = make_profile("alpha"), make_profile("alpha")
    make_device("alpha", uid="f-boiler-1", profile=p1, labels={"line": "1", "area": "boilers"})
    make_device("alpha", uid="f-boiler-2", profile=p1, labels={"line": "2", "area": "boilers"}, enabled=False)
    make_device("alpha", uid="f-press-1", profile=p2, labels={"line": "1"})
    with schema_context("alpha"):
        Device.objects.filter(uid="f-press-1").update(status="online")
    api = alpha.client("viewer")

    def uids(query):
        response = api.get(f"/api/v1/devices?{query}")
        assert response.status_code == 200, response.content
        return sorted(d["uid"] for d in response.json()["results"] if d["uid"].startswith("f-"))

    assert uids(f"profile={p1.pk}") == ["f-boiler-1", "f-boiler-2"]
    assert uids("status=online") == ["f-press-1"]
    assert uids("enabled=false") == ["f-boiler-2"]
    assert uids("label=line:1") == ["f-boiler-1", "f-press-1"]
    assert uids("label=line:1&label=area:boilers") == ["f-boiler-1"]
    assert uids("label=area") == ["f-boiler-1", "f-boiler-2"]
    assert uids("search=press") == ["f-press-1"]


def _count_list_queries(api) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get("/api/v1/devices?page_size=100")
    assert response.status_code == 200
    return len(ctx.captured_queries), response.json()["count"]


def _give_credentials():
    from devices.models import DeviceCredential

    with schema_context("alpha"):
        for device in Device.objects.filter(credentials__isnull=True):
            DeviceCredential.objects.create(device=device, secret_hash="x", secret_prefix="abcdef")


def test_device_list_has_no_n_plus_one(alpha):
    profile = make_profile("alpha")
    api = alpha.client("viewer")
    with schema_context("alpha"):
        Device.objects.all().delete()
    for i in range(5):
        make_device("alpha", uid=f"nq-{i}", profile=make_profile("alpha") if i % 2 else profile)
    _give_credentials()
    few, count_few = _count_list_queries(api)
    for i in range(5, 50):
        make_device("alpha", uid=f"nq-{i}", profile=make_profile("alpha") if i % 2 else profile)
    _give_credentials()
    many, count_many = _count_list_queries(api)
    assert (count_few, count_many) == (5, 50)
    assert few == many
    assert all(d["credential"] for d in api.get("/api/v1/devices?page_size=3").json()["results"])


# --- attributes -----------------------------------------------------------------------------------


def test_attributes_scopes(alpha):
    device = make_device("alpha")
    api = alpha.client("developer")
    url = f"/api/v1/devices/{device.pk}/attributes"
    assert api.get(url).json() == {"client": {}, "server": {}, "shared": {}}
    response = api.put(url, {"scope": "shared", "attributes": {"setpoint": 21.5, "mode": "auto"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["shared"] == {"setpoint": 21.5, "mode": "auto"}
    response = api.put(url, {"scope": "shared", "attributes": {"mode": None}}, format="json")
    assert response.json()["shared"] == {"setpoint": 21.5}
    response = api.put(url, {"scope": "client", "attributes": {"fw": "1.0"}}, format="json")
    assert response.status_code == 400 and "scope" in response.json()["error"]["fields"]

    from devices.services import update_client_attributes

    update_client_attributes(schema="alpha", device_uid=device.uid, attributes={"fw": "2.1", "ip": "10.0.0.7"})
    update_client_attributes(schema="alpha", device_uid=device.uid, attributes={"fw": "2.2"})
    update_client_attributes(schema="alpha", device_uid="no-such-device", attributes={"fw": "2.2"})
    assert api.get(url).json()["client"] == {"fw": "2.2", "ip": "10.0.0.7"}
    assert alpha.client("viewer").put(url, {"scope": "server", "attributes": {"a": 1}}, format="json").status_code == 403
    assert [e.action for e in audit_entries("alpha", action="device.attributes.update", target_id=str(device.pk))] == [
        "device.attributes.update",
        "device.attributes.update",
    ]


# --- RBAC -----------------------------------------------------------------------------------------


def test_rbac_matrix(alpha, mqtt_broker):
    profile = make_profile("alpha")
    device = make_device("alpha", profile=profile)
    viewer, operator, developer = alpha.client("viewer"), alpha.client("operator"), alpha.client("developer")
    body = {"uid": "rbac-new", "name": "x", "profile": profile.pk}

    assert viewer.get("/api/v1/devices").status_code == 200
    assert viewer.get(f"/api/v1/devices/{device.pk}").status_code == 200
    assert viewer.get("/api/v1/device-profiles").status_code == 200
    assert viewer.get(f"/api/v1/devices/{device.pk}/commands").status_code == 200
    assert viewer.post("/api/v1/devices", body, format="json").status_code == 403
    assert viewer.patch(f"/api/v1/devices/{device.pk}", {"name": "y"}, format="json").status_code == 403
    assert viewer.delete(f"/api/v1/devices/{device.pk}").status_code == 403
    assert viewer.post("/api/v1/device-profiles", _profile_body("V"), format="json").status_code == 403
    assert viewer.post(f"/api/v1/devices/{device.pk}/credentials").status_code == 403
    assert viewer.post(f"/api/v1/devices/{device.pk}/commands", {"name": "reboot"}, format="json").status_code == 403
    assert audit_entries("alpha", action="permission.denied", metadata__permission="devices:write")

    assert operator.post("/api/v1/devices", body, format="json").status_code == 403
    assert operator.post(f"/api/v1/devices/{device.pk}/credentials/revoke").status_code == 403
    assert operator.post(f"/api/v1/devices/{device.pk}/commands", {"name": "reboot"}, format="json").status_code == 201

    assert developer.post("/api/v1/devices", body, format="json").status_code == 201
    assert developer.post(f"/api/v1/devices/{device.pk}/credentials").status_code == 201
    assert developer.post(f"/api/v1/devices/{device.pk}/commands", {"name": "reboot"}, format="json").status_code == 201
    assert alpha.client().get("/api/v1/devices").status_code == 401


# --- tenant isolation -----------------------------------------------------------------------------


def _beta_objects():
    """Beta's profile, device and command with ids alpha has no rows for (ids are per schema)."""
    with schema_context("beta"):
        profile = DeviceProfile.objects.create(id=910_000 + DeviceProfile.objects.count(), name=f"beta-only-{DeviceProfile.objects.count()}")
        device = Device.objects.create(id=920_000 + Device.objects.count(), uid=f"beta-dev-{Device.objects.count()}", name="B", profile=profile)
        command = DeviceCommand.objects.create(device=device, name="reboot")
    with schema_context("alpha"):
        assert not Device.objects.filter(pk=device.pk).exists()
        assert not DeviceProfile.objects.filter(pk=profile.pk).exists()
    return profile, device, command


def test_alpha_gets_404_for_beta_objects_on_every_endpoint(alpha, beta):
    profile, device, command = _beta_objects()
    api = alpha.client("admin")
    d = f"/api/v1/devices/{device.pk}"
    requests = [
        ("get", f"/api/v1/device-profiles/{profile.pk}", None),
        ("patch", f"/api/v1/device-profiles/{profile.pk}", {"name": "x"}),
        ("put", f"/api/v1/device-profiles/{profile.pk}", _profile_body("x")),
        ("delete", f"/api/v1/device-profiles/{profile.pk}", None),
        ("get", d, None),
        ("patch", d, {"name": "x"}),
        ("put", d, {"uid": device.uid, "name": "x", "profile": profile.pk}),
        ("delete", d, None),
        ("get", f"{d}/credentials", None),
        ("post", f"{d}/credentials", None),
        ("post", f"{d}/credentials/revoke", None),
        ("get", f"{d}/attributes", None),
        ("put", f"{d}/attributes", {"scope": "server", "attributes": {"a": 1}}),
        ("get", f"{d}/commands", None),
        ("post", f"{d}/commands", {"name": "reboot"}),
        ("get", f"{d}/commands/{command.command_id}", None),
    ]
    for method, url, body in requests:
        response = getattr(api, method)(url, body, format="json") if body is not None else getattr(api, method)(url)
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json()["error"]["code"] == "not_found"

    # alpha's own device cannot reach beta's command either
    own = make_device("alpha")
    assert api.get(f"/api/v1/devices/{own.pk}/commands/{command.command_id}").status_code == 404
    assert api.get(f"/api/v1/devices/{own.pk}/commands/not-a-uuid").status_code == 404
    # a device in alpha cannot use beta's profile
    response = api.post("/api/v1/devices", {"uid": "iso-x", "name": "x", "profile": profile.pk}, format="json")
    assert response.status_code == 400 and "profile" in response.json()["error"]["fields"]

    listed = {d["uid"] for d in api.get("/api/v1/devices?page_size=500").json()["results"]}
    assert device.uid not in listed
    assert profile.name not in {p["name"] for p in api.get("/api/v1/device-profiles?page_size=500").json()["results"]}


def test_profile_metric_rows_are_per_tenant(alpha, beta):
    make_profile("alpha", metrics=[{"name": "only_alpha_metric", "unit": "A"}])
    with schema_context("beta"):
        assert not Metric.objects.filter(name="only_alpha_metric").exists()
        assert not ProfileMetric.objects.filter(metric__name="only_alpha_metric").exists()
