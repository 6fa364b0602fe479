"""Input and output shapes of the telemetry API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rest_framework import serializers

from telemetry.models import Metric
from telemetry.selectors import AGGREGATES, DEFAULT_MAX_POINTS, MAX_POINTS_CAP

MAX_METRICS_PER_QUERY = 20
DEFAULT_RANGE = timedelta(hours=1)
# PostgreSQL timestamptz and Python datetime both hold these years.
_MIN_YEAR, _MAX_YEAR = 1970, 9999


def parse_timestamp(raw: str) -> datetime:
    """ISO 8601 (a time without offset is UTC) or epoch milliseconds."""
    text = raw.strip()
    if not text:
        raise ValueError("empty")
    try:
        if text.lstrip("-").replace(".", "", 1).isdigit():
            value = datetime.fromtimestamp(float(text) / 1000, tz=UTC)
        else:
            value = datetime.fromisoformat(text.replace(" ", "+") if text.count(" ") == 1 and "T" in text else text)
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(str(exc)) from exc
    if not _MIN_YEAR <= value.year <= _MAX_YEAR:
        raise ValueError("out of range")
    return value


class TimestampField(serializers.Field):
    default_error_messages = {"invalid": "Expected an ISO 8601 timestamp or epoch milliseconds."}

    def to_internal_value(self, data: Any) -> datetime:
        try:
            return parse_timestamp(str(data))
        except ValueError:
            self.fail("invalid")

    def to_representation(self, value: datetime) -> str:
        return format_ts(value)


def format_ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class RangeQuerySerializer(serializers.Serializer):
    """`metric` (repeatable or comma-separated names), `start`/`end` (default: the last hour)."""

    metric = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    start = TimestampField(required=False)
    end = TimestampField(required=False)

    def __init__(self, *args: Any, query_params: Any = None, **kwargs: Any) -> None:
        if query_params is not None:
            data = {key: query_params.get(key) for key in query_params if key != "metric"}
            names = [name.strip() for value in query_params.getlist("metric") for name in value.split(",") if name.strip()]
            if names:
                data["metric"] = names
            kwargs["data"] = data
        super().__init__(*args, **kwargs)

    def validate_metric(self, names: list[str]) -> list[str]:
        names = list(dict.fromkeys(names))
        if len(names) > MAX_METRICS_PER_QUERY:
            raise serializers.ValidationError(f"At most {MAX_METRICS_PER_QUERY} metrics per request.")
        return names

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or datetime.now(UTC)
        start = attrs.get("start") or end - DEFAULT_RANGE
        if start >= end:
            raise serializers.ValidationError({"start": ["Must be before end."]})
        attrs["start"], attrs["end"] = start, end
        return attrs


class SeriesQuerySerializer(RangeQuerySerializer):
    max_points = serializers.IntegerField(min_value=1, max_value=MAX_POINTS_CAP, default=DEFAULT_MAX_POINTS)
    agg = serializers.ChoiceField(choices=AGGREGATES, default="avg")
    raw = serializers.BooleanField(required=False, default=False)
    page_size = serializers.IntegerField(min_value=1, max_value=MAX_POINTS_CAP, required=False)
    cursor = serializers.CharField(required=False, max_length=200)


class MetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = Metric
        fields = ["id", "name", "unit", "description"]
        read_only_fields = fields


class SeriesSerializer(serializers.Serializer):
    metric = serializers.CharField()
    unit = serializers.CharField(allow_blank=True)
    points = serializers.ListField(
        child=serializers.ListField(), help_text="[ts, value] pairs in time order; ts is the bucket start when aggregated."
    )


class SeriesResponseSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    start = serializers.CharField()
    end = serializers.CharField(help_text="Exclusive.")
    max_points = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["raw", "rollup_1m", "rollup_1h"])
    bucket_seconds = serializers.IntegerField(allow_null=True, help_text="null when the points are raw.")
    agg = serializers.CharField(allow_null=True)
    series = SeriesSerializer(many=True)


class RawRowSerializer(serializers.Serializer):
    ts = serializers.CharField()
    metric = serializers.CharField()
    value = serializers.FloatField()


class RawPageSerializer(serializers.Serializer):
    next = serializers.CharField(allow_null=True)
    results = RawRowSerializer(many=True)


class LatestValueSerializer(serializers.Serializer):
    metric = serializers.CharField()
    unit = serializers.CharField(allow_blank=True)
    ts = serializers.CharField()
    value = serializers.FloatField()


class LatestResponseSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    values = LatestValueSerializer(many=True)
