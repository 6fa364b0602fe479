"""Analytics computations: time-series (moving average, rate of change), trends, statistics,
correlation and forecasts of a device's metrics.

Reads only: the aggregation runs in PostgreSQL (analytics/selectors.py); what is left here is
the arithmetic on a handful of sums, scipy's distributions and statsmodels' Holt-Winters. Each
function takes the tenant schema and already-resolved device and metric ids, checks what it
needs (`InsufficientData` -> 422, django `ValidationError` naming the parameter -> 400) and
returns plain data the API renders (and the cache stores).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from django.core.exceptions import ValidationError
from scipy import special, stats

from analytics import selectors
from analytics.selectors import SeriesSpec, choose_level
from telemetry import selectors as telemetry_selectors
from telemetry.selectors import RAW

TrendLabel = Literal["increasing", "decreasing", "stable"]
ForecastMethod = Literal["linear", "holt_winters"]
FORECAST_METHODS: tuple[str, ...] = ("linear", "holt_winters")
DEFAULT_TREND_THRESHOLD = 0.01  # |slope| per minute below which a trend is "stable"
MIN_POINTS = {"timeseries": 1, "statistics": 2, "trends": 2, "correlation": 3, "linear": 3}
CORRELATION_DEFAULT_BUCKETS = 1000
# Default grid for ranges of an hour or more: 1-minute means (served by the 1-minute rollups) or
# coarser; shorter ranges get finer buckets from raw points.
CORRELATION_DEFAULT_MIN_BUCKET_S = 60
CORRELATION_MAX_BUCKETS = 10_000
# Holt-Winters runs on hourly means with a daily season, and needs two whole seasons to start.
HOLT_WINTERS_STEP_S = 3600
HOLT_WINTERS_PERIOD = 24
HOLT_WINTERS_MIN_VALUES = 2 * HOLT_WINTERS_PERIOD


class InsufficientData(Exception):
    """The range holds fewer points (or buckets) than the method needs."""

    def __init__(self, *, needed: int, found: int, what: str = "points", detail: str = "") -> None:
        self.needed, self.found, self.what = needed, found, what
        message = f"Needs at least {needed} {what} in the range, found {found}."
        super().__init__(f"{message} {detail}".strip())


@dataclass(frozen=True)
class MetricRef:
    id: int
    name: str
    unit: str  # normalised


def _level_name(level: telemetry_selectors.Level) -> str:
    return level.name


def _resolution(level: telemetry_selectors.Level) -> int | None:
    return level.resolution_s or None


def _source_fields(level: telemetry_selectors.Level) -> dict[str, Any]:
    return {"source": _level_name(level), "resolution": _resolution(level)}


def _spec(schema: str, device_id: int, metric: MetricRef, start: datetime, end: datetime, resolution: str) -> SeriesSpec:
    return SeriesSpec(schema, device_id, metric.id, start, end, choose_level(start, end, resolution))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# --- 1. time series ----------------------------------------------------------------------------------


def timeseries(
    *,
    schema: str,
    device_id: int,
    metric: MetricRef,
    start: datetime,
    end: datetime,
    resolution: str = "auto",
    window_points: int | None = 5,
    window_seconds: int | None = None,
    page_size: int = 1000,
    after: datetime | None = None,
) -> dict[str, Any]:
    """Values with their moving average and rate of change per minute, one page at a time."""
    if window_seconds is not None and window_seconds > (end - start).total_seconds():
        raise ValidationError(
            {"window": [f"A window of {window_seconds} s is longer than the range ({(end - start).total_seconds():g} s)."]}
        )
    spec = _spec(schema, device_id, metric, start, end, resolution)
    if spec.level is RAW:  # counting along the index is cheap; stop at the window size
        found = selectors.count_rows(spec, limit=max(window_points or 1, 1))
        _check_timeseries_rows(found, window_points)
    rows, next_ts, total = selectors.moving_page(
        spec, window_points=window_points, window_seconds=window_seconds, page_size=page_size, after=after
    )
    if total is not None or not rows:  # bucketed: the page query counted the whole series
        _check_timeseries_rows(total or 0, window_points)
    return {
        **_source_fields(spec.level),
        "window": {"points": window_points} if window_seconds is None else {"seconds": window_seconds},
        "results": [
            {
                "ts": row.ts,
                "value": row.value,
                "moving_average": _finite(row.moving_average),
                "rate_of_change_per_minute": _finite(row.rate_per_minute),
            }
            for row in rows
        ],
        "next_ts": next_ts,
    }


def _check_timeseries_rows(found: int, window_points: int | None) -> None:
    if found < MIN_POINTS["timeseries"]:
        raise InsufficientData(needed=MIN_POINTS["timeseries"], found=found)
    if window_points is not None and found < window_points:
        raise ValidationError({"window": [f"A window of {window_points} points is larger than the range, which holds {found}."]})


# --- 2. trends ---------------------------------------------------------------------------------------


def _fit(regression: selectors.Regression) -> tuple[float, float, float | None]:
    """slope, intercept (at x = 0) and R^2 (None when the values are constant) from the accumulations."""
    slope = regression.sxy / regression.sxx
    intercept = regression.avg_y - slope * regression.avg_x
    r_squared = None
    if regression.syy and regression.syy > 0:
        r_squared = min(regression.sxy * regression.sxy / (regression.sxx * regression.syy), 1.0)
    return slope, intercept, r_squared


def classify_trend(slope: float, threshold: float) -> TrendLabel:
    if abs(slope) < threshold:
        return "stable"
    return "increasing" if slope > 0 else "decreasing"


def _stddev(variance: float | None) -> float | None:
    return math.sqrt(variance) if variance is not None else None


def trends(
    *,
    schema: str,
    device_id: int,
    metric: MetricRef,
    start: datetime,
    end: datetime,
    resolution: str = "auto",
    threshold: float = DEFAULT_TREND_THRESHOLD,
) -> dict[str, Any]:
    """Least-squares slope per minute (x: minutes since `start`), R^2, and a trend label."""
    spec = _spec(schema, device_id, metric, start, end, resolution)
    fit = selectors.regression(spec)
    if fit.n < MIN_POINTS["trends"]:
        raise InsufficientData(needed=MIN_POINTS["trends"], found=fit.n, what=_rows_word(spec))
    summary = selectors.summary(spec, percentiles=False)
    slope, intercept, r_squared = _fit(fit)
    return {
        **_source_fields(spec.level),
        "count": summary.count,
        "fitted_on": fit.n,
        "slope_per_minute": slope,
        "intercept": intercept,
        "x_origin": start,
        "r_squared": r_squared,
        "trend": classify_trend(slope, threshold),
        "threshold": threshold,
        "mean": summary.mean,
        "stddev": _stddev(summary.variance),
        "min": summary.min,
        "max": summary.max,
    }


def _rows_word(spec: SeriesSpec) -> str:
    if spec.level.resolution_s == 0:
        return "points"
    return (
        f"{spec.level.resolution_s // 60}-minute buckets with data"
        if spec.level.resolution_s < 3600
        else "hourly buckets with data"
    )


# --- 3. statistics -----------------------------------------------------------------------------------


def statistics(
    *, schema: str, device_id: int, metric: MetricRef, start: datetime, end: datetime, resolution: str = "auto"
) -> dict[str, Any]:
    """Count, mean, median, stddev, variance, min, max, range, percentiles, CV % and IQR.

    On raw points everything is exact. On rollups count, mean, min, max (and range) are exact;
    variance combines each bucket's sum of squares with the spread of the bucket means; the
    percentiles (median and IQR included) are those of the bucket means (`percentiles_of`).
    """
    spec = _spec(schema, device_id, metric, start, end, resolution)
    summary = selectors.summary(spec)
    if summary.count < MIN_POINTS["statistics"]:
        raise InsufficientData(needed=MIN_POINTS["statistics"], found=summary.count)
    stddev = _stddev(summary.variance)
    p = summary.percentiles
    cv = stddev / abs(summary.mean) * 100 if stddev is not None and summary.mean else None
    return {
        **_source_fields(spec.level),
        "count": summary.count,
        "mean": summary.mean,
        "median": p[0.5],
        "stddev": stddev,
        "variance": summary.variance,
        "min": summary.min,
        "max": summary.max,
        "range": summary.max - summary.min,
        "percentiles": {"p25": p[0.25], "p50": p[0.5], "p75": p[0.75], "p95": p[0.95]},
        "percentiles_of": "points" if spec.level.resolution_s == 0 else f"{spec.level.resolution_s}-second bucket means",
        "coefficient_of_variation_percent": cv,
        "iqr": p[0.75] - p[0.25],
    }


# --- 4. correlation ----------------------------------------------------------------------------------


def cohen_strength(r: float | None) -> str:
    """Cohen (1988): |r| < 0.1 negligible, < 0.3 weak, < 0.5 moderate, otherwise strong."""
    if r is None:
        return "undefined"
    size = abs(r)
    if size < 0.1:
        return "negligible"
    if size < 0.3:
        return "weak"
    if size < 0.5:
        return "moderate"
    return "strong"


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson r and its two-sided p-value, computed as scipy.stats.pearsonr does (centred,
    normalised vectors; p from the beta distribution of r under independence), None when
    undefined (fewer than 3 pairs, or a constant series). Inline rather than calling pearsonr
    because a matrix of 20 series is 190 pairs and pearsonr's input checks dominate its cost."""
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    xm, ym = x - x.mean(), y - y.mean()
    xmax, ymax = np.max(np.abs(xm)), np.max(np.abs(ym))
    normx, normy = xmax * np.linalg.norm(xm / xmax), ymax * np.linalg.norm(ym / ymax)
    if normx == 0 or normy == 0:
        return None, None
    r = float(np.clip(np.dot(xm / normx, ym / normy), -1.0, 1.0))
    ab = n / 2 - 1
    p_value = float(2 * special.betaincc(ab, ab, (abs(r) + 1) / 2))
    return _finite(r), _finite(p_value)


def correlation_bucket_seconds(start: datetime, end: datetime, requested: int | None) -> int:
    span = (end - start).total_seconds()
    if requested is None:
        width = telemetry_selectors.choose_bucket_seconds(start, end, CORRELATION_DEFAULT_BUCKETS)
        return max(width, CORRELATION_DEFAULT_MIN_BUCKET_S) if span >= 3600 else width
    if requested > span:
        raise ValidationError({"bucket_seconds": [f"A bucket of {requested} s is longer than the range ({span:g} s)."]})
    if telemetry_selectors.bucket_count(start, end, requested) > CORRELATION_MAX_BUCKETS:
        raise ValidationError(
            {"bucket_seconds": [f"The range would hold more than {CORRELATION_MAX_BUCKETS} buckets of {requested} s."]}
        )
    return requested


def correlation(
    *,
    schema: str,
    series: Sequence[tuple[int, MetricRef]],
    start: datetime,
    end: datetime,
    bucket_seconds: int | None = None,
) -> dict[str, Any]:
    """Pearson matrix of (device, metric) series aligned on a common grid of bucket averages.

    Every series is averaged into the same aligned buckets (read from rollups when the bucket is
    a whole number of minutes or hours); a pair is compared over the buckets where both have
    data, so sensors sampling at different instants still pair up, and each pair reports its n.
    """
    width = correlation_bucket_seconds(start, end, bucket_seconds)
    level = telemetry_selectors.level_for_bucket(width)
    by_device: dict[int, list[MetricRef]] = {}
    for device_id, metric in series:
        by_device.setdefault(device_id, []).append(metric)
    by_key: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for device_id, metrics in by_device.items():
        _level, grids = selectors.bucket_grid(schema, device_id, [metric.id for metric in metrics], start, end, width)
        for metric in metrics:
            stamps, means = grids[metric.id]
            by_key[(device_id, metric.id)] = (np.asarray(stamps, dtype=np.int64), np.asarray(means, dtype=float))
    # One row per series on the common grid (NaN where a series has no data in a bucket).
    grid = np.unique(np.concatenate([stamps for stamps, _means in by_key.values()] or [np.empty(0, dtype=np.int64)]))
    matrix_values = np.full((len(series), len(grid)), np.nan)
    for row, (device_id, metric) in enumerate(series):
        stamps, means = by_key[(device_id, metric.id)]
        matrix_values[row, np.searchsorted(grid, stamps)] = means
    present = ~np.isnan(matrix_values)
    counts = present.sum(axis=1)
    fewest = int(counts.min())
    if fewest < MIN_POINTS["correlation"]:
        device_id, metric = series[int(counts.argmin())]
        raise InsufficientData(
            needed=MIN_POINTS["correlation"],
            found=fewest,
            what=f"{width}-second buckets with data per series",
            detail=f"(device {device_id}, metric {metric.name}).",
        )
    size = len(series)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    pairs = []
    for i in range(size):
        own = matrix_values[i, present[i]]
        matrix[i][i] = 1.0 if np.ptp(own) > 0 else None
        for j in range(i + 1, size):
            both = present[i] & present[j]
            r, p_value = pearson(matrix_values[i, both], matrix_values[j, both])
            matrix[i][j] = matrix[j][i] = r
            pairs.append(
                {
                    "a": {"device": series[i][0], "metric": series[i][1].name},
                    "b": {"device": series[j][0], "metric": series[j][1].name},
                    "r": r,
                    "n": int(both.sum()),
                    "p_value": p_value,
                    "strength": cohen_strength(r),
                    "direction": "undefined" if r is None else ("positive" if r > 0 else "negative" if r < 0 else "none"),
                }
            )
    return {
        "source": level.name,
        "resolution": width,
        "bucket_seconds": width,
        "series": [
            {"device": device_id, "metric": metric.name, "unit": metric.unit, "buckets": int(counts[index])}
            for index, (device_id, metric) in enumerate(series)
        ],
        "matrix": matrix,
        "pairs": pairs,
    }


# --- 5. forecast -------------------------------------------------------------------------------------


def forecast(
    *,
    schema: str,
    device_id: int,
    metric: MetricRef,
    start: datetime,
    end: datetime,
    resolution: str = "auto",
    method: str = "linear",
    horizon: int = 10,
    confidence: float = 95.0,
) -> dict[str, Any]:
    if method == "holt_winters":
        return _holt_winters(
            schema=schema, device_id=device_id, metric=metric, start=start, end=end, horizon=horizon, confidence=confidence
        )
    return _linear(
        schema=schema,
        device_id=device_id,
        metric=metric,
        start=start,
        end=end,
        resolution=resolution,
        horizon=horizon,
        confidence=confidence,
    )


def _minutes(ts: datetime, origin: datetime) -> float:
    delta = ts - origin
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) / 60_000_000


def _linear(
    *,
    schema: str,
    device_id: int,
    metric: MetricRef,
    start: datetime,
    end: datetime,
    resolution: str,
    horizon: int,
    confidence: float,
) -> dict[str, Any]:
    """Least-squares line through the series and its prediction intervals (Student t, n - 2 dof):
    y0 +- t * s * sqrt(1 + 1/n + (x0 - mean x)^2 / Sxx), s^2 = SSE / (n - 2)."""
    spec = _spec(schema, device_id, metric, start, end, resolution)
    fit = selectors.regression(spec, residuals=True, step=spec.level is RAW)
    if fit.n < MIN_POINTS["linear"]:
        raise InsufficientData(needed=MIN_POINTS["linear"], found=fit.n, what=_rows_word(spec))
    slope, intercept, r_squared = _fit(fit)
    step_s = spec.level.resolution_s or fit.median_step_s
    sse = max(fit.sse or 0.0, 0.0)
    n = fit.n
    s = math.sqrt(sse / (n - 2))
    t_value = float(stats.t.ppf(0.5 + confidence / 200.0, n - 2))
    assert fit.last_ts is not None
    points = []
    last_x = _minutes(fit.last_ts, start)
    for k in range(1, horizon + 1):
        # x from the exact step, not from the timestamp (a timedelta rounds to whole microseconds).
        ts = fit.last_ts + timedelta(seconds=step_s * k)
        x = last_x + step_s * k / 60
        value = intercept + slope * x
        half = t_value * s * math.sqrt(1 + 1 / n + (x - fit.avg_x) ** 2 / fit.sxx)
        points.append({"ts": ts, "value": value, "lower": value - half, "upper": value + half})
    return {
        **_source_fields(spec.level),
        "method": "linear",
        "horizon": horizon,
        "confidence": confidence,
        "step_seconds": step_s,
        "fitted_on": n,
        "forecast": points,
        "rmse": math.sqrt(sse / n),
        "r_squared": r_squared,
        "slope_per_minute": slope,
        "intercept": intercept,
        "x_origin": start,
        "equation": f"y = {slope:.6g} * t + {intercept:.6g} (t: minutes since start)",
        "model": {"residual_stddev": s, "t_quantile": t_value},
    }


def holt_winters_fit(values: np.ndarray, period: int):
    """Additive trend and season, heuristic start values, local optimiser (deterministic)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(
            values, trend="add", seasonal="add", seasonal_periods=period, initialization_method="heuristic"
        )
        return model.fit(use_brute=False)


def holt_winters_interval_scale(alpha: float, beta: float, gamma: float, period: int, horizon: int) -> np.ndarray:
    """sqrt(1 + sum_{j<h} c_j^2), c_j = alpha (1 + j beta) + gamma [j mod m == 0]: the forecast standard
    error in units of the one-step error for additive Holt-Winters (Hyndman et al. 2008, class 1)."""
    scale = np.empty(horizon)
    total = 1.0
    for h in range(1, horizon + 1):
        scale[h - 1] = math.sqrt(total)
        j = h
        c = alpha * (1 + j * beta) + (gamma if j % period == 0 else 0.0)
        total += c * c
    return scale


def regular_hourly(rows: list[tuple[datetime, float]], step_s: int) -> tuple[list[datetime], np.ndarray, int]:
    """The hourly means on a regular grid from the first to the last; missing hours interpolated."""
    first = rows[0][0]
    index = {round((ts - first).total_seconds() / step_s): value for ts, value in rows}
    length = max(index) + 1
    known = np.array(sorted(index), dtype=float)
    values = np.interp(np.arange(length, dtype=float), known, np.array([index[int(k)] for k in known]))
    return [first + timedelta(seconds=step_s * k) for k in range(length)], values, length - len(index)


def _holt_winters(
    *, schema: str, device_id: int, metric: MetricRef, start: datetime, end: datetime, horizon: int, confidence: float
) -> dict[str, Any]:
    spec = SeriesSpec(schema, device_id, metric.id, start, end, telemetry_selectors.ROLLUP_1H)
    rows = selectors.series_values(spec)
    found = len(rows)
    grid_length = 0 if not rows else round((rows[-1][0] - rows[0][0]).total_seconds() / HOLT_WINTERS_STEP_S) + 1
    if found < HOLT_WINTERS_MIN_VALUES or grid_length < HOLT_WINTERS_MIN_VALUES:
        raise InsufficientData(needed=HOLT_WINTERS_MIN_VALUES, found=found, what="hourly means (two daily cycles)")
    times, values, filled = regular_hourly(rows, HOLT_WINTERS_STEP_S)
    result = holt_winters_fit(values, HOLT_WINTERS_PERIOD)
    predicted = np.asarray(result.forecast(horizon), dtype=float)
    residuals = values - np.asarray(result.fittedvalues, dtype=float)
    sse = float(np.sum(residuals * residuals))
    n = len(values)
    sigma = math.sqrt(sse / n)
    params = result.params
    alpha = float(params["smoothing_level"])
    beta = float(params["smoothing_trend"])
    gamma = float(params["smoothing_seasonal"])
    z = float(stats.norm.ppf(0.5 + confidence / 200.0))
    scale = holt_winters_interval_scale(alpha, beta, gamma, HOLT_WINTERS_PERIOD, horizon)
    points = []
    for k in range(horizon):
        half = z * sigma * float(scale[k])
        value = float(predicted[k])
        points.append(
            {
                "ts": times[-1] + timedelta(seconds=HOLT_WINTERS_STEP_S * (k + 1)),
                "value": value,
                "lower": value - half,
                "upper": value + half,
            }
        )
    mean = float(np.mean(values))
    sst = float(np.sum((values - mean) ** 2))
    return {
        **_source_fields(telemetry_selectors.ROLLUP_1H),
        "method": "holt_winters",
        "horizon": horizon,
        "confidence": confidence,
        "step_seconds": HOLT_WINTERS_STEP_S,
        "fitted_on": n,
        "forecast": points,
        "rmse": math.sqrt(sse / n),
        "r_squared": 1 - sse / sst if sst > 0 else None,
        "slope_per_minute": None,
        "intercept": None,
        "x_origin": start,
        "equation": None,
        "model": {
            "seasonal_period": HOLT_WINTERS_PERIOD,
            "smoothing_level": alpha,
            "smoothing_trend": beta,
            "smoothing_seasonal": gamma,
            "mae": float(np.mean(np.abs(residuals))),
            "sse": sse,
            "aic": _finite(float(result.aic)),
            "interpolated_values": filled,
        },
    }
