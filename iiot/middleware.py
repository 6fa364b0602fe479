"""Cross-cutting HTTP middleware: request ids, body size limit, one access-log line per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty

from iiot.api.errors import error_response
from iiot.request_context import REQUEST_ID_HEADER, clean_request_id, request_id_var, tenant_var

access_log = logging.getLogger("iiot.access")

BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class RequestIdMiddleware:
    """Takes `X-Request-ID` from the caller (or mints one) and echoes it on the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        token = request_id_var.set(request_id)
        tenant_token = tenant_var.set("-")
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
            tenant_var.reset(tenant_token)
        response[REQUEST_ID_HEADER] = request_id
        return response


class RequestBodyLimitMiddleware:
    """Refuses API request bodies over `API_MAX_BODY_BYTES` with 413 before any parser runs.

    Declared lengths are checked without reading; bodies without a length (chunked) are read once
    and measured, so nothing large ever reaches a parser or a 500.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in BODY_METHODS and request.path.startswith("/api/"):
            limit = settings.API_MAX_BODY_BYTES
            declared = request.META.get("CONTENT_LENGTH") or ""
            too_large = False
            if declared:
                try:
                    too_large = int(declared) > limit
                except ValueError:
                    return error_response(400, "bad_request", "Content-Length is not a number.")
            else:
                # No declared length (chunked): the ASGI handler has already spooled the body.
                too_large = len(request.body) > limit
            if too_large:
                return error_response(
                    413,
                    "request_too_large",
                    f"Request body is larger than the limit of {limit} bytes.",
                    fields={"body": [f"At most {limit} bytes are accepted."]},
                )
        return self.get_response(request)


class AccessLogMiddleware:
    """One structured log line per request: method, path, status, duration, tenant, user."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        user = _resolved_user(request)
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "user_id": getattr(user, "pk", None),
                "remote_addr": request.META.get("REMOTE_ADDR"),
            },
        )
        return response


def _resolved_user(request: HttpRequest) -> object | None:
    """The request's user if something already loaded it; never a query just for the log."""
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        return None
    return user
