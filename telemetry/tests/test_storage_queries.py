"""Telemetry queries and API: point limits, source selection, aggregates vs raw, CSV, bad input, tenancy, RBAC."""

from __future__ import annotations

import csv
import io
import math
import statistics
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django_tenants.utils import schema_context

from telemetry import selectors
from telemetry.storage import Point
from telemetry.tests import storage_support
from telemetry.tests.storage_support import make_device, make_metric, utc

clean_telemetry = storage_support.clean_telemetry
writer = storage_support.writer

BASE = utc(2026, 2, 10, 0, 0)


def _series(device_id: int, metric_id: int, seconds: int, step: int = 1, start=BASE) -> list[Point]:
    return [Point(device_id, metric_id, start + timedelta(seconds=i), math.sin(i / 500) * 10 + (i % 7)) for i in range(0, seconds, step)]


def _write(writer, schema: str, points: list[Point]) -> None:
    for i in range(0, len(points), 20_000):
        writer.write(schema, points[i : i + 20_000])


# --- selectors -----------------------------------------------------------------------------------


def test_bucket_choice_and_source_by_range():
    day = timedelta(days=1)
    assert selectors.choose_bucket_seconds(BASE, BASE + timedelta(minutes=10), 1000) == 1
    assert selectors.choose_bucket_seconds(BASE, BASE + timedelta(hours=1), 1000) == 5
    assert selectors.choose_bucket_seconds(BASE, BASE + 30 * day, 1000) == 3600
    assert selectors.choose_bucket_seconds(BASE, BASE + 3650 * day, 100) == 86400 * 37
    for width, source in ((5, "raw"), (30, "raw"), (60, "rollup_1m"), (900, "rollup_1m"), (3600, "rollup_1h"), (86400, "rollup_1h")):
        assert selectors.level_for_bucket(width).name == source
    # never more buckets than asked, whatever the alignment
    for max_points in (1, 7, 100, 999):
        start = BASE + timedelta(seconds=17.3)
        for span in (timedelta(seconds=5), timedelta(hours=7), 40 * day):
            width = selectors.choose_bucket_seconds(start, start + span, max_points)
            assert selectors.bucket_count(start, start + span, width) <= max_points


@pytest.mark.parametrize(
    ("span", "max_points", "source", "bucket"),
    [
        (timedelta(minutes=10), 1000, "raw", None),  # 600 points: raw
        (timedelta(hours=3), 1000, "raw", 15),  # 10,800 points into 15 s buckets from raw
        (timedelta(hours=3), 100, "rollup_1m", 120),
        (timedelta(hours=26), 24, "rollup_1h", 7200),
    ],
)
def test_query_limits_and_source_selection(writer, alpha, span, max_points, source, bucket):
    device = make_device("alpha")
    metric = make_metric("alpha", "temperature", "°C")
    _write(writer, "alpha", _series(device.pk, metric.pk, int(span.total_seconds()) + 600))
    result = selectors.query_series(
        schema="alpha", device_id=device.pk, metric_ids=[metric.pk], start=BASE, end=BASE + span, max_points=max_points
    )
    assert (result.source, result.bucket_seconds) == (source, bucket)
    assert 0 < len(result.points[metric.pk]) <= max_points


@pytest.mark.parametrize("agg", selectors.AGGREGATES)
def test_aggregates_agree_with_raw_data_on_unaligned_ranges(writer, alpha, agg):
    device = make_device("alpha")
    metric = make_metric("alpha", "pressure", "bar")
    points = _series(device.pk, metric.pk, 5 * 3600, step=3)
    _write(writer, "alpha", points)
    # starts and ends mid-minute and mid-hour: ends come from finer levels
    start, end = BASE + timedelta(minutes=37, seconds=11), BASE + timedelta(hours=4, minutes=2, seconds=29)
    for max_points, expected_source in ((4, "rollup_1h"), (40, "rollup_1m"), (500, "raw")):
        result = selectors.query_series(
            schema="alpha", device_id=device.pk, metric_ids=[metric.pk], start=start, end=end, max_points=max_points, agg=agg
        )
        assert result.source == expected_source
        width = timedelta(seconds=result.bucket_seconds)
        expected: dict = {}
        for p in points:
            if start <= p.ts < end:
                bucket = BASE + ((p.ts - BASE) // width) * width
                expected.setdefault(bucket, []).append(p.value)
        reducers = {"avg": statistics.fmean, "min": min, "max": max, "sum": math.fsum, "count": len,
                    "first": lambda v: v[0], "last": lambda v: v[-1]}  # fmt: skip
        got = dict(result.points[metric.pk])
        assert sorted(got) == sorted(expected)
        for bucket, values in expected.items():
            assert math.isclose(got[bucket], reducers[agg](values), rel_tol=1e-9, abs_tol=1e-9), (agg, max_points, bucket)


def test_raw_pages_follow_the_cursor(writer, alpha):
    device = make_device("alpha")
    m1, m2 = make_metric("alpha", "current", "A"), make_metric("alpha", "vibration", "mm/s")
    _write(writer, "alpha", _series(device.pk, m1.pk, 50) + _series(device.pk, m2.pk, 50, step=2))
    rows, after = [], None
    while True:
        page, after = selectors.raw_page(
            schema="alpha", device_id=device.pk, metric_ids=[m1.pk, m2.pk], start=BASE, end=BASE + timedelta(hours=1), page_size=7, after=after
        )
        rows += page
        if after is None:
            break
    assert len(rows) == 75
    assert rows == sorted(rows, key=lambda row: (row[0], row[1]))


# --- API -----------------------------------------------------------------------------------------


def _url(device_id: int, suffix: str = "") -> str:
    return f"/api/v1/devices/{device_id}/telemetry{suffix}"


def test_series_endpoint_raw_and_bucketed(writer, alpha):
    device = make_device("alpha", metrics=("temperature",))
    metric = make_metric("alpha", "temperature")
    _write(writer, "alpha", _series(device.pk, metric.pk, 7200))
    client = alpha.client("viewer")
    params = {"start": BASE.isoformat(), "end": str(int((BASE + timedelta(minutes=5)).timestamp() * 1000))}
    body = client.get(_url(device.pk), params).json()
    assert (body["source"], body["bucket_seconds"]) == ("raw", None)
    assert body["series"][0]["metric"] == "temperature" and len(body["series"][0]["points"]) == 300
    assert body["series"][0]["points"][0][0] == "2026-02-10T00:00:00.000000Z"
    response = client.get(_url(device.pk), {"metric": "temperature", "start": BASE.isoformat(), "end": (BASE + timedelta(hours=2)).isoformat(), "max_points": 100, "agg": "max"})
    body = response.json()
    assert response.status_code == 200 and (body["source"], body["bucket_seconds"], body["agg"]) == ("rollup_1m", 120, "max")
    assert len(body["series"][0]["points"]) == 60
    assert response.headers.get("X-RateLimit-Limit")


def test_series_endpoint_raw_pagination(writer, alpha):
    device = make_device("alpha")
    metric = make_metric("alpha", "humidity", "%")
    _write(writer, "alpha", _series(device.pk, metric.pk, 25))
    client = alpha.client("viewer")
    url, values = _url(device.pk) + f"?metric=humidity&start={int(BASE.timestamp() * 1000)}&page_size=10", []
    while url:
        body = client.get(url).json()
        values += [row["value"] for row in body["results"]]
        url = body["next"]
    assert len(values) == 25


def test_latest_endpoint(writer, alpha):
    device = make_device("alpha")
    metric = make_metric("alpha", "temperature", "°C")
    writer.write("alpha", [Point(device.pk, metric.pk, BASE, 1.0), Point(device.pk, metric.pk, BASE + timedelta(seconds=1), 2.5)])
    body = alpha.client("viewer").get(_url(device.pk, "/latest")).json()
    assert body == {"device": device.pk, "values": [{"metric": "temperature", "unit": "°C", "ts": "2026-02-10T00:00:01.000000Z", "value": 2.5}]}


def test_csv_export_streams_exact_rows(writer, alpha):
    device = make_device("alpha")
    m1, m2 = make_metric("alpha", "temperature", "°C"), make_metric("alpha", "current", "A")
    writer.write("alpha", [Point(device.pk, m1.pk, BASE + timedelta(microseconds=5), 21.25), Point(device.pk, m2.pk, BASE, -3.0),
                           Point(device.pk, m1.pk, BASE + timedelta(hours=2), 9.0)])  # fmt: skip
    response = alpha.client("admin").get(_url(device.pk, "/export.csv"), {"metric": "temperature,current", "start": BASE.isoformat(), "end": (BASE + timedelta(hours=1)).isoformat()})
    assert response.status_code == 200 and isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows == [
        ["ts", "metric", "value", "unit"],
        ["2026-02-10T00:00:00.000000Z", "current", "-3", "A"],
        ["2026-02-10T00:00:00.000005Z", "temperature", "21.25", "°C"],
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-02-10T01:00:00Z", "end": "2026-02-10T00:00:00Z"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-40"}, "end"),
        ({"max_points": 0}, "max_points"),
        ({"max_points": 10001}, "max_points"),
        ({"max_points": "many"}, "max_points"),
        ({"agg": "median"}, "agg"),
        ({"page_size": 0}, "page_size"),
        ({"cursor": "!!!"}, "cursor"),
    ],
)
def test_bad_input_is_400_naming_the_parameter(alpha, clean_telemetry, params, field):
    device = make_device("alpha")
    make_metric("alpha", "temperature")
    response = alpha.client("viewer").get(_url(device.pk), {"metric": "temperature", **params})
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_unknown_device_or_metric_is_404(alpha, clean_telemetry):
    device = make_device("alpha")
    client = alpha.client("viewer")
    assert client.get(_url(device.pk + 10_000)).status_code == 404
    assert client.get(_url(device.pk + 10_000, "/latest")).status_code == 404
    response = client.get(_url(device.pk), {"metric": "no_such_metric"})
    assert response.status_code == 404 and "no_such_metric" in response.json()["error"]["message"]
    assert alpha.client("admin").get(_url(device.pk, "/export.csv"), {"metric": "nope"}).status_code == 404


def test_tenant_isolation(writer, alpha, beta):
    beta_device = make_device("beta")
    beta_metric = make_metric("beta", "temperature")
    alpha_device = make_device("alpha")
    alpha_metric = make_metric("alpha", "temperature")
    writer.write("beta", [Point(beta_device.pk, beta_metric.pk, BASE, 666.0), Point(alpha_device.pk, alpha_metric.pk, BASE, 666.0)])
    writer.write("alpha", [Point(alpha_device.pk, alpha_metric.pk, BASE, 1.0)])
    client = alpha.client("admin")
    with schema_context("alpha"):
        from devices.models import Device

        assert not Device.objects.filter(pk=beta_device.pk).exists()
    for suffix in ("", "/latest", "/export.csv"):
        assert client.get(_url(beta_device.pk, suffix)).status_code == 404
    # same device id in both schemas: alpha's answers hold only alpha's point
    params = {"metric": "temperature", "start": BASE.isoformat(), "end": (BASE + timedelta(minutes=1)).isoformat()}
    assert client.get(_url(alpha_device.pk), params).json()["series"][0]["points"] == [["2026-02-10T00:00:00.000000Z", 1.0]]
    assert [v["value"] for v in client.get(_url(alpha_device.pk, "/latest")).json()["values"]] == [1.0]
    csv_body = b"".join(client.get(_url(alpha_device.pk, "/export.csv"), params).streaming_content).decode()
    assert "666" not in csv_body and csv_body.count("\n") == 2


def test_rbac_viewer_reads_export_needs_permission(alpha, clean_telemetry):
    device = make_device("alpha")
    make_metric("alpha", "temperature")
    viewer = alpha.client("viewer")
    params = {"metric": "temperature"}
    assert viewer.get(_url(device.pk), params).status_code == 200
    assert viewer.get(_url(device.pk, "/latest")).status_code == 200
    assert viewer.get("/api/v1/metrics").status_code == 200
    response = viewer.get(_url(device.pk, "/export.csv"), params)  # viewer lacks telemetry:export
    assert response.status_code == 403 and "telemetry:export" in response.json()["error"]["message"]
    assert alpha.client("operator").get(_url(device.pk, "/export.csv"), params).status_code == 200
    assert alpha.client().get(_url(device.pk)).status_code == 401


def test_metric_catalogue(alpha, clean_telemetry):
    make_metric("alpha", "temperature", "°C")
    make_metric("beta", "beta_only", "x")
    body = alpha.client("viewer").get("/api/v1/metrics").json()
    names = [item["name"] for item in body["results"]]
    assert "temperature" in names and "beta_only" not in names
