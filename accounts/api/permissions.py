"""`resource:action` permission checks for DRF views; every denial is audited."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts.models import AuditOutcome
from accounts.services import record_audit
from iiot.request_context import ClientInfo


def required_permission(view, request) -> str | None:
    """The permission the view declares for this action (viewsets) or HTTP method."""
    mapping = getattr(view, "required_permissions", None)
    if mapping is None:
        return None
    if isinstance(mapping, str):
        return mapping
    action = getattr(view, "action", None)
    if action and action in mapping:
        return mapping[action]
    return mapping.get(request.method, mapping.get("*"))


class HasPermission(BasePermission):
    """Allows the request when the user's roles grant the view's declared permission.

    A view that declares none is refused, so a forgotten declaration fails closed.
    """

    message = "You do not have permission to perform this action."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if getattr(view, request.method.lower(), None) is None:
            return True  # no handler for this method: let the view answer 405
        needed = required_permission(view, request)
        if needed is None:
            self.message = "This endpoint declares no permission and is closed."
            return False
        if user.has_platform_permission(needed):
            return True
        self.message = f"Missing permission {needed}."
        record_audit(
            "permission.denied",
            actor=user,
            client=ClientInfo.from_request(request),
            outcome=AuditOutcome.DENIED,
            metadata={"permission": needed, "method": request.method, "path": request.path},
        )
        return False
