"""Tenant routing by hostname, and refusal of suspended tenants."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_tenants.middleware.main import TenantMainMiddleware

from iiot.api.errors import error_response
from iiot.request_context import tenant_var

# Paths a suspended tenant still answers: probes, static files and the login page that explains.
ALWAYS_ALLOWED_PREFIXES = ("/healthz", "/readyz", "/static/")
# Also /metrics: Prometheus scrapes a process by its address, whatever the host (see iiot/observability).
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


class TenantMiddleware(TenantMainMiddleware):
    """django-tenants routing, plus the tenant in the log context and a JSON 404 for the API."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        response = super().process_request(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            tenant_var.set(tenant.schema_name)
        return response

    def no_tenant_found(self, request: HttpRequest, hostname: str) -> HttpResponse | None:
        if request.path in PROBE_PATHS:
            # Orchestrators probe by IP address: answer on the public URLs whatever the host.
            self.setup_url_routing(request, force_public=True)
            return None
        if request.path.startswith("/api/"):
            return error_response(404, "unknown_tenant", f'No tenant is served at "{hostname}".')
        return HttpResponse(f'No tenant is served at "{hostname}".', status=404, content_type="text/plain")


class SuspendedTenantMiddleware:
    """A suspended tenant's API answers 403 with a clear message; its pages say the same."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = getattr(request, "tenant", None)
        if tenant is not None and not tenant.is_active and not request.path.startswith(ALWAYS_ALLOWED_PREFIXES):
            message = f'Tenant "{tenant.slug}" is suspended. Contact your platform administrator.'
            if request.path.startswith("/api/"):
                return error_response(403, "tenant_suspended", message)
            return render(request, "tenants/suspended.html", {"message": message}, status=403)
        return self.get_response(request)
