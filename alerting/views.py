"""Alerts console: filters, live arrival (static/js/alerts.js over /ws/v1/live), acknowledge,
resolve, notes and the timeline. Views parse, call alerting services and selectors, render."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from accounts.decorators import permission_required
from alerting import selectors, services
from alerting.choices import Severity
from alerting.models import Alert, AlertState
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo

PAGE_SIZE = 50


class AlertFilterForm(forms.Form):
    state = forms.ChoiceField(required=False, choices=[("open", "Open"), *AlertState.choices, ("all", "All")])
    severity = forms.ChoiceField(required=False, choices=[("", "Any severity"), *Severity.choices])
    q = forms.CharField(required=False, max_length=100)


class NoteForm(forms.Form):
    text = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


def _permissions(request: HttpRequest) -> dict[str, bool]:
    permissions = request.user.effective_permissions()
    return {"can_ack": "alerts:ack" in permissions, "can_resolve": "alerts:resolve" in permissions}


@permission_required("alerts:read")
def console(request: HttpRequest) -> HttpResponse:
    form = AlertFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_bound and form.is_valid() else {}
    queryset = selectors.alerts().select_related("device")
    state = data.get("state") or "open"
    if state == "open":
        queryset = queryset.open()
    elif state != "all":
        queryset = queryset.filter(state=state)
    if data.get("severity"):
        queryset = queryset.filter(severity=data["severity"])
    if data.get("q"):
        from django.db.models import Q

        q = data["q"].strip()
        queryset = queryset.filter(Q(device_uid__icontains=q) | Q(rule_name__icontains=q) | Q(message__icontains=q))
    page = Paginator(queryset.order_by("-first_seen_at", "-id"), PAGE_SIZE).get_page(request.GET.get("page"))
    context: dict[str, Any] = {"form": form, "page": page, "alerts": list(page.object_list), "state": state, **_permissions(request)}
    template = "alerting/_alert_rows.html" if request.headers.get("HX-Request") == "true" else "alerting/console.html"
    return render(request, template, context)


@permission_required("alerts:read")
def alert_row(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(selectors.alerts().select_related("device"), pk=pk)
    return render(request, "alerting/_alert_row.html", {"alert": alert, **_permissions(request)})


@permission_required("alerts:read")
def alert_detail(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(selectors.alerts().select_related("device"), pk=pk)
    return render(request, "alerting/alert.html", _detail_context(request, alert))


def _detail_context(request: HttpRequest, alert: Alert, note_form: NoteForm | None = None, error: str = "") -> dict[str, Any]:
    return {
        "alert": alert,
        "events": list(selectors.alert_timeline(alert)),
        "note_form": note_form or NoteForm(),
        "error": error,
        **_permissions(request),
    }


def _transition(request: HttpRequest, pk: int, action) -> HttpResponse:
    note = (request.POST.get("note") or "").strip()[:2000]
    status, error = 200, ""
    try:
        action(actor=request.user, client=ClientInfo.from_request(request), alert_id=pk, note=note)
    except Alert.DoesNotExist:
        return HttpResponse(status=404)
    except ServiceConflict as exc:
        status, error = 409, exc.message
    alert = get_object_or_404(selectors.alerts().select_related("device"), pk=pk)
    if request.POST.get("from") == "detail":
        return render(request, "alerting/_alert_detail_body.html", _detail_context(request, alert, error=error), status=status)
    return render(request, "alerting/_alert_row.html", {"alert": alert, "error": error, **_permissions(request)}, status=status)


@require_POST
@permission_required("alerts:ack")
def acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    return _transition(request, pk, services.acknowledge_alert)


@require_POST
@permission_required("alerts:resolve")
def resolve(request: HttpRequest, pk: int) -> HttpResponse:
    return _transition(request, pk, services.resolve_alert)


@require_POST
@permission_required("alerts:ack")
def add_note(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(selectors.alerts(), pk=pk)
    form = NoteForm(request.POST)
    status = 200
    if form.is_valid():
        services.add_note(actor=request.user, client=ClientInfo.from_request(request), alert_id=pk, text=form.cleaned_data["text"])
        form = NoteForm()
    else:
        status = 422
    alert = get_object_or_404(selectors.alerts().select_related("device"), pk=pk)
    return render(request, "alerting/_alert_detail_body.html", _detail_context(request, alert, note_form=form), status=status)
