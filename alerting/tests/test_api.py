"""Alerts and notification-channel API: filters, transitions over HTTP (409 with the state), notes,
channel CRUD with validation, deliveries, RBAC, tenant isolation, query counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from alerting import services
from alerting.models import NotificationChannel, NotificationDelivery
from alerting.tests.conftest import fire, make_alert, make_channel
from devices.tests.conftest import make_device

pytestmark = pytest.mark.django_db


def _error(response) -> dict:
    return response.json()["error"]


# --- alerts -------------------------------------------------------------------------------------


def test_list_filters_and_paginates(alpha, device):
    other = make_device("alpha")
    hot = make_alert("alpha", rule_id=501, device=device, severity="critical")
    cold = make_alert("alpha", rule_id=502, device=other, severity="minor", observed_at=datetime.now(UTC) - timedelta(days=2))
    with schema_context("alpha"):
        services.resolve_alert(actor=None, client=None, alert_id=cold.pk)
    api = alpha.client("viewer")

    def ids(**params) -> set[int]:
        response = api.get("/api/v1/alerts", {"page_size": 500, **params})
        assert response.status_code == 200, response.content
        return {row["id"] for row in response.json()["results"]} & {hot.pk, cold.pk}

    assert ids() == {hot.pk, cold.pk}
    assert ids(state="triggered") == {hot.pk}
    assert ids(state=["triggered", "resolved"]) == {hot.pk, cold.pk}
    assert ids(open="false") == {cold.pk}
    assert ids(severity="critical") == {hot.pk}
    assert ids(device=other.pk) == {cold.pk}
    assert ids(device_uid=device.uid) == {hot.pk}
    assert ids(rule=501) == {hot.pk}
    assert ids(since=(datetime.now(UTC) - timedelta(days=1)).isoformat()) == {hot.pk}
    assert ids(until=(datetime.now(UTC) - timedelta(days=1)).isoformat()) == {cold.pk}
    page = api.get("/api/v1/alerts", {"page_size": 1}).json()
    assert page["count"] >= 2 and len(page["results"]) == 1 and page["next"]
    row = next(r for r in api.get("/api/v1/alerts", {"rule": 501}).json()["results"])
    assert row["rule"] == 501 and row["device_uid"] == device.uid and row["severity"] == "critical" and row["count"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "exploded"}, "state"),
        ({"severity": "meh"}, "severity"),
        ({"since": "yesterday"}, "since"),
        ({"device": "x"}, "device"),
    ],
)
def test_list_rejects_bad_filters_with_the_field(alpha, params, field):
    response = alpha.client("viewer").get("/api/v1/alerts", params)
    assert response.status_code == 400, response.content
    assert field in _error(response)["fields"]


def test_list_query_count_does_not_grow_with_the_page(alpha, device):
    api = alpha.client("viewer")
    for n in range(3):
        alert = make_alert("alpha", rule_id=510 + n, device=device)
        with schema_context("alpha"):
            services.acknowledge_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
    api.get("/api/v1/alerts")  # warm-up (auth caches)
    with CaptureQueriesContext(connection) as few:
        assert api.get("/api/v1/alerts", {"page_size": 1}).status_code == 200
    with CaptureQueriesContext(connection) as many:
        assert api.get("/api/v1/alerts", {"page_size": 50}).status_code == 200
    assert len(many) == len(few)


def test_detail_has_the_timeline_and_state_endpoint(alpha, device):
    alert = make_alert("alpha", rule_id=520, device=device)
    api = alpha.client("operator")
    assert api.post(f"/api/v1/alerts/{alert.pk}/acknowledge", {"note": "looking"}, format="json").status_code == 200
    assert api.post(f"/api/v1/alerts/{alert.pk}/notes", {"text": "pump 2 restarted"}, format="json").status_code == 201
    body = alpha.client("viewer").get(f"/api/v1/alerts/{alert.pk}").json()
    assert [(e["kind"], e["actor"]) for e in body["timeline"]] == [
        ("triggered", ""),
        ("acknowledged", alpha.email("operator")),
        ("note", alpha.email("operator")),
    ]
    assert body["acknowledged_by"] == alpha.email("operator") and body["time_to_acknowledge_s"] is not None
    state = alpha.client("viewer").get(f"/api/v1/alerts/{alert.pk}/state").json()
    assert state["state"] == "acknowledged" and state["allowed_transitions"] == ["resolved"]
    assert state["time_to_resolve_s"] is None


def test_transitions_over_http_are_idempotent_and_refused_with_the_state(alpha, device):
    alert = make_alert("alpha", rule_id=530, device=device)
    api = alpha.client("operator")
    first = api.post(f"/api/v1/alerts/{alert.pk}/acknowledge")
    assert first.status_code == 200 and first.json()["changed"] is True and first.json()["state"] == "acknowledged"
    again = api.post(f"/api/v1/alerts/{alert.pk}/acknowledge")
    assert again.status_code == 200 and again.json()["changed"] is False
    resolved = api.post(f"/api/v1/alerts/{alert.pk}/resolve", {"note": "fixed"}, format="json")
    assert (
        resolved.status_code == 200
        and resolved.json()["state"] == "resolved"
        and resolved.json()["time_to_resolve_s"] is not None
    )
    assert api.post(f"/api/v1/alerts/{alert.pk}/resolve").json()["changed"] is False
    refused = api.post(f"/api/v1/alerts/{alert.pk}/acknowledge")
    assert refused.status_code == 409
    assert _error(refused)["code"] == "alert_state_conflict" and _error(refused)["state"] == "resolved"


def test_transition_bodies_are_validated(alpha, device):
    alert = make_alert("alpha", rule_id=531, device=device)
    api = alpha.client("operator")
    response = api.post(f"/api/v1/alerts/{alert.pk}/acknowledge", {"nope": 1}, format="json")
    assert response.status_code == 400 and "nope" in _error(response)["fields"]
    response = api.post(f"/api/v1/alerts/{alert.pk}/resolve", {"note": "x" * 5001}, format="json")
    assert response.status_code == 400 and "note" in _error(response)["fields"]
    response = api.post(f"/api/v1/alerts/{alert.pk}/notes", {"text": ""}, format="json")
    assert response.status_code == 400 and "text" in _error(response)["fields"]
    response = api.post(f"/api/v1/alerts/{alert.pk}/notes", ["text"], format="json")
    assert response.status_code == 400
    assert api.post("/api/v1/alerts/999999/acknowledge").status_code == 404


def test_notes_list_and_post(alpha, device):
    alert = make_alert("alpha", rule_id=540, device=device)
    api = alpha.client("operator")
    created = api.post(f"/api/v1/alerts/{alert.pk}/notes", {"text": "first"}, format="json")
    assert created.status_code == 201 and created.json()["kind"] == "note" and created.json()["actor"] == alpha.email("operator")
    api.post(f"/api/v1/alerts/{alert.pk}/notes", {"text": "second"}, format="json")
    notes = alpha.client("viewer").get(f"/api/v1/alerts/{alert.pk}/notes").json()
    assert [n["text"] for n in notes] == ["first", "second"]


@pytest.mark.parametrize(
    ("role", "method", "suffix", "expected"),
    [
        ("viewer", "get", "", 200),
        ("viewer", "get", "/state", 200),
        ("viewer", "get", "/notes", 200),
        ("viewer", "post", "/acknowledge", 403),
        ("viewer", "post", "/resolve", 403),
        ("viewer", "post", "/notes", 403),
        ("operator", "post", "/notes", 201),
        ("operator", "post", "/acknowledge", 200),
        ("operator", "post", "/resolve", 200),
        ("developer", "post", "/resolve", 200),
    ],
)
def test_alert_rbac(alpha, device, role, method, suffix, expected):
    alert = make_alert("alpha", rule_id=550, device=device)
    body = {"text": "hello"} if suffix == "/notes" else {}
    response = getattr(alpha.client(role), method)(f"/api/v1/alerts/{alert.pk}{suffix}", body, format="json")
    assert response.status_code == expected, response.content


def test_alerts_need_authentication(alpha):
    assert alpha.client().get("/api/v1/alerts").status_code == 401


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("get", "/state"), ("get", "/notes"), ("post", "/notes"), ("post", "/acknowledge"), ("post", "/resolve")],
)
def test_alerts_of_another_tenant_are_404(alpha, beta, method, suffix):
    from alerting.models import Alert

    theirs = make_alert("beta", rule_id=560, device=make_device("beta"))
    with schema_context("alpha"):  # ids are per schema: alpha must not have one with this id (rolled back after)
        Alert.objects.filter(pk=theirs.pk).delete()
    body = {"text": "hello"} if suffix == "/notes" else {}
    response = getattr(alpha.client("admin"), method)(f"/api/v1/alerts/{theirs.pk}{suffix}", body, format="json")
    assert response.status_code == 404
    assert theirs.pk not in {
        row["id"] for row in alpha.client("admin").get("/api/v1/alerts", {"page_size": 500}).json()["results"]
    }
    with schema_context("beta"):
        from alerting.models import Alert

        assert Alert.objects.get(pk=theirs.pk).state == "triggered"


# --- notification channels ----------------------------------------------------------------------


def test_channel_crud_shows_the_webhook_secret_once(alpha):
    api = alpha.client("developer")
    created = api.post(
        "/api/v1/notification-channels",
        {
            "name": "Ops hook",
            "kind": "webhook",
            "config": {"url": "https://hooks.example.com/iiot", "headers": {"X-Team": "ops"}},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["has_secret"] is True
    cid = body["id"]
    detail = api.get(f"/api/v1/notification-channels/{cid}").json()
    assert "secret" not in detail and detail["config"]["url"] == "https://hooks.example.com/iiot"
    updated = api.patch(f"/api/v1/notification-channels/{cid}", {"enabled": False, "min_severity": "major"}, format="json")
    assert updated.status_code == 200 and updated.json()["enabled"] is False and updated.json()["min_severity"] == "major"
    kind_change = api.patch(f"/api/v1/notification-channels/{cid}", {"kind": "email"}, format="json")
    assert kind_change.status_code == 400 and "kind" in _error(kind_change)["fields"]
    rotated = api.post(f"/api/v1/notification-channels/{cid}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["secret"] != body["secret"]
    assert api.delete(f"/api/v1/notification-channels/{cid}").status_code == 204
    with schema_context("alpha"):
        assert not NotificationChannel.objects.filter(pk=cid).exists()
    email = api.post(
        "/api/v1/notification-channels",
        {"name": "Ops mail", "kind": "email", "config": {"recipients": ["a@b.co"]}},
        format="json",
    )
    assert email.status_code == 201 and email.json()["secret"] is None
    assert api.post(f"/api/v1/notification-channels/{email.json()['id']}/rotate-secret").status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "webhook", "config": {}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "ftp://example.com/"}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "http://10.0.0.5/hook"}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "http://169.254.169.254/latest"}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "http://[::1]:8080/"}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "http://localhost/"}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "https://user:pw@example.com/"}}, "config.url"),
        (
            {"name": "x", "kind": "webhook", "config": {"url": "https://example.com/", "headers": {"X-IIoT-Signature": "x"}}},
            "config.headers.X-IIoT-Signature",
        ),
        ({"name": "x", "kind": "webhook", "config": {"url": "https://example.com/", "verify": False}}, "config.verify"),
        ({"name": "x", "kind": "email", "config": {"recipients": []}}, "config.recipients"),
        ({"name": "x", "kind": "email", "config": {"recipients": ["ok@example.com", "not-an-email"]}}, "config.recipients.1"),
        ({"name": "x", "kind": "live", "config": {"group": "other"}}, "config.group"),
        ({"name": "x", "kind": "sms", "config": {}}, "kind"),
        ({"name": "x", "kind": "live", "min_severity": "urgent"}, "min_severity"),
        ({"name": "", "kind": "live"}, "name"),
        ({"name": "x", "kind": "live", "secret": "mine"}, "secret"),
    ],
)
def test_channel_validation_names_the_field(alpha, body, field):
    response = alpha.client("admin").post("/api/v1/notification-channels", body, format="json")
    assert response.status_code == 400, response.content
    assert field in _error(response)["fields"], _error(response)


def test_channel_names_are_unique(alpha):
    make_channel("alpha", "live", name="Dashboards")
    response = alpha.client("admin").post("/api/v1/notification-channels", {"name": "Dashboards", "kind": "live"}, format="json")
    assert response.status_code == 400 and "name" in _error(response)["fields"]


def test_deliveries_list_and_filter(alpha, device):
    channel = make_channel("alpha", "live")
    fire("alpha", rule_id=570, device=device, channel_ids=[channel.pk])
    with schema_context("alpha"):
        NotificationDelivery.objects.create(
            channel=channel, event_kind="test", status="failed", finished_at=datetime.now(UTC), attempts=1
        )
    api = alpha.client("operator")
    rows = api.get(f"/api/v1/notification-channels/{channel.pk}/deliveries").json()["results"]
    assert [(r["event_kind"], r["status"]) for r in rows] == [("test", "failed"), ("triggered", "pending")]
    failed = api.get(f"/api/v1/notification-channels/{channel.pk}/deliveries", {"status": "failed"}).json()["results"]
    assert [r["event_kind"] for r in failed] == ["test"]
    bad = api.get(f"/api/v1/notification-channels/{channel.pk}/deliveries", {"status": "lost"})
    assert bad.status_code == 400 and "status" in _error(bad)["fields"]


def test_test_send_is_queued_and_delivered(alpha, receiver, settings, eager_tasks, django_capture_on_commit_callbacks):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_MIN_INTERVAL_MS = 0
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    with django_capture_on_commit_callbacks(execute=True):
        response = alpha.client("developer").post(f"/api/v1/notification-channels/{channel.pk}/test")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    assert receiver.json()["event"] == "test"
    with schema_context("alpha"):
        delivery = NotificationDelivery.objects.get(pk=response.json()["id"])
    assert (delivery.status, delivery.attempts, delivery.response_code) == ("succeeded", 1, 200)


@pytest.mark.parametrize(
    ("role", "method", "suffix", "expected"),
    [
        ("viewer", "get", "", 403),
        ("operator", "get", "", 200),
        ("operator", "get", "/deliveries", 200),
        ("operator", "patch", "", 403),
        ("operator", "delete", "", 403),
        ("operator", "post", "/test", 403),
        ("operator", "post", "/rotate-secret", 403),
        ("developer", "patch", "", 200),
        ("developer", "post", "/test", 202),
        ("admin", "delete", "", 204),
    ],
)
def test_channel_rbac(alpha, role, method, suffix, expected, django_capture_on_commit_callbacks):
    channel = make_channel("alpha", "webhook")
    body = {"enabled": False} if method == "patch" else None
    response = getattr(alpha.client(role), method)(f"/api/v1/notification-channels/{channel.pk}{suffix}", body, format="json")
    assert response.status_code == expected, response.content


def test_channel_create_needs_notifications_write(alpha):
    body = {"name": "x", "kind": "live"}
    assert alpha.client("operator").post("/api/v1/notification-channels", body, format="json").status_code == 403
    assert alpha.client("viewer").get("/api/v1/notification-channels").status_code == 403


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("patch", ""), ("delete", ""), ("get", "/deliveries"), ("post", "/test"), ("post", "/rotate-secret")],
)
def test_channels_of_another_tenant_are_404(alpha, beta, method, suffix):
    theirs = make_channel("beta", "webhook")
    with schema_context("alpha"):  # ids are per schema: alpha must not have one with this id (rolled back after)
        NotificationChannel.objects.filter(pk=theirs.pk).delete()
    body = {"enabled": False} if method == "patch" else None
    response = getattr(alpha.client("admin"), method)(f"/api/v1/notification-channels/{theirs.pk}{suffix}", body, format="json")
    assert response.status_code == 404
    listed = alpha.client("admin").get("/api/v1/notification-channels", {"page_size": 500}).json()["results"]
    assert theirs.pk not in {row["id"] for row in listed}


def test_stats_give_counts_and_tta_ttr_over_the_filtered_alerts(alpha, device):
    from alerting.models import Alert

    base = datetime.now(UTC) - timedelta(hours=1)
    made = [
        make_alert("alpha", rule_id=580, device=make_device("alpha"), severity="critical", observed_at=base) for _ in range(3)
    ]
    with schema_context("alpha"):
        # acknowledged after 60 s and 120 s, one resolved 300 s after it started, one left open
        Alert.objects.filter(pk=made[0].pk).update(state="acknowledged", acknowledged_at=base + timedelta(seconds=60))
        Alert.objects.filter(pk=made[1].pk).update(
            state="resolved", acknowledged_at=base + timedelta(seconds=120), resolved_at=base + timedelta(seconds=300)
        )
    api = alpha.client("viewer")
    body = api.get("/api/v1/alerts/stats", {"rule": 580}).json()
    assert body["total"] == 3
    assert body["by_state"] == {"triggered": 1, "acknowledged": 1, "resolved": 1}
    assert body["by_severity"]["critical"] == 3 and body["by_severity"]["info"] == 0
    assert body["time_to_acknowledge_s"] == {"count": 2, "mean": 90.0, "p50": 90.0, "p90": 114.0, "max": 120.0}
    assert body["time_to_resolve_s"] == {"count": 1, "mean": 300.0, "p50": 300.0, "p90": 300.0, "max": 300.0}
    empty = api.get("/api/v1/alerts/stats", {"rule": 581}).json()
    assert empty["total"] == 0 and empty["time_to_resolve_s"]["mean"] is None
    assert api.get("/api/v1/alerts/stats", {"since": "soon"}).status_code == 400


def test_stats_are_per_tenant(alpha, beta, device):
    make_alert("alpha", rule_id=590, device=device)
    assert alpha.client("viewer").get("/api/v1/alerts/stats", {"rule": 590}).json()["total"] == 1
    assert beta.client("viewer").get("/api/v1/alerts/stats", {"rule": 590}).json()["total"] == 0
    assert alpha.client().get("/api/v1/alerts/stats").status_code == 401


def test_ordering_by_severity_rank_puts_critical_first(alpha, device):
    made = {
        severity: make_alert("alpha", rule_id=600, device=make_device("alpha"), severity=severity)
        for severity in ("info", "critical", "minor")
    }
    rows = alpha.client("viewer").get("/api/v1/alerts", {"rule": 600, "ordering": "severity_rank"}).json()["results"]
    assert [row["id"] for row in rows] == [made["critical"].pk, made["minor"].pk, made["info"].pk]


def test_live_events_leave_large_details_out(alpha, device, django_capture_on_commit_callbacks):
    layer = get_channel_layer()
    name = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("alpha.alerts", name)
    try:
        with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
            fire("alpha", rule_id=610, device=device, details={"blob": "x" * 10_000})
        message = async_to_sync(layer.receive)(name)
        assert message["event"]["alert"]["details"] == {"truncated": True}
    finally:
        async_to_sync(layer.group_discard)("alpha.alerts", name)


def test_channel_and_delivery_lists_have_fixed_query_counts(alpha, device):
    channels = [make_channel("alpha", "live") for _ in range(3)]
    for channel in channels:
        fire("alpha", device=device, channel_ids=[channel.pk])
        fire("alpha", device=device, channel_ids=[channels[0].pk])
    api = alpha.client("operator")
    api.get("/api/v1/notification-channels")  # warm-up
    counts = []
    for size in (1, 50):
        with CaptureQueriesContext(connection) as queries:
            assert api.get("/api/v1/notification-channels", {"page_size": size}).status_code == 200
            assert api.get(f"/api/v1/notification-channels/{channels[0].pk}/deliveries", {"page_size": size}).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]
