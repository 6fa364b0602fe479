"""Rules in the tenant admin: listed and edited through rules.services (audited); not on the public host."""

from __future__ import annotations

import pytest

from conftest import PASSWORD, audit_entries
from rules.tests.conftest import make_rule

pytestmark = pytest.mark.django_db


def _login(client, handle) -> None:
    response = client.post("/admin/login/", {"username": handle.email("admin"), "password": PASSWORD}, HTTP_HOST=handle.domain)
    assert response.status_code in (200, 302)


def test_admin_lists_and_changes_rules_through_services(alpha, client, plant):
    rule = make_rule("alpha", name="admin-rule", type="threshold", target_kind="profile", target_profile=plant.profile,
                     condition={"metric": "temperature", "op": "gt", "value": 80})  # fmt: skip
    _login(client, alpha)
    page = client.get("/admin/rules/rule/?q=admin-", HTTP_HOST=alpha.domain)
    assert page.status_code == 200 and b"admin-rule" in page.content
    assert client.get(f"/admin/rules/rule/{rule.pk}/change/", HTTP_HOST=alpha.domain).status_code == 200
    response = client.post(f"/admin/rules/rule/{rule.pk}/delete/", {"post": "yes"}, HTTP_HOST=alpha.domain)
    assert response.status_code == 302
    assert [e.action for e in audit_entries("alpha", target_type="rules.rule", target_id=str(rule.pk))] == ["rule.create", "rule.delete"]


def test_public_admin_has_no_rules(platform, db, client):
    client.post("/admin/login/", {"username": "staff@platform.example.com", "password": PASSWORD}, HTTP_HOST="localhost")
    assert client.get("/admin/rules/rule/", HTTP_HOST="localhost").status_code in (403, 404)
