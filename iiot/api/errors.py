"""One error body for every 4xx/5xx the API returns.

    {"error": {"status": 400, "code": "validation_error", "message": "...",
               "fields": {"email": ["Enter a valid email address."]}},
     "request_id": "..."}

`fields` is present for validation errors only; nested serializer errors are flattened into
dotted paths (`roles.0`, `location.lat`) so a client can point at the exact input.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from iiot.errors import AuthenticationRefused, ServiceConflict
from iiot.request_context import request_id_var

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "server_error",
    503: "service_unavailable",
}


def error_body(
    status_code: int, code: str | None = None, message: str = "", fields: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "status": status_code,
        "code": code or _CODES.get(status_code, "error"),
        "message": message,
    }
    if fields:
        error["fields"] = fields
    return {"error": error, "request_id": request_id_var.get()}


def error_response(
    status_code: int, code: str | None = None, message: str = "", fields: dict[str, list[str]] | None = None
) -> JsonResponse:
    """A plain Django response with the API error shape (for middleware and URL-level handlers)."""
    return JsonResponse(error_body(status_code, code, message, fields), status=status_code)


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into {"dotted.path": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "non_field_errors" if key in ("non_field_errors", "__all__") else str(key)
            path = f"{prefix}.{name}" if prefix and name != "non_field_errors" else (prefix or name)
            for sub_key, messages in flatten_errors(value, path).items():
                out.setdefault(sub_key, []).extend(messages)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out.setdefault(prefix or "non_field_errors", []).extend(str(item) for item in detail)
        else:
            for index, item in enumerate(detail):
                if item:
                    for sub_key, messages in flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)).items():
                        out.setdefault(sub_key, []).extend(messages)
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return out


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceConflict):
        return Response(error_body(409, exc.code, exc.message), status=409)
    if isinstance(exc, AuthenticationRefused):
        return Response(error_body(401, exc.code, exc.message), status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return Response(error_body(500, "server_error", "Internal server error."), status=500)

    if isinstance(exc, exceptions.ValidationError):
        body = error_body(
            response.status_code, "validation_error", "The request is invalid.", flatten_errors(exc.detail)
        )
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        message = str(detail.get("detail", detail)) if isinstance(detail, dict) else str(detail)
        code = getattr(detail, "code", None) if not isinstance(detail, (dict, list)) else None
        if isinstance(detail, dict) and "code" in detail:
            code = str(detail["code"])
        if code in (None, "error", "invalid") or response.status_code == 404:
            code = _CODES.get(response.status_code)
        body = error_body(response.status_code, code, message)
    response.data = body
    return response


def _wants_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler404(request: HttpRequest, exception: Exception | None = None):
    if _wants_api(request):
        return error_response(404, "not_found", "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest):
    if _wants_api(request):
        return error_response(500, "server_error", "Internal server error.")
    from django.views.defaults import server_error

    return server_error(request)


def handler403(request: HttpRequest, exception: Exception | None = None):
    if _wants_api(request):
        return error_response(403, "permission_denied", "You do not have permission to perform this action.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def handler400(request: HttpRequest, exception: Exception | None = None):
    if _wants_api(request):
        return error_response(400, "bad_request", "Bad request.")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"
