"""ASGI middleware for `/ws/v1/live`: tenant from the Host header, then the user.

django-tenants only routes HTTP requests, so the WebSocket path resolves the tenant itself: the
Host header (port stripped) is looked up in the Domain table (public schema) off the event loop.
Authentication then happens inside that tenant's schema, by either
- the browser session cookie (same check as django.contrib.auth.get_user: session key, backend,
  session hash), accepted only when the Origin header, if any, names the same host (cross-site
  WebSocket hijacking), or
- a JWT access token (`Sec-WebSocket-Protocol: bearer, <token>` or `?token=<token>`), whose
  tenant claim must name this tenant.

Nothing is refused here: the outcome goes into the scope (`tenant`, `schema_name`, `user`,
`permissions`, `auth_method`, `live_refusal`) and LiveConsumer accepts and closes with a code and a
reason, which a refusal before the handshake could not carry.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare
from django_tenants.utils import get_public_schema_name, schema_context

from iiot.live.protocol import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, CLOSE_UNKNOWN_TENANT, Refusal

BEARER_SUBPROTOCOL = "bearer"


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope.get("headers", [])}


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def resolve_tenant(hostname: str):
    from tenants.models import Domain

    with schema_context(get_public_schema_name()):
        domain = Domain.objects.select_related("tenant").filter(domain=hostname).first()
        return domain.tenant if domain is not None else None


def session_user(schema: str, session_key: str):
    """The user of a session in `schema`, or None (same checks as django.contrib.auth.get_user)."""
    from importlib import import_module

    engine = import_module(settings.SESSION_ENGINE)
    with schema_context(schema):
        session = engine.SessionStore(session_key)
        user_id = session.get(SESSION_KEY)
        backend_path = session.get(BACKEND_SESSION_KEY)
        if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
            return None
        user = load_backend(backend_path).get_user(user_id)
        if user is None or not user.is_active:
            return None
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash or not constant_time_compare(session_hash, user.get_session_auth_hash()):
            return None
        user.effective_permissions()
        return user


def token_user(schema: str, raw: str):
    """(user, None) for a valid access token of this tenant, else (None, Refusal)."""
    from rest_framework.exceptions import AuthenticationFailed

    from accounts.authentication import TenantJWTAuthentication

    with schema_context(schema):
        auth = TenantJWTAuthentication()
        try:
            validated = auth.get_validated_token(raw.encode())
            user = auth.get_user(validated)
        except AuthenticationFailed as exc:
            detail = exc.detail  # simplejwt's: {"detail": ..., "code": ...}
            code = str(detail.get("code", "")) if isinstance(detail, dict) else getattr(detail, "code", "")
            if code == "token_tenant_mismatch":
                return None, Refusal(CLOSE_FORBIDDEN, "Token was issued for another tenant.")
            return None, Refusal(CLOSE_UNAUTHENTICATED, "Invalid or expired token.")
        except Exception:  # noqa: BLE001 - any other token problem (InvalidToken is AuthenticationFailed)
            return None, Refusal(CLOSE_UNAUTHENTICATED, "Invalid or expired token.")
        if user is None or not user.is_active:
            return None, Refusal(CLOSE_UNAUTHENTICATED, "User not found or inactive.")
        user.effective_permissions()
        return user, None


def _bearer_token(scope: dict[str, Any]) -> str | None:
    protocols = [p.strip() for p in scope.get("subprotocols") or []]
    if BEARER_SUBPROTOCOL in protocols:
        index = protocols.index(BEARER_SUBPROTOCOL)
        if index + 1 < len(protocols) and protocols[index + 1]:
            return protocols[index + 1]
    query = parse_qs((scope.get("query_string") or b"").decode("latin1"))
    token = query.get("token")
    return token[0] if token else None


class LiveAuthMiddleware:
    """Tenant by host, then session or JWT; the verdict goes into the scope."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope.update(user=AnonymousUser(), permissions=frozenset(), auth_method=None, live_refusal=None, tenant=None)
        scope["live_refusal"] = await self._authenticate(scope)
        return await self.app(scope, receive, send)

    async def _authenticate(self, scope: dict[str, Any]) -> Refusal | None:
        headers = _headers(scope)
        hostname = _hostname(headers.get("host", ""))
        tenant = await database_sync_to_async(resolve_tenant)(hostname) if hostname else None
        if tenant is None or tenant.schema_name == get_public_schema_name():
            return Refusal(CLOSE_UNKNOWN_TENANT, f'No tenant is served at "{hostname[:100]}".')
        scope["tenant"], scope["schema_name"] = tenant, tenant.schema_name
        if not tenant.is_active:
            return Refusal(CLOSE_FORBIDDEN, f'Tenant "{tenant.slug}" is suspended.')

        raw_token = _bearer_token(scope)
        if raw_token:
            user, refusal = await database_sync_to_async(token_user)(tenant.schema_name, raw_token)
            if refusal is not None:
                return refusal
            scope.update(user=user, permissions=user.effective_permissions(), auth_method="jwt")
            return None

        cookies = parse_cookie(headers.get("cookie", ""))
        session_key = cookies.get(settings.SESSION_COOKIE_NAME)
        if session_key:
            origin = headers.get("origin")
            if origin and _hostname(urlparse(origin).netloc) != hostname:
                return Refusal(CLOSE_FORBIDDEN, "Cross-origin WebSocket with a session cookie refused.")
            user = await database_sync_to_async(session_user)(tenant.schema_name, session_key)
            if user is not None:
                scope.update(user=user, permissions=user.effective_permissions(), auth_method="session")
                return None
        return Refusal(CLOSE_UNAUTHENTICATED, "Authentication required: a session cookie or a bearer token.")
