"""Permission checks for the server-rendered pages (the API declares `required_permissions`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def permission_required(permission: str) -> Callable:
    """Login required, then `permission` among the user's effective permissions, else a 403 page.
    Pages hide what a user may not do; this is what refuses it anyway."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if permission not in request.user.effective_permissions():
                return render(request, "forbidden.html", {"permission": permission}, status=403)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
