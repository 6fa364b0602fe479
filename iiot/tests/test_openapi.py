"""The OpenAPI schema is valid and every operation documents its responses."""

import pytest
import yaml
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(alpha):
    response = alpha.client().get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    return response.json() if response["Content-Type"].startswith("application/json") else yaml.safe_load(response.content)


def test_schema_validates(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_seed_paths_are_documented(schema):
    expected = {
        "/api/v1/auth/login": {"post"},
        "/api/v1/auth/refresh": {"post"},
        "/api/v1/auth/logout": {"post"},
        "/api/v1/auth/me": {"get"},
        "/api/v1/users": {"get", "post"},
        "/api/v1/users/{id}": {"get", "put", "patch", "delete"},
        "/api/v1/users/{id}/roles": {"post"},
        "/api/v1/roles": {"get", "post"},
        "/api/v1/roles/{id}": {"get", "put", "patch", "delete"},
        "/api/v1/audit/logs": {"get"},
    }
    for path, methods in expected.items():
        assert path in schema["paths"], path
        assert methods <= set(schema["paths"][path]), (path, set(schema["paths"][path]))


def test_every_operation_has_a_response_schema(schema):
    missing = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            success = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
            if not success:
                missing.append(f"{method.upper()} {path}: no 2xx response")
            for code, response in success.items():
                if code == "204":
                    continue
                content = response.get("content", {})
                if not any("schema" in media for media in content.values()):
                    missing.append(f"{method.upper()} {path} {code}: no schema")
    assert not missing, missing


def test_docs_pages_use_local_assets_only(alpha):
    client = alpha.client()
    for path in ("/api/v1/docs/", "/api/v1/redoc/"):
        response = client.get(path)
        assert response.status_code == 200
        html = response.content.decode()
        assert "cdn" not in html.lower() and "unpkg" not in html.lower() and "jsdelivr" not in html.lower()
        assert "/static/drf_spectacular_sidecar/" in html


def test_sidecar_asset_is_served(alpha, client):
    response = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js", HTTP_HOST=alpha.domain)
    assert response.status_code == 200


def test_schema_generates_without_warnings(platform, db):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
