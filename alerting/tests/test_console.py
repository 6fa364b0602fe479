"""Alerts console pages: list and filters, acknowledge / resolve / notes through the services,
permission-aware controls (the server refuses anyway), tenant isolation, live row partial."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from alerting.models import Alert, AlertEvent, AlertState
from devices.tests.conftest import make_device

pytestmark = pytest.mark.django_db


def web_client(handle, role: str) -> Client:
    client = Client(HTTP_HOST=handle.domain)
    with schema_context(handle.slug):
        client.force_login(handle.users[role])
    return client


def open_alert(schema: str, name: str, severity: str = "major", device=None) -> Alert:
    from alerting import services

    device = device or make_device(schema)
    with schema_context(schema):
        alert, _ = services.raise_alert(rule_id=None, rule_name=name, device_id=device.pk, severity=severity, message=f"{name} fired",
                                        value=1.0, observed_at=datetime.now(UTC))  # fmt: skip
    return alert


def test_console_lists_open_alerts_with_filters(alpha):
    hot = open_alert("alpha", "too hot", "critical")
    cold = open_alert("alpha", "too cold", "minor")
    client = web_client(alpha, "viewer")
    html = client.get("/alerts/").content.decode()
    assert "too hot" in html and "too cold" in html
    html = client.get("/alerts/?severity=critical").content.decode()
    assert "too hot" in html and "too cold" not in html
    html = client.get("/alerts/?q=cold", HTTP_HX_REQUEST="true").content.decode()
    assert "too cold" in html and "too hot" not in html and "<html" not in html
    with schema_context("alpha"):
        Alert.objects.filter(pk=cold.pk).update(state=AlertState.RESOLVED, resolved_at=datetime.now(UTC))
    assert "too cold" not in client.get("/alerts/").content.decode()
    assert "too cold" in client.get("/alerts/?state=resolved").content.decode()
    row = client.get(f"/alerts/{hot.pk}/row").content.decode()
    assert row.startswith('<tr class="alert-row') and f'id="alert-{hot.pk}"' in row


def test_viewer_sees_no_write_controls_and_is_refused(alpha):
    alert = open_alert("alpha", "viewer test")
    client = web_client(alpha, "viewer")
    assert "data-write" not in client.get("/alerts/").content.decode()
    assert "data-write" not in client.get(f"/alerts/{alert.pk}/").content.decode()
    assert client.post(f"/alerts/{alert.pk}/acknowledge").status_code == 403
    assert client.post(f"/alerts/{alert.pk}/resolve").status_code == 403
    assert client.post(f"/alerts/{alert.pk}/notes", {"text": "hi"}).status_code == 403
    with schema_context("alpha"):
        assert Alert.objects.get(pk=alert.pk).state == AlertState.TRIGGERED


def test_operator_acknowledges_resolves_and_adds_notes(alpha):
    alert = open_alert("alpha", "operator test")
    client = web_client(alpha, "operator")
    html = client.get("/alerts/").content.decode()
    assert 'data-action="acknowledge"' in html and 'data-action="resolve"' in html
    response = client.post(f"/alerts/{alert.pk}/acknowledge")
    assert response.status_code == 200 and "Acknowledged" in response.content.decode()
    response = client.post(f"/alerts/{alert.pk}/notes", {"text": "Valve replaced"})
    assert response.status_code == 200 and "Valve replaced" in response.content.decode()
    assert client.post(f"/alerts/{alert.pk}/notes", {"text": ""}).status_code == 422
    response = client.post(f"/alerts/{alert.pk}/resolve", {"from": "detail"})
    assert response.status_code == 200 and "Resolved" in response.content.decode()
    again = client.post(f"/alerts/{alert.pk}/acknowledge")  # resolved alerts cannot be acknowledged
    assert again.status_code == 409
    with schema_context("alpha"):
        kinds = list(AlertEvent.objects.filter(alert_id=alert.pk).order_by("id").values_list("kind", flat=True))
    assert kinds == ["triggered", "acknowledged", "note", "resolved"]
    timeline = client.get(f"/alerts/{alert.pk}/").content.decode()
    assert "Valve replaced" in timeline and timeline.index("<strong>Triggered") < timeline.index("<strong>Resolved")


def test_another_tenants_alert_is_404(alpha, beta):
    foreign = open_alert("beta", "beta secret alert")
    client = web_client(alpha, "admin")
    with schema_context("alpha"):
        local = Alert.objects.filter(pk=foreign.pk).exists()
    if not local:
        assert client.get(f"/alerts/{foreign.pk}/").status_code == 404
        assert client.post(f"/alerts/{foreign.pk}/acknowledge").status_code == 404
    assert "beta secret alert" not in client.get("/alerts/?state=all").content.decode()
