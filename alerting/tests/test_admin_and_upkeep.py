"""Tenant admin (actions through the services, state read-only), lost-delivery requeue, and a
Celery broker outage that must not fail the change raising the alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_tenants.utils import schema_context

from alerting import services
from alerting.models import Alert, AlertEvent, NotificationChannel, NotificationDelivery
from alerting.tests.conftest import fire, make_alert, make_channel
from conftest import PASSWORD, audit_entries

pytestmark = pytest.mark.django_db


def _login(client, handle):
    response = client.post("/admin/login/", {"username": handle.email("admin"), "password": PASSWORD}, HTTP_HOST=handle.domain)
    assert response.status_code == 302


def test_admin_lists_alerts_and_transitions_them_through_services(alpha, client, device):
    open_one = make_alert("alpha", rule_id=701, device=device, rule_name="Admin rule")
    done = make_alert("alpha", rule_id=702, device=device, rule_name="Admin rule")
    with schema_context("alpha"):
        services.resolve_alert(actor=None, client=None, alert_id=done.pk)
    _login(client, alpha)
    page = client.get("/admin/alerting/alert/?q=Admin+rule", HTTP_HOST=alpha.domain)
    assert page.status_code == 200 and b"Admin rule" in page.content
    detail = client.get(f"/admin/alerting/alert/{open_one.pk}/change/", HTTP_HOST=alpha.domain)
    assert detail.status_code == 200 and b'name="state"' not in detail.content  # read-only
    response = client.post(
        "/admin/alerting/alert/",
        {"action": "acknowledge_alerts", "_selected_action": [open_one.pk, done.pk]},
        HTTP_HOST=alpha.domain,
        follow=True,
    )
    messages = " ".join(str(m) for m in response.context["messages"])
    assert "Acknowledged 1 alert(s)" in messages and "resolved; it cannot be acknowledged" in messages
    client.post("/admin/alerting/alert/", {"action": "resolve_alerts", "_selected_action": [open_one.pk]}, HTTP_HOST=alpha.domain)
    with schema_context("alpha"):
        alert = Alert.objects.get(pk=open_one.pk)
        assert alert.state == "resolved" and alert.resolved_by == alpha.users["admin"]
        assert AlertEvent.objects.filter(alert=alert, kind__in=["acknowledged", "resolved"]).count() == 2
    assert [e.action for e in audit_entries("alpha", target_type="alerting.alert", target_id=str(open_one.pk))] == [
        "alert.acknowledge",
        "alert.resolve",
    ]


def test_admin_creates_channels_through_the_service(alpha, client):
    _login(client, alpha)
    response = client.post(
        "/admin/alerting/notificationchannel/add/",
        {
            "name": "Admin hook",
            "kind": "webhook",
            "enabled": "on",
            "config": '{"url": "https://hooks.example.com/x"}',
            "min_severity": "",
        },
        HTTP_HOST=alpha.domain,
        follow=True,
    )
    assert response.status_code == 200
    assert "signing secret: whsec_" in " ".join(str(m) for m in response.context["messages"])
    refused = client.post(
        "/admin/alerting/notificationchannel/add/",
        {"name": "Bad hook", "kind": "webhook", "enabled": "on", "config": '{"url": "http://10.0.0.1/"}', "min_severity": ""},
        HTTP_HOST=alpha.domain,
    )
    assert refused.status_code == 200 and b"private address" in refused.content
    with schema_context("alpha"):
        assert NotificationChannel.objects.filter(name="Admin hook").exists()
        assert not NotificationChannel.objects.filter(name="Bad hook").exists()
    assert audit_entries("alpha", action="notification_channel.create")


def test_public_admin_has_no_alerts(platform, db, client):
    client.post("/admin/login/", {"username": "staff@platform.example.com", "password": PASSWORD}, HTTP_HOST="localhost")
    assert client.get("/admin/alerting/alert/", HTTP_HOST="localhost").status_code in (403, 404)


def test_lost_deliveries_are_requeued(alpha, device, receiver, settings, eager_tasks):
    settings.WEBHOOK_ALLOW_LOOPBACK, settings.WEBHOOK_MIN_INTERVAL_MS = True, 0
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    with schema_context("alpha"):
        alert, _ = fire("alpha", device=device, channel_ids=[channel.pk])  # on_commit never runs here: "lost"
        fresh = NotificationDelivery.objects.create(channel=channel, event_kind="test", payload={"event": "test"})
        NotificationDelivery.objects.filter(alert=alert).update(created_at=datetime.now(UTC) - timedelta(hours=1))
        # rows other tests may have committed stay out of it (this test's transaction rolls this back)
        NotificationDelivery.objects.unfinished().exclude(alert=alert).exclude(pk=fresh.pk).update(
            status="failed", finished_at=datetime.now(UTC)
        )
    assert services.requeue_stale_deliveries(schema="alpha", now=datetime.now(UTC)) == 1
    with schema_context("alpha"):
        assert NotificationDelivery.objects.get(alert=alert).status == "succeeded"
        assert NotificationDelivery.objects.get(pk=fresh.pk).status == "pending"  # young: its task may still come
    assert [request.headers["X-IIoT-Event"] for request in receiver.requests] == ["alert.triggered"]


def test_a_celery_broker_outage_does_not_fail_raising(alpha, device, monkeypatch, django_capture_on_commit_callbacks):
    from alerting import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.deliver_notification, "apply_async", broker_down)
    channel = make_channel("alpha", "live")
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        alert, created = fire("alpha", device=device, channel_ids=[channel.pk])
    assert created
    with schema_context("alpha"):
        assert NotificationDelivery.objects.get(alert=alert).status == "pending"  # the requeue task will send it
