"""Analytics API: shapes, rollups vs raw, bad input, tenant isolation, RBAC, rate limit, cache."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from django_tenants.utils import schema_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import services
from analytics.metrics import CACHE_HITS, CACHE_MISSES
from analytics.services import MetricRef
from analytics.tests.support import BASE, make_device, series_points, write
from telemetry.storage import Point, TelemetryWriter
from telemetry.tests import storage_support

clean_telemetry = storage_support.clean_telemetry
pytestmark = pytest.mark.django_db

HOURS = 3
ENDPOINTS = ("timeseries", "trends", "statistics", "forecast")


def _iso(ts) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _range(hours: float = HOURS, start=BASE) -> dict:
    return {"start": _iso(start), "end": _iso(start + timedelta(hours=hours))}


@pytest.fixture
def plant(clean_telemetry, alpha, settings):
    """A device with temperature (°C, stored as "C") and humidity, 3 h at 1 Hz, unaligned instants."""
    settings.ANALYTICS_CACHE_TTL = 0
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "analytics": "1000/h"}
    device = make_device("alpha", metrics=("temperature", "humidity"))
    with schema_context("alpha"):
        from telemetry.models import Metric

        Metric.objects.filter(name="temperature").update(unit="C")
        temperature = Metric.objects.get(name="temperature")
        humidity = Metric.objects.get(name="humidity")
    n = HOURS * 3600
    write("alpha", series_points(device.pk, temperature.pk, range(n), [20 + math.sin(i / 600) + i * 1e-4 for i in range(n)]))
    write(
        "alpha",
        series_points(device.pk, humidity.pk, [i + 0.4 for i in range(n)], [50 - 3 * math.sin(i / 600) for i in range(n)]),
    )
    return device, temperature, humidity


def _url(endpoint: str, device_id: int, metric: str | None = "temperature") -> str:
    return f"/api/v1/analytics/{endpoint}/{device_id}" + (f"/{metric}" if metric else "")


def test_every_endpoint_answers_with_source_resolution_and_unit_once(plant, alpha):
    device, _temperature, _humidity = plant
    client = alpha.client("viewer")
    for endpoint in ENDPOINTS:
        body = client.get(_url(endpoint, device.pk), _range()).json()
        assert body["unit"] == "°C", endpoint  # "C" normalised, reported once
        assert (body["source"], body["resolution"]) == ("raw", None), endpoint
        assert body["device"] == device.pk and body["metric"] == "temperature"
    body = client.get(_url("correlation", device.pk, None), _range()).json()
    assert [(s["metric"], s["unit"]) for s in body["series"]] == [("humidity", ""), ("temperature", "°C")]
    pair = body["pairs"][0]
    assert pair["r"] < -0.9 and pair["strength"] == "strong" and pair["direction"] == "negative"
    assert pair["n"] == body["series"][0]["buckets"] > 100
    # long ranges come from rollups, and say so
    day = {"start": _iso(BASE - timedelta(days=10)), "end": _iso(BASE + timedelta(hours=HOURS))}
    for endpoint in ("trends", "statistics", "forecast", "timeseries"):
        body = client.get(_url(endpoint, device.pk), {**day, "window": "2"}).json()
        assert (body["source"], body["resolution"]) == ("rollup_1h", 3600), endpoint
    body = client.get(_url("statistics", device.pk), {**_range(), "resolution": "1m"}).json()
    assert (body["source"], body["resolution"], body["count"]) == ("rollup_1m", 60, HOURS * 3600)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start_s=st.integers(0, 5000),
    length_s=st.integers(600, HOURS * 3600 - 5000),
    resolution=st.sampled_from(["1m", "1h"]),
)
def test_rollup_results_agree_with_raw_for_count_min_max_mean(plant, start_s, length_s, resolution):
    device, temperature, _humidity = plant
    start = BASE + timedelta(seconds=start_s, milliseconds=start_s % 997)
    end = start + timedelta(seconds=length_s, milliseconds=length_s % 991)
    metric = MetricRef(temperature.pk, "temperature", "°C")
    with schema_context("alpha"):
        rolled = services.statistics(
            schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution=resolution
        )
        raw = services.statistics(schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw")
        # the trend needs two buckets: 1-minute ones (a 10-minute range may lie within one hour)
        trend = services.trends(schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="1m")
    assert rolled["source"] == f"rollup_{resolution}" and raw["source"] == "raw"
    assert rolled["count"] == raw["count"] == trend["count"]
    assert rolled["min"] == raw["min"] == trend["min"] and rolled["max"] == raw["max"] == trend["max"]
    assert math.isclose(rolled["mean"], raw["mean"], rel_tol=1e-12) and math.isclose(trend["mean"], raw["mean"], rel_tol=1e-12)
    assert math.isclose(rolled["variance"], raw["variance"], rel_tol=1e-6, abs_tol=1e-12)


def test_timeseries_pages_follow_next_and_cover_the_range(plant, alpha):
    device, _temperature, _humidity = plant
    client = alpha.client("viewer")
    params = {**_range(hours=0.1), "page_size": 100, "window": "7"}
    values, url, pages = [], _url("timeseries", device.pk), 0
    response = client.get(url, params)
    while True:
        body = response.json()
        values.extend(row["value"] for row in body["results"])
        pages += 1
        if body["next"] is None:
            break
        response = client.get(body["next"])
    assert pages == 4 and len(values) == 360
    whole = client.get(url, {**params, "page_size": 1000}).json()["results"]
    assert [row["value"] for row in whole] == values
    assert whole[5]["moving_average"] is None and whole[6]["moving_average"] == pytest.approx(np.mean(values[:7]), rel=1e-12)
    timed = client.get(url, {**params, "window": "5m", "page_size": 1000}).json()
    assert timed["window"] == {"seconds": 300} and all(row["moving_average"] is not None for row in timed["results"])
    assert timed["results"][1]["rate_of_change_per_minute"] == pytest.approx((values[1] - values[0]) * 60, rel=1e-9)


def test_holt_winters_needs_two_days_and_runs_on_hourly_means(plant, alpha):
    device, _temperature, _humidity = plant
    response = alpha.client("viewer").get(_url("forecast", device.pk), {**_range(), "method": "holt_winters"})
    assert response.status_code == 422
    assert "at least 48" in response.json()["error"]["message"]


# --- bad input ---------------------------------------------------------------------------------------


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def test_unknown_device_or_metric_is_404(plant, alpha):
    device, _temperature, _humidity = plant
    client = alpha.client("viewer")
    for endpoint in ENDPOINTS:
        assert _error(client.get(_url(endpoint, 999_999), _range()), 404)["code"] == "not_found"
        assert "no_such_metric" in _error(client.get(_url(endpoint, device.pk, "no_such_metric"), _range()), 404)["message"]
    assert _error(client.get(_url("correlation", 999_999, None), _range()), 404)
    assert _error(client.get(_url("correlation", device.pk, None), {**_range(), "metric": "temperature,nope"}), 404)
    assert _error(client.get(_url("correlation", device.pk, None), {**_range(), "with": "999999"}), 404)


def test_too_few_points_is_422_saying_how_many(plant, alpha):
    device, _temperature, _humidity = plant
    client = alpha.client("viewer")
    empty = _range(start=BASE - timedelta(days=3), hours=1)
    expectations = {"timeseries": 1, "trends": 2, "statistics": 2, "forecast": 3}
    for endpoint, needed in expectations.items():
        error = _error(client.get(_url(endpoint, device.pk), empty), 422)
        assert error["code"] == "insufficient_data" and f"at least {needed}" in error["message"], endpoint
    two_points = {"start": _iso(BASE), "end": _iso(BASE + timedelta(seconds=2))}
    assert "at least 3" in _error(client.get(_url("forecast", device.pk), two_points), 422)["message"]
    error = _error(client.get(_url("correlation", device.pk, None), empty), 422)
    assert "at least 3" in error["message"]


@pytest.mark.parametrize(
    ("endpoint", "params", "field"),
    [
        ("timeseries", {"window": "50"}, "window"),  # 50 points > the 10 in the range
        ("timeseries", {"window": "1h"}, "window"),  # longer than the 10 s range
        ("timeseries", {"window": "0"}, "window"),
        ("timeseries", {"window": "5 fortnights"}, "window"),
        ("timeseries", {"page_size": "0"}, "page_size"),
        ("timeseries", {"cursor": "garbage!"}, "cursor"),
        ("forecast", {"horizon": "0"}, "horizon"),
        ("forecast", {"horizon": "101"}, "horizon"),
        ("forecast", {"confidence": "49.9"}, "confidence"),
        ("forecast", {"confidence": "99.5"}, "confidence"),
        ("forecast", {"method": "arima"}, "method"),
        ("trends", {"threshold": "-1"}, "threshold"),
        ("statistics", {"resolution": "5m"}, "resolution"),
        ("statistics", {"start": "2026-03-02T00:00:10Z", "end": "2026-03-02T00:00:00Z"}, "start"),
        ("statistics", {"start": "yesterday"}, "start"),
        ("statistics", {"start": "2026-01-01T00:00:00Z", "resolution": "raw"}, "resolution"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(plant, alpha, endpoint, params, field):
    device, _temperature, _humidity = plant
    query = {"start": _iso(BASE), "end": _iso(BASE + timedelta(seconds=10)), **params}
    error = _error(alpha.client("viewer").get(_url(endpoint, device.pk), query), 400)
    assert field in error["fields"], error


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket_seconds": "7200"}, "bucket_seconds"),  # longer than the hour
        ({"bucket_seconds": "0"}, "bucket_seconds"),
        ({"metric": "temperature"}, "metric"),  # one series: nothing to correlate
        ({"with": "abc"}, "with"),
    ],
)
def test_correlation_bad_parameters_are_400(plant, alpha, params, field):
    device, _temperature, _humidity = plant
    error = _error(alpha.client("viewer").get(_url("correlation", device.pk, None), {**_range(hours=1), **params}), 400)
    assert field in error["fields"]


def test_correlation_across_devices_with_unaligned_sensors(plant, alpha):
    device, temperature, _humidity = plant
    other = make_device("alpha")
    n = 3600
    # 7 s sampling, offset by 0.3 s: no timestamp ever equals the first device's
    write(
        "alpha",
        series_points(
            other.pk, temperature.pk, [i * 7 + 0.3 for i in range(n // 7)], [30 + math.sin(i * 7 / 600) for i in range(n // 7)]
        ),
    )
    body = (
        alpha.client("viewer")
        .get(
            _url("correlation", device.pk, None),
            {**_range(hours=1), "metric": "temperature", "with": f"{other.pk}", "bucket_seconds": 60},
        )
        .json()
    )
    assert [(s["device"], s["metric"]) for s in body["series"]] == [(device.pk, "temperature"), (other.pk, "temperature")]
    pair = body["pairs"][0]
    assert pair["n"] == 60 and pair["r"] > 0.99 and pair["p_value"] < 1e-10
    single = alpha.client("viewer").get(
        _url("correlation", device.pk, None),
        {**_range(hours=1), "metric": "temperature", "with": f"{other.pk}:temperature,{other.pk}:humidity"},
    )
    assert single.status_code == 422  # the other device has no humidity


# --- tenancy, permissions, rate limit, cache ---------------------------------------------------------


def test_tenant_isolation(plant, alpha, beta):
    device, _temperature, _humidity = plant
    beta_device = make_device("beta", metrics=("temperature", "humidity"))
    with schema_context("alpha"):
        from devices.models import Device

        missing = not Device.objects.filter(pk=beta_device.pk).exists()
    beta_client = beta.client("admin")
    if missing:
        assert alpha.client("admin").get(_url("statistics", beta_device.pk), _range()).status_code == 404
    # beta has no data for its device with alpha's device id, whatever ids the schemas share
    with schema_context("beta"):
        exists_in_beta = Device.objects.filter(pk=device.pk).exists()
    for endpoint in ENDPOINTS:
        response = beta_client.get(_url(endpoint, device.pk), _range())
        assert response.status_code == (422 if exists_in_beta else 404), endpoint
    response = beta_client.get(_url("correlation", device.pk, None), _range())
    assert response.status_code == (422 if exists_in_beta else 404)


def test_permissions(plant, alpha):
    device, _temperature, _humidity = plant
    from accounts import services as account_services

    with schema_context("alpha"):
        role = account_services.create_role(actor=None, client=None, name="no-telemetry", permissions=["devices:read"])
        user = account_services.create_user(
            actor=None, client=None, email="blind@alpha.example.com", password="Correct-Horse-Battery-9", roles=[role]
        )
        from accounts.services import issue_tokens

        token = issue_tokens(user)["access"]
    for role_name in ("admin", "developer", "operator", "viewer"):
        assert alpha.client(role_name).get(_url("statistics", device.pk), _range()).status_code == 200
    blind = alpha.client()
    blind.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = blind.get(_url("statistics", device.pk), _range())
    assert response.status_code == 403 and "telemetry:read" in response.json()["error"]["message"]
    assert alpha.client().get(_url("statistics", device.pk), _range()).status_code == 401


def test_rate_limit_is_the_analytics_group(plant, alpha, settings):
    device, _temperature, _humidity = plant
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "analytics": "3/h"}  # hour-long window: no boundary flakes
    client = alpha.client("viewer")
    statuses = [client.get(_url(endpoint, device.pk), _range()).status_code for endpoint in ("trends", "statistics", "forecast")]
    assert statuses == [200, 200, 200]
    limited = client.get(_url("timeseries", device.pk), _range())
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert limited["X-RateLimit-Limit"] == "3"
    # the telemetry group is not affected
    assert client.get(f"/api/v1/devices/{device.pk}/telemetry/latest").status_code == 200


def test_cache_hits_until_newer_data_arrives(plant, alpha, beta, settings):
    device, temperature, _humidity = plant
    settings.ANALYTICS_CACHE_TTL = 60
    client = alpha.client("viewer")
    params = {"start": _iso(BASE), "end": _iso(BASE + timedelta(hours=HOURS + 1))}
    hits = CACHE_HITS.labels(endpoint="statistics")._value.get()
    misses = CACHE_MISSES.labels(endpoint="statistics")._value.get()
    first = client.get(_url("statistics", device.pk), params).json()
    second = client.get(_url("statistics", device.pk), params).json()
    assert first == second
    assert CACHE_HITS.labels(endpoint="statistics")._value.get() == hits + 1
    assert CACHE_MISSES.labels(endpoint="statistics")._value.get() == misses + 1
    # another tenant's identical request is not served from alpha's entry
    assert beta.client("viewer").get(_url("statistics", device.pk), params).status_code in (404, 422)
    with TelemetryWriter() as writer:
        writer.write("alpha", [Point(device.pk, temperature.pk, BASE + timedelta(hours=HOURS, minutes=5), 1000.0)])
    third = client.get(_url("statistics", device.pk), params).json()
    assert third["count"] == first["count"] + 1 and third["max"] == 1000.0


def test_units_are_normalised():
    from analytics.units import normalise_unit

    for spelling in ("C", "degC", "celsius", " °C ", "℃"):
        assert normalise_unit(spelling) == "°C"
    assert normalise_unit("%") == "%" and normalise_unit("hpa") == "hPa" and normalise_unit("furlongs") == "furlongs"
    assert normalise_unit("") == ""
