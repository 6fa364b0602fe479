"""Backtest: run a rule (saved or not) over stored history and report when it would have fired
and cleared, per device.

Streaming rules (threshold, comparison) replay the stored points in time order through
`rules.streaming.evaluate`, the very function the ingest hook runs. Windowed rules are judged at
ticks (every RULES_WINDOW_INTERVAL_S, coarser for long ranges: at most MAX_TICKS ticks) with the
window aggregates computed from the stored points (`rules.evaluation.window_stats`, the same
definitions as the live SQL) and the same `windowed_step` the live evaluator uses.
A backtest starts from a clean state (nothing firing) and ignores the cooldown's history before
`start`; comparison rules know only values seen from `start` on.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from psycopg import sql

from rules import selectors
from rules.evaluation import FIRE, SeriesState, WindowStats, compile_rule, epoch, from_epoch, window_stats, windowed_step
from rules.models import Rule, RuleType
from telemetry.storage import POINT_TABLE, Point

MAX_TICKS = 5000
MAX_RANGE_S = 31 * 86400


class BacktestError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class Interval:
    device_id: int
    device_uid: str
    fired_at: datetime
    fire_value: float | None
    cleared_at: datetime | None = None
    clear_value: float | None = None


@dataclass
class BacktestResult:
    rule_id: int | None
    start: datetime
    end: datetime
    devices: int = 0
    points: int = 0
    evaluations: int = 0
    truncated: bool = False
    intervals: list[Interval] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id, "start": self.start, "end": self.end, "devices": self.devices, "points": self.points,
            "evaluations": self.evaluations, "truncated": self.truncated, "fired": len(self.intervals),
            "intervals": [interval.__dict__ for interval in self.intervals],
        }  # fmt: skip


def _fetch(series: list[tuple[int, int]], start: datetime, end: datetime, limit: int) -> list[tuple[int, int, datetime, float]]:
    if not series:
        return []
    statement = sql.SQL(
        """SELECT p.device_id, p.metric_id, p.ts, p.value
        FROM {point} p JOIN unnest(%s::int[], %s::int[]) AS s(device_id, metric_id)
          ON p.device_id = s.device_id AND p.metric_id = s.metric_id
        WHERE p.ts >= %s AND p.ts < %s
        ORDER BY p.ts, p.device_id, p.metric_id LIMIT %s"""
    ).format(point=sql.Identifier(connection.schema_name, POINT_TABLE))
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(connection.connection), [[s[0] for s in series], [s[1] for s in series], start, end, limit])
        return cursor.fetchall()


def run_backtest(rule: Rule, *, start: datetime, end: datetime) -> BacktestResult:
    """Evaluate `rule` (validated; in the current tenant schema) over [start, end)."""
    if end <= start:
        raise BacktestError("end", "Must be after start.")
    if (end - start).total_seconds() > MAX_RANGE_S:
        raise BacktestError("end", f"A backtest covers at most {MAX_RANGE_S // 86400} days.")
    devices = selectors.device_rows()
    ids = selectors.metric_ids()
    zone = selectors.tenant_timezone(connection.schema_name)
    targets = selectors.resolve_targets(rule, devices)
    result = BacktestResult(rule_id=rule.pk, start=start, end=end, devices=len(targets))
    uids = {device.id: device.uid for device in devices}
    open_intervals: dict[int, Interval] = {}

    def record(device_id: int, kind: str, ts: float, value: float | None) -> None:
        if kind == FIRE:
            interval = Interval(device_id=device_id, device_uid=uids.get(device_id, ""), fired_at=from_epoch(ts), fire_value=value)
            open_intervals[device_id] = interval
            result.intervals.append(interval)
        else:
            interval = open_intervals.pop(device_id, None)
            if interval is not None:
                interval.cleared_at, interval.clear_value = from_epoch(ts), value

    limit = settings.RULES_BACKTEST_MAX_POINTS
    if rule.type in (RuleType.THRESHOLD, RuleType.COMPARISON):
        _streaming(rule, devices, ids, zone, start, end, limit, result, record)
    else:
        _windowed(rule, targets, ids, zone, start, end, limit, result, record)
    result.intervals.sort(key=lambda interval: (interval.fired_at, interval.device_id))
    return result


def _streaming(rule, devices, ids, zone, start, end, limit, result, record) -> None:
    from rules.streaming import build_index, evaluate

    index, _ = build_index(connection.schema_name, [rule], devices, ids, zone)
    series = sorted((device_id, metric_id) for device_id, per_metric in index.by_device.items() for metric_id in per_metric)
    rows = _fetch(series, start, end, limit + 1)
    if len(rows) > limit:
        rows, result.truncated = rows[:limit], True
    points = [Point(device_id, metric_id, ts, value) for device_id, metric_id, ts, value in rows]
    result.points = len(points)
    result.evaluations = evaluate(
        index, points, lambda binding, state: None,
        lambda binding, kind, ts, value, point: record(binding.device_id, kind, ts, value),
    )  # fmt: skip


def _windowed(rule, targets, ids, zone, start, end, limit, result, record) -> None:
    compiled = compile_rule(rule, metric_ids=ids, timezone=zone)
    condition = compiled.condition
    window = float(condition.get("window_s") or condition.get("seconds") or 0)
    step = max(float(settings.RULES_WINDOW_INTERVAL_S), (end - start).total_seconds() / MAX_TICKS)
    metric_id = compiled.metric_id
    if metric_id is not None:
        series = [(device.id, metric_id) for device in targets]
    else:  # no_data on any metric
        series = [(device.id, metric) for device in targets for metric in ids.values()]
    fetch_from = from_epoch(epoch(start) - window)
    rows = _fetch(series, fetch_from, end, limit + 1)
    if len(rows) > limit:
        rows, result.truncated = rows[:limit], True
    result.points = len(rows)
    per_device: dict[int, tuple[list[float], list[float]]] = {device.id: ([], []) for device in targets}
    for device_id, _metric_id, ts, value in rows:
        times, values = per_device[device_id]
        times.append(epoch(ts))
        values.append(value)
    percentile = condition.get("percentile")
    silent_since = epoch(start)
    ticks = []
    tick = epoch(start)
    while tick < epoch(end):
        ticks.append(tick)
        tick += step
    for device in targets:
        times, values = per_device[device.id]
        state = SeriesState()
        for now in ticks:
            high = bisect.bisect_right(times, now)
            last_seen = times[high - 1] if high else None
            stats = WindowStats()
            if compiled.type != RuleType.NO_DATA:
                low = bisect.bisect_right(times, now - window)
                stats = window_stats(list(zip(times[low:high], values[low:high], strict=True)), percentile)
            event, value = windowed_step(compiled, state, stats, now=now, last_seen=last_seen, silent_since=silent_since)
            result.evaluations += 1
            if event is not None:
                record(device.id, event, now, value)
