"""Bad input never reaches a 500: malformed JSON, oversized bodies, wrong types, unknown fields,
hostile strings. Every error has the same body shape."""

import json

import pytest
from django_tenants.utils import schema_context

from accounts.models import Role

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["status"] == status
    assert body["error"]["message"]
    assert body["request_id"] == response["X-Request-ID"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize("raw", ['{"name": ', "not json", '{"name": "x",}', "\x00\x01", "[1, 2"])
def test_malformed_json_is_400(alpha, raw):
    response = alpha.client("admin").post("/api/v1/roles", raw, content_type="application/json")
    assert_error_shape(response, 400, "parse_error")


def test_non_object_json_is_400(alpha):
    response = alpha.client("admin").post("/api/v1/roles", "[1, 2, 3]", content_type="application/json")
    error = assert_error_shape(response, 400, "validation_error")
    assert "non_field_errors" in error["fields"]


def test_oversized_body_is_refused_before_parsing(alpha, settings):
    settings.API_MAX_BODY_BYTES = 1024
    body = json.dumps({"name": "big", "description": "x" * 5000})
    response = alpha.client("admin").post("/api/v1/roles", body, content_type="application/json")
    error = assert_error_shape(response, 413, "request_too_large")
    assert "body" in error["fields"]


def test_oversized_login_body_is_refused(alpha, settings):
    settings.API_MAX_BODY_BYTES = 512
    response = alpha.client().post("/api/v1/auth/login", {"email": "a@b.c", "password": "p" * 2000}, format="json")
    assert_error_shape(response, 413)


def test_wrong_content_type_is_415(alpha):
    response = alpha.client("admin").post("/api/v1/roles", "name=x", content_type="application/x-www-form-urlencoded")
    assert_error_shape(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": 12345, "permissions": []}, "name"),
        ({"name": "typed", "permissions": [1, 2]}, "permissions.0"),
        ({"name": "typed", "permissions": {"a": 1}}, "permissions"),
        ({"name": ["list"], "permissions": []}, "name"),
        ({"name": None, "permissions": []}, "name"),
    ],
)
def test_wrong_types_name_the_field(alpha, payload, field):
    error = assert_error_shape(alpha.client("admin").post("/api/v1/roles", payload, format="json"), 400, "validation_error")
    assert field in error["fields"], error


@pytest.mark.parametrize("path, payload", [
    ("/api/v1/roles", {"name": "r-one", "permissions": [], "is_system": True}),
    ("/api/v1/roles", {"name": "r-two", "permissions": [], "colour": "red"}),
    ("/api/v1/users", {"email": "u@alpha.example.com", "password": "Long-Enough-Pass-1", "is_superuser": True}),
    ("/api/v1/auth/login", {"email": "u@alpha.example.com", "password": "x", "tenant": "beta"}),
])
def test_unknown_fields_are_400_naming_them(alpha, path, payload):
    response = alpha.client("admin").post(path, payload, format="json")
    error = assert_error_shape(response, 400, "validation_error")
    unknown = (set(payload) - {"name", "permissions", "email", "password"}).pop()
    assert error["fields"][unknown] == ["Unknown field."]


@pytest.mark.parametrize(
    "hostile",
    [
        "'; DROP TABLE accounts_role; --",
        "<script>alert('x')</script>",
        "\" OR 1=1 --",
        "${jndi:ldap://x}",
        "ユニコード ✓ \u202e",
    ],
)
def test_hostile_strings_are_stored_verbatim_and_harm_nothing(alpha, hostile):
    client = alpha.client("admin")
    response = client.post("/api/v1/roles", {"name": "hostile-role", "description": hostile, "permissions": []}, format="json")
    assert response.status_code == 201, response.json()
    assert response["Content-Type"] == "application/json"
    assert response.json()["description"] == hostile
    with schema_context("alpha"):
        assert Role.objects.get(name="hostile-role").description == hostile
        assert Role.objects.filter(name="admin").exists()  # the table is still there
    # In a filter or search the string is a value, never SQL.
    assert client.get("/api/v1/users", {"search": hostile}).status_code == 200
    assert client.get("/api/v1/audit/logs", {"actor_email": hostile}).status_code == 200


def test_hostile_string_as_a_name_gets_a_field_error(alpha):
    response = alpha.client("admin").post("/api/v1/roles", {"name": "<script>", "permissions": []}, format="json")
    assert "name" in assert_error_shape(response, 400)["fields"]


def test_unknown_api_path_has_the_error_shape(alpha):
    assert_error_shape(alpha.client("admin").get("/api/v1/no-such-thing"), 404, "not_found")


def test_non_numeric_id_is_404_not_500(alpha):
    assert alpha.client("admin").get("/api/v1/users/abc").status_code == 404
    assert alpha.client("admin").get("/api/v1/users/99999999999999999999999").status_code == 404


def test_method_not_allowed_has_the_error_shape(alpha):
    assert_error_shape(alpha.client("admin").delete("/api/v1/users"), 405, "method_not_allowed")


def test_bad_filter_values_are_400(alpha):
    error = assert_error_shape(alpha.client("admin").get("/api/v1/audit/logs?actor_id=abc"), 400)
    assert "actor_id" in error["fields"]


def test_bad_page_is_404_with_shape(alpha):
    assert_error_shape(alpha.client("admin").get("/api/v1/users?page=999"), 404)


def test_unauthenticated_has_the_error_shape(alpha):
    assert_error_shape(alpha.client().get("/api/v1/users"), 401, "not_authenticated")
