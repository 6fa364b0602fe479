"""Browser login and logout for operators (the API has its own JWT endpoints)."""

from __future__ import annotations

from django import forms
from django.contrib.auth import logout
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from iiot.api import ratelimit
from iiot.request_context import client_ip


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(label="Email", max_length=254, widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))


class PlatformLoginView(LoginView):
    template_name = "accounts/login.html"
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        email = (request.POST.get("username") or "").strip().lower()
        try:
            ratelimit.check(request, "login", f"ip:{client_ip(request)}")
            ratelimit.check(request, "login", f"email:{email}")
        except ratelimit.RateLimited as exc:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, f"Too many login attempts. Try again in {exc.wait} seconds.")
            response = self.render_to_response(self.get_context_data(form=form), status=429)
            response["Retry-After"] = str(exc.wait)
            return response
        return super().post(request, *args, **kwargs)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("login")
