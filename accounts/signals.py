"""Audit for browser and admin logins (the API's login service audits its own)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from accounts.models import AuditOutcome
from accounts.services import record_audit
from iiot.request_context import ClientInfo


def _is_browser(request) -> bool:
    return request is not None and not request.path.startswith("/api/")


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs) -> None:
    if _is_browser(request):
        record_audit("auth.login", actor=user, client=ClientInfo.from_request(request), target=user, metadata={"via": "web"})


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs) -> None:
    if _is_browser(request) and user is not None:
        record_audit("auth.logout", actor=user, client=ClientInfo.from_request(request), target=user, metadata={"via": "web"})


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    if _is_browser(request):
        record_audit(
            "auth.login_failed",
            actor=None,
            client=ClientInfo.from_request(request),
            outcome=AuditOutcome.FAILURE,
            actor_email=str(credentials.get("username") or credentials.get("email") or "")[:254],
            metadata={"via": "web", "reason": "invalid_credentials"},
        )
