"""Every write and state change of the rules app: rule CRUD (audited, announced to the ingest
processes after commit), the actions of a firing or clearing rule, and the windowed evaluation
that Celery beat runs per tenant.

Evaluation state (firing, pending `for` start, last firing) lives in Redis, one hash per tenant:
    `{schema}:rules:state`   field `{rule_id}:{device_id}` -> SeriesState.pack()
so that it survives restarts and is shared by every process (streaming and windowed alike).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context
from psycopg import sql

from accounts.models import User
from accounts.services import diff, record_audit
from iiot import pubsub
from iiot.request_context import ClientInfo
from rules import metrics, selectors
from rules.evaluation import CLEAR, FIRE, CompiledRule, SeriesState, WindowStats, compile_rule, epoch, windowed_step
from rules.models import Rule, RuleType

logger = logging.getLogger(__name__)

RULE_FIELDS = (
    "name", "description", "type", "severity", "enabled", "target_kind", "target_device", "target_profile",
    "target_labels", "condition", "schedule", "cooldown_s", "actions",
)  # fmt: skip
CLEAR_ATTEMPTS = 3


def rules_channel(schema: str) -> str:
    """The tenant's rules-changed channel (`{schema}:db{n}:rules`, iiot/pubsub.py)."""
    return pubsub.channel(schema, "rules")


def state_key(schema: str) -> str:
    return f"{schema}:rules:state"


def state_field(rule_id: int, device_id: int) -> str:
    return f"{rule_id}:{device_id}"


# --- Rule CRUD --------------------------------------------------------------------------------------


def _snapshot(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name, "type": rule.type, "severity": rule.severity, "enabled": rule.enabled,
        "target_kind": rule.target_kind, "target_device": rule.target_device_id, "target_profile": rule.target_profile_id,
        "target_labels": rule.target_labels, "condition": rule.condition, "schedule": rule.schedule,
        "cooldown_s": rule.cooldown_s, "actions": rule.actions, "description": rule.description,
    }  # fmt: skip


def announce_rules_changed() -> None:
    """Tell every ingest process that this tenant's rules changed (after the current commit)."""
    schema = connection.schema_name

    def send() -> None:
        try:
            from telemetry.storage import redis_client

            redis_client().publish(rules_channel(schema), b"1")
        except Exception as exc:  # the periodic refresh catches up
            logger.warning("rule change not published", extra={"schema": schema, "error": str(exc)})

    transaction.on_commit(send)


@transaction.atomic
def create_rule(*, actor: User | None, client: ClientInfo | None, **fields: Any) -> Rule:
    rule = Rule(**{key: value for key, value in fields.items() if key in RULE_FIELDS})
    rule.created_by_email = getattr(actor, "email", "") or ""
    rule.full_clean()
    rule.save()
    record_audit("rule.create", actor=actor, client=client, target=rule, changes=diff({}, _snapshot(rule)))
    announce_rules_changed()
    return rule


@transaction.atomic
def update_rule(*, actor: User | None, client: ClientInfo | None, rule: Rule, **fields: Any) -> Rule:
    rule = Rule.objects.select_for_update().get(pk=rule.pk)
    before = _snapshot(rule)
    for key, value in fields.items():
        if key in RULE_FIELDS:
            setattr(rule, key, value)
    rule.full_clean()
    rule.save()
    record_audit("rule.update", actor=actor, client=client, target=rule, changes=diff(before, _snapshot(rule)))
    announce_rules_changed()
    return rule


@transaction.atomic
def delete_rule(*, actor: User | None, client: ClientInfo | None, rule: Rule) -> None:
    rule = Rule.objects.select_for_update().get(pk=rule.pk)
    record_audit("rule.delete", actor=actor, client=client, target=rule, changes=diff(_snapshot(rule), {}))
    rule.delete()
    announce_rules_changed()


# --- Actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleEvent:
    schema: str
    rule: CompiledRule
    device_id: int
    kind: str  # FIRE or CLEAR
    ts: float  # epoch seconds of the observation
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    path: str = "stream"


def describe(rule: CompiledRule, value: float | None) -> str:
    condition = rule.condition
    shown = "n/a" if value is None else f"{value:.6g}"
    if rule.type == RuleType.COMPARISON:
        return f"{rule.name}: {condition.get('expression')}"
    if rule.type == RuleType.NO_DATA:
        return f"{rule.name}: no data from {condition.get('metric') or 'the device'} for {shown} s (limit {condition.get('seconds')} s)"
    if rule.type == RuleType.ZSCORE:
        return f"{rule.name}: z-score {shown} of {condition.get('metric')} (limit {condition.get('k')} sigma)"
    label = {RuleType.RATE_OF_CHANGE: f"{condition.get('metric')} rate/min", RuleType.STATISTICAL: f"{condition.get('aggregate')}({condition.get('metric')})"}
    subject = label.get(rule.type, condition.get("metric"))
    limit = f"[{condition.get('low')}, {condition.get('high')}]" if condition.get("op") in ("inside", "outside") else condition.get("value")
    return f"{rule.name}: {subject} = {shown} ({condition.get('op')} {limit})"


def apply_event(event: RuleEvent) -> Any:
    """Do what a firing or clearing rule does, in the event's tenant schema. Safe to repeat (the
    alert fingerprint dedupes); a refused command is logged, not raised."""
    observed_at = datetime.fromtimestamp(event.ts, tz=UTC)
    rule = event.rule
    result = None
    try:
        from alerting import services as alerting
    except ImportError:  # the alerting app is not there (yet)
        alerting = None
    with nullcontext() if connection.schema_name == event.schema else schema_context(event.schema):
        if event.kind == FIRE:
            if rule.actions.get("raise_alert", True) and alerting is not None:
                result = alerting.raise_alert(
                    rule_id=rule.id or None, rule_name=rule.name, device_id=event.device_id, severity=rule.severity,
                    message=describe(rule, event.value), value=event.value, observed_at=observed_at,
                    details={"rule_type": rule.type, **event.details}, channel_ids=rule.actions.get("channel_ids") or (), actor=None,
                )  # fmt: skip
            command = rule.actions.get("command")
            if command:
                _send_command(event.device_id, command, rule)
        elif event.kind == CLEAR and rule.actions.get("raise_alert", True) and alerting is not None:
            for attempt in range(CLEAR_ATTEMPTS):
                result = alerting.clear_alert(rule_id=rule.id or None, device_id=event.device_id, observed_at=observed_at, value=event.value, actor=None)
                if result is not None or event.path != "stream" or attempt == CLEAR_ATTEMPTS - 1:
                    break
                # Another ingest process may have fired this pair a moment ago (its alert not committed yet).
                time.sleep(0.025)
    metrics.EVENTS.labels(kind=event.kind, path=event.path).inc()
    return result


def _send_command(device_id: int, command: dict[str, Any], rule: CompiledRule) -> None:
    from devices import services as devices
    from devices.models import Device
    from iiot.errors import ServiceConflict

    device = Device.objects.filter(pk=device_id).first()
    if device is None:
        return
    try:
        devices.send_command(actor=None, client=None, device=device, name=command["name"], params=command.get("params") or {},
                             timeout_s=command.get("timeout_s", 30))  # fmt: skip
    except ServiceConflict as exc:
        logger.info("rule command refused", extra={"rule": rule.id, "device": device_id, "error": exc.message})


# --- State in Redis -------------------------------------------------------------------------------------


def read_states(client, schema: str, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], SeriesState]:
    if not keys:
        return {}
    raw = client.hmget(state_key(schema), [state_field(rule_id, device_id) for rule_id, device_id in keys])
    return {key: SeriesState.unpack(value) for key, value in zip(keys, raw, strict=True)}


def write_states(client, schema: str, states: dict[tuple[int, int], SeriesState]) -> None:
    if states:
        client.hset(state_key(schema), mapping={state_field(r, d): state.pack() for (r, d), state in states.items()})


# --- Windowed evaluation ---------------------------------------------------------------------------------

# Sorting aggregates (percentile, first/last value) only for the pairs whose rule needs them:
# FILTER keeps the other groups' rows out of their sorts.
_WINDOW_SQL = """
WITH t AS (
    SELECT * FROM unnest(%(keys)s::int[], %(devices)s::int[], %(metrics)s::int[], %(windows)s::float8[], %(fractions)s::float8[],
                         %(edges)s::bool[])
        AS t(k, device_id, metric_id, window_s, fraction, edges)
)
SELECT t.k, count(p.value), avg(p.value), min(p.value), max(p.value), stddev_samp(p.value),
       percentile_cont(t.fraction) WITHIN GROUP (ORDER BY p.value) FILTER (WHERE t.fraction IS NOT NULL),
       array_agg(p.value ORDER BY p.ts) FILTER (WHERE t.edges), extract(epoch FROM min(p.ts)),
       array_agg(p.value ORDER BY p.ts DESC) FILTER (WHERE t.edges), extract(epoch FROM max(p.ts)),
       sum(p.value), sum(p.value * p.value)
FROM t JOIN {point} p
  ON p.device_id = t.device_id AND p.metric_id = t.metric_id
 AND p.ts > %(now)s - make_interval(secs => t.window_s) AND p.ts <= %(now)s
GROUP BY t.k, t.fraction, t.edges
"""


def window_stats_sql(schema: str, pairs: list[tuple[int, int, int, float, float | None, bool]], now: datetime) -> dict[int, WindowStats]:
    """Aggregates for many (key, device, metric, window_s, percentile or None, first/last needed)
    at once: one statement."""
    from telemetry.storage import POINT_TABLE

    if not pairs:
        return {}
    statement = sql.SQL(_WINDOW_SQL).format(point=sql.Identifier(schema, POINT_TABLE)).as_string(connection.connection)
    params = {
        "keys": [p[0] for p in pairs], "devices": [p[1] for p in pairs], "metrics": [p[2] for p in pairs],
        "windows": [float(p[3]) for p in pairs], "fractions": [p[4] / 100 if p[4] is not None else None for p in pairs],
        "edges": [p[5] for p in pairs], "now": now,
    }  # fmt: skip
    out: dict[int, WindowStats] = {}
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        for k, count, avg, low, high, stddev, pct, firsts, first_ts, lasts, last_ts, total, total_sq in cursor.fetchall():
            first, last = (firsts[0] if firsts else None), (lasts[0] if lasts else None)
            out[k] = WindowStats(
                count=count, avg=avg, min=low, max=high, stddev=stddev, percentile=pct, first=first,
                first_ts=float(first_ts) if first_ts is not None else None, last=last,
                last_ts=float(last_ts) if last_ts is not None else None, sum=total or 0.0, sum_sq=total_sq or 0.0,
            )  # fmt: skip
    return out


@dataclass
class WindowRun:
    schema: str
    rules: int = 0
    series: int = 0
    fired: int = 0
    cleared: int = 0
    seconds: float = 0.0


def _evaluate_windowed(*, schema: str, now: datetime, redis, apply: bool) -> tuple[WindowRun, list[RuleEvent]]:
    from telemetry.storage import read_latest, redis_client

    started = time.perf_counter()
    run = WindowRun(schema=schema)
    events: list[RuleEvent] = []
    with schema_context(schema):
        rule_rows = list(Rule.objects.enabled().windowed().order_by("pk"))
        run.rules = len(rule_rows)
        if not rule_rows:
            return run, events
        devices = selectors.device_rows()
        ids = selectors.metric_ids()
        zone = selectors.tenant_timezone(schema)
        pairs: list[tuple[CompiledRule, int, Rule]] = []
        for row in rule_rows:
            try:
                compiled = compile_rule(row, metric_ids=ids, timezone=zone)
            except Exception:  # a rule that no longer compiles (metric deleted...) is skipped
                logger.warning("windowed rule skipped: does not compile", extra={"schema": schema, "rule": row.pk}, exc_info=True)
                continue
            for device in selectors.resolve_targets(row, devices):
                pairs.append((compiled, device.id, row))
        run.series = len(pairs)
        stats_pairs = [
            (index, device_id, rule.metric_id, rule.condition["window_s"],
             rule.condition.get("percentile") if rule.condition.get("aggregate") == "percentile" else None,
             rule.type in (RuleType.RATE_OF_CHANGE, RuleType.ZSCORE))
            for index, (rule, device_id, _) in enumerate(pairs)
            if rule.type != RuleType.NO_DATA and rule.metric_id is not None
        ]
        stats = window_stats_sql(schema, stats_pairs, now)
        silent_devices = sorted({device_id for rule, device_id, _ in pairs if rule.type == RuleType.NO_DATA})
        latest = read_latest(schema, silent_devices) if silent_devices else {}
    client = redis or redis_client()
    keys = [(rule.id, device_id) for rule, device_id, _ in pairs]
    states = read_states(client, schema, keys)
    changed: dict[tuple[int, int], SeriesState] = {}
    now_s = epoch(now)
    for index, (rule, device_id, row) in enumerate(pairs):
        state = states[(rule.id, device_id)]
        before = state.persisted()
        last_seen = None
        if rule.type == RuleType.NO_DATA:
            per_metric = latest.get(device_id, {})
            if rule.metric_id is not None:
                seen = per_metric.get(rule.metric_id)
                last_seen = epoch(seen[0]) if seen else None
            elif per_metric:
                last_seen = max(epoch(ts) for ts, _ in per_metric.values())
        event, value = windowed_step(
            rule, state, stats.get(index, WindowStats()), now=now_s, last_seen=last_seen,
            silent_since=epoch(row.updated_at),
        )  # fmt: skip
        if state.persisted() != before:
            changed[(rule.id, device_id)] = state
        if event is not None:
            events.append(RuleEvent(schema=schema, rule=rule, device_id=device_id, kind=event, ts=now_s, value=value, path="window"))
    write_states(client, schema, changed)
    for event in events:
        if event.kind == FIRE:
            run.fired += 1
        else:
            run.cleared += 1
        if apply:
            try:
                apply_event(event)
            except Exception:
                logger.exception("rule action failed", extra={"schema": schema, "rule": event.rule.id, "device": event.device_id})
    run.seconds = time.perf_counter() - started
    metrics.WINDOW_SECONDS.observe(run.seconds)
    metrics.WINDOW_SERIES.set(run.series)
    return run, events


def evaluate_windowed_rules(*, schema: str, now: datetime | None = None, redis=None, apply: bool = True) -> WindowRun:
    """Evaluate every enabled windowed rule of a tenant: one SQL statement for the window
    aggregates, one Redis call for the latest values, one to read the states, one to write them."""
    run, _ = _evaluate_windowed(schema=schema, now=now or timezone.now(), redis=redis, apply=apply)
    return run
