"""Rate limits on django-ratelimit and the Redis cache, with standard response headers.

A view names its group (`rate_limit_group = "devices"`); the rate comes from
`settings.RATE_LIMITS[group]`. Counters are per user (or per client IP when anonymous) and,
through the tenant-aware cache key function, per tenant. Every limited response carries
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the window
resets); a refused one is 429 with `Retry-After`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_ratelimit.core import get_usage
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from iiot.request_context import client_ip

logger = logging.getLogger(__name__)


class RateLimited(exceptions.Throttled):
    default_detail = "Too many requests."
    default_code = "rate_limited"

    def __init__(self, wait: int, limit_name: str) -> None:
        super().__init__(wait=wait, detail=f"Rate limit for {limit_name} exceeded; retry in {wait} s.")


def rate_for(group: str) -> str:
    return settings.RATE_LIMITS.get(group) or settings.RATE_LIMITS["default"]


def check(request: HttpRequest, group: str, key_value: str, *, label: str | None = None) -> dict[str, Any] | None:
    """Count one hit for `key_value` in `group`; raise `RateLimited` when over the limit.

    Usage is remembered on the request so the response gets the headers of the tightest limit.
    """
    try:
        usage = get_usage(request, group=group, key=lambda _group, _request: key_value, rate=rate_for(group), increment=True)
    except Exception:  # the cache is down: serve rather than fail every request
        logger.warning("rate limit cache unavailable; not limiting", extra={"group": group})
        return None
    if usage is None:
        return None
    django_request = getattr(request, "_request", request)
    current = getattr(django_request, "rate_limit_usage", None)
    remaining = max(usage["limit"] - usage["count"], 0)
    if current is None or remaining <= current["remaining"]:
        django_request.rate_limit_usage = {"limit": usage["limit"], "remaining": remaining, "reset": max(usage["time_left"], 0)}
    if usage["should_limit"]:
        raise RateLimited(wait=max(usage["time_left"], 1), limit_name=label or group)
    return usage


def principal(request: Any) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_ip(request)}"


class GroupRateThrottle(BaseThrottle):
    """DRF throttle: one hit per request in the view's `rate_limit_group`, per user or IP."""

    def allow_request(self, request, view) -> bool:
        group = getattr(view, "rate_limit_group", "default")
        check(request, group, principal(request))
        return True


class RateLimitHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        usage = getattr(request, "rate_limit_usage", None)
        if usage is not None:
            response["X-RateLimit-Limit"] = str(usage["limit"])
            response["X-RateLimit-Remaining"] = str(usage["remaining"])
            response["X-RateLimit-Reset"] = str(usage["reset"])
        return response
