"""Rule semantics through the live code paths: the streaming hook (threshold with `for`,
hysteresis, cooldown, schedules in a non-UTC zone, comparison across two devices), the windowed
evaluator (no data from a device that goes silent, z-score on a known series, rate of change,
statistical aggregates), actions (alert stored and auto-resolved, command sent) and the
agreement of backtests with live evaluation on the same data."""

from __future__ import annotations

import math
import queue
import time
from datetime import UTC, datetime, timedelta

import pytest
from django_tenants.utils import schema_context

from rules import services
from rules.backtest import run_backtest
from rules.evaluation import CLEAR, FIRE, Schedule
from rules.models import Rule
from rules.streaming import StreamingEvaluator, load_tenant_rules
from rules.tests.conftest import base_time, make_plant, make_rule, write_points
from telemetry.storage import Point, redis_client

pytestmark = pytest.mark.django_db


# --- helpers ------------------------------------------------------------------------------------------


class Hook:
    """The streaming evaluator as the ingest service runs it, minus its threads: the index is
    loaded in the test's transaction and events are taken from its queues synchronously."""

    def __init__(self, schema: str = "alpha") -> None:
        self.schema = schema
        self.evaluator = StreamingEvaluator(workers=1, refresh_s=3600)
        self.evaluator._client = redis_client()
        self.reload()

    def reload(self) -> None:
        previous = self.evaluator.loaded(self.schema)
        self.evaluator._tenants[self.schema] = load_tenant_rules(self.schema, client=self.evaluator._client, previous=previous)

    def feed(self, points) -> list[tuple[str, int, float, float]]:
        self.evaluator(self.schema, points)
        self.evaluator._flush_writes()
        out = []
        while True:
            try:
                _, event = self.evaluator._queues[0].get_nowait()
            except queue.Empty:
                return out
            out.append((event.kind, event.device_id, event.ts, event.value))


def series(device, metric_id, start: datetime, values, step_s: float = 1.0):
    return [Point(device.pk, metric_id, start + timedelta(seconds=i * step_s), float(v)) for i, v in enumerate(values)]


def kinds(events):
    return [(kind, value) for kind, _, _, value in events]


# --- threshold -------------------------------------------------------------------------------------


def test_threshold_fires_once_clears_once_and_hysteresis_prevents_flapping(alpha, plant):
    device = plant.devices[0]
    make_rule("alpha", type="threshold", target_kind="device", target_device=device,
              condition={"metric": "temperature", "op": "gt", "value": 80, "clear_value": 75})  # fmt: skip
    hook = Hook()
    start = base_time()
    # hovering around 80 after firing: no clear until below 75, no second firing
    values = [70, 81, 79, 81, 79.5, 76, 82, 74.9, 79, 80.5]
    events = hook.feed(series(device, plant.metric_ids["temperature"], start, values))
    assert kinds(events) == [(FIRE, 81.0), (CLEAR, 74.9), (FIRE, 80.5)]
    assert [ts for _, _, ts, _ in events] == [(start + timedelta(seconds=s)).timestamp() for s in (1, 7, 9)]


def test_threshold_without_hysteresis_clears_when_the_condition_stops(alpha, plant):
    device = plant.devices[0]
    make_rule("alpha", type="threshold", target_kind="device", target_device=device,
              condition={"metric": "temperature", "op": "outside", "low": 10, "high": 20})  # fmt: skip
    events = Hook().feed(series(device, plant.metric_ids["temperature"], base_time(), [15, 25, 21, 20, 5, 10]))
    assert kinds(events) == [(FIRE, 25.0), (CLEAR, 20.0), (FIRE, 5.0), (CLEAR, 10.0)]


def test_for_duration_must_hold_before_firing(alpha, plant):
    device = plant.devices[0]
    make_rule("alpha", type="threshold", target_kind="device", target_device=device,
              condition={"metric": "temperature", "op": "gte", "value": 50, "for_s": 10})  # fmt: skip
    hook = Hook()
    start = base_time()
    # held 8 s then broken: nothing; then held from t=12: fires at t=22 (first point >= 10 s later)
    values = [50, 51, 52, 53, 55, 40, 60, 60, 60, 60, 60, 60, 60]
    events = hook.feed(series(device, plant.metric_ids["temperature"], start, values, step_s=2.0))
    assert [(kind, ts - start.timestamp()) for kind, _, ts, _ in events] == [(FIRE, 22.0)]


def test_state_survives_a_restart_through_redis(alpha, plant):
    device = plant.devices[0]
    make_rule("alpha", type="threshold", target_kind="device", target_device=device,
              condition={"metric": "temperature", "op": "gt", "value": 80, "for_s": 5})  # fmt: skip
    start = base_time()
    metric = plant.metric_ids["temperature"]
    assert Hook().feed(series(device, metric, start, [90, 91, 92])) == []  # pending since t=0
    restarted = Hook()  # a new process: loads the pending state from Redis
    events = restarted.feed(series(device, metric, start + timedelta(seconds=3), [93, 94, 95]))
    assert [(kind, ts - start.timestamp()) for kind, _, ts, _ in events] == [(FIRE, 5.0)]
    assert Hook().feed(series(device, metric, start + timedelta(seconds=6), [96])) == []  # still firing: no repeat


def test_cooldown_spaces_firings(alpha, plant):
    device = plant.devices[0]
    make_rule("alpha", type="threshold", target_kind="device", target_device=device, cooldown_s=10,
              condition={"metric": "temperature", "op": "gt", "value": 80})  # fmt: skip
    start = base_time()
    events = Hook().feed(series(device, plant.metric_ids["temperature"], start, [90, 70, 90, 70, 90, 90, 90, 90, 90, 90, 90, 90], step_s=2))
    # fires at 0, clears at 2; hot again at 4 but the cooldown holds it until 10
    assert [(kind, ts - start.timestamp()) for kind, _, ts, _ in events] == [(FIRE, 0.0), (CLEAR, 2.0), (FIRE, 10.0)]


def test_profile_and_label_targets_bind_each_device(alpha, plant):
    make_rule("alpha", type="threshold", target_kind="labels", target_labels={"line": "1"},
              condition={"metric": "pressure", "op": "gt", "value": 1})  # fmt: skip
    hook = Hook()
    start = base_time()
    metric = plant.metric_ids["pressure"]
    fired = {device_id for d in plant.devices for _, device_id, _, _ in hook.feed([Point(d.pk, metric, start, 5.0)])}  # a message per device
    assert fired == {d.pk for d in plant.devices if d.labels["line"] == "1"}


def test_schedule_in_a_non_utc_time_zone(alpha, plant):
    # Mon-Fri 08:00-18:00 in Asia/Tokyo (UTC+9): 23:30 UTC on a Sunday is 08:30 Monday in Tokyo.
    schedule = Schedule({"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"}, "Asia/Tokyo")
    sunday_2330_utc = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    assert schedule.active(sunday_2330_utc.timestamp())
    assert not schedule.active((sunday_2330_utc - timedelta(hours=1)).timestamp())  # 07:30 Monday Tokyo
    assert not schedule.active(datetime(2026, 11, 28, 2, 0, tzinfo=UTC).timestamp())  # 11:00 Saturday Tokyo
    overnight = Schedule({"days": [4], "start": "22:00", "end": "06:00", "timezone": "America/New_York"})
    assert overnight.active(datetime(2026, 11, 28, 8, 0, tzinfo=UTC).timestamp())  # 03:00 Saturday NY: Friday's night
    assert not overnight.active(datetime(2026, 11, 29, 8, 0, tzinfo=UTC).timestamp())  # 03:00 Sunday NY

    device = plant.devices[0]
    from tenants.models import Tenant

    Tenant.objects.filter(schema_name="alpha").update(timezone="Asia/Tokyo")
    make_rule("alpha", type="threshold", target_kind="device", target_device=device,
              schedule={"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"},
              condition={"metric": "temperature", "op": "gt", "value": 80})  # fmt: skip
    hook = Hook()
    metric = plant.metric_ids["temperature"]
    # 22:58 .. 23:02 UTC Sunday (07:58 .. 08:02 Monday in Tokyo), always hot: fires at 08:00 Tokyo
    start = datetime(2026, 11, 29, 22, 58, tzinfo=UTC)
    events = hook.feed(series(device, metric, start, [90] * 5, step_s=60))
    assert [(kind, datetime.fromtimestamp(ts, UTC).strftime("%H:%M")) for kind, _, ts, _ in events] == [(FIRE, "23:00")]
    # the schedule ends at 18:00 Tokyo = 09:00 UTC Monday: a firing rule clears
    events = hook.feed(series(device, metric, datetime(2026, 11, 30, 8, 59, tzinfo=UTC), [90, 90], step_s=60))
    assert [(kind, datetime.fromtimestamp(ts, UTC).strftime("%H:%M")) for kind, _, ts, _ in events] == [(CLEAR, "09:00")]


def test_comparison_over_two_devices(alpha, plant):
    pump, other = plant.devices[0], plant.devices[1]
    make_rule("alpha", type="comparison", target_kind="device", target_device=pump,
              condition={"expression": f'inlet_temp - device("{other.uid}").outlet_temp > 5'})  # fmt: skip
    hook = Hook()
    start = base_time()
    inlet, outlet = plant.metric_ids["inlet_temp"], plant.metric_ids["outlet_temp"]
    events = hook.feed([Point(pump.pk, inlet, start, 80.0)])
    assert events == []  # the other device's value is unknown yet
    events = hook.feed([Point(other.pk, outlet, start + timedelta(seconds=1), 70.0)])
    assert kinds(events) == [(FIRE, 70.0)]
    events = hook.feed([Point(other.pk, outlet, start + timedelta(seconds=2), 76.0)])
    assert kinds(events) == [(CLEAR, 76.0)]


def test_rule_changes_reach_the_index(alpha, plant):
    device = plant.devices[0]
    rule = make_rule("alpha", type="threshold", target_kind="device", target_device=device,
                     condition={"metric": "temperature", "op": "gt", "value": 80})  # fmt: skip
    hook = Hook()
    assert hook.evaluator.loaded("alpha").bindings == 1
    with schema_context("alpha"):
        services.update_rule(actor=None, client=None, rule=rule, enabled=False)
    hook.reload()
    assert hook.evaluator.loaded("alpha").bindings == 0
    assert hook.feed(series(device, plant.metric_ids["temperature"], base_time(), [99])) == []


def test_an_unknown_tenant_is_requested_not_blocked_on(alpha):
    evaluator = StreamingEvaluator(workers=1)
    evaluator("nosuchtenant", [Point(1, 1, datetime.now(UTC), 1.0)])
    assert "nosuchtenant" in evaluator._stale


# --- actions -----------------------------------------------------------------------------------------


def test_actions_store_the_alert_resolve_it_and_send_the_command(alpha, plant):
    from alerting.models import Alert
    from devices.models import DeviceCommand
    from rules.services import RuleEvent, apply_event

    device = plant.devices[0]
    rule = make_rule("alpha", type="threshold", target_kind="device", target_device=device,
                     condition={"metric": "temperature", "op": "gt", "value": 80},
                     actions={"command": {"name": "shutdown", "params": {"reason": "hot"}}})  # fmt: skip
    hook = Hook()
    start = base_time()
    events = []
    hook.evaluator._queues[0] = q = queue.Queue()
    hook.evaluator("alpha", series(device, plant.metric_ids["temperature"], start, [90, 95, 70]))
    while not q.empty():
        events.append(q.get_nowait()[1])
    assert [e.kind for e in events] == [FIRE, CLEAR]
    apply_event(events[0])
    apply_event(events[0])  # redelivered: the same alert, bumped
    with schema_context("alpha"):
        alert = Alert.objects.get(rule_id=rule.pk, device_id=device.pk)
        assert (alert.state, alert.count, alert.value, alert.severity) == ("triggered", 2, 90.0, "major")
        assert "temperature = 90" in alert.message
        assert DeviceCommand.objects.filter(device=device, name="shutdown").count() == 2
    apply_event(events[1])
    with schema_context("alpha"):
        alert.refresh_from_db()
        assert alert.state == "resolved" and alert.auto_resolved
    assert isinstance(events[0], RuleEvent)


# --- windowed --------------------------------------------------------------------------------------


def _window(schema: str, now: datetime):
    run, events = services._evaluate_windowed(schema=schema, now=now, redis=None, apply=False)
    return [(e.kind, e.device_id, e.value) for e in events]


def _only(events, rule_devices):
    return [e for e in events if e[1] in rule_devices]


def test_no_data_fires_when_a_device_goes_silent_and_clears_when_it_returns(alpha):
    plant = make_plant("alpha", 2)
    quiet, chatty = plant.devices
    with schema_context("alpha"):
        Rule.objects.filter(type__in=["no_data", "rate_of_change", "statistical", "zscore"]).update(enabled=False)
    make_rule("alpha", type="no_data", target_kind="profile", target_profile=plant.profile,
              condition={"metric": "temperature", "seconds": 60})  # fmt: skip
    metric = plant.metric_ids["temperature"]
    now = datetime.now(UTC).replace(microsecond=0)
    write_points("alpha", [(quiet.pk, metric, now - timedelta(seconds=90), 1.0), (chatty.pk, metric, now - timedelta(seconds=5), 1.0)])
    events = _only(_window("alpha", now), {quiet.pk, chatty.pk})
    assert [(kind, device, round(value)) for kind, device, value in events] == [(FIRE, quiet.pk, 90)]
    assert _only(_window("alpha", now + timedelta(seconds=5)), {quiet.pk, chatty.pk}) == []  # still silent: no repeat
    write_points("alpha", [(quiet.pk, metric, now + timedelta(seconds=9), 2.0)])
    events = _only(_window("alpha", now + timedelta(seconds=10)), {quiet.pk, chatty.pk})
    assert [(kind, device) for kind, device, _ in events] == [(CLEAR, quiet.pk)]
    # the chatty one falls silent too (65 s; the quiet one reported 56 s ago)
    events = _only(_window("alpha", now + timedelta(seconds=65)), {quiet.pk, chatty.pk})
    assert [(kind, device) for kind, device, _ in events] == [(FIRE, chatty.pk)]


def test_zscore_on_a_known_series(alpha):
    plant = make_plant("alpha", 1)
    device = plant.devices[0]
    with schema_context("alpha"):
        Rule.objects.filter(type__in=["no_data", "rate_of_change", "statistical", "zscore"]).update(enabled=False)
    make_rule("alpha", type="zscore", target_kind="device", target_device=device,
              condition={"metric": "pressure", "window_s": 120, "k": 3, "direction": "above", "min_points": 5})  # fmt: skip
    metric = plant.metric_ids["pressure"]
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    baseline = [10, 12, 10, 12, 10, 12, 10, 12, 10, 12]  # mean 11, sample stddev sqrt(10/9)
    rows = [(device.pk, metric, now - timedelta(seconds=60 - i * 5), float(v)) for i, v in enumerate(baseline)]
    write_points("alpha", rows)
    assert _window("alpha", now) == []  # latest point (12) has z = 0.9
    spike = 11 + 3.5 * math.sqrt(10 / 9)
    write_points("alpha", [(device.pk, metric, now + timedelta(seconds=1), spike)])
    events = _window("alpha", now + timedelta(seconds=2))
    assert len(events) == 1 and events[0][0] == FIRE and events[0][2] == pytest.approx(3.5, rel=1e-6)
    write_points("alpha", [(device.pk, metric, now + timedelta(seconds=3), 11.0)])
    assert [e[0] for e in _window("alpha", now + timedelta(seconds=4))] == [CLEAR]


def test_rate_of_change_per_minute_and_statistical_aggregates(alpha):
    plant = make_plant("alpha", 1)
    device = plant.devices[0]
    with schema_context("alpha"):
        Rule.objects.filter(type__in=["no_data", "rate_of_change", "statistical", "zscore"]).update(enabled=False)
    rate = make_rule("alpha", type="rate_of_change", target_kind="device", target_device=device,
                     condition={"metric": "pressure", "window_s": 60, "op": "gt", "value": 5})  # fmt: skip
    p90 = make_rule("alpha", type="statistical", target_kind="device", target_device=device,
                    condition={"metric": "pressure", "window_s": 60, "aggregate": "percentile", "percentile": 90, "op": "gte", "value": 9})  # fmt: skip
    metric = plant.metric_ids["pressure"]
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    # 0, 1, ..., 10 over 50 s: +12 per minute; 90th percentile (linear) = 9.0
    write_points("alpha", [(device.pk, metric, now - timedelta(seconds=50 - i * 5), float(i)) for i in range(11)])
    run, events = services._evaluate_windowed(schema="alpha", now=now, redis=None, apply=False)
    got = {(e.rule.id, e.kind): e.value for e in events}
    assert got[(rate.pk, FIRE)] == pytest.approx(12.0)
    assert got[(p90.pk, FIRE)] == pytest.approx(9.0)
    # a minute later the window is empty: both clear
    run, events = services._evaluate_windowed(schema="alpha", now=now + timedelta(seconds=61), redis=None, apply=False)
    assert sorted((e.rule.id, e.kind) for e in events) == sorted([(rate.pk, CLEAR), (p90.pk, CLEAR)])


# --- backtest agrees with live ------------------------------------------------------------------------


def test_backtest_agrees_with_the_streaming_hook(alpha, plant):
    device, other = plant.devices[0], plant.devices[1]
    rule = make_rule("alpha", type="threshold", target_kind="profile", target_profile=plant.profile,
                     condition={"metric": "temperature", "op": "gt", "value": 50, "clear_value": 45, "for_s": 3})  # fmt: skip
    metric = plant.metric_ids["temperature"]
    start = base_time()
    wave = [40 + 15 * math.sin(i / 4) for i in range(120)]
    points = series(device, metric, start, wave) + series(other, metric, start, [v + 3 for v in wave])
    write_points("alpha", [(p.device_id, p.metric_id, p.ts, p.value) for p in points])
    live = Hook().feed(sorted(points, key=lambda p: (p.ts, p.device_id)))
    with schema_context("alpha"):
        result = run_backtest(Rule.objects.get(pk=rule.pk), start=start, end=start + timedelta(minutes=3))
    replayed = []
    for interval in result.intervals:
        replayed.append((FIRE, interval.device_id, interval.fired_at.timestamp(), interval.fire_value))
        if interval.cleared_at:
            replayed.append((CLEAR, interval.device_id, interval.cleared_at.timestamp(), interval.clear_value))
    assert len(live) >= 6
    assert sorted(replayed) == sorted(live)
    assert result.points == 240 and not result.truncated


def test_backtest_agrees_with_the_windowed_evaluator(alpha):
    plant = make_plant("alpha", 1)
    device = plant.devices[0]
    with schema_context("alpha"):
        Rule.objects.filter(type__in=["no_data", "rate_of_change", "statistical", "zscore"]).update(enabled=False)
    rule = make_rule("alpha", type="statistical", target_kind="device", target_device=device,
                     condition={"metric": "pressure", "window_s": 30, "aggregate": "avg", "op": "gt", "value": 5})  # fmt: skip
    metric = plant.metric_ids["pressure"]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    values = [5 + 4 * math.sin(i / 6) for i in range(200)]
    write_points("alpha", [(device.pk, metric, start + timedelta(seconds=i), v) for i, v in enumerate(values)])
    end = start + timedelta(seconds=200)
    live = []
    tick = start
    while tick < end:
        live += [(e.kind, e.rule.id, e.ts, round(e.value, 9)) for e in
                 services._evaluate_windowed(schema="alpha", now=tick, redis=None, apply=False)[1]]  # fmt: skip
        tick += timedelta(seconds=5)
    with schema_context("alpha"):
        result = run_backtest(Rule.objects.get(pk=rule.pk), start=start, end=end)
    replayed = []
    for interval in result.intervals:
        replayed.append((FIRE, rule.pk, interval.fired_at.timestamp(), round(interval.fire_value, 9)))
        if interval.cleared_at:
            replayed.append((CLEAR, rule.pk, interval.cleared_at.timestamp(), round(interval.clear_value, 9)))
    assert len(live) >= 4
    assert replayed == live


def test_a_second_process_adopts_the_state_another_one_published(alpha, plant):
    import orjson

    device = plant.devices[0]
    rule = make_rule("alpha", type="threshold", target_kind="device", target_device=device,
                     condition={"metric": "temperature", "op": "gt", "value": 80})  # fmt: skip
    first, second = Hook(), Hook()  # two ingest processes sharing the stream
    metric = plant.metric_ids["temperature"]
    start = base_time()
    assert kinds(first.feed(series(device, metric, start, [90]))) == [(FIRE, 90.0)]
    packed = first.evaluator._tenants["alpha"].states[(rule.pk, device.pk)].pack()
    # what the first one's writer publishes on alpha:rules:state; the second one's listener adopts it
    second.evaluator._adopt("alpha", orjson.dumps({"origin": first.evaluator.origin, "states": {f"{rule.pk}:{device.pk}": packed}}))
    assert kinds(second.feed(series(device, metric, start + timedelta(seconds=1), [70]))) == [(CLEAR, 70.0)]
    # its own messages are ignored
    second.evaluator._adopt("alpha", orjson.dumps({"origin": second.evaluator.origin, "states": {f"{rule.pk}:{device.pk}": packed}}))
    assert second.evaluator._tenants["alpha"].states[(rule.pk, device.pk)].firing is False


def test_an_action_worker_reconnects_when_its_connection_was_cut(alpha):
    """The action worker checks its connection at most once a second; an event arriving on a
    connection that broke since (a database restart, a terminated backend) is applied again on a
    new one, not lost."""
    import threading

    from rules.evaluation import compile_rule
    from rules.services import RuleEvent
    from telemetry.tests.test_ingest_support import fetch, wait_for

    row = Rule(pk=990_000 + int(time.time()) % 10_000, name="reconnect", type="threshold", severity="minor",
               target_kind="device", condition={"metric": "temperature", "op": "gt", "value": 80}, actions={})  # fmt: skip
    rule = compile_rule(row, metric_ids={"temperature": 1}, timezone="UTC")
    device_id = 880_000 + int(time.time()) % 10_000  # no such device: the alert keeps no device
    evaluator = StreamingEvaluator(workers=1, refresh_s=3600)
    jobs: queue.Queue = queue.Queue()
    worker = threading.Thread(target=evaluator._worker, args=(jobs,), daemon=True)
    worker.start()

    def states() -> list[str]:
        return [state for (state,) in fetch("SELECT state FROM alpha.alerting_alert WHERE rule_id = %s", row.pk)]

    def event(kind: str, value: float) -> RuleEvent:
        return RuleEvent(schema="alpha", rule=rule, device_id=device_id, kind=kind, ts=time.time(), value=value)

    try:
        jobs.put((time.perf_counter(), event(FIRE, 95.0)))
        assert wait_for(lambda: states() == ["triggered"], 10), states()
        cut = fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE %s",
            "%alerting_alert%",
        )
        assert cut and all(ok for (ok,) in cut)
        jobs.put((time.perf_counter(), event(CLEAR, 50.0)))
        assert wait_for(lambda: states() == ["resolved"], 10), states()
    finally:
        evaluator._stop.set()
        worker.join(5)
        fetch("DELETE FROM alpha.alerting_alertevent WHERE alert_id IN (SELECT id FROM alpha.alerting_alert WHERE rule_id = %s) RETURNING id", row.pk)
        fetch("DELETE FROM alpha.alerting_alert WHERE rule_id = %s RETURNING id", row.pk)
