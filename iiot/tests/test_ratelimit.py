"""django-ratelimit on the Redis cache: 429 with Retry-After and X-RateLimit-* headers."""

import pytest
from django.test import override_settings

from conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _hourly_windows(settings):
    """Fixed windows reset at their boundary: an hour-long window keeps a test from straddling one."""
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login": "5/h"}


def attempt(handle, email, password="wrong-password-0", ip="192.0.2.10"):
    return handle.client(REMOTE_ADDR=ip).post("/api/v1/auth/login", {"email": email, "password": password}, format="json")


def test_login_is_limited_to_five_per_minute_per_ip(alpha):
    statuses = [attempt(alpha, f"user{index}@alpha.example.com").status_code for index in range(5)]
    assert statuses == [401] * 5
    response = attempt(alpha, "user9@alpha.example.com")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert response["X-RateLimit-Limit"] == "5"
    assert response["X-RateLimit-Remaining"] == "0"
    assert 0 <= int(response["X-RateLimit-Reset"]) <= 3600
    # Even the right password is refused while limited: no oracle for the attacker.
    assert attempt(alpha, alpha.email("viewer"), PASSWORD).status_code == 429
    # Another address is not affected.
    assert attempt(alpha, alpha.email("viewer"), PASSWORD, ip="192.0.2.99").status_code == 200


def test_login_is_limited_per_username_across_addresses(alpha):
    target = alpha.email("operator")
    statuses = [attempt(alpha, target, ip=f"198.51.100.{index}").status_code for index in range(5)]
    assert statuses == [401] * 5
    response = attempt(alpha, target, PASSWORD, ip="198.51.100.77")
    assert response.status_code == 429
    assert "account" in response.json()["error"]["message"]


def test_headers_count_down(alpha):
    first = attempt(alpha, "a@alpha.example.com")
    second = attempt(alpha, "b@alpha.example.com")
    assert (first["X-RateLimit-Limit"], first["X-RateLimit-Remaining"]) == ("5", "4")
    assert second["X-RateLimit-Remaining"] == "3"


def test_limits_are_per_tenant(alpha, beta):
    for index in range(5):
        attempt(alpha, f"u{index}@alpha.example.com")
    assert attempt(alpha, "x@alpha.example.com").status_code == 429
    assert attempt(beta, "x@beta.example.com").status_code == 401


@override_settings(RATE_LIMITS={"login": "5/h", "default": "3/h"})
def test_authenticated_api_calls_are_limited_per_user(alpha):
    client = alpha.client("admin")
    responses = [client.get("/api/v1/roles") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0"]
    limited = client.get("/api/v1/roles")
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1
    # Another user of the same tenant has their own budget.
    assert alpha.client("viewer").get("/api/v1/roles").status_code == 200


def test_seed_limits_are_the_defaults():
    import iiot.settings as settings  # the configured defaults, not this module's test override

    assert settings.RATE_LIMITS["login"] == "5/m"
    assert settings.RATE_LIMITS["analytics"] == "30/m"
    assert settings.RATE_LIMITS["devices"] == "100/m"
    assert settings.RATE_LIMITS["telemetry"] == "200/m"
