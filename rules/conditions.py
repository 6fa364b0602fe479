"""The shape of each rule type's `condition`, of `schedule` and of `actions`: validation and
normalisation (defaults filled in). Errors are field errors keyed `condition.<field>`.

Comparison operators (`op`), for threshold, rate_of_change and statistical:
    gt, gte, lt, lte, eq, ne        against `value`         (">", ">=", "<", "<=", "==", "!=" accepted too)
    inside, outside                 against [`low`, `high`]  (inclusive bounds)
`clear_value` (optional, gt/gte/lt/lte only) is the hysteresis: a firing rule clears only once the
value is back beyond it (for gt/gte: value < clear_value; for lt/lte: value > clear_value), so
a value hovering around the threshold does not flap. Without it the rule clears as soon as the
condition no longer holds.

    threshold       {"metric": "temperature", "op": "gt", "value": 80, "clear_value": 75, "for_s": 30}
    comparison      {"expression": "inlet_temp - outlet_temp > 5", "for_s": 0}        (rules/expressions.py)
    no_data         {"metric": "temperature" | null, "seconds": 300}                    (null: any metric)
    rate_of_change  {"metric": "pressure", "window_s": 300, "op": "gt", "value": 2}    (units per minute)
    statistical     {"metric": "vibration", "window_s": 600, "aggregate": "avg" | "min" | "max" | "stddev" | "percentile",
                     "percentile": 95, "op": "gt", "value": 4, "min_points": 1}
    zscore          {"metric": "current", "window_s": 3600, "k": 3, "direction": "both" | "above" | "below",
                     "min_points": 10}

`for_s` (threshold, comparison): the condition must hold that long (judged on the points that
arrive) before the rule fires. Windows are 10 s to 24 h (raw points).

schedule: {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00", "timezone": "Europe/Berlin"}
    days 0 = Monday ... 6 = Sunday (default every day); start < end, or an overnight window when
    start > end (belongs to the day it starts on); timezone defaults to the tenant's. Outside the
    schedule the rule is inactive: it does not fire, and a firing rule clears.

actions: {"raise_alert": true, "channel_ids": [1, 2], "command": {"name": "stop", "params": {}, "timeout_s": 30}}
    raise_alert (default true) opens/updates the alert (notifying `channel_ids`); `command` is sent to
    the device the rule fired for, on firing only.
"""

from __future__ import annotations

import math
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError

OPS = ("gt", "gte", "lt", "lte", "eq", "ne", "inside", "outside")
OP_SYMBOLS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "==": "eq", "!=": "ne"}
HYSTERESIS_OPS = ("gt", "gte", "lt", "lte")
AGGREGATES = ("avg", "min", "max", "stddev", "percentile")
DIRECTIONS = ("both", "above", "below")
MIN_WINDOW_S = 10
MAX_WINDOW_S = 86400
MAX_FOR_S = 86400
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Errors:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.errors: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(f"{self.prefix}.{field}" if field else self.prefix, []).append(message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _integer(errors: _Errors, data: dict, field: str, *, default: int | None, low: int, high: int, required: bool = False) -> int | None:
    value = data.get(field, default)
    if value is None:
        if required:
            errors.add(field, "This field is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        errors.add(field, "Expected a whole number.")
        return None
    value = int(value)
    if not low <= value <= high:
        errors.add(field, f"Must be between {low} and {high}.")
        return None
    return value


def validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict) or not labels:
        raise ValidationError("Give at least one label, as an object of strings, e.g. {\"line\": \"2\"}.")
    if len(labels) > 20 or not all(isinstance(k, str) and isinstance(v, str) and k and len(k) <= 64 and len(v) <= 200 for k, v in labels.items()):
        raise ValidationError("Labels are at most 20 string keys (1-64 characters) with string values (at most 200).")
    return dict(labels)


def _comparison(errors: _Errors, data: dict, out: dict) -> None:
    op = data.get("op")
    op = OP_SYMBOLS.get(op, op) if isinstance(op, str) else op
    if op not in OPS:
        errors.add("op", f"Expected one of {', '.join(OPS)} (or >, >=, <, <=, ==, !=).")
        return
    out["op"] = op
    if op in ("inside", "outside"):
        low, high = _number(data.get("low")), _number(data.get("high"))
        if low is None:
            errors.add("low", "A finite number is required for a range.")
        if high is None:
            errors.add("high", "A finite number is required for a range.")
        if low is not None and high is not None and low > high:
            errors.add("high", "Must not be less than low.")
        if "value" in data and data["value"] is not None:
            errors.add("value", "Not used with a range (give low and high).")
        out["low"], out["high"] = low, high
    else:
        value = _number(data.get("value"))
        if value is None:
            errors.add("value", "A finite number is required.")
        out["value"] = value
    clear = data.get("clear_value")
    if clear is not None:
        clear_value = _number(clear)
        if clear_value is None:
            errors.add("clear_value", "Expected a finite number or null.")
        elif op not in HYSTERESIS_OPS:
            errors.add("clear_value", "Hysteresis applies to gt, gte, lt and lte only.")
        elif out.get("value") is not None:
            if op in ("gt", "gte") and clear_value > out["value"]:
                errors.add("clear_value", "For a rising threshold the clear value must not be above the threshold.")
            if op in ("lt", "lte") and clear_value < out["value"]:
                errors.add("clear_value", "For a falling threshold the clear value must not be below the threshold.")
        out["clear_value"] = clear_value
    else:
        out["clear_value"] = None


def _allowed_keys(errors: _Errors, data: dict, allowed: set[str]) -> None:
    for key in sorted(set(data) - allowed):
        errors.add(key, "Unknown field for this rule type.")


def target_metric_names(rule) -> tuple[set[str], bool]:
    """Metric names the rule's target devices may report, and whether any name goes (a profile
    that auto-registers metrics, or a label target matching no device yet)."""
    from devices.models import Device, DeviceProfile, ProfileMetric

    profile_ids: set[int] = set()
    if rule.target_kind == "device" and rule.target_device_id:
        profile_ids = set(Device.objects.filter(pk=rule.target_device_id).values_list("profile_id", flat=True))
    elif rule.target_kind == "profile" and rule.target_profile_id:
        profile_ids = {rule.target_profile_id}
    elif rule.target_kind == "labels" and isinstance(rule.target_labels, dict) and rule.target_labels:
        profile_ids = set(Device.objects.filter(labels__contains=rule.target_labels).values_list("profile_id", flat=True).distinct())
        if not profile_ids:
            return set(), True
    if not profile_ids:
        return set(), True
    names = set(ProfileMetric.objects.filter(profile_id__in=profile_ids).values_list("metric__name", flat=True))
    open_ended = DeviceProfile.objects.filter(pk__in=profile_ids, auto_register_metrics=True).exists()
    return names, open_ended


def _metric(errors: _Errors, data: dict, known: tuple[set[str], bool], *, required: bool = True) -> str | None:
    from telemetry.models import Metric

    name = data.get("metric")
    if name is None:
        if required:
            errors.add("metric", "This field is required.")
        return None
    if not isinstance(name, str) or not name:
        errors.add("metric", "Expected a metric name.")
        return None
    names, open_ended = known
    if name in names:
        return name
    if open_ended and Metric.objects.filter(name=name).exists():
        return name
    errors.add("metric", f"Unknown metric {name!r} for the target's profiles.")
    return None


def validate_condition(rule) -> dict[str, Any]:
    from rules.models import RuleType

    data = rule.condition
    errors = _Errors("condition")
    if not isinstance(data, dict):
        raise ValidationError({"condition": ["Expected a JSON object."]})
    out: dict[str, Any] = {}
    known = target_metric_names(rule)
    kind = rule.type
    if kind == RuleType.THRESHOLD:
        _allowed_keys(errors, data, {"metric", "op", "value", "low", "high", "clear_value", "for_s"})
        out["metric"] = _metric(errors, data, known)
        _comparison(errors, data, out)
        out["for_s"] = _integer(errors, data, "for_s", default=0, low=0, high=MAX_FOR_S)
    elif kind == RuleType.COMPARISON:
        _allowed_keys(errors, data, {"expression", "for_s"})
        out["expression"] = _expression(errors, data, rule, known)
        out["for_s"] = _integer(errors, data, "for_s", default=0, low=0, high=MAX_FOR_S)
    elif kind == RuleType.NO_DATA:
        _allowed_keys(errors, data, {"metric", "seconds"})
        out["metric"] = _metric(errors, data, known, required=False)
        out["seconds"] = _integer(errors, data, "seconds", default=None, low=MIN_WINDOW_S, high=MAX_WINDOW_S * 7, required=True)
    elif kind == RuleType.RATE_OF_CHANGE:
        _allowed_keys(errors, data, {"metric", "window_s", "op", "value", "low", "high", "clear_value"})
        out["metric"] = _metric(errors, data, known)
        out["window_s"] = _window(errors, data)
        _comparison(errors, data, out)
    elif kind == RuleType.STATISTICAL:
        _allowed_keys(errors, data, {"metric", "window_s", "aggregate", "percentile", "op", "value", "low", "high", "clear_value", "min_points"})
        out["metric"] = _metric(errors, data, known)
        out["window_s"] = _window(errors, data)
        aggregate = data.get("aggregate")
        if aggregate not in AGGREGATES:
            errors.add("aggregate", f"Expected one of {', '.join(AGGREGATES)}.")
        out["aggregate"] = aggregate
        if aggregate == "percentile":
            pct = _number(data.get("percentile"))
            if pct is None or not 0 <= pct <= 100:
                errors.add("percentile", "A number from 0 to 100 is required with the percentile aggregate.")
            out["percentile"] = pct
        else:
            if data.get("percentile") is not None:
                errors.add("percentile", "Only used with the percentile aggregate.")
            out["percentile"] = None
        _comparison(errors, data, out)
        out["min_points"] = _integer(errors, data, "min_points", default=1, low=1, high=1_000_000)
    elif kind == RuleType.ZSCORE:
        _allowed_keys(errors, data, {"metric", "window_s", "k", "direction", "min_points"})
        out["metric"] = _metric(errors, data, known)
        out["window_s"] = _window(errors, data)
        k = _number(data.get("k"))
        if k is None or k <= 0 or k > 100:
            errors.add("k", "A number of standard deviations above 0 (at most 100) is required.")
        out["k"] = k
        direction = data.get("direction", "both")
        if direction not in DIRECTIONS:
            errors.add("direction", f"Expected one of {', '.join(DIRECTIONS)}.")
        out["direction"] = direction
        out["min_points"] = _integer(errors, data, "min_points", default=10, low=3, high=1_000_000)
    errors.raise_if_any()
    return out


def _window(errors: _Errors, data: dict) -> int | None:
    if data.get("window_s") in (None, 0):
        errors.add("window_s", f"A window of {MIN_WINDOW_S} to {MAX_WINDOW_S} seconds is required (an empty window makes no sense).")
        return None
    return _integer(errors, data, "window_s", default=None, low=MIN_WINDOW_S, high=MAX_WINDOW_S, required=True)


def _expression(errors: _Errors, data: dict, rule, known: tuple[set[str], bool]) -> str | None:
    from devices.models import Device, ProfileMetric
    from rules.expressions import ExpressionError, parse

    source = data.get("expression")
    if not isinstance(source, str) or not source.strip():
        errors.add("expression", "An expression is required, e.g. \"inlet_temp - outlet_temp > 5\".")
        return None
    try:
        compiled = parse(source)
    except ExpressionError as exc:
        errors.add("expression", str(exc))
        return None
    names, open_ended = known
    uids = sorted(compiled.devices)
    devices = {uid: profile_id for uid, profile_id in Device.objects.filter(uid__in=uids).values_list("uid", "profile_id")}
    other_metrics: dict[int, set[str]] = {}
    for profile_id, name in ProfileMetric.objects.filter(profile_id__in=set(devices.values())).values_list("profile_id", "metric__name"):
        other_metrics.setdefault(profile_id, set()).add(name)
    for uid, metric in sorted(compiled.references, key=lambda ref: (ref[0] or "", ref[1])):
        position = _position_of(source, uid, metric)
        if uid is None:
            if metric not in names and not open_ended:
                errors.add("expression", f"Unknown metric {metric!r} for the target's profiles (at position {position}).")
        elif uid not in devices:
            errors.add("expression", f"Unknown device {uid!r} (at position {position}).")
        elif metric not in other_metrics.get(devices[uid], set()):
            errors.add("expression", f"Device {uid!r} does not report {metric!r} (at position {position}).")
    return source


def _position_of(source: str, uid: str | None, metric: str) -> int:
    if uid is not None:
        index = source.find(uid)
        return max(index - len('device("'), 0) if index >= 0 else 0
    match = re.search(r"(?<![A-Za-z0-9_.`])`?" + re.escape(metric) + r"`?(?![A-Za-z0-9_.])", source)
    return match.start() if match else 0


def validate_schedule(schedule: Any) -> dict[str, Any] | None:
    if schedule in (None, {}):
        return None
    errors = _Errors("schedule")
    if not isinstance(schedule, dict):
        raise ValidationError({"schedule": ["Expected an object like {\"days\": [0,1,2,3,4], \"start\": \"08:00\", \"end\": \"18:00\"} or null."]})
    _allowed_keys(errors, schedule, {"days", "start", "end", "timezone"})
    days = schedule.get("days", list(range(7)))
    if not isinstance(days, list) or not days or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in days):
        errors.add("days", "A non-empty list of weekdays, 0 (Monday) to 6 (Sunday).")
        days = []
    out: dict[str, Any] = {"days": sorted(set(days))}
    for field in ("start", "end"):
        value = schedule.get(field, "00:00" if field == "start" else "24:00")
        if value == "24:00" and field == "end":
            out[field] = value
        elif not isinstance(value, str) or not _TIME.match(value):
            errors.add(field, "Expected a time HH:MM (24-hour clock).")
        else:
            out[field] = value
    if out.get("start") is not None and out.get("start") == out.get("end"):
        errors.add("end", "Start and end are equal: the schedule would be empty.")
    zone = schedule.get("timezone")
    if zone is not None:
        try:
            if not isinstance(zone, str):
                raise ZoneInfoNotFoundError(zone)
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            errors.add("timezone", f"Unknown time zone {zone!r}.")
    out["timezone"] = zone
    errors.raise_if_any()
    return out


def validate_actions(actions: Any, *, rule_type: str) -> dict[str, Any]:
    errors = _Errors("actions")
    if actions in (None, {}):
        actions = {}
    if not isinstance(actions, dict):
        raise ValidationError({"actions": ["Expected an object."]})
    _allowed_keys(errors, actions, {"raise_alert", "channel_ids", "command"})
    raise_alert = actions.get("raise_alert", True)
    if not isinstance(raise_alert, bool):
        errors.add("raise_alert", "Expected true or false.")
    channel_ids = actions.get("channel_ids", [])
    if not isinstance(channel_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in channel_ids):
        errors.add("channel_ids", "Expected a list of notification channel ids.")
        channel_ids = []
    elif channel_ids:
        missing = sorted(set(channel_ids) - _existing_channels(channel_ids))
        if missing:
            errors.add("channel_ids", f"Unknown notification channels: {', '.join(map(str, missing))}.")
        if raise_alert is False:
            errors.add("channel_ids", "Notifications go out with the alert: set raise_alert to true.")
    command = actions.get("command")
    if command is not None:
        if not isinstance(command, dict) or not isinstance(command.get("name"), str) or not 1 <= len(command["name"]) <= 100:
            errors.add("command", "Expected {\"name\": \"...\", \"params\": {...}, \"timeout_s\": 30}.")
            command = None
        else:
            unknown = set(command) - {"name", "params", "timeout_s"}
            if unknown:
                errors.add("command", f"Unknown fields: {', '.join(sorted(unknown))}.")
            timeout = command.get("timeout_s", 30)
            if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 3600:
                errors.add("command", "timeout_s must be 1 to 3600 seconds.")
            command = {"name": command["name"], "params": command.get("params") or {}, "timeout_s": timeout}
    if raise_alert is False and command is None:
        errors.add("raise_alert", "A rule must do something: raise an alert or send a command.")
    errors.raise_if_any()
    return {"raise_alert": raise_alert, "channel_ids": sorted(set(channel_ids)), "command": command}


def _existing_channels(ids: list[int]) -> set[int]:
    try:
        from alerting.models import NotificationChannel  # type: ignore[attr-defined]
    except ImportError:  # the alerting app has no channels yet: accept the ids
        return set(ids)
    return set(NotificationChannel.objects.filter(pk__in=ids).values_list("pk", flat=True))
