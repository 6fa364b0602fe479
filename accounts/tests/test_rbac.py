"""Every default role against every protected endpoint: allowed where the matrix says, 403 elsewhere."""

import pytest
from django_tenants.utils import schema_context

from accounts.models import AuditLog, Role
from accounts.permissions import DEFAULT_ROLES
from conftest import ROLES, audit_entries

pytestmark = pytest.mark.django_db


def _custom_role_id() -> int:
    return Role.objects.create(name="line-lead", permissions=["devices:read"]).pk


# (name, method, path, permission, body, status when allowed)
def endpoints(alpha):
    with schema_context("alpha"):
        viewer_id = alpha.users["viewer"].pk
        custom_id = _custom_role_id()
        audit_id = AuditLog.objects.create(action="test.seed", tenant="alpha").pk
    return [
        ("list users", "get", "/api/v1/users", "users:read", None, 200),
        ("get user", "get", f"/api/v1/users/{viewer_id}", "users:read", None, 200),
        ("create user", "post", "/api/v1/users", "users:write", {"email": "new@alpha.example.com", "password": "Another-Long-Pass-42"}, 201),
        ("patch user", "patch", f"/api/v1/users/{viewer_id}", "users:write", {"full_name": "Val Viewer"}, 200),
        (
            "put user",
            "put",
            f"/api/v1/users/{viewer_id}",
            "users:write",
            {"email": "viewer@alpha.example.com", "full_name": "V", "is_staff": False, "is_active": True, "roles": ["viewer"]},
            200,
        ),
        ("assign roles", "post", f"/api/v1/users/{viewer_id}/roles", "users:write", {"roles": ["operator"]}, 200),
        ("delete user", "delete", f"/api/v1/users/{viewer_id}", "users:write", None, 204),
        ("list roles", "get", "/api/v1/roles", "roles:read", None, 200),
        ("get role", "get", f"/api/v1/roles/{custom_id}", "roles:read", None, 200),
        ("create role", "post", "/api/v1/roles", "roles:write", {"name": "auditor", "permissions": ["audit:read"]}, 201),
        ("update role", "put", f"/api/v1/roles/{custom_id}", "roles:write", {"name": "line-lead", "description": "", "permissions": ["devices:read", "alerts:read"]}, 200),
        ("delete role", "delete", f"/api/v1/roles/{custom_id}", "roles:write", None, 204),
        ("audit logs", "get", "/api/v1/audit/logs", "audit:read", None, 200),
        ("audit entry", "get", f"/api/v1/audit/logs/{audit_id}", "audit:read", None, 200),
    ]


ENDPOINT_NAMES = [
    "list users", "get user", "create user", "patch user", "put user", "assign roles", "delete user",
    "list roles", "get role", "create role", "update role", "delete role", "audit logs", "audit entry",
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint_name", ENDPOINT_NAMES)
def test_role_against_endpoint(alpha, role, endpoint_name):
    (name, method, path, permission, body, allowed_status) = next(e for e in endpoints(alpha) if e[0] == endpoint_name)
    allowed = permission in DEFAULT_ROLES[role][1]
    response = getattr(alpha.client(role), method)(path, body, format="json") if body is not None else getattr(alpha.client(role), method)(path)
    if allowed:
        assert response.status_code == allowed_status, (role, name, response.content)
    else:
        assert response.status_code == 403, (role, name, response.content)
        error = response.json()["error"]
        assert error["code"] == "permission_denied"
        assert error["message"] == f"Missing permission {permission}."


def test_matrix_spot_checks():
    """The documented matrix, independently of how it is computed."""
    perms = {role: set(DEFAULT_ROLES[role][1]) for role in ROLES}
    assert {"users:write", "roles:write", "audit:read", "tenant:manage"} <= perms["admin"]
    assert "users:write" not in perms["developer"] and "audit:read" not in perms["developer"]
    assert {"alerts:ack", "devices:command"} <= perms["operator"] and "rules:write" not in perms["operator"]
    assert all(name.endswith(":read") for name in perms["viewer"])


def test_permission_denial_is_audited(alpha):
    response = alpha.client("viewer").post("/api/v1/roles", {"name": "x-role"}, format="json")
    assert response.status_code == 403
    (entry,) = audit_entries("alpha", action="permission.denied")
    assert entry.outcome == "denied"
    assert entry.actor_email == alpha.email("viewer")
    assert entry.metadata == {"permission": "roles:write", "method": "POST", "path": "/api/v1/roles"}


def test_custom_role_grants_exactly_its_permissions(alpha):
    admin = alpha.client("admin")
    created = admin.post("/api/v1/roles", {"name": "auditor", "permissions": ["audit:read"]}, format="json")
    assert created.status_code == 201, created.json()
    viewer_id = alpha.users["viewer"].pk
    assert admin.post(f"/api/v1/users/{viewer_id}/roles", {"roles": ["auditor"]}, format="json").status_code == 200
    viewer = alpha.client("viewer")
    assert viewer.get("/api/v1/audit/logs").status_code == 200
    assert viewer.get("/api/v1/roles").status_code == 403  # auditor replaced viewer: no roles:read now
    assert viewer.get("/api/v1/auth/me").json()["permissions"] == ["audit:read"]


def test_deactivated_user_loses_every_permission(alpha):
    client = alpha.client("admin")
    token_client = alpha.client("operator")
    operator_id = alpha.users["operator"].pk
    assert client.patch(f"/api/v1/users/{operator_id}", {"is_active": False}, format="json").status_code == 200
    assert token_client.get("/api/v1/roles").status_code == 401
