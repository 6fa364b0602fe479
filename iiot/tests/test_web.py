"""The base web layout: login page, landing page with the tenant's name, logout, phone-ready."""

import pytest

from conftest import PASSWORD, audit_entries

pytestmark = pytest.mark.django_db


def test_landing_page_requires_login(alpha, client):
    response = client.get("/", HTTP_HOST=alpha.domain)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_login_page_is_phone_ready_and_uses_local_assets(alpha, client):
    response = client.get("/login/", HTTP_HOST=alpha.domain)
    html = response.content.decode()
    assert response.status_code == 200
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "Alpha Industries" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    css = client.get("/static/css/app.css", HTTP_HOST=alpha.domain)
    assert css.status_code == 200
    assert b"@media (max-width: 640px)" in b"".join(css.streaming_content)


def test_login_shows_tenant_roles_and_logs_out(alpha, client):
    # Browser tests log in through a live server and commit their audit rows: count only ours.
    seen = {e.pk for e in audit_entries("alpha", action__in=["auth.login", "auth.logout"])}
    response = client.post("/login/", {"username": alpha.email("operator"), "password": PASSWORD}, HTTP_HOST=alpha.domain, follow=True)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Alpha Industries" in html and alpha.email("operator") in html
    assert "operator" in html and "alerts:ack" in html
    assert "Admin</a>" not in html  # operators are not staff
    assert [e.metadata for e in audit_entries("alpha", action="auth.login") if e.pk not in seen] == [{"via": "web"}]
    response = client.post("/logout/", HTTP_HOST=alpha.domain)
    assert response.status_code == 302
    assert client.get("/", HTTP_HOST=alpha.domain).status_code == 302
    assert len([e for e in audit_entries("alpha", action="auth.logout") if e.pk not in seen]) == 1


def test_wrong_password_shows_an_error_and_is_audited(alpha, client):
    response = client.post("/login/", {"username": alpha.email("operator"), "password": "nope-nope-nope"}, HTTP_HOST=alpha.domain)
    assert response.status_code == 200
    assert b"Please enter a correct" in response.content
    (entry,) = audit_entries("alpha", action="auth.login_failed")
    assert entry.actor_email == alpha.email("operator") and entry.metadata["via"] == "web"


def test_browser_login_is_rate_limited(alpha, client, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login": "5/h"}  # no window boundary mid-test
    for _ in range(5):
        client.post("/login/", {"username": alpha.email("viewer"), "password": "wrong-wrong-1"}, HTTP_HOST=alpha.domain)
    response = client.post("/login/", {"username": alpha.email("viewer"), "password": PASSWORD}, HTTP_HOST=alpha.domain)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert b"Too many login attempts" in response.content


def test_public_host_sends_visitors_to_the_admin_portal(public_client):
    response = public_client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
