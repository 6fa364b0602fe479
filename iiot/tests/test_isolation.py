"""Tenant A never sees or touches tenant B: every endpoint with an object answers 404 across
tenants, lists never show the other tenant's rows, and tokens do not cross hosts."""

import pytest
from django_tenants.utils import schema_context

from accounts.models import AuditLog, Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def beta_objects(beta):
    """Objects in beta whose ids do not exist in alpha (alpha has fewer rows)."""
    with schema_context("beta"):
        for index in range(6):
            Role.objects.create(name=f"beta-only-{index}", permissions=["devices:read"])
        role = Role.objects.create(name="beta-secret", permissions=["devices:read"])
        from accounts.services import create_user

        users = [create_user(actor=None, client=None, email=f"b{index}@beta.example.com", password="Beta-Long-Pass-99") for index in range(6)]
        for _ in range(30):
            AuditLog.objects.create(action="beta.event", tenant="beta", actor_email="b@beta.example.com")
        audit = AuditLog.objects.create(action="beta.secret", tenant="beta")
    return {"user": users[-1].pk, "role": role.pk, "audit": audit.pk}


OBJECT_ENDPOINTS = [
    ("get", "/api/v1/users/{user}", None),
    ("put", "/api/v1/users/{user}", {"email": "x@alpha.example.com", "full_name": "", "is_staff": False, "is_active": True, "roles": []}),
    ("patch", "/api/v1/users/{user}", {"full_name": "hijacked"}),
    ("delete", "/api/v1/users/{user}", None),
    ("post", "/api/v1/users/{user}/roles", {"roles": ["viewer"]}),
    ("get", "/api/v1/roles/{role}", None),
    ("put", "/api/v1/roles/{role}", {"name": "beta-secret", "permissions": []}),
    ("patch", "/api/v1/roles/{role}", {"description": "hijacked"}),
    ("delete", "/api/v1/roles/{role}", None),
    ("get", "/api/v1/audit/logs/{audit}", None),
]


@pytest.mark.parametrize("method, template, body", OBJECT_ENDPOINTS)
def test_alpha_admin_gets_404_for_beta_objects(alpha, beta_objects, method, template, body):
    path = template.format(**beta_objects)
    client = alpha.client("admin")
    response = getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)
    assert response.status_code == 404, (path, response.content)
    assert response.json()["error"]["code"] == "not_found"
    with schema_context("beta"):
        assert Role.objects.filter(name="beta-secret", description="").exists()
        assert AuditLog.objects.filter(pk=beta_objects["audit"]).exists()


@pytest.mark.parametrize("path, marker", [("/api/v1/users", "beta.example.com"), ("/api/v1/roles", "beta-"), ("/api/v1/audit/logs", "beta")])
def test_lists_never_show_the_other_tenant(alpha, beta_objects, path, marker):
    client = alpha.client("admin")
    seen = []
    url = f"{path}?page_size=500"
    while url:
        body = client.get(url).json()
        seen.extend(body["results"])
        url = body.get("next")
    assert seen
    assert marker not in str(seen)


@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/roles", "/api/v1/audit/logs", "/api/v1/auth/me"])
def test_alpha_token_is_refused_on_beta_host(alpha, beta, path):
    client = beta.client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alpha.access_token('admin')}")
    response = client.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_tenant_mismatch"


def test_unknown_host_is_404_not_another_tenant(platform, db):
    from rest_framework.test import APIClient

    response = APIClient(HTTP_HOST="gamma.localhost").get("/api/v1/users")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_tenant"


def test_tenant_api_is_not_served_on_the_public_host(public_client):
    assert public_client.post("/api/v1/auth/login", {"email": "staff@platform.example.com", "password": "x"}, format="json").status_code == 404


def test_session_of_one_tenant_does_not_open_another(alpha, beta, client):
    from conftest import PASSWORD

    response = client.post("/login/", {"username": alpha.email("admin"), "password": PASSWORD}, HTTP_HOST=alpha.domain)
    assert response.status_code == 302
    assert client.get("/", HTTP_HOST=alpha.domain).status_code == 200
    # The same browser cookie jar on beta's host is not logged in there.
    response = client.get("/", HTTP_HOST=beta.domain)
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.get("/api/v1/auth/me", HTTP_HOST=beta.domain).status_code in (401, 403)
