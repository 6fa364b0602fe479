"""The landing page every operator sees after login; later dashboards fill it."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    return render(
        request,
        "home.html",
        {
            "roles": sorted(role.name for role in user.roles.all()),
            "permissions": sorted(user.effective_permissions()),
        },
    )
