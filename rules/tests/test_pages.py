"""Rules pages: list, create and edit with inline validation errors, backtest preview,
permission-aware (viewers read, cannot write; the server refuses anyway)."""

from __future__ import annotations

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from rules.models import Rule
from rules.tests.conftest import make_rule

pytestmark = pytest.mark.django_db


def web_client(handle, role: str) -> Client:
    client = Client(HTTP_HOST=handle.domain)
    with schema_context(handle.slug):
        client.force_login(handle.users[role])
    return client


def form_data(plant, **extra):
    data = {
        "name": "Boiler too hot", "type": "threshold", "severity": "major", "enabled": "on", "target_kind": "profile",
        "target_profile": str(plant.profile.pk), "condition": '{"metric": "temperature", "op": "gt", "value": 90}',
        "cooldown_s": "0", "target_labels": "", "schedule": "", "actions": "",
    }  # fmt: skip
    data.update(extra)
    return data


def test_create_rule_and_list_it(alpha, plant):
    client = web_client(alpha, "developer")
    assert "Save rule" in client.get("/rules/new").content.decode()
    response = client.post("/rules/new", form_data(plant))
    assert response.status_code == 302 and response["Location"] == "/rules/"
    with schema_context("alpha"):
        rule = Rule.objects.get(name="Boiler too hot")
    assert rule.condition["metric"] == "temperature" and rule.created_by_email == alpha.email("developer")
    html = client.get("/rules/").content.decode()
    assert "Boiler too hot" in html and "New rule" in html


def test_validation_errors_are_shown_inline(alpha, plant):
    client = web_client(alpha, "developer")
    response = client.post("/rules/new", form_data(plant, condition='{"metric": "temperature", "op": "bogus", "value": 1}'))
    assert response.status_code == 422
    html = response.content.decode()
    assert 'data-field="condition"' in html and "op" in html
    response = client.post("/rules/new", form_data(plant, condition="{not json"))
    assert response.status_code == 422 and "Not valid JSON" in response.content.decode()
    response = client.post("/rules/new", form_data(plant, target_kind="device", target_device="no-such-device"))
    assert response.status_code == 422 and "No device with this uid" in response.content.decode()
    with schema_context("alpha"):
        assert not Rule.objects.filter(name="Boiler too hot").exists()


def test_edit_rule(alpha, plant):
    rule = make_rule("alpha", name="edit-me", type="threshold", target_kind="profile", target_profile=plant.profile,
                     condition={"metric": "temperature", "op": "gt", "value": 50})  # fmt: skip
    client = web_client(alpha, "developer")
    html = client.get(f"/rules/{rule.pk}/").content.decode()
    assert "edit-me" in html and "&quot;value&quot;: 50" in html
    response = client.post(f"/rules/{rule.pk}/", form_data(plant, name="edit-me", condition='{"metric": "temperature", "op": "gt", "value": 60}'))
    assert response.status_code == 302
    with schema_context("alpha"):
        assert Rule.objects.get(pk=rule.pk).condition["value"] == 60


def test_backtest_preview(alpha, plant):
    client = web_client(alpha, "developer")
    response = client.post("/rules/backtest", form_data(plant, backtest_range="1h"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-backtest=" in html and "firing" in html
    bad = client.post("/rules/backtest", form_data(plant, condition='{"metric": "temperature"}'))
    assert bad.status_code == 422 and "Fix the rule first" in bad.content.decode()


def test_viewer_reads_but_cannot_write(alpha, plant):
    rule = make_rule("alpha", name="read-only", type="threshold", target_kind="profile", target_profile=plant.profile,
                     condition={"metric": "temperature", "op": "gt", "value": 50})  # fmt: skip
    client = web_client(alpha, "viewer")
    html = client.get("/rules/").content.decode()
    assert "read-only" in html and "data-write" not in html
    html = client.get(f"/rules/{rule.pk}/").content.decode()
    assert "data-write" not in html and "disabled" in html
    assert client.get("/rules/new").status_code == 403
    assert client.post("/rules/new", form_data(plant)).status_code == 403
    assert client.post(f"/rules/{rule.pk}/", form_data(plant, name="hacked")).status_code == 403
    assert client.post("/rules/backtest", form_data(plant)).status_code == 403
    with schema_context("alpha"):
        assert Rule.objects.get(pk=rule.pk).name == "read-only"
