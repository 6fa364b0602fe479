"""User and role management through the API: validation, invariants, audit with diffs."""

import pytest
from django_tenants.utils import schema_context

from accounts.models import Role, User
from conftest import audit_entries

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "Plant-Floor-Secure-77"


def test_create_user_with_roles_is_audited_with_diff(alpha):
    response = alpha.client("admin").post(
        "/api/v1/users",
        {"email": "Shift.Lead@Alpha.example.com", "password": GOOD_PASSWORD, "full_name": "Sam Lead", "roles": ["operator"]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["email"] == "shift.lead@alpha.example.com"
    assert [r["name"] for r in body["roles"]] == ["operator"]
    assert "password" not in body
    (entry,) = audit_entries("alpha", action="user.create", actor_email=alpha.email("admin"))
    assert entry.actor_email == alpha.email("admin")
    assert entry.changes["email"] == [None, "shift.lead@alpha.example.com"]
    assert entry.changes["roles"] == [None, ["operator"]]
    assert GOOD_PASSWORD not in str(entry.changes)
    with schema_context("alpha"):
        assert User.objects.get(email="shift.lead@alpha.example.com").check_password(GOOD_PASSWORD)


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"email": "weak@alpha.example.com", "password": "password"}, "password"),
        ({"email": "short@alpha.example.com", "password": "Ab1!"}, "password"),
        ({"email": "digits@alpha.example.com", "password": "12345678901234"}, "password"),
        ({"email": "not-an-email", "password": GOOD_PASSWORD}, "email"),
        ({"email": "admin@alpha.example.com", "password": GOOD_PASSWORD}, "email"),
        ({"email": "ADMIN@alpha.example.com", "password": GOOD_PASSWORD}, "email"),
        ({"email": "r@alpha.example.com", "password": GOOD_PASSWORD, "roles": ["superhero"]}, "roles"),
        ({"email": "r@alpha.example.com", "password": GOOD_PASSWORD, "roles": "admin"}, "roles"),
        ({"password": GOOD_PASSWORD}, "email"),
    ],
)
def test_create_user_rejects_bad_input_with_field_errors(alpha, payload, field):
    response = alpha.client("admin").post("/api/v1/users", payload, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error


def test_update_user_records_before_and_after(alpha):
    viewer = alpha.users["viewer"]
    response = alpha.client("admin").patch(f"/api/v1/users/{viewer.pk}", {"full_name": "Vera Viewer", "roles": ["operator"]}, format="json")
    assert response.status_code == 200, response.json()
    (entry,) = audit_entries("alpha", action="user.update")
    assert entry.changes == {"full_name": ["", "Vera Viewer"], "roles": [["viewer"], ["operator"]]}


def test_password_change_revokes_sessions_and_hides_the_password(alpha):
    tokens = alpha.tokens("viewer")
    viewer = alpha.users["viewer"]
    response = alpha.client("admin").patch(f"/api/v1/users/{viewer.pk}", {"password": GOOD_PASSWORD}, format="json")
    assert response.status_code == 200
    assert alpha.client().post("/api/v1/auth/refresh", {"refresh": tokens["refresh"]}, format="json").status_code == 401
    (entry,) = audit_entries("alpha", action="user.update")
    assert GOOD_PASSWORD not in str(entry.changes)
    assert "password" in entry.changes


def test_last_admin_cannot_be_removed_or_demoted(alpha):
    admin_client = alpha.client("admin")
    admin = alpha.users["admin"]
    assert admin_client.delete(f"/api/v1/users/{admin.pk}").json()["error"]["code"] == "self_deletion"
    with schema_context("alpha"):
        other = User.objects.create_user(email="second-admin@alpha.example.com", password="x")
        other.roles.set([Role.objects.get(name="admin")])
    # Another admin tries to demote the first one: allowed while one admin remains...
    other_client = alpha.client()
    from accounts.services import issue_tokens

    with schema_context("alpha"):
        other_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_tokens(other)['access']}")
    assert other_client.post(f"/api/v1/users/{admin.pk}/roles", {"roles": ["viewer"]}, format="json").status_code == 200
    # ...but the last admin cannot remove their own admin role.
    response = other_client.post(f"/api/v1/users/{other.pk}/roles", {"roles": ["viewer"]}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "self_demotion"


def test_delete_user_is_audited(alpha):
    viewer = alpha.users["viewer"]
    assert alpha.client("admin").delete(f"/api/v1/users/{viewer.pk}").status_code == 204
    (entry,) = audit_entries("alpha", action="user.delete")
    assert entry.target_id == str(viewer.pk)
    assert entry.changes["email"] == [viewer.email, None]
    assert alpha.client("admin").get(f"/api/v1/users/{viewer.pk}").status_code == 404


def test_user_list_filters_and_search(alpha):
    client = alpha.client("admin")
    assert [u["email"] for u in client.get("/api/v1/users?role=operator").json()["results"]] == [alpha.email("operator")]
    assert [u["email"] for u in client.get("/api/v1/users?search=viewer").json()["results"]] == [alpha.email("viewer")]
    page = client.get("/api/v1/users?page_size=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]


def test_default_roles_are_read_only(alpha):
    client = alpha.client("admin")
    with schema_context("alpha"):
        viewer_role = Role.objects.get(name="viewer")
    response = client.put(f"/api/v1/roles/{viewer_role.pk}", {"name": "viewer", "description": "", "permissions": ["users:write"]}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "system_role"
    assert client.delete(f"/api/v1/roles/{viewer_role.pk}").status_code == 409


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": "x", "permissions": []}, "name"),
        ({"name": "Bad Name", "permissions": []}, "name"),
        ({"name": "admin", "permissions": []}, "name"),
        ({"name": "ok-name", "permissions": ["devices:fly"]}, "permissions.0"),
        ({"name": "ok-name", "permissions": "devices:read"}, "permissions"),
    ],
)
def test_role_validation(alpha, payload, field):
    response = alpha.client("admin").post("/api/v1/roles", payload, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"], response.json()


def test_role_in_use_cannot_be_deleted_and_changes_are_audited(alpha):
    client = alpha.client("admin")
    role = client.post("/api/v1/roles", {"name": "maintenance", "permissions": ["devices:read"]}, format="json").json()
    client.post(f"/api/v1/users/{alpha.users['viewer'].pk}/roles", {"roles": ["maintenance"]}, format="json")
    response = client.delete(f"/api/v1/roles/{role['id']}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "role_in_use"
    client.put(f"/api/v1/roles/{role['id']}", {"name": "maintenance", "description": "Fitters", "permissions": ["devices:read", "devices:write"]}, format="json")
    (entry,) = audit_entries("alpha", action="role.update")
    assert entry.changes == {"description": ["", "Fitters"], "permissions": [["devices:read"], ["devices:read", "devices:write"]]}
    assert [e.target_repr for e in audit_entries("alpha", action="role.create")] == ["maintenance"]
