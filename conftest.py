"""Shared fixtures: real PostgreSQL (schema per tenant), real Redis.

Tenants are created once per session (schema creation runs every tenant migration) and
committed; each test then runs in a transaction that is rolled back, so tests may change
anything, tenants' status included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.core.cache import cache
from django.db import connection
from django_tenants.utils import get_public_schema_name, schema_context
from rest_framework.test import APIClient

PASSWORD = "Correct-Horse-Battery-9"
PUBLIC_DOMAIN = "localhost"
ROLES = ("admin", "developer", "operator", "viewer")


@dataclass
class TenantHandle:
    slug: str
    domain: str
    tenant: object = None
    users: dict[str, object] = field(default_factory=dict)  # role name -> User

    def email(self, role: str) -> str:
        return f"{role}@{self.slug}.example.com"

    def client(self, role: str | None = None, **extra) -> APIClient:
        """An API client on this tenant's host, authenticated as the user holding `role`."""
        client = APIClient(HTTP_HOST=self.domain, **extra)
        if role is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.access_token(role)}")
        return client

    def access_token(self, role: str) -> str:
        from accounts.services import issue_tokens

        with schema_context(self.slug):
            return issue_tokens(self.users[role])["access"]

    def tokens(self, role: str) -> dict:
        from accounts.services import issue_tokens

        with schema_context(self.slug):
            return issue_tokens(self.users[role])


def _provision(slug: str) -> TenantHandle:
    from accounts import services as account_services
    from accounts.models import Role, User
    from tenants.services import provision_tenant

    handle = TenantHandle(slug=slug, domain=f"{slug}.localhost")
    result = provision_tenant(
        actor=None,
        client=None,
        slug=slug,
        name=f"{slug.title()} Industries",
        domain=handle.domain,
        admin_email=handle.email("admin"),
        admin_password=PASSWORD,
    )
    handle.tenant = result.tenant
    with schema_context(slug):
        handle.users["admin"] = User.objects.get(email=handle.email("admin"))
        for role in ROLES[1:]:
            user = User.objects.filter(email=handle.email(role)).first() or account_services.create_user(
                actor=None, client=None, email=handle.email(role), password=PASSWORD, roles=[Role.objects.get(name=role)]
            )
            handle.users[role] = user
    return handle


@pytest.fixture(scope="session")
def platform(django_db_setup, django_db_blocker):
    """Public tenant plus two customer tenants, alpha and beta, each with one user per role."""
    from tenants.services import ensure_platform_admin, ensure_public_tenant

    with django_db_blocker.unblock():
        ensure_public_tenant(PUBLIC_DOMAIN)
        ensure_platform_admin(email="staff@platform.example.com", password=PASSWORD)
        tenants = {slug: _provision(slug) for slug in ("alpha", "beta")}
        connection.set_schema_to_public()
    return tenants


@pytest.fixture
def alpha(platform, db) -> TenantHandle:
    return platform["alpha"]


@pytest.fixture
def beta(platform, db) -> TenantHandle:
    return platform["beta"]


@pytest.fixture(autouse=True)
def _clean_cache_and_schema():
    """Rate-limit counters live in the cache: every test starts with none."""
    cache.clear()
    yield
    connection.set_schema_to_public()


@pytest.fixture
def public_client(platform, db) -> APIClient:
    return APIClient(HTTP_HOST=PUBLIC_DOMAIN)


def audit_entries(schema: str, **filters):
    from accounts.models import AuditLog

    with schema_context(schema):
        return list(AuditLog.objects.filter(**filters).order_by("id"))


def public_audit(**filters):
    return audit_entries(get_public_schema_name(), **filters)


# --- MQTT: the platform's Mosquitto (dynamic security plugin), as shipped ------------------------
from iiot.testing.mosquitto import mosquitto_fixture  # noqa: E402

# Session-wide broker on a free port; settings.MQTT_URL and the MQTT_* credentials point at it.
# Autouse: the default MQTT_URL is the broker `make run` starts, which a test run never relies on
# (readiness probes included), so every test sees the suite's own broker, configured as shipped.
mqtt_broker = mosquitto_fixture("session", autouse=True)
