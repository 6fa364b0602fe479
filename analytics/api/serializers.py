"""Query parameters and response shapes of the analytics API."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rest_framework import serializers

from analytics.selectors import RAW_REQUEST_MAX_SPAN, RESOLUTIONS
from analytics.services import DEFAULT_TREND_THRESHOLD, FORECAST_METHODS
from telemetry.api.serializers import MAX_METRICS_PER_QUERY, TimestampField

DEFAULT_RANGE = timedelta(hours=24)
# A defaulted `end` ("now") is rounded up to this many seconds, so that requests made within the
# same few seconds share one cache entry (points newer than "now" do not exist yet).
NOW_ROUNDING_S = 10
MAX_PAGE_SIZE = 10_000
MAX_WINDOW_POINTS = 10_000
MAX_CORRELATED_SERIES = 20
_WINDOW = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def default_end() -> datetime:
    now = datetime.now(UTC)
    seconds = int(now.timestamp())
    rounded = -(-seconds // NOW_ROUNDING_S) * NOW_ROUNDING_S
    return datetime.fromtimestamp(rounded, tz=UTC)


def _names(query_params: Any, key: str) -> list[str]:
    return [name.strip() for value in query_params.getlist(key) for name in value.split(",") if name.strip()]


class AnalyticsQuerySerializer(serializers.Serializer):
    """`start`/`end` (default: the last 24 hours) and `resolution` (auto, raw, 1m, 1h)."""

    start = TimestampField(required=False)
    end = TimestampField(required=False)
    resolution = serializers.ChoiceField(choices=list(RESOLUTIONS), default="auto")
    list_fields: tuple[str, ...] = ()

    def __init__(self, *args: Any, query_params: Any = None, **kwargs: Any) -> None:
        if query_params is not None:
            data: dict[str, Any] = {key: query_params.get(key) for key in query_params if key not in self.list_fields}
            for key in self.list_fields:
                names = _names(query_params, key)
                if names:
                    data[key] = names
            kwargs["data"] = data
        super().__init__(*args, **kwargs)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or default_end()
        start = attrs.get("start") or end - DEFAULT_RANGE
        if start >= end:
            raise serializers.ValidationError({"start": ["Must be before end."]})
        if attrs.get("resolution") == "raw" and end - start > RAW_REQUEST_MAX_SPAN:
            raise serializers.ValidationError(
                {
                    "resolution": [
                        f"Raw points are available for ranges up to {RAW_REQUEST_MAX_SPAN.days} days; use auto, 1m or 1h."
                    ]
                }
            )
        attrs["start"], attrs["end"] = start, end
        return attrs


class TimeseriesQuerySerializer(AnalyticsQuerySerializer):
    window = serializers.CharField(default="5", max_length=20, help_text="Points (`5`) or a duration (`30s`, `5m`, `1h`, `1d`).")
    page_size = serializers.IntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=1000)
    cursor = serializers.CharField(required=False, max_length=200)

    def validate_window(self, value: str) -> dict[str, int]:
        match = _WINDOW.match(value)
        if not match:
            raise serializers.ValidationError("Expected a number of points (5) or a duration (30s, 5m, 1h, 1d).")
        amount, unit = int(match.group(1)), match.group(2)
        if amount < 1:
            raise serializers.ValidationError("Must be at least 1.")
        if unit is None:
            if amount > MAX_WINDOW_POINTS:
                raise serializers.ValidationError(f"At most {MAX_WINDOW_POINTS} points.")
            return {"points": amount}
        return {"seconds": amount * _UNIT_SECONDS[unit]}


class TrendQuerySerializer(AnalyticsQuerySerializer):
    threshold = serializers.FloatField(
        min_value=0, default=DEFAULT_TREND_THRESHOLD, help_text="|slope| per minute below which the trend is stable."
    )


class StatisticsQuerySerializer(AnalyticsQuerySerializer):
    pass


class CorrelationQuerySerializer(AnalyticsQuerySerializer):
    list_fields = ("metric", "with")

    metric = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    bucket_seconds = serializers.IntegerField(min_value=1, required=False)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # `with` is a Python keyword: declared here instead of as a class attribute.
        fields["with"] = serializers.ListField(child=serializers.CharField(max_length=80), required=False)
        return fields

    def validate_metric(self, names: list[str]) -> list[str]:
        names = list(dict.fromkeys(names))
        if len(names) > MAX_METRICS_PER_QUERY:
            raise serializers.ValidationError(f"At most {MAX_METRICS_PER_QUERY} metrics per request.")
        return names


class ForecastQuerySerializer(AnalyticsQuerySerializer):
    method = serializers.ChoiceField(choices=list(FORECAST_METHODS), default="linear")
    horizon = serializers.IntegerField(min_value=1, max_value=100, default=10, help_text="Steps ahead, 1-100.")
    confidence = serializers.FloatField(min_value=50, max_value=99, default=95, help_text="Prediction interval, 50-99 %.")


# --- responses ---------------------------------------------------------------------------------------

SOURCES = ["raw", "rollup_1m", "rollup_1h"]


class AnalyticsResponseSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    metric = serializers.CharField()
    unit = serializers.CharField(allow_blank=True, help_text="Normalised unit symbol, once per metric.")
    start = serializers.CharField()
    end = serializers.CharField(help_text="Exclusive.")
    source = serializers.ChoiceField(choices=SOURCES, help_text="Where the numbers were computed from.")
    resolution = serializers.IntegerField(allow_null=True, help_text="Bucket width in seconds; null for raw points.")


class WindowSerializer(serializers.Serializer):
    points = serializers.IntegerField(required=False)
    seconds = serializers.IntegerField(required=False)


class TimeseriesRowSerializer(serializers.Serializer):
    ts = serializers.CharField(help_text="Point time, or bucket start.")
    value = serializers.FloatField()
    moving_average = serializers.FloatField(allow_null=True)
    rate_of_change_per_minute = serializers.FloatField(allow_null=True)


class TimeseriesResponseSerializer(AnalyticsResponseSerializer):
    window = WindowSerializer()
    next = serializers.CharField(allow_null=True)
    results = TimeseriesRowSerializer(many=True)


class TrendResponseSerializer(AnalyticsResponseSerializer):
    count = serializers.IntegerField()
    fitted_on = serializers.IntegerField(help_text="Points (or bucket means) the line was fitted to.")
    slope_per_minute = serializers.FloatField()
    intercept = serializers.FloatField(help_text="Value at x_origin.")
    x_origin = serializers.CharField()
    r_squared = serializers.FloatField(allow_null=True)
    trend = serializers.ChoiceField(choices=["increasing", "decreasing", "stable"])
    threshold = serializers.FloatField()
    mean = serializers.FloatField()
    stddev = serializers.FloatField(allow_null=True)
    min = serializers.FloatField()
    max = serializers.FloatField()


class PercentilesSerializer(serializers.Serializer):
    p25 = serializers.FloatField()
    p50 = serializers.FloatField()
    p75 = serializers.FloatField()
    p95 = serializers.FloatField()


class StatisticsResponseSerializer(AnalyticsResponseSerializer):
    count = serializers.IntegerField()
    mean = serializers.FloatField()
    median = serializers.FloatField()
    stddev = serializers.FloatField(allow_null=True)
    variance = serializers.FloatField(allow_null=True)
    min = serializers.FloatField()
    max = serializers.FloatField()
    range = serializers.FloatField()
    percentiles = PercentilesSerializer()
    percentiles_of = serializers.CharField()
    coefficient_of_variation_percent = serializers.FloatField(allow_null=True)
    iqr = serializers.FloatField()


class SeriesRefSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    metric = serializers.CharField()


class CorrelatedSeriesSerializer(SeriesRefSerializer):
    unit = serializers.CharField(allow_blank=True)
    buckets = serializers.IntegerField(help_text="Buckets holding data.")


class CorrelationPairSerializer(serializers.Serializer):
    a = SeriesRefSerializer()
    b = SeriesRefSerializer()
    r = serializers.FloatField(allow_null=True)
    n = serializers.IntegerField(help_text="Buckets where both series have data.")
    p_value = serializers.FloatField(allow_null=True)
    strength = serializers.ChoiceField(choices=["negligible", "weak", "moderate", "strong", "undefined"])
    direction = serializers.ChoiceField(choices=["positive", "negative", "none", "undefined"])


class CorrelationResponseSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    start = serializers.CharField()
    end = serializers.CharField()
    source = serializers.ChoiceField(choices=SOURCES)
    resolution = serializers.IntegerField()
    bucket_seconds = serializers.IntegerField()
    series = CorrelatedSeriesSerializer(many=True)
    matrix = serializers.ListField(child=serializers.ListField(child=serializers.FloatField(allow_null=True)))
    pairs = CorrelationPairSerializer(many=True)


class ForecastPointSerializer(serializers.Serializer):
    ts = serializers.CharField()
    value = serializers.FloatField()
    lower = serializers.FloatField()
    upper = serializers.FloatField()


class ForecastResponseSerializer(AnalyticsResponseSerializer):
    method = serializers.ChoiceField(choices=list(FORECAST_METHODS))
    horizon = serializers.IntegerField()
    confidence = serializers.FloatField()
    step_seconds = serializers.FloatField()
    fitted_on = serializers.IntegerField()
    forecast = ForecastPointSerializer(many=True)
    rmse = serializers.FloatField()
    r_squared = serializers.FloatField(allow_null=True)
    slope_per_minute = serializers.FloatField(allow_null=True)
    intercept = serializers.FloatField(allow_null=True)
    x_origin = serializers.CharField()
    equation = serializers.CharField(allow_null=True)
    model = serializers.DictField(help_text="Method-specific figures (residual stddev, smoothing parameters, MAE, AIC).")
