"""Login, refresh rotation and reuse detection, logout, /auth/me, tenant-bound tokens."""

import pytest
from django_tenants.utils import schema_context
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from conftest import PASSWORD, audit_entries

pytestmark = pytest.mark.django_db


def login(handle, email, password=PASSWORD, **extra):
    return handle.client(**extra).post("/api/v1/auth/login", {"email": email, "password": password}, format="json")


def test_login_returns_tenant_bound_tokens_and_is_audited(alpha):
    response = login(alpha, alpha.email("operator"), HTTP_USER_AGENT="pytest-agent/1.0")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 15 * 60
    assert body["user"]["email"] == alpha.email("operator")
    assert [role["name"] for role in body["user"]["roles"]] == ["operator"]

    me = alpha.client()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    assert me.get("/api/v1/auth/me").status_code == 200

    (entry,) = audit_entries("alpha", action="auth.login", actor_email=alpha.email("operator"))
    assert entry.outcome == "success"
    assert entry.tenant == "alpha"
    assert entry.ip == "127.0.0.1"
    assert entry.user_agent == "pytest-agent/1.0"
    assert entry.target_id == str(alpha.users["operator"].pk)


def test_login_is_case_insensitive_on_email(alpha):
    assert login(alpha, alpha.email("viewer").upper()).status_code == 200


@pytest.mark.parametrize(
    "email, password",
    [("viewer@alpha.example.com", "wrong-password-1"), ("nobody@alpha.example.com", PASSWORD)],
)
def test_failed_login_is_401_and_audited(alpha, email, password):
    response = login(alpha, email, password)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    assert response.json()["error"]["message"] == "Invalid email or password."
    (entry,) = audit_entries("alpha", action="auth.login_failed")
    assert entry.outcome == "failure"
    assert entry.actor_email == email
    assert entry.actor_id is None


def test_inactive_user_cannot_log_in(alpha):
    with schema_context("alpha"):
        user = alpha.users["viewer"]
        user.is_active = False
        user.save()
    assert login(alpha, alpha.email("viewer")).status_code == 401


def test_user_of_one_tenant_cannot_log_in_on_another(alpha, beta):
    assert login(beta, alpha.email("developer")).status_code == 401


def test_token_from_one_tenant_is_refused_on_another(alpha, beta):
    token = alpha.access_token("admin")
    client = beta.client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get("/api/v1/auth/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_tenant_mismatch"
    # The same token still works at home.
    home = alpha.client()
    home.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert home.get("/api/v1/auth/me").status_code == 200


def test_garbage_and_missing_tokens_are_401(alpha):
    client = alpha.client()
    assert client.get("/api/v1/auth/me").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")
    response = client.get("/api/v1/auth/me")
    assert response.status_code == 401
    assert set(response.json()) == {"error", "request_id"}


def test_me_lists_roles_and_effective_permissions(alpha):
    from accounts.permissions import DEFAULT_ROLES

    body = alpha.client("operator").get("/api/v1/auth/me").json()
    assert body["roles"] == ["operator"]
    assert body["permissions"] == sorted(DEFAULT_ROLES["operator"][1])
    assert body["tenant"] == {"slug": "alpha", "name": "Alpha Industries", "schema": "alpha"}


def test_refresh_rotates_and_blacklists_the_old_token(alpha):
    tokens = alpha.tokens("developer")
    client = alpha.client()
    response = client.post("/api/v1/auth/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert response.status_code == 200, response.json()
    rotated = response.json()
    assert rotated["refresh"] != tokens["refresh"]
    assert rotated["access"]
    with schema_context("alpha"):
        assert BlacklistedToken.objects.filter(token__token=tokens["refresh"]).exists()
    # The new refresh token works in turn.
    assert client.post("/api/v1/auth/refresh", {"refresh": rotated["refresh"]}, format="json").status_code == 200


def test_refresh_reuse_revokes_every_session_and_is_audited(alpha):
    first = alpha.tokens("developer")
    other_session = alpha.tokens("developer")
    client = alpha.client()
    second = client.post("/api/v1/auth/refresh", {"refresh": first["refresh"]}, format="json").json()

    replay = client.post("/api/v1/auth/refresh", {"refresh": first["refresh"]}, format="json")
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "token_reused"

    # Every other refresh token of the user is dead now, including the freshly rotated one.
    for raw in (second["refresh"], other_session["refresh"]):
        assert client.post("/api/v1/auth/refresh", {"refresh": raw}, format="json").status_code == 401
    entry = audit_entries("alpha", action="auth.refresh_reuse")[0]
    assert entry.outcome == "denied"
    assert entry.actor_email == alpha.email("developer")
    assert entry.metadata["revoked_tokens"] >= 2


def test_refresh_token_from_another_tenant_is_refused(alpha, beta):
    tokens = alpha.tokens("admin")
    response = beta.client().post("/api/v1/auth/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_tenant_mismatch"


def test_access_token_is_not_a_refresh_token(alpha):
    tokens = alpha.tokens("admin")
    response = alpha.client().post("/api/v1/auth/refresh", {"refresh": tokens["access"]}, format="json")
    assert response.status_code == 401


def test_logout_blacklists_the_refresh_token_and_is_audited(alpha):
    tokens = alpha.tokens("viewer")
    client = alpha.client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert client.post("/api/v1/auth/logout", {"refresh": tokens["refresh"]}, format="json").status_code == 204
    with schema_context("alpha"):
        outstanding = OutstandingToken.objects.get(token=tokens["refresh"])
        assert BlacklistedToken.objects.filter(token=outstanding).exists()
    assert alpha.client().post("/api/v1/auth/refresh", {"refresh": tokens["refresh"]}, format="json").status_code == 401
    assert [e.actor_email for e in audit_entries("alpha", action="auth.logout")] == [alpha.email("viewer")]


def test_logout_with_someone_elses_token_is_refused(alpha):
    mine = alpha.tokens("viewer")
    theirs = alpha.tokens("operator")
    client = alpha.client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine['access']}")
    assert client.post("/api/v1/auth/logout", {"refresh": theirs["refresh"]}, format="json").status_code == 401


def test_passwords_are_hashed_with_argon2(alpha):
    with schema_context("alpha"):
        assert alpha.users["admin"].__class__.objects.get(pk=alpha.users["admin"].pk).password.startswith("argon2")


def test_api_login_records_last_login(alpha):
    assert login(alpha, alpha.email("operator")).json()["user"]["last_login"] is not None
