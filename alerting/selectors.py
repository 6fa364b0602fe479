"""Read queries the API, the admin and tasks share (one tenant schema each)."""

from __future__ import annotations

from typing import Any

from django.db.models import Aggregate, Avg, Case, Count, F, FloatField, Func, IntegerField, Max, Q, QuerySet, Value, When

from alerting.choices import SEVERITY_RANK, Severity
from alerting.models import Alert, AlertEvent, AlertState, NotificationChannel, NotificationDelivery


def alerts() -> QuerySet[Alert]:
    """Alerts with the users who acknowledged/resolved them: one query for a page.
    `severity_rank` orders by severity (0 = critical, the most severe)."""
    rank = Case(*[When(severity=severity, then=Value(n)) for severity, n in SEVERITY_RANK.items()], output_field=IntegerField())
    return Alert.objects.select_related("acknowledged_by", "resolved_by").annotate(severity_rank=rank)


def alert_timeline(alert: Alert) -> QuerySet[AlertEvent]:
    return AlertEvent.objects.filter(alert=alert).order_by("at", "id")


def channels() -> QuerySet[NotificationChannel]:
    return NotificationChannel.objects.all()


def channel_deliveries(channel: NotificationChannel) -> QuerySet[NotificationDelivery]:
    return NotificationDelivery.objects.filter(channel=channel).order_by("-created_at", "-id")


class _Percentile(Aggregate):
    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _seconds_between(start: str, end: str) -> Func:
    return Func(F(end) - F(start), template="EXTRACT(EPOCH FROM %(expressions)s)", output_field=FloatField())


def alert_stats(queryset: QuerySet[Alert]) -> dict[str, Any]:
    """Counts by state and severity, and time-to-acknowledge / time-to-resolve figures (seconds:
    mean, median, 90th percentile, max) over the given alerts: three queries whatever their number."""
    tta = _seconds_between("first_seen_at", "acknowledged_at")
    ttr = _seconds_between("first_seen_at", "resolved_at")
    figures = queryset.order_by().aggregate(
        total=Count("id"),
        acknowledged=Count("id", filter=Q(acknowledged_at__isnull=False)),
        resolved=Count("id", filter=Q(resolved_at__isnull=False)),
        auto_resolved=Count("id", filter=Q(auto_resolved=True)),
        tta_mean=Avg(tta),
        tta_p50=_Percentile(tta, 0.5),
        tta_p90=_Percentile(tta, 0.9),
        tta_max=Max(tta),
        ttr_mean=Avg(ttr),
        ttr_p50=_Percentile(ttr, 0.5),
        ttr_p90=_Percentile(ttr, 0.9),
        ttr_max=Max(ttr),
    )
    by_state = dict(queryset.order_by().values_list("state").annotate(n=Count("id")))
    by_severity = dict(queryset.order_by().values_list("severity").annotate(n=Count("id")))
    return {
        "total": figures["total"],
        "by_state": {state: by_state.get(state, 0) for state in AlertState.values},
        "by_severity": {severity: by_severity.get(severity, 0) for severity in Severity.values},
        "auto_resolved": figures["auto_resolved"],
        "time_to_acknowledge_s": {
            "count": figures["acknowledged"],
            **{key: figures[f"tta_{key}"] for key in ("mean", "p50", "p90", "max")},
        },
        "time_to_resolve_s": {
            "count": figures["resolved"],
            **{key: figures[f"ttr_{key}"] for key in ("mean", "p50", "p90", "max")},
        },
    }
