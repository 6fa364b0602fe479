"""Each analysis agrees with numpy / scipy / statsmodels on the same data, to 1e-9 relative.

Property-based (hypothesis) over random series: irregular gaps (seconds to half an hour, with
microseconds), constant series, and for correlation two sensors sampling at unaligned instants.
The tolerance is 1e-9 relative to the expected value, with a floor of 1e-10 times the data's
magnitude where the expected value is near zero (a mean of +-1000 values that cancels to ~0 can
only be as exact as the sums behind it).
"""

from __future__ import annotations

import functools
import math
from datetime import timedelta

import numpy as np
import pytest
import statsmodels.api as sm
from django.db import transaction
from django_tenants.utils import schema_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from analytics import services
from analytics.services import MetricRef
from analytics.tests.support import BASE, make_device, make_metric, series_points, truncate_telemetry, write
from telemetry.storage import BUCKET_ORIGIN

pytestmark = pytest.mark.django_db(transaction=False)

HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
REL = 1e-9


def isolated(test):
    """Each example in a savepoint of the test's transaction: a database error in one example is
    reported as itself, instead of aborting the transaction for every example after it (which
    hypothesis then reports as a flaky InFailedSqlTransaction)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        with transaction.atomic():
            return test(*args, **kwargs)

    return run


def close(actual: float | None, expected: float, scale: float = 0.0) -> bool:
    if actual is None:
        return False
    return abs(actual - expected) <= REL * max(abs(expected), 0.1 * scale)


# No subnormals: the ingest pipeline flushes them to 0.0 before they are stored (telemetry/pipeline.py).
values_float = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False, allow_subnormal=False)
gaps_ms = st.one_of(st.integers(1, 5_000), st.integers(5_000, 120_000), st.integers(600_000, 1_800_000))


@st.composite
def series(draw, min_size: int = 3, max_size: int = 60):
    """(offsets in seconds, values): irregular, strictly increasing; sometimes a constant series."""
    size = draw(st.integers(min_size, max_size))
    gaps = draw(st.lists(gaps_ms, min_size=size, max_size=size))
    micro = draw(st.lists(st.integers(0, 999), min_size=size, max_size=size))
    offsets = np.cumsum(np.array(gaps, dtype=np.int64) * 1000 + np.array(micro)) / 1_000_000  # seconds, µs grid
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
        values = [float(draw(st.integers(-1000, 1000)))] * size  # constant (exactly summable)
    else:
        values = draw(st.lists(values_float, min_size=size, max_size=size))
    return [float(offset) for offset in offsets], values


@pytest.fixture
def subject(platform, db, settings):
    settings.ANALYTICS_CACHE_TTL = 0
    truncate_telemetry()
    device = make_device("alpha")
    metric = make_metric("alpha", "signal_a", "°C")
    other = make_metric("alpha", "signal_b", "bar")
    return device, MetricRef(metric.pk, metric.name, "°C"), MetricRef(other.pk, other.name, "bar")


def _fresh_device():
    """A device of its own per example: the test transaction holds read locks on the telemetry
    tables, so they cannot be truncated between examples."""
    return make_device("alpha")


def _load(device, metric: MetricRef, offsets, values):
    device = _fresh_device()
    write("alpha", series_points(device.pk, metric.id, offsets, values))
    return device


def _range(offsets):
    return BASE, BASE + timedelta(seconds=offsets[-1]) + timedelta(milliseconds=1)


def _minutes(offsets) -> np.ndarray:
    # what the database computes: exact microseconds since start, then / 60
    return np.array([round(offset * 1_000_000) / 1_000_000 / 60 for offset in offsets])


@given(data=series(min_size=2))
@HYPOTHESIS
@isolated
def test_statistics_match_numpy(subject, data):
    device, metric, _other = subject
    offsets, values = data
    device = _load(device, metric, offsets, values)
    start, end = _range(offsets)
    with schema_context("alpha"):
        result = services.statistics(schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw")
    v = np.array(values)
    scale = float(np.max(np.abs(v)))
    assert result["source"] == "raw" and result["resolution"] is None
    assert result["count"] == len(v)
    assert close(result["mean"], float(np.mean(v)), scale)
    assert close(result["variance"], float(np.var(v, ddof=1)), scale * scale * 1e-6)
    assert close(result["stddev"], float(np.std(v, ddof=1)), scale * 1e-3)
    assert result["min"] == v.min() and result["max"] == v.max()
    assert close(result["range"], float(np.ptp(v)), scale)
    expected = np.percentile(v, [25, 50, 75, 95])
    for key, value in zip(("p25", "p50", "p75", "p95"), expected, strict=True):
        assert close(result["percentiles"][key], float(value), scale)
    assert close(result["median"], float(np.median(v)), scale)
    assert close(result["iqr"], float(expected[2] - expected[0]), scale)
    if np.mean(v) != 0 and abs(np.mean(v)) > 1e-6 * scale:
        assert close(result["coefficient_of_variation_percent"], float(np.std(v, ddof=1) / abs(np.mean(v)) * 100), 1e-3)


@given(data=series(min_size=2), threshold=st.sampled_from([0.0, 0.01, 1.0]))
@HYPOTHESIS
@isolated
def test_trend_matches_scipy_linregress(subject, data, threshold):
    device, metric, _other = subject
    offsets, values = data
    device = _load(device, metric, offsets, values)
    start, end = _range(offsets)
    with schema_context("alpha"):
        result = services.trends(
            schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw", threshold=threshold
        )
    x, y = _minutes(offsets), np.array(values)
    scale = float(np.max(np.abs(y)))
    fit = stats.linregress(x, y)
    slope_scale = scale / (x[-1] - x[0])
    assert close(result["slope_per_minute"], float(fit.slope), slope_scale)
    assert close(result["intercept"], float(fit.intercept), scale + abs(fit.slope) * x[-1])
    if np.ptp(y) == 0:
        assert result["r_squared"] is None and abs(result["slope_per_minute"]) <= 1e-12 * max(slope_scale, 1)
        assert result["trend"] == ("stable" if threshold > 0 else result["trend"])
    else:
        assert close(result["r_squared"], float(fit.rvalue**2), 1.0)
        if abs(abs(fit.slope) - threshold) > 1e-9 * max(abs(fit.slope), slope_scale):
            assert result["trend"] == services.classify_trend(float(fit.slope), threshold)
    assert close(result["mean"], float(np.mean(y)), scale)
    assert close(result["stddev"], float(np.std(y, ddof=1)), scale * 1e-3)
    assert (result["min"], result["max"], result["count"]) == (y.min(), y.max(), len(y))


@given(data=series(min_size=3), horizon=st.integers(1, 100), confidence=st.sampled_from([50, 80, 95, 99, 97.5]))
@HYPOTHESIS
@isolated
def test_linear_forecast_matches_statsmodels_ols(subject, data, horizon, confidence):
    device, metric, _other = subject
    offsets, values = data
    device = _load(device, metric, offsets, values)
    start, end = _range(offsets)
    with schema_context("alpha"):
        result = services.forecast(
            schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw",
            method="linear", horizon=horizon, confidence=confidence,
        )  # fmt: skip
    x, y = _minutes(offsets), np.array(values)
    scale = float(np.max(np.abs(y)))
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    step_s = float(np.median(np.diff(np.round(np.array(offsets) * 1_000_000)))) / 1_000_000
    assert close(result["step_seconds"], step_s, 1e-6)
    future = np.array([x[-1] + step_s * k / 60 for k in range(1, horizon + 1)])
    frame = ols.get_prediction(sm.add_constant(future, has_constant="add")).summary_frame(alpha=1 - confidence / 100)
    reach = scale + abs(ols.params[1]) * future[-1]
    for point, (_index, row) in zip(result["forecast"], frame.iterrows(), strict=True):
        assert close(point["value"], float(row["mean"]), reach)
        assert close(point["lower"], float(row["obs_ci_lower"]), reach)
        assert close(point["upper"], float(row["obs_ci_upper"]), reach)
    assert close(result["rmse"], math.sqrt(ols.ssr / len(y)), scale * 1e-3)
    if np.ptp(y) > 0:
        assert close(result["r_squared"], float(ols.rsquared), 1.0)
    assert result["fitted_on"] == len(y) and len(result["forecast"]) == horizon


@given(data=series(min_size=1, max_size=40), window=st.integers(1, 8), page_size=st.integers(1, 50))
@HYPOTHESIS
@isolated
def test_moving_average_and_rate_match_numpy(subject, data, window, page_size):
    device, metric, _other = subject
    offsets, values = data
    device = _load(device, metric, offsets, values)
    start, end = _range(offsets)
    rows: list[dict] = []
    after = None
    with schema_context("alpha"):
        if len(values) < window:
            with pytest.raises(Exception, match="window"):
                services.timeseries(
                    schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, window_points=window
                )
            return
        while True:
            page = services.timeseries(
                schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw",
                window_points=window, page_size=page_size, after=after,
            )  # fmt: skip
            rows.extend(page["results"])
            if page["next_ts"] is None:
                break
            after = page["next_ts"]
    v = np.array(values)
    t_us = np.round(np.array(offsets) * 1_000_000).astype(np.int64)  # exact differences, no cancellation
    scale = float(np.max(np.abs(v)))
    assert [row["value"] for row in rows] == values
    for i, row in enumerate(rows):
        if i < window - 1:
            assert row["moving_average"] is None
        else:
            assert close(row["moving_average"], float(np.mean(v[i - window + 1 : i + 1])), scale)
        if i == 0:
            assert row["rate_of_change_per_minute"] is None
        else:
            minutes = int(t_us[i] - t_us[i - 1]) / 60_000_000
            expected = (v[i] - v[i - 1]) / minutes
            assert close(row["rate_of_change_per_minute"], float(expected), scale / minutes)


@given(data=series(min_size=1, max_size=40), window_s=st.sampled_from([1, 30, 300, 3600]))
@HYPOTHESIS
@isolated
def test_time_window_moving_average_matches_numpy(subject, data, window_s):
    device, metric, _other = subject
    offsets, values = data
    device = _load(device, metric, offsets, values)
    start, end = _range(offsets)
    if window_s > (end - start).total_seconds():
        return
    with schema_context("alpha"):
        page = services.timeseries(
            schema="alpha", device_id=device.pk, metric=metric, start=start, end=end, resolution="raw",
            window_points=None, window_seconds=window_s, page_size=7,
        )  # fmt: skip
    micros = np.round(np.array(offsets) * 1_000_000).astype(np.int64)
    v = np.array(values)
    scale = float(np.max(np.abs(v)))
    for i, row in enumerate(page["results"]):
        inside = (micros > micros[i] - window_s * 1_000_000) & (micros <= micros[i])
        assert close(row["moving_average"], float(np.mean(v[inside])), scale)


@st.composite
def two_sensors(draw):
    """Two metrics on unaligned instants (own offsets) over the same stretch of time."""
    a = draw(series(min_size=8, max_size=50))
    b = draw(series(min_size=8, max_size=50))
    return a, b


def _bucket_means(offsets, values, width_s: int) -> dict[int, float]:
    base_us = round((BASE - BUCKET_ORIGIN).total_seconds()) * 1_000_000
    keys = [(base_us + round(offset * 1_000_000)) // (width_s * 1_000_000) for offset in offsets]
    groups: dict[int, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(value)
    return {key: float(np.mean(group)) for key, group in groups.items()}


@given(data=two_sensors(), width_s=st.sampled_from([30, 60, 300, 900]))
@HYPOTHESIS
@isolated
def test_correlation_matches_scipy_pearsonr_on_a_bucket_grid(subject, data, width_s):
    device, metric, other = subject
    (offsets_a, values_a), (offsets_b, values_b) = data
    device = _fresh_device()
    write(
        "alpha",
        series_points(device.pk, metric.id, offsets_a, values_a) + series_points(device.pk, other.id, offsets_b, values_b),
    )
    end = BASE + timedelta(seconds=max(offsets_a[-1], offsets_b[-1]) + 1)
    if width_s > (end - BASE).total_seconds():
        return
    means_a, means_b = _bucket_means(offsets_a, values_a, width_s), _bucket_means(offsets_b, values_b, width_s)
    with schema_context("alpha"):
        if min(len(means_a), len(means_b)) < 3:
            with pytest.raises(services.InsufficientData, match="at least 3"):
                services.correlation(
                    schema="alpha", series=[(device.pk, metric), (device.pk, other)], start=BASE, end=end, bucket_seconds=width_s
                )
            return
        result = services.correlation(
            schema="alpha", series=[(device.pk, metric), (device.pk, other)], start=BASE, end=end, bucket_seconds=width_s
        )
    common = sorted(means_a.keys() & means_b.keys())
    pair = result["pairs"][0]
    assert pair["n"] == len(common)
    assert [entry["buckets"] for entry in result["series"]] == [len(means_a), len(means_b)]
    x, y = np.array([means_a[k] for k in common]), np.array([means_b[k] for k in common])
    if len(common) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        assert pair["r"] is None and pair["strength"] == "undefined"
        return
    expected = stats.pearsonr(x, y)
    assert close(pair["r"], float(expected.statistic), 1e-3)
    assert abs(pair["p_value"] - float(expected.pvalue)) <= REL * max(abs(float(expected.pvalue)), 1.0)
    assert result["matrix"][0][1] == result["matrix"][1][0] == pair["r"]
    assert pair["strength"] == services.cohen_strength(float(expected.statistic)) or abs(abs(expected.statistic) - 0.5) < 1e-9


def test_holt_winters_matches_statsmodels(subject):
    device, metric, _other = subject
    rng = np.random.default_rng(7)
    hours = 24 * 4
    # one point every 10 minutes; hourly means feed the model
    offsets = [600.0 * i + 17 for i in range(hours * 6)]
    values = [20 + 4 * math.sin(2 * math.pi * (o / 86_400)) + 0.001 * o / 60 + float(rng.normal(0, 0.2)) for o in offsets]
    device = _load(device, metric, offsets, values)
    start, end = BASE, BASE + timedelta(hours=hours)
    with schema_context("alpha"):
        result = services.forecast(
            schema="alpha",
            device_id=device.pk,
            metric=metric,
            start=start,
            end=end,
            method="holt_winters",
            horizon=30,
            confidence=90,
        )
    hourly = np.array(values).reshape(hours, 6).mean(axis=1)
    fitted = services.holt_winters_fit(hourly, 24)
    expected = fitted.forecast(30)
    assert result["source"] == "rollup_1h" and result["resolution"] == 3600 and result["fitted_on"] == hours
    for point, value in zip(result["forecast"], expected, strict=True):
        assert close(point["value"], float(value), 20.0)
    residuals = hourly - fitted.fittedvalues
    assert close(result["rmse"], float(np.sqrt(np.mean(residuals**2))), 1e-3)
    sigma = float(np.sqrt(np.mean(residuals**2)))
    z = stats.norm.ppf(0.95)
    alpha, beta, gamma = (float(fitted.params[key]) for key in ("smoothing_level", "smoothing_trend", "smoothing_seasonal"))
    for h, point in enumerate(result["forecast"], start=1):
        c = [alpha * (1 + j * beta) + (gamma if j % 24 == 0 else 0) for j in range(1, h)]
        half = z * sigma * math.sqrt(1 + sum(value * value for value in c))
        assert close(point["upper"] - point["value"], half, 1e-3)
    # a cycle of the hourly forecast has the signal's daily shape: the peak ~6 h after midnight
    assert result["forecast"][0]["ts"] == BASE + timedelta(hours=hours)
