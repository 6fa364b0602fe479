"""Per-request context (request id, tenant) shared by logs and the Celery tasks a request enqueues.

Context variables work for threads and asyncio tasks alike, so the ASGI server, sync views run in
threads and Celery workers all see the right values.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")

REQUEST_ID_HEADER = "X-Request-ID"


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """Accept a caller's request id only if it is short and printable; otherwise mint one."""
    if value and len(value) <= 128 and value.isascii() and value.replace("-", "").replace("_", "").isalnum():
        return value
    return new_request_id()


class RequestContextFilter(logging.Filter):
    """Adds `request_id` and `tenant` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "tenant"):
            record.tenant = tenant_var.get()
        return True


class ClientInfo:
    """Who is calling from where: what audit entries and rate limits need from a request."""

    __slots__ = ("ip", "user_agent", "request_id")

    def __init__(self, ip: str | None = None, user_agent: str = "", request_id: str = "") -> None:
        self.ip = ip
        self.user_agent = user_agent[:500]
        self.request_id = request_id or request_id_var.get()

    @classmethod
    def from_request(cls, request) -> ClientInfo:
        return cls(ip=client_ip(request), user_agent=request.META.get("HTTP_USER_AGENT", ""))

    @classmethod
    def system(cls) -> ClientInfo:
        return cls(ip=None, user_agent="system")


def client_ip(request) -> str | None:
    """The client's address; `X-Forwarded-For` is believed only behind `IIOT_TRUSTED_PROXIES` hops."""
    from django.conf import settings

    hops = getattr(settings, "IIOT_TRUSTED_PROXIES", 0)
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR") or None
