"""Telemetry API: series (raw or bucketed), raw export pages, latest values, CSV export, metric catalogue.

Views parse input, resolve the device and metrics in the request's tenant, call a selector and
render; the query logic lives in `telemetry/selectors.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device, ProfileMetric
from telemetry import selectors
from telemetry.api.serializers import (
    LatestResponseSerializer,
    MetricSerializer,
    RangeQuerySerializer,
    RawPageSerializer,
    SeriesQuerySerializer,
    SeriesResponseSerializer,
    format_ts,
)
from telemetry.models import Metric

RANGE_PARAMETERS = [
    OpenApiParameter(
        "metric",
        str,
        many=True,
        description="Metric name; repeat it or separate names with commas. Default: the metrics of the device's profile.",
    ),
    OpenApiParameter("start", str, description="ISO 8601 or epoch milliseconds, inclusive. Default: end - 1 hour."),
    OpenApiParameter("end", str, description="ISO 8601 or epoch milliseconds, exclusive. Default: now."),
]


class TelemetryView(APIView):
    rate_limit_group = "telemetry"
    required_permissions = "telemetry:read"

    def schema_name(self) -> str:
        return connection.schema_name

    def get_device(self, device_id: int) -> Device:
        device = Device.objects.filter(pk=device_id).only("id", "profile_id").first()
        if device is None:
            raise exceptions.NotFound("No such device.")
        return device

    def get_metrics(self, device: Device, names: Sequence[str] | None) -> list[Metric]:
        if not names:
            metric_ids = ProfileMetric.objects.filter(profile_id=device.profile_id).values_list("metric_id", flat=True)
            metrics = list(Metric.objects.filter(pk__in=metric_ids).order_by("name"))
            if not metrics:
                raise exceptions.ValidationError({"metric": ["Name at least one metric."]})
            return metrics
        found = {metric.name: metric for metric in Metric.objects.filter(name__in=names)}
        unknown = [name for name in names if name not in found]
        if unknown:
            raise exceptions.NotFound(f"Unknown metric: {', '.join(unknown)}.")
        return [found[name] for name in names]


@extend_schema(tags=["telemetry"])
class SeriesView(TelemetryView):
    """Points of a device's metrics over a range, raw or time-bucketed, never more than `max_points` per metric.

    When the range holds at most `max_points` points per metric they come back raw; otherwise
    as buckets of `bucket_seconds`, aggregated with `agg` from the coarsest stored level that is
    fine enough (`source`: rollup_1h, rollup_1m or raw). With `raw=true` or `page_size`, raw rows
    come back in pages ordered by time, with `next` to follow.
    """

    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("max_points", int, description="1..10000, default 1000: per metric."),
            OpenApiParameter("agg", str, enum=list(selectors.AGGREGATES), description="Bucket aggregate, default avg."),
            OpenApiParameter("raw", bool, description="Raw rows in pages (cursor pagination)."),
            OpenApiParameter("page_size", int, description="Rows per raw page, 1..10000 (implies raw=true)."),
            OpenApiParameter("cursor", str, description="The `next` cursor of the previous raw page."),
        ],
        responses={200: SeriesResponseSerializer},
    )
    def get(self, request: Request, device_id: int) -> Response:
        params = SeriesQuerySerializer(query_params=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        device = self.get_device(device_id)
        metrics = self.get_metrics(device, query.get("metric"))
        if query["raw"] or "page_size" in query or "cursor" in query:
            return self.raw_page(request, device, metrics, query)
        result = selectors.query_series(
            schema=self.schema_name(),
            device_id=device.pk,
            metric_ids=[metric.pk for metric in metrics],
            start=query["start"],
            end=query["end"],
            max_points=query["max_points"],
            agg=query["agg"],
        )
        return Response(
            {
                "device": device.pk,
                "start": format_ts(query["start"]),
                "end": format_ts(query["end"]),
                "max_points": query["max_points"],
                "source": result.source,
                "bucket_seconds": result.bucket_seconds,
                "agg": result.agg,
                "series": [
                    {
                        "metric": metric.name,
                        "unit": metric.unit,
                        "points": [[format_ts(ts), value] for ts, value in result.points.get(metric.pk, [])],
                    }
                    for metric in metrics
                ],
            }
        )

    def raw_page(self, request: Request, device: Device, metrics: list[Metric], query: dict[str, Any]) -> Response:
        after = None
        if "cursor" in query:
            try:
                after = selectors.RawCursor.decode(query["cursor"])
            except ValueError:
                raise exceptions.ValidationError({"cursor": ["Invalid cursor."]}) from None
        rows, next_cursor = selectors.raw_page(
            schema=self.schema_name(),
            device_id=device.pk,
            metric_ids=[metric.pk for metric in metrics],
            start=query["start"],
            end=query["end"],
            page_size=query.get("page_size", selectors.DEFAULT_MAX_POINTS),
            after=after,
        )
        names = {metric.pk: metric.name for metric in metrics}
        next_url = None
        if next_cursor is not None:
            params = request.query_params.copy()
            params["cursor"] = next_cursor.encode()
            # Pin the range so that following pages read the same one even when it defaulted to "now".
            params["start"], params["end"] = format_ts(query["start"]), format_ts(query["end"])
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        body = {
            "next": next_url,
            "results": [{"ts": format_ts(ts), "metric": names[metric_id], "value": value} for ts, metric_id, value in rows],
        }
        return Response(RawPageSerializer(body).data)


@extend_schema(tags=["telemetry"])
class LatestView(TelemetryView):
    """The newest value of each of the device's metrics, with its time and unit."""

    @extend_schema(responses={200: LatestResponseSerializer})
    def get(self, request: Request, device_id: int) -> Response:
        device = self.get_device(device_id)
        latest = selectors.latest_values(schema=self.schema_name(), device_ids=[device.pk]).get(device.pk, {})
        metrics = Metric.objects.in_bulk(list(latest))
        values = [
            {"metric": metrics[metric_id].name, "unit": metrics[metric_id].unit, "ts": format_ts(ts), "value": value}
            for metric_id, (ts, value) in latest.items()
            if metric_id in metrics
        ]
        values.sort(key=lambda item: item["metric"])
        return Response({"device": device.pk, "values": values})


@extend_schema(tags=["telemetry"])
class ExportCSVView(TelemetryView):
    """A range of raw points as CSV (`ts,metric,value,unit`), streamed as PostgreSQL produces it."""

    required_permissions = "telemetry:export"

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The body is CSV whatever Accept says; errors keep the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(parameters=RANGE_PARAMETERS, responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, device_id: int) -> StreamingHttpResponse:
        params = RangeQuerySerializer(query_params=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        device = self.get_device(device_id)
        metrics = self.get_metrics(device, query.get("metric"))
        rows = selectors.export_csv(
            schema=self.schema_name(),
            device_id=device.pk,
            metrics=[(metric.pk, metric.name, metric.unit) for metric in metrics],
            start=query["start"],
            end=query["end"],
        )
        response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
        filename = f"device-{device.pk}-{query['start']:%Y%m%dT%H%M%SZ}-{query['end']:%Y%m%dT%H%M%SZ}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response


@extend_schema(tags=["telemetry"])
class MetricListView(generics.ListAPIView):
    """The tenant's metric catalogue: names, units, descriptions."""

    rate_limit_group = "telemetry"
    required_permissions = "telemetry:read"
    serializer_class = MetricSerializer
    queryset = Metric.objects.order_by("name")
    filterset_fields = ["name", "unit"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
