"""Rule semantics, free of I/O: the streaming evaluator, the windowed evaluator and the backtest all
call these, so that they agree.

Each rule and device pair has a `SeriesState`. A new observation gives a `Verdict`:
TRIGGER (the condition holds), CLEAR (it does not, and the value is past the clear threshold when
there is one), HOLD (inside the hysteresis band: nothing changes while firing, a pending `for`
restarts) or UNKNOWN (a value is missing: nothing changes). `advance()` turns the verdict into
FIRE / CLEAR events:

- TRIGGER starts (or continues) the pending period; once the condition has held `for_s` seconds
  and the cooldown since the last firing is over, the rule fires.
- CLEAR ends a pending period and clears a firing rule.
- Outside the rule's schedule every verdict is CLEAR.
Time is epoch seconds (float) of the observation, so a backtest replays exactly what live did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo

from rules.expressions import CompiledExpression, parse

FIRE, CLEAR = "fire", "clear"


class Verdict(IntEnum):
    UNKNOWN = 0
    TRIGGER = 1
    CLEAR = 2
    HOLD = 3


@dataclass(slots=True)
class SeriesState:
    firing: bool = False
    pending_since: float | None = None
    last_fired: float | None = None
    last_ts: float | None = None  # newest observation seen (in memory only; not persisted)

    def pack(self) -> str:
        return f"{int(self.firing)}|{'' if self.pending_since is None else repr(self.pending_since)}|{'' if self.last_fired is None else repr(self.last_fired)}"

    @classmethod
    def unpack(cls, raw: bytes | str | None) -> SeriesState:
        if not raw:
            return cls()
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            firing, pending, fired = text.split("|")
            return cls(firing=firing == "1", pending_since=float(pending) if pending else None, last_fired=float(fired) if fired else None)
        except ValueError:
            return cls()

    def persisted(self) -> tuple:
        return (self.firing, self.pending_since, self.last_fired)


def advance(state: SeriesState, *, ts: float, verdict: Verdict, for_s: float, cooldown_s: float) -> str | None:
    """Move `state` by one observation; returns FIRE, CLEAR or None."""
    if verdict == Verdict.TRIGGER:
        if state.firing:
            return None
        if state.pending_since is None:
            state.pending_since = ts
        if ts - state.pending_since >= for_s and (state.last_fired is None or cooldown_s <= 0 or ts - state.last_fired >= cooldown_s):
            state.firing = True
            state.last_fired = ts
            state.pending_since = None
            return FIRE
        return None
    if verdict == Verdict.CLEAR:
        state.pending_since = None
        if state.firing:
            state.firing = False
            return CLEAR
        return None
    if verdict == Verdict.HOLD and not state.firing:
        state.pending_since = None
    return None


# --- Comparisons -----------------------------------------------------------------------------------


def compare(spec: dict[str, Any], value: float, firing: bool) -> Verdict:
    """Verdict of `value` against the op/value/low/high/clear_value of `spec`."""
    op = spec["op"]
    if op == "gt":
        holds = value > spec["value"]
    elif op == "gte":
        holds = value >= spec["value"]
    elif op == "lt":
        holds = value < spec["value"]
    elif op == "lte":
        holds = value <= spec["value"]
    elif op == "eq":
        holds = value == spec["value"]
    elif op == "ne":
        holds = value != spec["value"]
    elif op == "inside":
        holds = spec["low"] <= value <= spec["high"]
    else:
        holds = value < spec["low"] or value > spec["high"]
    if holds:
        return Verdict.TRIGGER
    clear_value = spec.get("clear_value")
    if clear_value is None:
        return Verdict.CLEAR
    if op in ("gt", "gte"):
        return Verdict.CLEAR if value < clear_value else Verdict.HOLD
    return Verdict.CLEAR if value > clear_value else Verdict.HOLD


# --- Schedules -------------------------------------------------------------------------------------


class Schedule:
    """Days of the week and a time window in a time zone (see rules/conditions.py)."""

    __slots__ = ("days", "start", "end", "zone", "_cache_day", "_cache_bounds")

    def __init__(self, spec: dict[str, Any], default_timezone: str = "UTC") -> None:
        self.days = frozenset(spec.get("days", range(7)))
        self.start = _minutes(spec.get("start", "00:00"))
        self.end = _minutes(spec.get("end", "24:00"))
        self.zone = ZoneInfo(spec.get("timezone") or default_timezone or "UTC")

    def active(self, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, tz=UTC).astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Overnight: belongs to the day it starts on.
        if minute >= self.start:
            return weekday in self.days
        if minute < self.end:
            return (weekday - 1) % 7 in self.days
        return False


def _minutes(text: str) -> int:
    if text == "24:00":
        return 24 * 60
    parsed = time.fromisoformat(text)
    return parsed.hour * 60 + parsed.minute


# --- Compiled rules --------------------------------------------------------------------------------


@dataclass(slots=True)
class CompiledRule:
    """What evaluation needs of a rule, detached from the ORM (safe to share between threads)."""

    id: int
    name: str
    type: str
    severity: str
    condition: dict[str, Any]
    cooldown_s: float
    schedule: Schedule | None
    actions: dict[str, Any]
    metric_id: int | None = None
    expression: CompiledExpression | None = None
    version: float = 0.0
    # Threshold: value -> does the condition hold (a closure: the hot path's fast check).
    holds: Callable[[float], bool] | None = None

    @property
    def for_s(self) -> float:
        return float(self.condition.get("for_s") or 0)

    def active(self, ts: float) -> bool:
        return self.schedule is None or self.schedule.active(ts)


def compile_rule(rule, *, metric_ids: dict[str, int], timezone: str = "UTC") -> CompiledRule:
    """A Rule model instance (or anything with the same attributes) compiled for evaluation."""
    condition = dict(rule.condition or {})
    metric = condition.get("metric")
    return CompiledRule(
        id=rule.pk or 0,
        name=rule.name,
        type=rule.type,
        severity=rule.severity,
        condition=condition,
        cooldown_s=float(rule.cooldown_s or 0),
        schedule=Schedule(rule.schedule, timezone) if rule.schedule else None,
        actions=dict(rule.actions or {}),
        metric_id=metric_ids.get(metric) if metric else None,
        expression=parse(condition["expression"]) if rule.type == "comparison" else None,
        version=rule.updated_at.timestamp() if getattr(rule, "updated_at", None) else 0.0,
        holds=holds_function(condition) if rule.type == "threshold" else None,
    )


def holds_function(spec: dict[str, Any]) -> Callable[[float], bool]:
    """`compare(spec, v) == TRIGGER` as one closure (no dict lookups per point)."""
    op = spec["op"]
    if op in ("inside", "outside"):
        low, high = spec["low"], spec["high"]
        if op == "inside":
            return lambda v: low <= v <= high
        return lambda v: v < low or v > high
    limit = spec["value"]
    return {
        "gt": lambda v: v > limit, "gte": lambda v: v >= limit, "lt": lambda v: v < limit,
        "lte": lambda v: v <= limit, "eq": lambda v: v == limit, "ne": lambda v: v != limit,
    }[op]  # fmt: skip


# --- Streaming verdicts ----------------------------------------------------------------------------


def threshold_step(rule: CompiledRule, state: SeriesState, ts: float, value: float) -> str | None:
    verdict = compare(rule.condition, value, state.firing) if rule.active(ts) else Verdict.CLEAR
    return advance(state, ts=ts, verdict=verdict, for_s=rule.for_s, cooldown_s=rule.cooldown_s)


def comparison_step(rule: CompiledRule, state: SeriesState, ts: float, lookup) -> str | None:
    if not rule.active(ts):
        verdict = Verdict.CLEAR
    else:
        result = rule.expression.evaluate(lookup)  # type: ignore[union-attr]
        verdict = Verdict.UNKNOWN if result is None else (Verdict.TRIGGER if result else Verdict.CLEAR)
    return advance(state, ts=ts, verdict=verdict, for_s=rule.for_s, cooldown_s=rule.cooldown_s)


# --- Windowed verdicts -----------------------------------------------------------------------------


@dataclass(slots=True)
class WindowStats:
    """Aggregates of one series over a window (computed by SQL live, by `window_stats` in a backtest)."""

    count: int = 0
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    stddev: float | None = None  # sample standard deviation
    percentile: float | None = None  # continuous (linear interpolation), like percentile_cont
    first: float | None = None
    first_ts: float | None = None
    last: float | None = None
    last_ts: float | None = None
    sum: float = 0.0
    sum_sq: float = 0.0


def window_stats(points: list[tuple[float, float]], percentile: float | None = None) -> WindowStats:
    """Aggregates of (ts, value) points sorted by ts; the same definitions as the live SQL."""
    if not points:
        return WindowStats()
    values = [value for _, value in points]
    n = len(values)
    total = math.fsum(values)
    mean = total / n
    stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    pct = None
    if percentile is not None:
        ordered = sorted(values)
        rank = percentile / 100 * (n - 1)
        low = math.floor(rank)
        high = min(low + 1, n - 1)
        pct = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return WindowStats(
        count=n, avg=mean, min=min(values), max=max(values), stddev=stddev, percentile=pct,
        first=points[0][1], first_ts=points[0][0], last=points[-1][1], last_ts=points[-1][0],
        sum=total, sum_sq=math.fsum(v * v for v in values),
    )  # fmt: skip


def rate_per_minute(stats: WindowStats) -> float | None:
    if stats.count < 2 or stats.last_ts is None or stats.first_ts is None or stats.last_ts <= stats.first_ts:
        return None
    return (stats.last - stats.first) / ((stats.last_ts - stats.first_ts) / 60.0)  # type: ignore[operator]


def zscore(stats: WindowStats) -> float | None:
    """Z-score of the newest point against the other points of the window (the baseline)."""
    n = stats.count - 1
    if n < 2 or stats.last is None:
        return None
    base_sum = stats.sum - stats.last
    base_sq = stats.sum_sq - stats.last * stats.last
    mean = base_sum / n
    variance = (base_sq - n * mean * mean) / (n - 1)
    if variance <= 1e-12 * max(1.0, mean * mean):
        return None
    return (stats.last - mean) / math.sqrt(variance)


def observed_value(rule: CompiledRule, stats: WindowStats | None, *, now: float, last_seen: float | None) -> float | None:
    """The number a windowed rule judges (reported as the alert's value)."""
    kind = rule.type
    if kind == "no_data":
        return None if last_seen is None else now - last_seen
    if stats is None:
        return None
    if kind == "rate_of_change":
        return rate_per_minute(stats)
    if kind == "zscore":
        if stats.count < rule.condition.get("min_points", 10):
            return None
        return zscore(stats)
    if stats.count < rule.condition.get("min_points", 1):
        return None
    return getattr(stats, rule.condition["aggregate"] if rule.condition["aggregate"] != "percentile" else "percentile")


def windowed_verdict(rule: CompiledRule, state: SeriesState, value: float | None, *, now: float, silent_since: float | None) -> Verdict:
    if not rule.active(now):
        return Verdict.CLEAR
    kind = rule.type
    if kind == "no_data":
        # value: seconds since the newest point (None: never reported, measured from `silent_since`).
        silence = value if value is not None else (now - silent_since if silent_since is not None else None)
        if silence is None:
            return Verdict.UNKNOWN
        return Verdict.TRIGGER if silence >= rule.condition["seconds"] else Verdict.CLEAR
    if value is None:
        # Not enough data in the window: a firing statistic clears, nothing new fires.
        return Verdict.CLEAR
    if kind == "zscore":
        k = rule.condition["k"]
        direction = rule.condition.get("direction", "both")
        holds = value >= k if direction == "above" else value <= -k if direction == "below" else abs(value) >= k
        return Verdict.TRIGGER if holds else Verdict.CLEAR
    return compare(rule.condition, value, state.firing)


def windowed_step(rule: CompiledRule, state: SeriesState, stats: WindowStats | None, *, now: float,
                  last_seen: float | None, silent_since: float | None) -> tuple[str | None, float | None]:  # fmt: skip
    value = observed_value(rule, stats, now=now, last_seen=last_seen)
    verdict = windowed_verdict(rule, state, value, now=now, silent_since=silent_since)
    return advance(state, ts=now, verdict=verdict, for_s=0.0, cooldown_s=rule.cooldown_s), value


def epoch(ts: datetime) -> float:
    return ts.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
