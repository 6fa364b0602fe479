"""GET /metrics: the Prometheus exposition of every process, for the platform operator's Prometheus.

Never public by default. Access needs what is configured, all of it:
- METRICS_ALLOWED_NETWORKS (CIDR list): the client address (REMOTE_ADDR, or X-Forwarded-For behind
  IIOT_TRUSTED_PROXIES hops) must be in one of them, else 403;
- METRICS_TOKEN: `Authorization: Bearer <token>` must carry it, else 401 (with WWW-Authenticate).
With neither set, every request gets 403 `metrics_disabled`. Errors use the API's error shape.

Served on the public host and on every tenant host (same content: platform-wide figures labelled
by tenant; the token is the platform operator's, never a tenant user's credential).
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from iiot.api.errors import error_response
from iiot.observability.collectors import MergedCollector, scrape_sources
from iiot.request_context import client_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    networks = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {entry!r} is not a network (CIDR) or address") from exc
    return tuple(networks)


def address_allowed(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The error response for a request that may not read /metrics, or None when it may."""
    token: str = getattr(settings, "METRICS_TOKEN", "") or ""
    networks = parse_networks(tuple(getattr(settings, "METRICS_ALLOWED_NETWORKS", ()) or ()))
    if not token and not networks:
        return error_response(
            403, "metrics_disabled", "Metrics are not served: set METRICS_TOKEN and/or METRICS_ALLOWED_NETWORKS."
        )
    if networks and not address_allowed(client_ip(request), networks):
        return error_response(403, "permission_denied", "Your address may not read metrics.")
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            response = error_response(401, "not_authenticated", "A bearer token is required to read metrics.")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        if not hmac.compare_digest(presented.strip().encode(), token.encode()):
            response = error_response(401, "authentication_failed", "The metrics token is not valid.")
            response["WWW-Authenticate"] = 'Bearer realm="metrics", error="invalid_token"'
            return response
    return None


def render_metrics() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedCollector(scrape_sources()))
    return generate_latest(registry)


@csrf_exempt  # no session is involved: POST gets the 405 below, not a CSRF page
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
        response["Allow"] = "GET, HEAD"
        return response
    refused = refusal(request)
    if refused is not None:
        return refused
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
