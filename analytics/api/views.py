"""Analytics API (seed Feature 1): time series, trends, statistics, correlation, forecast.

Thin views: parse the query, resolve the device and metrics in the request's tenant (404 when
unknown), call `analytics.services` through the tenant's result cache, render. Every endpoint
needs `telemetry:read` and counts against the "analytics" rate limit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import connection
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import cache, services
from analytics.api.serializers import (
    MAX_CORRELATED_SERIES,
    CorrelationQuerySerializer,
    CorrelationResponseSerializer,
    ForecastQuerySerializer,
    ForecastResponseSerializer,
    StatisticsQuerySerializer,
    StatisticsResponseSerializer,
    TimeseriesQuerySerializer,
    TimeseriesResponseSerializer,
    TrendQuerySerializer,
    TrendResponseSerializer,
)
from analytics.selectors import RESOLUTIONS, PageCursor
from analytics.services import FORECAST_METHODS, InsufficientData, MetricRef
from analytics.units import normalise_unit
from devices.models import Device, ProfileMetric
from telemetry.api.serializers import format_ts
from telemetry.models import Metric


class InsufficientDataError(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "insufficient_data"
    default_detail = "Too few points in the range for this method."


RANGE_PARAMETERS = [
    OpenApiParameter("start", str, description="ISO 8601 or epoch milliseconds, inclusive. Default: end - 24 hours."),
    OpenApiParameter("end", str, description="ISO 8601 or epoch milliseconds, exclusive. Default: now."),
    OpenApiParameter(
        "resolution",
        str,
        enum=list(RESOLUTIONS),
        description="auto (default): raw points up to 6 hours, 1-minute rollups up to 7 days, 1-hour rollups beyond; "
        "raw only for ranges up to 2 days.",
    ),
]


def _render(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, dict):
        return {key: _render(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_render(item) for item in value]
    return value


class AnalyticsView(APIView):
    rate_limit_group = "analytics"
    required_permissions = "telemetry:read"
    endpoint = ""

    def schema_name(self) -> str:
        return connection.schema_name

    def get_device(self, device_id: int, parameter: str | None = None) -> Device:
        device = Device.objects.filter(pk=device_id).only("id", "profile_id").first()
        if device is None:
            raise exceptions.NotFound(f"No such device: {device_id}." if parameter else "No such device.")
        return device

    def get_metric(self, name: str) -> MetricRef:
        metric = Metric.objects.filter(name=name).only("id", "name", "unit").first()
        if metric is None:
            raise exceptions.NotFound(f"Unknown metric: {name}.")
        return MetricRef(id=metric.pk, name=metric.name, unit=normalise_unit(metric.unit))

    def compute(self, device_ids: list[int], params: dict[str, Any], function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return cache.cached_result(
                schema=self.schema_name(), endpoint=self.endpoint, device_ids=device_ids, params=params, compute=function
            )
        except InsufficientData as exc:
            raise InsufficientDataError(str(exc)) from None

    @staticmethod
    def cache_params(query: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**{key: _render(value) for key, value in query.items()}, **extra}


class SingleMetricView(AnalyticsView):
    query_serializer: type = StatisticsQuerySerializer
    function: Callable[..., dict[str, Any]] = staticmethod(services.statistics)

    def service_arguments(self, query: dict[str, Any]) -> dict[str, Any]:
        return {"resolution": query["resolution"]}

    def get(self, request: Request, device_id: int, metric: str) -> Response:
        params = self.query_serializer(query_params=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        device = self.get_device(device_id)
        metric_ref = self.get_metric(metric)
        arguments = self.service_arguments(query)
        body = self.compute(
            [device.pk],
            self.cache_params(query, device=device.pk, metric=metric_ref.id),
            lambda: type(self).function(
                schema=self.schema_name(),
                device_id=device.pk,
                metric=metric_ref,
                start=query["start"],
                end=query["end"],
                **arguments,
            ),
        )
        head = {
            "device": device.pk,
            "metric": metric_ref.name,
            "unit": metric_ref.unit,
            "start": query["start"],
            "end": query["end"],
        }
        return Response(_render({**head, **self.finish(request, query, body)}))

    def finish(self, request: Request, query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return body


@extend_schema(tags=["analytics"])
class TimeseriesView(SingleMetricView):
    """A metric's values with their moving average and rate of change per minute, in pages.

    `window` is a number of points (default 5: the average of the point and the four before it,
    null until five are available) or a duration (`5m`: the points in (ts - 5 min, ts]). Long
    ranges are served as bucket means of the rollups (`source`, `resolution`).
    """

    endpoint = "timeseries"
    query_serializer = TimeseriesQuerySerializer
    function = staticmethod(services.timeseries)

    def service_arguments(self, query: dict[str, Any]) -> dict[str, Any]:
        after = None
        if "cursor" in query:
            try:
                after = PageCursor.decode(query["cursor"]).ts
            except ValueError:
                raise exceptions.ValidationError({"cursor": ["Invalid cursor."]}) from None
            if not query["start"] <= after < query["end"]:
                raise exceptions.ValidationError({"cursor": ["The cursor is outside the range."]})
        window = query["window"]
        return {
            "resolution": query["resolution"],
            "window_points": window.get("points"),
            "window_seconds": window.get("seconds"),
            "page_size": query["page_size"],
            "after": after,
        }

    def finish(self, request: Request, query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        next_ts = body.pop("next_ts")
        next_url = None
        if next_ts is not None:
            params = request.query_params.copy()
            params["cursor"] = PageCursor(next_ts).encode()
            # Pin the range: following pages read the same one even when it defaulted to "now".
            params["start"], params["end"] = format_ts(query["start"]), format_ts(query["end"])
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        body["next"] = next_url
        return body

    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("window", str, description="Points (default 5) or a duration: 30s, 5m, 1h, 1d."),
            OpenApiParameter("page_size", int, description="Rows per page, 1-10000 (default 1000)."),
            OpenApiParameter("cursor", str, description="The `next` cursor of the previous page."),
        ],
        responses={200: TimeseriesResponseSerializer},
    )
    def get(self, request: Request, device_id: int, metric: str) -> Response:
        return super().get(request, device_id, metric)


@extend_schema(tags=["analytics"])
class TrendView(SingleMetricView):
    """Least-squares slope per minute, intercept, R^2 and the trend label (increasing, decreasing,
    stable against `threshold`), with mean, stddev, min and max. On rollups the line is fitted to
    the bucket means; the summary figures stay exact."""

    endpoint = "trends"
    query_serializer = TrendQuerySerializer
    function = staticmethod(services.trends)

    def service_arguments(self, query: dict[str, Any]) -> dict[str, Any]:
        return {"resolution": query["resolution"], "threshold": query["threshold"]}

    @extend_schema(
        parameters=[*RANGE_PARAMETERS, OpenApiParameter("threshold", float, description="Default 0.01 per minute.")],
        responses={200: TrendResponseSerializer},
    )
    def get(self, request: Request, device_id: int, metric: str) -> Response:
        return super().get(request, device_id, metric)


@extend_schema(tags=["analytics"])
class StatisticsView(SingleMetricView):
    """Count, mean, median, stddev, variance, min, max, range, percentiles 25/50/75/95, CV % and IQR,
    with the metric's unit once. Exact on raw points; on rollups count, mean, min and max are exact
    and the percentiles are those of the bucket means (`percentiles_of`)."""

    endpoint = "statistics"

    @extend_schema(parameters=RANGE_PARAMETERS, responses={200: StatisticsResponseSerializer})
    def get(self, request: Request, device_id: int, metric: str) -> Response:
        return super().get(request, device_id, metric)


@extend_schema(tags=["analytics"])
class ForecastView(SingleMetricView):
    """Forecast `horizon` steps ahead with prediction intervals at `confidence` %.

    `method=linear` (default): least-squares line, step = the data's median interval (or the
    bucket width on rollups), Student-t prediction intervals, RMSE, R^2 and the equation.
    `method=holt_winters`: additive Holt-Winters (statsmodels) on hourly means with a daily season
    (needs two days), normal prediction intervals, RMSE, MAE, AIC.
    """

    endpoint = "forecast"
    query_serializer = ForecastQuerySerializer
    function = staticmethod(services.forecast)

    def service_arguments(self, query: dict[str, Any]) -> dict[str, Any]:
        return {
            "resolution": query["resolution"],
            "method": query["method"],
            "horizon": query["horizon"],
            "confidence": query["confidence"],
        }

    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("method", str, enum=list(FORECAST_METHODS), description="Default linear."),
            OpenApiParameter("horizon", int, description="Steps ahead, 1-100 (default 10)."),
            OpenApiParameter("confidence", float, description="Prediction interval in %, 50-99 (default 95)."),
        ],
        responses={200: ForecastResponseSerializer},
    )
    def get(self, request: Request, device_id: int, metric: str) -> Response:
        return super().get(request, device_id, metric)


@extend_schema(tags=["analytics"])
class CorrelationView(AnalyticsView):
    """Pearson correlation matrix of a device's metrics (and other devices' with `with`), on a
    common grid of bucket averages, with n, p-value and Cohen's strength per pair."""

    endpoint = "correlation"

    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS[:2],
            OpenApiParameter(
                "metric",
                str,
                many=True,
                description="Metric names (repeat or comma-separate). Default: the device profile's metrics.",
            ),
            OpenApiParameter(
                "with",
                str,
                many=True,
                description="Other devices: `12` (the same metrics) or `12:humidity` (one metric); repeat or comma-separate.",
            ),
            OpenApiParameter(
                "bucket_seconds",
                int,
                description="Grid width in seconds; default: 1 minute for ranges of an hour or more (coarser to stay within 1000 buckets), finer for shorter ranges.",
            ),
        ],
        responses={200: CorrelationResponseSerializer},
    )
    def get(self, request: Request, device_id: int) -> Response:
        params = CorrelationQuerySerializer(query_params=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        device = self.get_device(device_id)
        names = query.get("metric") or self.profile_metric_names(device)
        metrics = [self.get_metric(name) for name in names]
        series: list[tuple[int, MetricRef]] = [(device.pk, metric) for metric in metrics]
        for entry in query.get("with", []):
            other_id, _, metric_name = entry.partition(":")
            if not other_id.strip().isdigit():
                raise exceptions.ValidationError({"with": [f"Expected a device id or id:metric, got {entry!r}."]})
            other = self.get_device(int(other_id), parameter="with")
            other_metrics = [self.get_metric(metric_name.strip())] if metric_name.strip() else metrics
            series.extend((other.pk, metric) for metric in other_metrics)
        series = list(dict.fromkeys(series))
        if len(series) < 2:
            raise exceptions.ValidationError({"metric": ["Name at least two metrics, or add devices with `with`."]})
        if len(series) > MAX_CORRELATED_SERIES:
            raise exceptions.ValidationError({"metric": [f"At most {MAX_CORRELATED_SERIES} series per request."]})
        device_ids = sorted({device_pk for device_pk, _metric in series})
        body = self.compute(
            device_ids,
            self.cache_params(
                {key: value for key, value in query.items() if key not in ("metric", "with")},
                series=[[device_pk, metric.id] for device_pk, metric in series],
            ),
            lambda: services.correlation(
                schema=self.schema_name(),
                series=series,
                start=query["start"],
                end=query["end"],
                bucket_seconds=query.get("bucket_seconds"),
            ),
        )
        return Response(_render({"device": device.pk, "start": query["start"], "end": query["end"], **body}))

    @staticmethod
    def profile_metric_names(device: Device) -> list[str]:
        names = list(
            ProfileMetric.objects.filter(profile_id=device.profile_id)
            .order_by("metric__name")
            .values_list("metric__name", flat=True)
        )
        if not names:
            raise exceptions.ValidationError({"metric": ["The device's profile lists no metrics: name them."]})
        return names
