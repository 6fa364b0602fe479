"""Operator dashboards: the fleet overview and the device page (server-rendered, htmx, uPlot,
live updates over /ws/v1/live by static/js/live.js). Views parse, call selectors and services, render."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from accounts.decorators import permission_required
from devices import selectors, services
from devices.models import Device, DeviceProfile, DeviceStatus
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo
from telemetry.selectors import latest_values, sparklines

FLEET_PAGE_SIZE = 50
SPARKLINE_MINUTES = 60
VALUES_SHOWN = 4


@dataclass
class MetricValue:
    name: str
    unit: str
    metric_id: int
    value: float | None = None
    ts: datetime | None = None


@dataclass
class FleetRow:
    device: Device
    values: list[MetricValue] = field(default_factory=list)
    spark_metric: str = ""
    spark: list[float | None] = field(default_factory=list)
    open_alerts: int | None = None

    @property
    def spark_json(self) -> str:
        return json.dumps(self.spark)


class FleetFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    profile = forms.IntegerField(required=False, min_value=1)
    label = forms.CharField(required=False, max_length=200, help_text="key or key:value, comma-separated")
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *DeviceStatus.choices])


def _open_alert_counts(device_ids: list[int]) -> dict[int, int]:
    try:
        from alerting.models import Alert
    except ImportError:  # pragma: no cover - alerting is installed
        return {}
    rows = Alert.objects.open().filter(device_id__in=device_ids).values("device_id").annotate(n=Count("id")).order_by()
    return {row["device_id"]: row["n"] for row in rows}


@permission_required("devices:read")
def fleet(request: HttpRequest) -> HttpResponse:
    permissions = request.user.effective_permissions()
    form = FleetFilterForm(request.GET or None)
    filters: dict[str, Any] = {}
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        labels = [item.strip() for item in data["label"].split(",") if item.strip()]
        filters = {"search": data["q"].strip(), "profile_id": data["profile"], "labels": labels, "status": data["status"]}
    page = Paginator(selectors.fleet(**filters), FLEET_PAGE_SIZE).get_page(request.GET.get("page"))
    devices = list(page.object_list)
    ids = [device.pk for device in devices]
    schema = connection.schema_name
    can_read_telemetry = "telemetry:read" in permissions
    latest = latest_values(schema=schema, device_ids=ids) if can_read_telemetry and ids else {}
    rows: list[FleetRow] = []
    spark_pairs: dict[int, int] = {}
    for device in devices:
        metrics = [pm.metric for pm in device.profile.metrics.all()]
        device_latest = latest.get(device.pk, {})
        row = FleetRow(device=device)
        for metric in metrics[:VALUES_SHOWN]:
            ts, value = device_latest.get(metric.pk, (None, None))
            row.values.append(MetricValue(name=metric.name, unit=metric.unit, metric_id=metric.pk, value=value, ts=ts))
        if metrics and can_read_telemetry:
            spark_pairs[device.pk] = metrics[0].pk
            row.spark_metric = metrics[0].name
        rows.append(row)
    if spark_pairs:
        lines = sparklines(schema=schema, pairs=spark_pairs, minutes=SPARKLINE_MINUTES)
        for row in rows:
            row.spark = lines.get(row.device.pk, [])
    if "alerts:read" in permissions and ids:
        counts = _open_alert_counts(ids)
        for row in rows:
            row.open_alerts = counts.get(row.device.pk, 0)
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "rows": rows,
        "page": page,
        "query": query.urlencode(),
        "can_read_telemetry": can_read_telemetry,
        "can_read_alerts": "alerts:read" in permissions,
    }
    if request.headers.get("HX-Request") == "true":
        return render(request, "devices/_fleet_rows.html", context)
    counts = selectors.fleet_status_counts()
    context.update(
        profiles=list(DeviceProfile.objects.order_by("name").values_list("id", "name")),
        status_counts=[(value, label, counts.get(value, 0)) for value, label in DeviceStatus.choices],
        statuses=DeviceStatus.choices,
    )
    return render(request, "devices/fleet.html", context)


class CommandForm(forms.Form):
    name = forms.RegexField(regex=r"^[A-Za-z0-9_.:-]{1,100}$", max_length=100,
                            error_messages={"invalid": "Letters, digits and _ . : - only (at most 100)."})  # fmt: skip
    params = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="JSON, e.g. {\"setpoint\": 42}")
    timeout_s = forms.IntegerField(min_value=1, max_value=3600, initial=30, label="Timeout (s)")

    def clean_params(self) -> Any:
        raw = self.cleaned_data["params"].strip()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None


def _device_context(request: HttpRequest, device: Device, command_form: CommandForm | None = None) -> dict[str, Any]:
    permissions = request.user.effective_permissions()
    return {
        "device": device,
        "commands": list(selectors.device_commands(device)[:10]),
        "command_form": command_form or CommandForm(),
        "can_command": "devices:command" in permissions,
    }


@permission_required("devices:read")
def device_detail(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device.objects.select_related("profile"), pk=pk)
    permissions = request.user.effective_permissions()
    metrics = [pm.metric for pm in device.profile.metrics.select_related("metric").order_by("metric__name")]
    can_read_telemetry = "telemetry:read" in permissions
    latest = latest_values(schema=connection.schema_name, device_ids=[device.pk]).get(device.pk, {}) if can_read_telemetry else {}
    alerts = []
    if "alerts:read" in permissions:
        from alerting.models import Alert

        alerts = list(Alert.objects.filter(device=device).order_by("-first_seen_at", "-id")[:10])
    context = _device_context(request, device)
    context.update(
        metrics=[MetricValue(name=m.name, unit=m.unit, metric_id=m.pk, value=latest.get(m.pk, (None, None))[1],
                             ts=latest.get(m.pk, (None, None))[0]) for m in metrics],  # fmt: skip
        chart_metrics=json.dumps([{"name": m.name, "unit": m.unit} for m in metrics]),
        attributes=selectors.device_attributes(device),
        alerts=alerts,
        can_read_telemetry=can_read_telemetry,
        can_read_alerts="alerts:read" in permissions,
        presets=[("15m", "15 min"), ("1h", "1 h"), ("6h", "6 h"), ("24h", "24 h"), ("7d", "7 days"), ("30d", "30 days")],
    )
    return render(request, "devices/device.html", context)


@require_POST
@permission_required("devices:command")
def device_command(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device, pk=pk)
    form = CommandForm(request.POST)
    status = 200
    if form.is_valid():
        try:
            services.send_command(
                actor=request.user,
                client=ClientInfo.from_request(request),
                device=device,
                name=form.cleaned_data["name"],
                params=form.cleaned_data["params"],
                timeout_s=form.cleaned_data["timeout_s"],
            )
            form = CommandForm()
        except ServiceConflict as exc:
            form.add_error(None, str(exc))
            status = 409
    else:
        status = 422
    # 422/409 answers carry the form with its errors; static/js/live.js lets htmx swap them in.
    return render(request, "devices/_commands.html", _device_context(request, device, form), status=status)
