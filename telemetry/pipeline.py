"""The ingest pipeline: from `(topic, payload bytes, received_at)` to validated points, one path
for every transport (a transport only turns bytes on the wire into a topic and a payload).

Topic: `iiot/{tenant}/{device_uid}/{kind}`, kind one of `telemetry`, `attributes`, `status`,
`commands/response`. The broker already enforces that a device publishes only to its own topics;
the pipeline still refuses unknown tenants and devices, suspended tenants and disabled devices.

Telemetry payloads (JSON, parsed with orjson):
    {"ts": 1767225600000, "values": {"temperature": 21.5, "humidity": 40}}   ts: epoch ms or ISO 8601
    {"values": {...}}                 no ts: the server's receive time
    {"temperature": 21.5}             flat form (an optional "ts" key is the timestamp)
    [ {...}, {...} ]                  an array of either, for batches

Each point is checked on its own: a known metric of the device's profile (or auto-registered when
the profile allows it), a finite number (not a bool, string, null or object) within the profile's
range, a timestamp inside [received - INGEST_MAX_PAST_S, received + INGEST_MAX_FUTURE_S]. A bad
point is rejected with a reason and the good points of the same message are kept. Message-level
failures (size, JSON, topic, tenant, device, shape, too many points) reject the whole message.
Nothing here raises for bad input; only `RegistryUnavailable` (database down) escapes, and the
transport retries that message later instead of rejecting it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from django.conf import settings

from devices.models import metric_name_validator
from telemetry.registry import DeviceEntry, MetricRule, Registry, RegistryMiss, RegistryUnavailable, TenantIndex
from telemetry.storage import Point

__all__ = [
    "Kind",
    "Outcome",
    "Pipeline",
    "Reason",
    "Rejection",
    "RegistryMiss",
    "RegistryUnavailable",
    "StreamingHook",
    "parse_timestamp",
]

TOPIC_ROOT = "iiot"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_METRIC_NAME = metric_name_validator.regex
_ONE_MS = timedelta(milliseconds=1)
_isfinite = math.isfinite
# Subnormal doubles (below 2.2e-308 in magnitude) are flushed to 0.0: no sensor means them, and
# PostgreSQL raises "value out of range: underflow" when arithmetic on them rounds to zero
# (bucket means, rates), which would break every query over the series.
_TINY = sys.float_info.min
# Point(...) runs a Python-level __new__; tuple.__new__(Point, (...)) builds the same named tuple
# at a third of the cost, which matters at hundreds of thousands of points a second.
_new_tuple = tuple.__new__


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    ATTRIBUTES = "attributes"
    STATUS = "status"
    COMMAND_RESPONSE = "commands/response"


_KINDS = {kind.value: kind for kind in Kind}


class Reason(StrEnum):
    """Why a message or a point was refused (the keys of the rejection counters and the API)."""

    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_TOPIC = "invalid_topic"
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_SUSPENDED = "tenant_suspended"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DISABLED = "device_disabled"
    INVALID_JSON = "invalid_json"
    INVALID_PAYLOAD = "invalid_payload"
    TOO_MANY_POINTS = "too_many_points"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    INVALID_METRIC_NAME = "invalid_metric_name"
    UNKNOWN_METRIC = "unknown_metric"
    INVALID_VALUE = "invalid_value"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"


# Reasons that refuse the whole message (counted once per message); the others count points.
MESSAGE_REASONS = frozenset(
    {
        Reason.MESSAGE_TOO_LARGE,
        Reason.INVALID_TOPIC,
        Reason.UNKNOWN_TENANT,
        Reason.TENANT_SUSPENDED,
        Reason.UNKNOWN_DEVICE,
        Reason.DEVICE_DISABLED,
        Reason.INVALID_JSON,
        Reason.INVALID_PAYLOAD,
        Reason.TOO_MANY_POINTS,
    }
)


@dataclass(slots=True)
class Rejection:
    reason: Reason
    count: int  # points refused for this reason (1 for a message-level reason)
    detail: str  # the first offending item, for the dead-letter log


@dataclass(slots=True)
class Outcome:
    """What became of one message. `schema`/`device` are set as far as routing got."""

    kind: Kind | None
    schema: str | None
    device_uid: str | None
    device: DeviceEntry | None = None
    points: list[Point] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # attributes: the dict; status: bool (online); command response: the dict.
    data: Any = None

    @property
    def accepted(self) -> bool:
        """Whether there is something to store or apply (possibly with some points rejected)."""
        if self.kind == Kind.TELEMETRY:
            return bool(self.points)
        return self.kind is not None and self.data is not None and not self.rejections


# Streaming rules look at each validated batch before it is written: hook(schema, points).
StreamingHook = Callable[[str, Sequence[Point]], None]


def parse_timestamp(raw: Any) -> int | datetime | None:
    """Epoch milliseconds (int or float) or an ISO 8601 string -> int ms or aware datetime; None if invalid.

    ISO strings without an offset are taken as UTC.
    """
    kind = type(raw)
    if kind is int:
        return raw
    if kind is float:
        return raw if math.isfinite(raw) else None
    if kind is str and 0 < len(raw) <= 40:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


def _excerpt(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Collector(dict):
    """Per-message rejection tally: reason -> [count, first detail]. A dict subclass without an
    __init__ of its own: one is made per message, and that is the cheapest object to make."""

    __slots__ = ()

    def add(self, reason: Reason, detail: str, count: int = 1) -> None:
        entry = self.get(reason)
        if entry is None:
            self[reason] = [count, detail]
        else:
            entry[0] += count

    def rejections(self) -> list[Rejection]:
        return [Rejection(reason, count, detail) for reason, (count, detail) in self.items()]


class Pipeline:
    """Stateless apart from the registry it reads and a cache of the last timestamp window;
    meant for one thread (the event loop)."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_message_bytes: int | None = None,
        max_points_per_message: int | None = None,
        max_past_s: float | None = None,
        max_future_s: float | None = None,
        max_metrics_per_tenant: int | None = None,
    ) -> None:
        self.registry = registry
        self.max_message_bytes = max_message_bytes or settings.INGEST_MAX_MESSAGE_BYTES
        self.max_points = max_points_per_message or settings.INGEST_MAX_POINTS_PER_MESSAGE
        self.max_past_ms = int(1000 * (max_past_s if max_past_s is not None else settings.INGEST_MAX_PAST_S))
        self.max_future_ms = int(1000 * (max_future_s if max_future_s is not None else settings.INGEST_MAX_FUTURE_S))
        self.max_metrics = max_metrics_per_tenant or settings.INGEST_MAX_METRICS_PER_TENANT
        # (receive time, low_ms, high_ms): the accepted timestamp window of the last receive time
        # seen, one tuple so that a reader never pairs one time with another's window.
        self._window: tuple[datetime | None, int, int] = (None, 0, 0)

    # --- routing ---------------------------------------------------------------------------------
    def route(self, topic: str) -> tuple[Kind | None, str | None, str | None]:
        """`iiot/{tenant}/{uid}/{kind}` -> (kind, schema, uid); kind None when the topic is not ours."""
        parts = topic.split("/")
        count = len(parts)
        if count == 4:
            kind_text = parts[3]
        elif count == 5 and parts[3] == "commands" and parts[4] == "response":
            kind_text = "commands/response"
        else:
            return None, None, None
        if parts[0] != TOPIC_ROOT or not parts[1] or not parts[2]:
            return None, None, None
        kind = _KINDS.get(kind_text)
        if kind is None:
            return None, parts[1], parts[2]
        return kind, parts[1], parts[2]

    def process(self, topic: str, payload: bytes, received_at: datetime) -> Outcome:
        """Blocking convenience for synchronous callers: database work done inline."""
        while True:
            try:
                return self.try_process(topic, payload, received_at)
            except RegistryMiss as miss:
                miss.resolve()

    def try_process(self, topic: str, payload: bytes, received_at: datetime) -> Outcome:
        """Never touches the database: raises RegistryMiss when the index lacks something (run
        its `resolve()` in a thread, then call again). Safe on the event loop."""
        kind, schema, uid = self.route(topic)
        if kind is None:
            return self._refuse(None, schema, uid, Reason.INVALID_TOPIC, topic)
        if len(payload) > self.max_message_bytes:
            return self._refuse(kind, schema, uid, Reason.MESSAGE_TOO_LARGE, f"{len(payload)} bytes")
        index = self.registry.tenant(schema)  # may raise RegistryMiss
        if not index.exists:
            return self._refuse(kind, schema, uid, Reason.UNKNOWN_TENANT, schema)
        if not index.active:
            return self._refuse(kind, schema, uid, Reason.TENANT_SUSPENDED, schema)
        device = index.devices.get(uid)
        if device is None:
            return self._refuse(kind, schema, uid, Reason.UNKNOWN_DEVICE, uid)
        if not device.enabled:
            return self._refuse(kind, schema, uid, Reason.DEVICE_DISABLED, uid)
        if kind is Kind.STATUS:
            return self._status(schema, uid, device, payload)
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return self._refuse(kind, schema, uid, Reason.INVALID_JSON, str(exc)[:120], device)
        if kind is Kind.TELEMETRY:
            return self._telemetry(index, device, uid, body, received_at)
        if not isinstance(body, dict) or not body:
            return self._refuse(kind, schema, uid, Reason.INVALID_PAYLOAD, "expected a non-empty JSON object", device)
        if kind is Kind.ATTRIBUTES and any(not 0 < len(key) <= 100 for key in body):
            return self._refuse(kind, schema, uid, Reason.INVALID_PAYLOAD, "attribute names are 1-100 characters", device)
        return Outcome(kind=kind, schema=schema, device_uid=uid, device=device, data=body)

    @staticmethod
    def _refuse(kind, schema, uid, reason: Reason, detail: str, device: DeviceEntry | None = None) -> Outcome:
        return Outcome(kind=kind, schema=schema, device_uid=uid, device=device, rejections=[Rejection(reason, 1, detail)])

    def _status(self, schema: str, uid: str, device: DeviceEntry, payload: bytes) -> Outcome:
        """`online`/`offline`, as plain text or JSON: "online", {"status": "online"}, {"online": true}."""
        online: bool | None = None
        text = payload.strip().lower()
        if text in (b"online", b"offline", b'"online"', b'"offline"'):
            online = b"online" in text
        else:
            try:
                body = orjson.loads(payload)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                if body.get("status") in ("online", "offline"):
                    online = body["status"] == "online"
                elif type(body.get("online")) is bool:
                    online = body["online"]
        if online is None:
            return self._refuse(Kind.STATUS, schema, uid, Reason.INVALID_PAYLOAD, _excerpt(payload), device)
        return Outcome(kind=Kind.STATUS, schema=schema, device_uid=uid, device=device, data=online)

    # --- telemetry -------------------------------------------------------------------------------
    def _telemetry(self, index: TenantIndex, device: DeviceEntry, uid: str, body: Any, received_at: datetime) -> Outcome:
        # The hot path of the whole platform (tens of thousands of messages a second on one core):
        # written for speed, with the per-point checks inlined (`_point` is the same, for the rare
        # auto-registration path).
        schema = index.schema
        entries = body if type(body) is list else (body,)
        if not entries:
            return self._refuse(Kind.TELEMETRY, schema, uid, Reason.INVALID_PAYLOAD, "empty array", device)
        # Shape first, so a message is either refused whole or judged point by point.
        total = 0
        for entry in entries:
            if type(entry) is not dict:
                return self._refuse(Kind.TELEMETRY, schema, uid, Reason.INVALID_PAYLOAD, f"entry {_excerpt(entry)}", device)
            values = entry.get("values")
            if values is None:
                count = len(entry) - (1 if "ts" in entry else 0)
            elif type(values) is not dict:
                return self._refuse(Kind.TELEMETRY, schema, uid, Reason.INVALID_PAYLOAD, '"values" must be an object', device)
            else:
                count = len(values)
            if count <= 0:
                return self._refuse(Kind.TELEMETRY, schema, uid, Reason.INVALID_PAYLOAD, "no values", device)
            total += count
        if total > self.max_points:
            return self._refuse(Kind.TELEMETRY, schema, uid, Reason.TOO_MANY_POINTS, f"{total} points", device)

        window_for, low_ms, high_ms = self._window
        if window_for is not received_at:  # a transport stamps a whole socket read with one time
            received_ms = (received_at - _EPOCH) // _ONE_MS
            low_ms, high_ms = received_ms - self.max_past_ms, received_ms + self.max_future_ms
            self._window = (received_at, low_ms, high_ms)
        device_id = device.device_id
        rules = device.profile.metrics
        collector = _Collector()
        points: list[Point] = []
        append = points.append
        unknown: dict[str, list[tuple[datetime, Any]]] = {}
        for entry in entries:
            values = entry.get("values")
            flat = values is None
            if flat:
                values = entry
            count = len(values) - (1 if flat and "ts" in entry else 0)
            # One timestamp per entry.
            raw_ts = entry.get("ts")
            if raw_ts is None:
                ts = received_at
            else:
                if type(raw_ts) is int:
                    parsed: Any = raw_ts
                else:
                    parsed = parse_timestamp(raw_ts)
                    if parsed is None:
                        collector.add(Reason.INVALID_TIMESTAMP, _excerpt(raw_ts), count)
                        continue
                if type(parsed) is datetime:
                    ms = (parsed - _EPOCH) // _ONE_MS
                    ts = parsed
                else:
                    ms = parsed
                    ts = None
                if ms < low_ms:
                    collector.add(Reason.TIMESTAMP_TOO_OLD, _excerpt(raw_ts), count)
                    continue
                if ms > high_ms:
                    collector.add(Reason.TIMESTAMP_IN_FUTURE, _excerpt(raw_ts), count)
                    continue
                if ts is None:
                    ts = _EPOCH + _ONE_MS * parsed  # exact integer arithmetic, twice as fast as timedelta(milliseconds=)
            for name, value in values.items():
                if flat and name == "ts":
                    continue  # the flat form's own timestamp
                rule = rules.get(name)
                if rule is None:
                    if type(name) is not str or not _METRIC_NAME.match(name):
                        collector.add(Reason.INVALID_METRIC_NAME, _excerpt(name))
                        continue
                    if not device.profile.auto_register_metrics:
                        collector.add(Reason.UNKNOWN_METRIC, name)
                        continue
                    unknown.setdefault(name, []).append((ts, value))
                    continue
                kind = type(value)
                if kind is float:
                    if not _isfinite(value):
                        collector.add(Reason.NOT_FINITE, f"{name}={value!r}")
                        continue
                    if -_TINY < value < _TINY:
                        value = 0.0
                elif kind is int:
                    try:
                        value = float(value)
                    except OverflowError:  # an integer beyond the double range
                        collector.add(Reason.NOT_FINITE, f"{name}=<integer beyond the double range>")
                        continue
                else:  # bool, str, None, list, dict
                    collector.add(Reason.INVALID_VALUE, f"{name}={_excerpt(value, 60)}")
                    continue
                low, high = rule.min_value, rule.max_value
                if (low is not None and value < low) or (high is not None and value > high):
                    collector.add(Reason.OUT_OF_RANGE, f"{name}={value!r} not in [{low}, {high}]")
                    continue
                append(_new_tuple(Point, (device_id, rule.metric_id, ts, value)))
        if unknown:
            self._auto_register(index, device, unknown, collector, points)
        # Positional: keyword arguments cost a third more on this path (fields: kind, schema,
        # device_uid, device, points, rejections).
        return Outcome(Kind.TELEMETRY, schema, uid, device, points, collector.rejections() if collector else [])

    @staticmethod
    def _point(collector: _Collector, device_id: int, rule: MetricRule, name: str, ts: datetime, value: Any) -> Point | None:
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                collector.add(Reason.NOT_FINITE, f"{name}={value!r}")
                return None
            if -_TINY < value < _TINY:
                value = 0.0
        elif kind is int:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond the double range
                collector.add(Reason.NOT_FINITE, f"{name}=<integer beyond the double range>")
                return None
        else:  # bool, str, None, list, dict
            collector.add(Reason.INVALID_VALUE, f"{name}={_excerpt(value, 60)}")
            return None
        low, high = rule.min_value, rule.max_value
        if (low is not None and value < low) or (high is not None and value > high):
            collector.add(Reason.OUT_OF_RANGE, f"{name}={value!r} not in [{low}, {high}]")
            return None
        return Point(device_id, rule.metric_id, ts, value)

    def _auto_register(
        self, index: TenantIndex, device: DeviceEntry, unknown: dict[str, list[tuple[datetime, Any]]], collector: _Collector, points: list[Point]
    ) -> None:
        profile = device.profile
        # Names the catalogue already has (another profile's metric) need no write.
        known = {name: index.metrics[name] for name in unknown if name in index.metrics}
        missing = [name for name in unknown if name not in known]
        room = self.max_metrics - len(index.metrics)
        refused = missing[max(room, 0) :]
        missing = missing[: max(room, 0)]
        for name in refused:
            collector.add(Reason.UNKNOWN_METRIC, f"{name} (catalogue full)", len(unknown[name]))
        if missing or known:
            names = sorted({*missing, *known})
            raise RegistryMiss(("metrics", index.schema, profile.profile_id, *names), lambda: self.registry.register_metrics(index, profile, names))
        for name, samples in unknown.items():
            if name in refused:
                continue
            rule = profile.metrics.get(name)
            if rule is None:
                collector.add(Reason.UNKNOWN_METRIC, name, len(samples))
                continue
            for ts, value in samples:
                point = self._point(collector, device.device_id, rule, name, ts, value)
                if point is not None:
                    points.append(point)
