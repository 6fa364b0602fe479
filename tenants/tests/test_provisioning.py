"""Tenant lifecycle: provisioning (command, idempotent), suspension, audit in the public schema."""

import io

import pytest
from django.core.management import CommandError, call_command
from django_tenants.utils import schema_context

from accounts.models import Role, User
from conftest import PASSWORD, public_audit
from tenants.models import Domain, Tenant
from tenants.services import reactivate_tenant, suspend_tenant, tenant_is_active

pytestmark = pytest.mark.django_db


def provision(**overrides):
    options = {
        "slug": "alpha",
        "name": "Alpha Industries",
        "domain": "alpha.localhost",
        "admin_email": "admin@alpha.example.com",
        "admin_password": PASSWORD,
    }
    options.update(overrides)
    out = io.StringIO()
    call_command("provision_tenant", stdout=out, **options)
    return out.getvalue()


def test_provisioning_created_schema_domain_roles_and_admin(alpha):
    tenant = Tenant.objects.get(slug="alpha")
    assert tenant.schema_name == "alpha"
    assert Domain.objects.get(domain="alpha.localhost").tenant == tenant
    assert Domain.objects.get(domain="alpha.localhost").is_primary
    with schema_context("alpha"):
        assert sorted(Role.objects.filter(is_system=True).values_list("name", flat=True)) == ["admin", "developer", "operator", "viewer"]
        admin = User.objects.get(email="admin@alpha.example.com")
        assert admin.is_staff and [r.name for r in admin.roles.all()] == ["admin"]
        assert admin.check_password(PASSWORD)
    (entry,) = public_audit(action="tenant.create", target_id="alpha")
    assert entry.changes["domain"] == [None, "alpha.localhost"]


def test_provisioning_again_changes_nothing(alpha):
    output = provision(admin_password="A-Different-Password-1")
    assert "already there" in output
    assert Tenant.objects.filter(slug="alpha").count() == 1
    with schema_context("alpha"):
        assert User.objects.filter(email="admin@alpha.example.com").count() == 1
        # The existing admin's password is never overwritten.
        assert User.objects.get(email="admin@alpha.example.com").check_password(PASSWORD)
    assert len(public_audit(action="tenant.create", target_id="alpha")) == 1


def test_provisioning_restores_a_tampered_default_role(alpha):
    with schema_context("alpha"):
        Role.objects.filter(name="viewer").update(permissions=["users:write"])
    provision()
    with schema_context("alpha"):
        assert "users:write" not in Role.objects.get(name="viewer").permissions


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"slug": "Bad Slug"}, "slug"),
        ({"slug": "public"}, "slug"),
        ({"slug": "delta", "domain": "alpha.localhost"}, "already routes"),
        ({"slug": "delta", "domain": "delta.localhost", "admin_password": "short"}, "password"),
    ],
)
def test_bad_provisioning_input_is_a_clear_error(alpha, overrides, message):
    with pytest.raises(CommandError, match=message):
        provision(**overrides)


def test_suspended_tenant_api_answers_403_with_a_clear_message(alpha, beta):
    suspend_tenant(actor=None, client=None, tenant=alpha.tenant, reason="unpaid")
    for path in ("/api/v1/auth/me", "/api/v1/users"):
        response = alpha.client("admin").get(path)
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "tenant_suspended"
        assert "suspended" in error["message"]
    login = alpha.client().post("/api/v1/auth/login", {"email": alpha.email("admin"), "password": PASSWORD}, format="json")
    assert login.status_code == 403
    assert not tenant_is_active("alpha")  # what the ingest service asks before accepting a device
    # Other tenants are unaffected; probes still answer.
    assert beta.client("admin").get("/api/v1/auth/me").status_code == 200
    assert alpha.client().get("/healthz").status_code == 200
    page = alpha.client().get("/login/")
    assert page.status_code == 403 and b"suspended" in page.content


def test_suspension_and_reactivation_are_audited_and_idempotent(alpha):
    suspend_tenant(actor=None, client=None, tenant=alpha.tenant, reason="unpaid")
    suspend_tenant(actor=None, client=None, tenant=alpha.tenant, reason="again")
    tenant = Tenant.objects.get(slug="alpha")
    assert tenant.status == "suspended" and tenant.suspended_at and tenant.suspended_reason == "unpaid"
    reactivate_tenant(actor=None, client=None, tenant=tenant)
    assert tenant_is_active("alpha")
    assert alpha.client("admin").get("/api/v1/auth/me").status_code == 200
    assert [e.metadata.get("reason") for e in public_audit(action="tenant.suspend", target_id="alpha")] == ["unpaid"]
    assert len(public_audit(action="tenant.reactivate", target_id="alpha")) == 1


def test_public_tenant_cannot_be_suspended(platform, db):
    from iiot.errors import ServiceConflict

    with pytest.raises(ServiceConflict):
        suspend_tenant(actor=None, client=None, tenant=Tenant.objects.get(schema_name="public"))


def test_platform_admin_portal_creates_and_suspends_tenants(platform, db, client):
    response = client.post("/admin/login/", {"username": "staff@platform.example.com", "password": PASSWORD}, HTTP_HOST="localhost")
    assert response.status_code == 302, response.content[:500]
    page = client.get("/admin/tenants/tenant/", HTTP_HOST="localhost")
    assert page.status_code == 200 and b"alpha" in page.content
    response = client.post(
        "/admin/tenants/tenant/add/",
        {
            "slug": "gamma",
            "name": "Gamma Works",
            "timezone": "Europe/Berlin",
            "domain": "gamma.localhost",
            "admin_email": "boss@gamma.example.com",
            "admin_password": "Gamma-Long-Pass-42",
        },
        HTTP_HOST="localhost",
    )
    assert response.status_code == 302, response.content[:2000]
    gamma = Tenant.objects.get(slug="gamma")
    with schema_context("gamma"):
        assert User.objects.get(email="boss@gamma.example.com").roles.filter(name="admin").exists()
    response = client.post(
        "/admin/tenants/tenant/",
        {"action": "suspend_selected", "_selected_action": [gamma.pk]},
        HTTP_HOST="localhost",
    )
    assert response.status_code == 302
    assert Tenant.objects.get(slug="gamma").status == "suspended"
    (entry,) = public_audit(action="tenant.suspend", target_id="gamma")
    assert entry.actor_email == "staff@platform.example.com"
    assert [e.actor_email for e in public_audit(action="tenant.create", target_id="gamma")] == ["staff@platform.example.com"]


def test_tenant_admin_portal_hides_tenants(alpha, client):
    response = client.post("/admin/login/", {"username": alpha.email("admin"), "password": PASSWORD}, HTTP_HOST=alpha.domain)
    assert response.status_code == 302
    index = client.get("/admin/", HTTP_HOST=alpha.domain)
    assert index.status_code == 200
    assert b"/admin/accounts/role/" in index.content
    assert b"/admin/tenants/tenant/" not in index.content
    assert client.get("/admin/tenants/tenant/", HTTP_HOST=alpha.domain).status_code in (403, 404, 302)


def test_tenant_admin_cannot_reach_the_public_admin(alpha, client):
    """Tenant users live in their tenant's schema: the public host does not know them."""
    response = client.post("/admin/login/", {"username": alpha.email("admin"), "password": PASSWORD}, HTTP_HOST="localhost")
    assert response.status_code == 200 and b"Please enter the correct" in response.content
    assert client.get("/admin/tenants/tenant/", HTTP_HOST="localhost").status_code == 302  # to the login page
    # nor does a session made on the tenant's host carry over to the public host
    client.post("/admin/login/", {"username": alpha.email("admin"), "password": PASSWORD}, HTTP_HOST=alpha.domain)
    response = client.get("/admin/tenants/tenant/", HTTP_HOST="localhost")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_portal_form_reports_bad_input_without_a_500(platform, db, client):
    client.post("/admin/login/", {"username": "staff@platform.example.com", "password": PASSWORD}, HTTP_HOST="localhost")
    response = client.post(
        "/admin/tenants/tenant/add/",
        {"slug": "delta", "name": "Delta", "timezone": "UTC", "domain": "alpha.localhost", "admin_email": "a@delta.example.com", "admin_password": "1234567890"},
        HTTP_HOST="localhost",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "already routes to a tenant" in html
    assert "This password is entirely numeric" in html
    assert not Tenant.objects.filter(slug="delta").exists()
