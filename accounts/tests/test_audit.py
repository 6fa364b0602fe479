"""The audit trail is append-only on every path: API, ORM, admin and raw SQL."""

import pytest
from django.db import DatabaseError, connection, transaction
from django_tenants.utils import schema_context

from accounts.models import AuditLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry(alpha):
    with schema_context("alpha"):
        return AuditLog.objects.create(action="test.event", tenant="alpha", actor_email="someone@example.com")


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_api_offers_no_write_method(alpha, entry, method):
    client = alpha.client("admin")
    path = "/api/v1/audit/logs" if method == "post" else f"/api/v1/audit/logs/{entry.pk}"
    response = getattr(client, method)(path, {"action": "forged"}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_orm_refuses_update_and_delete(alpha, entry):
    with schema_context("alpha"):
        entry.action = "changed"
        with pytest.raises(PermissionError):
            entry.save()
        with pytest.raises(PermissionError):
            entry.delete()
        with pytest.raises(PermissionError):
            AuditLog.objects.filter(pk=entry.pk).update(action="changed")
        with pytest.raises(PermissionError):
            AuditLog.objects.filter(pk=entry.pk).delete()


@pytest.mark.parametrize("statement", ["UPDATE accounts_auditlog SET action = 'x'", "DELETE FROM accounts_auditlog"])
@pytest.mark.parametrize("schema", ["alpha", "public"])
def test_database_trigger_refuses_raw_sql(alpha, entry, statement, schema):
    with schema_context(schema):
        AuditLog.objects.create(action="test.event", tenant=schema)
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)


def test_admin_cannot_add_change_or_delete(alpha, entry, client):
    from django.contrib import admin
    from django.test import RequestFactory

    from accounts.admin import AuditLogAdmin

    request = RequestFactory().get("/admin/")
    request.user = alpha.users["admin"]  # a superuser inside the tenant
    model_admin = AuditLogAdmin(AuditLog, admin.site)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, entry)
    assert not model_admin.has_delete_permission(request, entry)


def test_audit_log_list_is_filterable_and_newest_first(alpha):
    client = alpha.client("admin")
    client.post("/api/v1/auth/login", {"email": alpha.email("viewer"), "password": "wrong-password-x"}, format="json")
    client.post("/api/v1/roles", {"name": "temp-role", "permissions": []}, format="json")
    body = client.get("/api/v1/audit/logs?outcome=failure").json()
    assert [e["action"] for e in body["results"]] == ["auth.login_failed"]
    actions = [e["action"] for e in client.get("/api/v1/audit/logs?action_prefix=role.").json()["results"]]
    assert actions == ["role.create"]
    newest = client.get("/api/v1/audit/logs?page_size=2").json()
    stamps = [e["created_at"] for e in newest["results"]]
    assert stamps == sorted(stamps, reverse=True)
    assert newest["next"]  # cursor pagination
    assert client.get("/api/v1/audit/logs?since=not-a-date").status_code == 400


def test_entries_carry_actor_ip_user_agent_time_and_request_id(alpha):
    client = alpha.client("admin", HTTP_USER_AGENT="ops-console/2.1", HTTP_X_REQUEST_ID="req-12345", REMOTE_ADDR="10.1.2.3")
    response = client.post("/api/v1/roles", {"name": "shift-b", "permissions": ["alerts:read"]}, format="json")
    assert response["X-Request-ID"] == "req-12345"
    entry = client.get("/api/v1/audit/logs?action=role.create").json()["results"][0]
    assert entry["actor_email"] == alpha.email("admin")
    assert entry["actor_id"] == alpha.users["admin"].pk
    assert entry["ip"] == "10.1.2.3"
    assert entry["user_agent"] == "ops-console/2.1"
    assert entry["request_id"] == "req-12345"
    assert entry["tenant"] == "alpha"
    assert entry["target_type"] == "accounts.role" and entry["target_repr"] == "shift-b"
    assert entry["changes"]["permissions"] == [None, ["alerts:read"]]
    assert entry["created_at"]
