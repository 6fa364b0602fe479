"""Rules pages: list, create and edit with inline validation errors (the service's full_clean is
the one set of invariants), and a backtest preview chart (rules/backtest.py) before saving."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.decorators import permission_required
from alerting.choices import Severity
from devices.models import Device, DeviceProfile
from iiot.request_context import ClientInfo
from rules import selectors, services
from rules.backtest import BacktestError, run_backtest
from rules.models import Rule, RuleType, TargetKind

BACKTEST_RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
CHART_BUCKETS = 48

EXAMPLE_CONDITIONS = {
    "threshold": {"metric": "temperature", "op": "gt", "value": 80, "clear_value": 75, "for_s": 30},
    "comparison": {"expression": "inlet_temp - outlet_temp > 5", "for_s": 0},
    "no_data": {"metric": "temperature", "seconds": 300},
    "rate_of_change": {"metric": "pressure", "window_s": 300, "op": "gt", "value": 2},
    "statistical": {"metric": "vibration", "window_s": 600, "aggregate": "avg", "op": "gt", "value": 4},
    "zscore": {"metric": "current", "window_s": 3600, "k": 3, "direction": "both"},
}


class JSONField(forms.CharField):
    def __init__(self, *args: Any, empty: Any = None, **kwargs: Any) -> None:
        self.empty = empty
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3}))
        super().__init__(*args, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        return value if isinstance(value, str) or value is None else json.dumps(value)

    def to_python(self, value: Any) -> Any:
        value = (value or "").strip()
        if not value:
            return self.empty
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValidationError(f"Not valid JSON: {exc}") from None


class RuleForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(max_length=1000, required=False)
    type = forms.ChoiceField(choices=RuleType.choices)
    severity = forms.ChoiceField(choices=Severity.choices, initial=Severity.WARNING)
    enabled = forms.BooleanField(required=False, initial=True)
    target_kind = forms.ChoiceField(choices=TargetKind.choices, label="Applies to")
    target_device = forms.CharField(required=False, max_length=64, label="Device uid")
    target_profile = forms.ModelChoiceField(queryset=DeviceProfile.objects.order_by("name"), required=False, label="Profile")
    target_labels = JSONField(required=False, empty={}, label="Labels (JSON)", help_text='e.g. {"line": "2"}')
    condition = JSONField(label="Condition (JSON)", help_text="Shape per type: see the examples below.")
    schedule = JSONField(required=False, empty=None, label="Schedule (JSON, optional)")
    cooldown_s = forms.IntegerField(min_value=0, initial=0, label="Cooldown (s)")
    actions = JSONField(required=False, empty={}, label="Actions (JSON, optional)")

    def clean_target_device(self) -> Device | None:
        uid = self.cleaned_data["target_device"].strip()
        if not uid:
            return None
        device = Device.objects.filter(uid=uid).first()
        if device is None:
            raise ValidationError("No device with this uid.")
        return device

    def fields_for_service(self) -> dict[str, Any]:
        return dict(self.cleaned_data)


def _initial(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name, "description": rule.description, "type": rule.type, "severity": rule.severity,
        "enabled": rule.enabled, "target_kind": rule.target_kind,
        "target_device": rule.target_device.uid if rule.target_device_id else "", "target_profile": rule.target_profile_id,
        "target_labels": rule.target_labels, "condition": rule.condition, "schedule": rule.schedule,
        "cooldown_s": rule.cooldown_s, "actions": rule.actions,
    }  # fmt: skip


def _apply_service_errors(form: RuleForm, error: ValidationError) -> None:
    """Model/service errors keyed `condition.metric` etc. go under their form field, inline."""
    for key, messages in getattr(error, "message_dict", {"__all__": error.messages}).items():
        field = key.split(".", 1)[0]
        detail = [f"{key.split('.', 1)[1]}: {m}" if "." in key else m for m in messages]
        form.add_error(field if field in form.fields else None, detail)


def _context(request: HttpRequest, form: RuleForm, rule: Rule | None) -> dict[str, Any]:
    return {
        "form": form,
        "rule": rule,
        "can_write": "rules:write" in request.user.effective_permissions(),
        "examples": json.dumps(EXAMPLE_CONDITIONS, indent=1),
        "backtest_ranges": list(BACKTEST_RANGES),
    }


@permission_required("rules:read")
def rule_list(request: HttpRequest) -> HttpResponse:
    rules = list(selectors.rules().order_by("name"))
    return render(request, "rules/list.html", {"rules": rules, "can_write": "rules:write" in request.user.effective_permissions()})


@permission_required("rules:write")
def rule_create(request: HttpRequest) -> HttpResponse:
    form = RuleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.create_rule(actor=request.user, client=ClientInfo.from_request(request), **form.fields_for_service())
            return redirect("rules:list")
        except ValidationError as error:
            _apply_service_errors(form, error)
    status = 422 if request.method == "POST" else 200
    return render(request, "rules/form.html", _context(request, form, None), status=status)


@permission_required("rules:read")
def rule_edit(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(selectors.rules(), pk=pk)
    if request.method == "POST":
        if "rules:write" not in request.user.effective_permissions():
            return render(request, "forbidden.html", {"permission": "rules:write"}, status=403)
        form = RuleForm(request.POST)
        if form.is_valid():
            try:
                services.update_rule(actor=request.user, client=ClientInfo.from_request(request), rule=rule, **form.fields_for_service())
                return redirect("rules:list")
            except ValidationError as error:
                _apply_service_errors(form, error)
        return render(request, "rules/form.html", _context(request, form, rule), status=422)
    return render(request, "rules/form.html", _context(request, RuleForm(initial=_initial(rule)), rule))


@require_POST
@permission_required("rules:write")
def rule_backtest(request: HttpRequest) -> HttpResponse:
    """Evaluate the form's rule (saved or not) over a recent range; a chart of firings over time."""
    form = RuleForm(request.POST)
    context: dict[str, Any] = {"form": form}
    seconds = BACKTEST_RANGES.get(request.POST.get("backtest_range", "24h"), 86400)
    if form.is_valid():
        fields = {key: value for key, value in form.fields_for_service().items() if key in services.RULE_FIELDS}
        rule = Rule(**fields)
        try:
            rule.full_clean(validate_unique=False)
            end = datetime.now(UTC)
            start = end - timedelta(seconds=seconds)
            result = run_backtest(rule, start=start, end=end)
            width = seconds / CHART_BUCKETS
            counts = [0] * CHART_BUCKETS
            for interval in result.intervals:
                index = min(CHART_BUCKETS - 1, int((interval.fired_at - start).total_seconds() // width))
                counts[index] += 1
            xs = [int(start.timestamp() + i * width) for i in range(CHART_BUCKETS)]
            context.update(result=result, chart=json.dumps([xs, counts]), intervals=result.intervals[:20])
        except ValidationError as error:
            _apply_service_errors(form, error)
        except BacktestError as error:
            form.add_error(None, f"{error.field}: {error.message}")
    status = 200 if "result" in context else 422
    return render(request, "rules/_backtest.html", context, status=status)
