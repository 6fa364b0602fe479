"""The ingest pipeline: payload forms and every rejection reason (real PostgreSQL, no broker)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django_tenants.utils import schema_context

from telemetry.pipeline import Kind, Pipeline, Reason, parse_timestamp
from telemetry.registry import Registry

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.fixture
def registry_data(alpha):
    from devices.models import Device, DeviceProfile, ProfileMetric
    from telemetry.models import Metric

    with schema_context("alpha"):
        temperature = Metric.objects.create(name="pl_temperature", unit="°C")
        humidity = Metric.objects.create(name="pl_humidity", unit="%")
        Metric.objects.create(name="pl_other")
        fixed = DeviceProfile.objects.create(name="pl-fixed")
        ProfileMetric.objects.create(profile=fixed, metric=temperature, min_value=-50, max_value=150)
        ProfileMetric.objects.create(profile=fixed, metric=humidity)
        auto = DeviceProfile.objects.create(name="pl-auto", auto_register_metrics=True)
        devices = {
            "pl-1": Device.objects.create(uid="pl-1", name="one", profile=fixed),
            "pl-off": Device.objects.create(uid="pl-off", name="off", profile=fixed, enabled=False),
            "pl-auto": Device.objects.create(uid="pl-auto", name="auto", profile=auto),
        }
        ids = {"temperature": temperature.pk, "humidity": humidity.pk}
    return devices, ids


@pytest.fixture
def pipeline(registry_data):
    return Pipeline(Registry(refresh_s=3600), max_points_per_message=50, max_message_bytes=4096, max_past_s=3600, max_future_s=60)


def _topic(uid: str = "pl-1", kind: str = "telemetry", tenant: str = "alpha") -> str:
    return f"iiot/{tenant}/{uid}/{kind}"


def _dumps(body) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


# (case, topic, payload, points kept, {reason: count})
CASES = [
    ("ts ms + values", _topic(), {"ts": NOW_MS - 1000, "values": {"pl_temperature": 21.5, "pl_humidity": 40}}, 2, {}),
    ("ts iso + values", _topic(), {"ts": "2026-03-01T11:59:00Z", "values": {"pl_temperature": 21}}, 1, {}),
    ("ts iso naive = UTC", _topic(), {"ts": "2026-03-01T11:59:00", "values": {"pl_temperature": 21}}, 1, {}),
    ("values without ts", _topic(), {"values": {"pl_temperature": 1.0}}, 1, {}),
    ("flat", _topic(), {"pl_temperature": 21.5, "pl_humidity": 41}, 2, {}),
    ("flat with ts", _topic(), {"ts": NOW_MS, "pl_temperature": 21.5}, 1, {}),
    ("array", _topic(), [{"ts": NOW_MS - 2000, "values": {"pl_temperature": 1}}, {"pl_humidity": 2}], 2, {}),
    ("too large", _topic(), b"{" + b" " * 5000 + b"}", 0, {Reason.MESSAGE_TOO_LARGE: 1}),
    ("bad topic root", "foo/alpha/pl-1/telemetry", {"pl_temperature": 1}, 0, {Reason.INVALID_TOPIC: 1}),
    ("bad topic kind", _topic(kind="metrics"), {"pl_temperature": 1}, 0, {Reason.INVALID_TOPIC: 1}),
    ("bad topic depth", "iiot/alpha/telemetry", {"pl_temperature": 1}, 0, {Reason.INVALID_TOPIC: 1}),
    ("unknown tenant", _topic(tenant="nosuch"), {"pl_temperature": 1}, 0, {Reason.UNKNOWN_TENANT: 1}),
    ("public schema", _topic(tenant="public"), {"pl_temperature": 1}, 0, {Reason.UNKNOWN_TENANT: 1}),
    ("unknown device", _topic(uid="nobody"), {"pl_temperature": 1}, 0, {Reason.UNKNOWN_DEVICE: 1}),
    ("disabled device", _topic(uid="pl-off"), {"pl_temperature": 1}, 0, {Reason.DEVICE_DISABLED: 1}),
    ("not json", _topic(), b"{nope", 0, {Reason.INVALID_JSON: 1}),
    ("NaN literal", _topic(), b'{"pl_temperature": NaN}', 0, {Reason.INVALID_JSON: 1}),
    ("scalar payload", _topic(), 42, 0, {Reason.INVALID_PAYLOAD: 1}),
    ("empty array", _topic(), [], 0, {Reason.INVALID_PAYLOAD: 1}),
    ("empty object", _topic(), {}, 0, {Reason.INVALID_PAYLOAD: 1}),
    ("values not object", _topic(), {"values": [1, 2]}, 0, {Reason.INVALID_PAYLOAD: 1}),
    ("nested array entry", _topic(), [[{"pl_temperature": 1}]], 0, {Reason.INVALID_PAYLOAD: 1}),
    ("too many points", _topic(), {"values": {f"m{i}": i for i in range(51)}}, 0, {Reason.TOO_MANY_POINTS: 1}),
    ("bad ts", _topic(), {"ts": "yesterday", "values": {"pl_temperature": 1, "pl_humidity": 2}}, 0, {Reason.INVALID_TIMESTAMP: 2}),
    ("bool ts", _topic(), {"ts": True, "values": {"pl_temperature": 1}}, 0, {Reason.INVALID_TIMESTAMP: 1}),
    ("old ts", _topic(), {"ts": NOW_MS - 3601_000, "values": {"pl_temperature": 1}}, 0, {Reason.TIMESTAMP_TOO_OLD: 1}),
    ("seconds not ms", _topic(), {"ts": NOW_MS // 1000, "values": {"pl_temperature": 1}}, 0, {Reason.TIMESTAMP_TOO_OLD: 1}),
    ("future ts", _topic(), {"ts": NOW_MS + 61_000, "values": {"pl_temperature": 1}}, 0, {Reason.TIMESTAMP_IN_FUTURE: 1}),
    ("unknown metric", _topic(), {"pl_temperature": 1, "pl_other": 2}, 1, {Reason.UNKNOWN_METRIC: 1}),
    ("bad metric name", _topic(), {"pl_temperature": 1, "bad name!": 2}, 1, {Reason.INVALID_METRIC_NAME: 1}),
    ("string value", _topic(), {"pl_temperature": "21.5", "pl_humidity": 3}, 1, {Reason.INVALID_VALUE: 1}),
    ("bool value", _topic(), {"pl_temperature": True}, 0, {Reason.INVALID_VALUE: 1}),
    ("null value", _topic(), {"pl_temperature": None}, 0, {Reason.INVALID_VALUE: 1}),
    ("nested value", _topic(), {"pl_temperature": {"v": 1}, "pl_humidity": [1]}, 0, {Reason.INVALID_VALUE: 2}),
    ("number beyond double", _topic(), b'{"pl_humidity": 1' + b"0" * 400 + b"}", 0, {Reason.INVALID_JSON: 1}),
    ("big int is a float", _topic(), b'{"pl_humidity": 123456789012345678901234567890}', 1, {}),
    ("below range", _topic(), {"pl_temperature": -51}, 0, {Reason.OUT_OF_RANGE: 1}),
    ("above range", _topic(), {"pl_temperature": 150.5, "pl_humidity": 1e300}, 1, {Reason.OUT_OF_RANGE: 1}),
    ("mixed array", _topic(), [{"ts": NOW_MS, "values": {"pl_temperature": 1}}, {"ts": 1, "values": {"pl_temperature": 2}}], 1, {Reason.TIMESTAMP_TOO_OLD: 1}),
]


@pytest.mark.parametrize(("case", "topic", "body", "kept", "reasons"), CASES, ids=[c[0] for c in CASES])
def test_payload_forms_and_rejections(pipeline, case, topic, body, kept, reasons):
    outcome = pipeline.process(topic, _dumps(body), NOW)
    assert len(outcome.points) == kept
    assert {r.reason: r.count for r in outcome.rejections} == reasons
    for rejection in outcome.rejections:
        assert rejection.detail


def test_points_carry_device_metric_time_and_value(pipeline, registry_data):
    devices, ids = registry_data
    outcome = pipeline.process(_topic(), _dumps({"ts": NOW_MS - 1500, "values": {"pl_temperature": 21.5}}), NOW)
    (point,) = outcome.points
    assert (point.device_id, point.metric_id, point.value) == (devices["pl-1"].pk, ids["temperature"], 21.5)
    assert point.ts == NOW - timedelta(milliseconds=1500) and point.ts.tzinfo is not None
    flat = pipeline.process(_topic(), _dumps({"pl_humidity": 3}), NOW)
    assert flat.points[0].ts == NOW and flat.points[0].value == 3.0 and type(flat.points[0].value) is float
    iso = pipeline.process(_topic(), _dumps({"ts": "2026-03-01T13:00:00+02:00", "values": {"pl_humidity": 1}}), NOW)
    assert iso.points[0].ts == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def test_the_timestamp_window_follows_each_messages_receive_time(pipeline, registry_data):
    """The window [received - max_past, received + max_future] is kept for the last receive time
    (a transport stamps a whole socket read with one); another receive time gets its own."""
    body = _dumps({"ts": NOW_MS - 1000, "values": {"pl_temperature": 1.0}})
    assert len(pipeline.process(_topic(), body, NOW).points) == 1
    later = NOW + timedelta(hours=2)  # the same ts is now older than max_past_s (1 h)
    assert {r.reason for r in pipeline.process(_topic(), body, later).rejections} == {Reason.TIMESTAMP_TOO_OLD}
    earlier = NOW - timedelta(minutes=10)  # and here 10 min in the future (max_future_s 60 s)
    assert {r.reason for r in pipeline.process(_topic(), body, earlier).rejections} == {Reason.TIMESTAMP_IN_FUTURE}
    assert len(pipeline.process(_topic(), body, NOW).points) == 1


def test_subnormal_values_are_stored_as_zero(pipeline, registry_data):
    """PostgreSQL raises an underflow error on arithmetic with subnormals (bucket means, rates):
    they are flushed to 0.0 on the way in; the smallest normal double is kept as it is."""
    outcome = pipeline.process(_topic(), b'{"pl_temperature": 5e-324, "pl_humidity": -1e-310}', NOW)
    assert [p.value for p in outcome.points] == [0.0, 0.0] and not outcome.rejections
    kept = pipeline.process(_topic(), b'{"pl_temperature": 2.2250738585072014e-308}', NOW)
    assert kept.points[0].value == 2.2250738585072014e-308


def test_suspended_tenant_is_refused(pipeline, registry_data):
    from django.utils import timezone

    from tenants.models import Tenant

    Tenant.objects.filter(schema_name="alpha").update(status="suspended", suspended_at=timezone.now())
    fresh = Pipeline(Registry(refresh_s=3600))
    outcome = fresh.process(_topic(), _dumps({"pl_temperature": 1}), NOW)
    assert [r.reason for r in outcome.rejections] == [Reason.TENANT_SUSPENDED]


def test_auto_registration_creates_metrics_once(pipeline, registry_data, django_assert_max_num_queries):
    from devices.models import ProfileMetric
    from telemetry.models import Metric

    body = _dumps({"ts": NOW_MS, "values": {"pl_temperature": 5, "pl_new_a": 1, "pl_new_b": 2, "pl_other": 3}})
    outcome = pipeline.process(_topic("pl-auto"), body, NOW)
    assert len(outcome.points) == 4 and not outcome.rejections
    with schema_context("alpha"):
        names = set(Metric.objects.filter(name__startswith="pl_").values_list("name", flat=True))
        assert {"pl_new_a", "pl_new_b", "pl_temperature", "pl_other"} <= names
        assert ProfileMetric.objects.filter(profile__name="pl-auto").count() == 4
    with django_assert_max_num_queries(0):  # cached afterwards
        again = pipeline.process(_topic("pl-auto"), body, NOW)
    assert len(again.points) == 4


def test_other_kinds(pipeline):
    status = pipeline.process(_topic(kind="status"), b"online", NOW)
    assert status.kind is Kind.STATUS and status.data is True
    assert pipeline.process(_topic(kind="status"), b'{"status": "offline"}', NOW).data is False
    assert pipeline.process(_topic(kind="status"), b'{"online": true}', NOW).data is True
    assert pipeline.process(_topic(kind="status"), b"maybe", NOW).rejections[0].reason is Reason.INVALID_PAYLOAD
    attributes = pipeline.process(_topic(kind="attributes"), b'{"firmware": "1.2"}', NOW)
    assert attributes.kind is Kind.ATTRIBUTES and attributes.data == {"firmware": "1.2"}
    assert pipeline.process(_topic(kind="attributes"), b"[1]", NOW).rejections[0].reason is Reason.INVALID_PAYLOAD
    response = pipeline.process(_topic(kind="commands/response"), b'{"command_id": "x", "status": "ok"}', NOW)
    assert response.kind is Kind.COMMAND_RESPONSE and response.accepted


def test_non_finite_values_from_other_transports_are_refused(registry_data):
    from telemetry.pipeline import _Collector
    from telemetry.registry import MetricRule

    collector = _Collector()
    rule = MetricRule(1, None, None)
    for value in (float("nan"), float("inf"), -float("inf"), 10**400):
        assert Pipeline._point(collector, 1, rule, "m", NOW, value) is None
    assert collector.rejections()[0].reason is Reason.NOT_FINITE and collector.rejections()[0].count == 4


def test_parse_timestamp():
    assert parse_timestamp(5) == 5
    assert parse_timestamp(float("nan")) is None
    assert parse_timestamp("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_timestamp("x" * 100) is None
    assert parse_timestamp([1]) is None


# --- 10,000 random and malformed payloads ------------------------------------------------------------


def _generate(rng: random.Random, n: int):
    """Yield (topic, payload, expected points, expected Counter of reasons) for n random messages."""
    good_metrics = ["pl_temperature", "pl_humidity"]
    for _ in range(n):
        choice = rng.randrange(16)
        expected: Counter = Counter()
        if choice == 0:  # wrong JSON
            payload = rng.choice([b"{", b"[1,", b"nul", b"\xff\xfe", b'{"a":NaN}', b'{"a":Infinity}', b"", b"{'a': 1}"])
            yield _topic(), payload, 0, Counter({Reason.INVALID_JSON: 1})
            continue
        if choice == 1:  # huge
            yield _topic(), b'{"pl_temperature": 1, "pad": "' + b"x" * rng.randrange(4100, 9000) + b'"}', 0, Counter({Reason.MESSAGE_TOO_LARGE: 1})
            continue
        if choice == 2:  # unknown device / tenant / disabled
            which = rng.randrange(3)
            topic = [_topic(uid=f"ghost-{rng.randrange(99)}"), _topic(tenant=f"t{rng.randrange(99)}x"), _topic(uid="pl-off")][which]
            reason = [Reason.UNKNOWN_DEVICE, Reason.UNKNOWN_TENANT, Reason.DEVICE_DISABLED][which]
            yield topic, b'{"pl_temperature": 1}', 0, Counter({reason: 1})
            continue
        if choice == 3:  # wrong shape
            payload = orjson.dumps(rng.choice([1, "x", None, True, [], {}, {"values": 3}, [[1]], [1, 2], {"values": {}}]))
            yield _topic(), payload, 0, Counter({Reason.INVALID_PAYLOAD: 1})
            continue
        # A well-formed message (object or array) whose points are judged one by one.
        entries = []
        points = 0
        for _ in range(rng.randint(1, 4)):
            ts_kind = rng.randrange(6)
            values = {}
            for _ in range(rng.randint(1, 4)):
                value_kind = rng.randrange(9)
                name = rng.choice(good_metrics)
                if name in values:
                    continue
                if value_kind == 0:
                    values[name] = rng.choice(["21", "x", None, True, False, [1], {"a": 1}])
                    tag = Reason.INVALID_VALUE
                elif value_kind == 1 and name == "pl_temperature":
                    values[name] = rng.choice([-1000.0, 151, 1e9])
                    tag = Reason.OUT_OF_RANGE
                elif value_kind == 2:
                    name = f"unknown_{rng.randrange(5)}"
                    if name in values:
                        continue
                    values[name] = 1.0
                    tag = Reason.UNKNOWN_METRIC
                elif value_kind == 3:
                    name = rng.choice(["has space", "1digit", "é"])
                    if name in values:
                        continue
                    values[name] = 1.0
                    tag = Reason.INVALID_METRIC_NAME
                else:
                    values[name] = rng.choice([rng.uniform(-49, 149), rng.randint(0, 100)])
                    tag = None
                values.setdefault("_tags", []).append(tag)
            tags = values.pop("_tags", [])
            if not values:
                continue
            if ts_kind == 0:
                entry, ts_reason = {"values": values}, None
            elif ts_kind == 1:
                entry, ts_reason = {"ts": NOW_MS - rng.randint(0, 3_000_000), "values": values}, None
            elif ts_kind == 2:
                entry, ts_reason = {"ts": NOW_MS - rng.randint(3_601_000, 10**11), "values": values}, Reason.TIMESTAMP_TOO_OLD
            elif ts_kind == 3:
                entry, ts_reason = {"ts": NOW_MS + rng.randint(61_000, 10**10), "values": values}, Reason.TIMESTAMP_IN_FUTURE
            elif ts_kind == 4:
                entry, ts_reason = {"ts": rng.choice(["soon", "", "2026-13-45", [1]]), "values": values}, Reason.INVALID_TIMESTAMP
            else:
                entry, ts_reason = dict(values), None  # flat form
            if ts_reason is not None:
                expected[ts_reason] += len(values)
            else:
                for tag in tags:
                    if tag is None:
                        points += 1
                    else:
                        expected[tag] += 1
            entries.append(entry)
        if not entries:
            continue
        body = entries if len(entries) > 1 or rng.random() < 0.3 else entries[0]
        yield _topic(), orjson.dumps(body), points, expected


def test_ten_thousand_random_and_malformed_payloads(pipeline):
    from telemetry.rejections import RejectionRecorder

    rng = random.Random(20260301)
    recorder = RejectionRecorder(keep=50)
    expected_reasons: Counter = Counter()
    expected_points = stored = messages = 0
    for topic, payload, points, reasons in _generate(rng, 10_000):
        outcome = pipeline.process(topic, payload, NOW)  # must never raise
        recorder.record(topic, payload, outcome)
        got = Counter({r.reason: r.count for r in outcome.rejections})
        assert got == reasons, (payload[:200], got, reasons)
        assert len(outcome.points) == points, payload[:200]
        expected_reasons += reasons
        expected_points += points
        stored += len(outcome.points)
        messages += 1
    assert messages >= 9_000 and stored == expected_points
    by_reason: Counter = Counter()
    for (_schema, _uid, reason), count in recorder.counts.items():
        by_reason[reason] += count
    assert by_reason == Counter({reason.value: n for reason, n in expected_reasons.items()})
    assert set(by_reason) >= {r.value for r in (Reason.INVALID_JSON, Reason.MESSAGE_TOO_LARGE, Reason.INVALID_PAYLOAD, Reason.INVALID_VALUE,
                                                Reason.OUT_OF_RANGE, Reason.UNKNOWN_METRIC, Reason.TIMESTAMP_TOO_OLD, Reason.TIMESTAMP_IN_FUTURE,
                                                Reason.INVALID_TIMESTAMP, Reason.UNKNOWN_DEVICE, Reason.UNKNOWN_TENANT, Reason.DEVICE_DISABLED,
                                                Reason.INVALID_METRIC_NAME)}


def test_last_seen_is_written_at_most_once_per_interval_per_device(settings, monkeypatch):
    """A busy device's row is not rewritten by every batch: once per INGEST_SEEN_INTERVAL_S."""
    from datetime import UTC, datetime

    from telemetry.transports import base
    from telemetry.transports.base import IngestService

    settings.INGEST_SEEN_INTERVAL_S = 5.0
    clock = [1000.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: clock[0])
    service = IngestService(pipeline=None)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    assert service._due_seen("alpha", {1: at, 2: at}) == {1: at, 2: at}
    clock[0] += 1
    assert service._due_seen("alpha", {1: at, 3: at}) == {3: at}  # 1 was written a second ago
    assert service._due_seen("beta", {1: at}) == {1: at}  # per tenant
    clock[0] += 4.5
    assert service._due_seen("alpha", {1: at, 2: at, 3: at}) == {1: at, 2: at}
    settings.INGEST_SEEN_INTERVAL_S = 0
    assert IngestService(pipeline=None)._due_seen("alpha", {1: at}) == {1: at}


def test_the_ingest_freezes_start_up_objects_and_collects_young_ones_less_often():
    import gc

    from telemetry.management.commands.ingest import GC_THRESHOLDS, tune_gc

    saved = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # Django and the test session, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
