"""Streaming rule evaluation inside the ingest service (settings.INGEST_STREAMING_HOOKS lists
`rules.streaming.build_hook`).

The ingest service calls the hook `(schema, points)` on its event loop for every message's
validated points, before their batch commits. The hook must be fast and never block, so:

- each tenant's enabled threshold and comparison rules are compiled into an in-memory index
  `(device_id, metric_id) -> [bindings]` by a loader thread: on first sight of the tenant, when
  `rules.services` announces a change on `{schema}:db{n}:rules` (Redis pub/sub, iiot/pubsub.py, after commit), when the
  device registry changes (`{schema}:db{n}:registry`: a new device of a profile, changed labels), and
  every settings.RULES_INDEX_REFRESH_S as a safety net. Readers take a reference, never lock;
- a point whose series has no binding costs one dict lookup;
- the rule state (`for` pending start, firing, last firing for the cooldown) is kept in memory and
  every change is queued for a writer thread that stores it in Redis, pipelined, every few
  milliseconds (hash `{schema}:rules:state`, announced on `{schema}:db{n}:rules:state`, shared with the windowed evaluator and read back on load,
  so it survives restarts and is seen by the other processes when they reload);
- comparison rules read the other metrics from an in-memory map of the newest values of the
  series they reference, fed by the points passing through and seeded from Redis on load;
- firing and clearing (alerts, notifications, commands: Django ORM) happen in worker threads,
  sharded by rule and device so that one pair's events stay in order.

Messages of a tenant arriving before its index is loaded are not evaluated (the first load takes
milliseconds; all active tenants are loaded at start). Several ingest processes each see part of
the stream: a pair's state is per process between reloads, which is at worst a repeated alert
update (alert fingerprints dedupe) or a `for` that restarts.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django_tenants.utils import get_public_schema_name, schema_context

from iiot import pubsub as channels
from rules import metrics
from rules.evaluation import CompiledRule, SeriesState, comparison_step, compile_rule, threshold_step
from rules.models import Rule, RuleType
from rules.services import RuleEvent, apply_event, read_states, state_field, state_key
from telemetry.storage import Point

logger = logging.getLogger(__name__)

# Channels (iiot/pubsub.py, `{schema}:db{n}:{topic}`): rules changed, registry changed, and rule
# states changed by another ingest process.
TOPICS = ("rules", "registry", "rules:state")
# Action workers check their database connection at most this often (seconds).
HEALTH_CHECK_INTERVAL_S = 1.0
STATE_TOPIC = "rules:state"


@dataclass(slots=True)
class Binding:
    rule: CompiledRule
    device_id: int
    key: tuple[int, int]  # (rule id, device id): the state's key
    lookup: Callable | None = None  # comparison: reference -> newest value


@dataclass(slots=True)
class TenantRules:
    schema: str
    # device id -> metric id -> bindings: a message's points share a device, so a message of a
    # device without rules costs one dict lookup.
    by_device: dict[int, dict[int, list[Binding]]] = field(default_factory=dict)
    states: dict[tuple[int, int], SeriesState] = field(default_factory=dict)
    latest: dict[tuple[int, int], float] = field(default_factory=dict)
    bindings: int = 0
    loaded_at: float = 0.0


def build_index(schema: str, rows: Sequence[Rule], devices, ids: dict[str, int], zone: str) -> tuple[TenantRules, set[tuple[int, int]]]:
    """Bindings of `rows` (streaming rules) for their target devices; also returns the series
    whose newest values comparison rules read."""
    from rules import selectors

    index = TenantRules(schema=schema, loaded_at=time.monotonic())
    by_uid = {device.uid: device.id for device in devices}
    referenced: set[tuple[int, int]] = set()
    for row in rows:
        try:
            rule = compile_rule(row, metric_ids=ids, timezone=zone)
        except Exception:
            logger.warning("streaming rule skipped: does not compile", extra={"schema": schema, "rule": row.pk}, exc_info=True)
            continue
        for device in selectors.resolve_targets(row, devices):
            if rule.type == RuleType.THRESHOLD:
                if rule.metric_id is None:
                    continue
                binding = Binding(rule=rule, device_id=device.id, key=(rule.id, device.id))
                index.by_device.setdefault(device.id, {}).setdefault(rule.metric_id, []).append(binding)
                index.bindings += 1
                continue
            refs: dict = {}
            for uid, metric in rule.expression.references:  # type: ignore[union-attr]
                device_id = device.id if uid is None else by_uid.get(uid)
                metric_id = ids.get(metric)
                if device_id is None or metric_id is None:
                    refs = {}
                    break
                refs[(uid, metric)] = (device_id, metric_id)
            if not refs:
                continue
            binding = Binding(rule=rule, device_id=device.id, key=(rule.id, device.id), lookup=_lookup(refs, index.latest))
            for series in set(refs.values()):
                index.by_device.setdefault(series[0], {}).setdefault(series[1], []).append(binding)
                referenced.add(series)
            index.bindings += 1
    return index, referenced


def load_tenant_rules(schema: str, *, client, previous: TenantRules | None = None) -> TenantRules:
    """Compile a tenant's enabled streaming rules into an index (a few queries whatever its size)."""
    from rules import selectors
    from telemetry.storage import read_latest

    started = time.perf_counter()
    if schema == get_public_schema_name():
        return TenantRules(schema=schema, loaded_at=time.monotonic())
    with schema_context(schema):
        rows = list(Rule.objects.enabled().streaming().order_by("pk"))
        if not rows:
            return TenantRules(schema=schema, loaded_at=time.monotonic())
        devices = selectors.device_rows()
        ids = selectors.metric_ids()
        zone = selectors.tenant_timezone(schema)
    index, referenced = build_index(schema, rows, devices, ids, zone)
    latest = index.latest
    keys = sorted({binding.key for per_metric in index.by_device.values() for bindings in per_metric.values() for binding in bindings})
    index.states = read_states(client, schema, keys)
    if previous is not None:
        for key, state in index.states.items():
            old = previous.states.get(key)
            if old is not None:
                state.last_ts = old.last_ts
    if referenced:
        if previous is not None:
            latest.update({series: value for series, value in previous.latest.items() if series in referenced})
        missing_devices = sorted({device_id for device_id, metric_id in referenced if (device_id, metric_id) not in latest})
        if missing_devices:
            with schema_context(schema):
                newest = read_latest(schema, missing_devices, client=client)
            for device_id, metric_id in referenced:
                if (device_id, metric_id) not in latest:
                    got = newest.get(device_id, {}).get(metric_id)
                    if got is not None:
                        latest[(device_id, metric_id)] = got[1]
    metrics.INDEX_LOAD_SECONDS.observe(time.perf_counter() - started)
    return index


def evaluate(index: TenantRules, points: Sequence[Point], on_change: Callable, on_event: Callable) -> int:
    """Judge `points` against the index's bindings (the streaming hook and the backtest both run
    this). `on_change(binding, state)` is called when a pair's persisted state changed,
    `on_event(binding, kind, ts, value, point)` when it fired or cleared. Returns evaluations."""
    by_device = index.by_device
    states = index.states
    latest = index.latest
    evaluations = 0
    device_id, per_metric = None, None
    for point in points:
        if point.device_id != device_id:
            device_id = point.device_id
            per_metric = by_device.get(device_id)
        if per_metric is None:
            continue
        bindings = per_metric.get(point.metric_id)
        if bindings is None:
            continue
        ts = point.ts.timestamp()
        latest[(device_id, point.metric_id)] = point.value
        for binding in bindings:
            state = states.get(binding.key)
            if state is None:
                state = states[binding.key] = SeriesState()
            if state.last_ts is not None and ts < state.last_ts:
                continue  # older than what this pair already judged (out of order, redelivered)
            state.last_ts = ts
            rule = binding.rule
            if rule.holds is not None and not state.firing and state.pending_since is None and rule.schedule is None and not rule.holds(point.value):
                evaluations += 1  # the common case: quiet and still quiet (what threshold_step would conclude)
                continue
            before = (state.firing, state.pending_since, state.last_fired)
            if binding.lookup is None:
                event = threshold_step(binding.rule, state, ts, point.value)
            else:
                event = comparison_step(binding.rule, state, ts, binding.lookup)
            evaluations += 1
            if (state.firing, state.pending_since, state.last_fired) != before:
                on_change(binding, state)
            if event is not None:
                on_event(binding, event, ts, point.value, point)
    return evaluations


def _lookup(refs: dict, latest: dict[tuple[int, int], float]) -> Callable:
    def lookup(reference):
        return latest.get(refs[reference])

    return lookup


class StreamingEvaluator:
    """The hook object: call it with `(schema, points)`; `start()` its threads first."""

    def __init__(
        self,
        *,
        refresh_s: float | None = None,
        redis_url: str | None = None,
        apply: Callable[[RuleEvent], object] = apply_event,
        workers: int | None = None,
        flush_s: float = 0.005,
    ) -> None:
        self.refresh_s = refresh_s if refresh_s is not None else settings.RULES_INDEX_REFRESH_S
        self.redis_url = redis_url or settings.REDIS_URL
        self.apply = apply
        self.flush_s = flush_s
        self._tenants: dict[str, TenantRules] = {}
        self._callbacks: dict[str, tuple[Callable, Callable]] = {}
        self.origin = f"{os.getpid()}-{id(self)}"
        self._requested: set[str] = set()
        self._stale: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._writes: deque[tuple[str, str, str]] = deque()
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(workers or settings.RULES_ACTION_WORKERS)]
        self._threads: list[threading.Thread] = []
        self._client = None
        # Plain counters on the event loop; the writer thread moves them to Prometheus.
        self.points = 0
        self.evaluations = 0
        self.seconds = 0.0
        self.events = 0
        self._reported = (0, 0, 0.0)

    # --- the hook (event loop) -------------------------------------------------------------------
    def __call__(self, schema: str, points: Sequence[Point]) -> None:
        index = self._tenants.get(schema)
        if index is None:
            if schema not in self._requested:
                self._requested.add(schema)
                self.invalidate(schema)
            return
        # One message, one device (the ingest pipeline routes by the device's topic): a device
        # without rules costs this one lookup.
        if not points or points[0].device_id not in index.by_device:
            return
        started = time.perf_counter()
        callbacks = self._callbacks.get(schema)
        if callbacks is None:
            callbacks = self._callbacks[schema] = self._make_callbacks(schema)
        on_change, on_event = callbacks
        evaluations = evaluate(index, points, on_change, on_event)
        self.points += len(points)
        self.evaluations += evaluations
        self.seconds += time.perf_counter() - started

    def _make_callbacks(self, schema: str) -> tuple[Callable, Callable]:
        writes = self._writes
        queues = self._queues

        dirty = self._dirty

        def on_change(binding: Binding, state: SeriesState) -> None:
            writes.append((schema, state_field(*binding.key), state.pack()))
            if not dirty.is_set():
                dirty.set()

        def on_event(binding: Binding, kind: str, ts: float, value: float, point: Point) -> None:
            self.events += 1
            event = RuleEvent(schema=schema, rule=binding.rule, device_id=binding.device_id, kind=kind, ts=ts, value=value,
                              details={"metric_id": point.metric_id})  # fmt: skip
            queues[hash(binding.key) % len(queues)].put((time.perf_counter(), event))

        return on_change, on_event

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, *, preload: bool = True) -> StreamingEvaluator:
        import redis

        self._preload = preload
        self._client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2)
        targets = [(self._loader, "rules-index"), (self._listener, "rules-listen"), (self._writer, "rules-state")]
        targets += [(lambda q=q: self._worker(q), f"rules-actions-{n}") for n, q in enumerate(self._queues)]
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        atexit.register(self.stop)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._stop.is_set():
            return
        deadline = time.monotonic() + timeout
        while any(not q.empty() for q in self._queues) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._flush_writes()
        self._threads.clear()

    def invalidate(self, schema: str) -> None:
        with self._lock:
            self._stale.add(schema)
        self._wake.set()

    def loaded(self, schema: str) -> TenantRules | None:
        return self._tenants.get(schema)

    def wait_loaded(self, schema: str, timeout: float = 10.0, after: float = 0.0) -> TenantRules:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            index = self._tenants.get(schema)
            if index is not None and index.loaded_at > after:
                return index
            time.sleep(0.01)
        raise TimeoutError(f"rules of {schema!r} not loaded within {timeout} s")

    def idle(self) -> bool:
        return all(q.unfinished_tasks == 0 for q in self._queues) and not self._writes

    # --- threads ---------------------------------------------------------------------------------
    def _loader(self) -> None:
        if getattr(self, "_preload", False):  # here, not in start(): the hook may be built on the event loop
            for schema in _active_tenants():
                self._requested.add(schema)
                with self._lock:
                    self._stale.add(schema)
        last_full = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(1.0, self.refresh_s))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                stale, self._stale = self._stale, set()
            if time.monotonic() - last_full >= self.refresh_s:
                stale |= set(self._tenants)
                last_full = time.monotonic()
            if not stale:
                continue
            close_old_connections()
            self._flush_writes()
            for schema in sorted(stale):
                try:
                    index = load_tenant_rules(schema, client=self._client, previous=self._tenants.get(schema))
                except Exception as exc:
                    logger.warning("rules index not loaded; retrying", extra={"schema": schema, "error": str(exc)[:300]})
                    close_old_connections()
                    with self._lock:
                        self._stale.add(schema)
                    continue
                self._tenants[schema] = index
                logger.info("rules index loaded", extra={"schema": schema, "bindings": index.bindings, "devices": len(index.by_device)})
            metrics.INDEX_RULES.set(sum(index.bindings for index in list(self._tenants.values())))

    def _listener(self) -> None:
        import redis

        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(*(channels.pattern(topic, url=self.redis_url) for topic in TOPICS))
                backoff = 0.5
                for schema in list(self._tenants):
                    self.invalidate(schema)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "pmessage":
                        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                        schema = channels.schema_of(channel)
                        if channel.endswith(":" + STATE_TOPIC):
                            self._adopt(schema, message["data"])
                            continue
                        if schema in self._tenants or schema in self._requested:
                            self.invalidate(schema)
                pubsub.close()
                client.close()
            except Exception as exc:
                logger.warning("rules listener: Redis unavailable, retrying", extra={"error": str(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _adopt(self, schema: str, data: bytes) -> None:
        """Another process changed some pairs' state: take it over (keeping what we last judged)."""
        index = self._tenants.get(schema)
        if index is None:
            return
        try:
            payload = orjson.loads(data)
            if payload.get("origin") == self.origin:
                return
            for field_name, packed in payload["states"].items():
                rule_id, device_id = (int(part) for part in field_name.split(":"))
                key = (rule_id, device_id)
                if key not in index.states:
                    continue
                remote = SeriesState.unpack(packed)
                local = index.states[key]
                remote.last_ts = local.last_ts
                index.states[key] = remote
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("rule state message ignored", extra={"schema": schema, "error": str(exc)[:200]})

    def _flush_writes(self) -> None:
        if not self._writes or self._client is None:
            return
        per_schema: dict[str, dict[str, str]] = {}
        while self._writes:
            try:
                schema, key, packed = self._writes.popleft()
            except IndexError:
                break
            per_schema.setdefault(schema, {})[key] = packed
        try:
            pipe = self._client.pipeline(transaction=False)
            for schema, mapping in per_schema.items():
                pipe.hset(state_key(schema), mapping=mapping)
                # The other ingest processes see the same devices (shared subscription): they adopt it.
                pipe.publish(channels.channel(schema, STATE_TOPIC, url=self.redis_url), orjson.dumps({"origin": self.origin, "states": mapping}))
            pipe.execute()
        except Exception as exc:  # the state stays in memory; the next change writes it again
            logger.warning("rule states not stored in Redis", extra={"error": str(exc)[:300]})

    def _writer(self) -> None:
        # Woken by the first state change after a flush (not on a timer: a thread waking every few
        # milliseconds would take the GIL from the event loop for nothing), then waits flush_s to
        # gather what follows into the same pipeline. Metrics are moved once a second.
        last_report = time.monotonic()
        while not self._stop.is_set():
            if self._dirty.wait(timeout=1.0):
                self._dirty.clear()
                time.sleep(self.flush_s)
                self._flush_writes()
            if time.monotonic() - last_report >= 1.0:
                self._report()
                last_report = time.monotonic()

    def _report(self) -> None:
        points, evaluations, seconds = self.points, self.evaluations, self.seconds
        last = self._reported
        if (points, evaluations) != last[:2]:
            metrics.STREAM_POINTS.inc(points - last[0])
            metrics.STREAM_EVALUATIONS.inc(evaluations - last[1])
            metrics.STREAM_SECONDS.inc(max(0.0, seconds - last[2]))
            self._reported = (points, evaluations, seconds)
        metrics.ACTION_QUEUE.set(sum(q.qsize() for q in self._queues))

    def _worker(self, jobs: queue.Queue) -> None:
        checked = 0.0
        while True:
            try:
                item = jobs.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            arrived, event = item
            try:
                # Django's connection health check is a round trip of its own: at most once a
                # second, and a connection that broke since is replaced and the event applied again.
                if time.monotonic() - checked >= HEALTH_CHECK_INTERVAL_S:
                    close_old_connections()
                    checked = time.monotonic()
                # The worker's connection stays in the schema of its last event: apply_event does
                # not switch (a switch costs a search_path round trip) for a run of one tenant's events.
                if connection.schema_name != event.schema:
                    connection.set_schema(event.schema)
                try:
                    self.apply(event)
                except (InterfaceError, OperationalError):
                    logger.info("rule action: database connection lost, reconnecting", exc_info=True)
                    connection.close()
                    self.apply(event)
                metrics.ACTION_LAG.observe(time.perf_counter() - arrived)
            except Exception:
                logger.exception("rule action failed", extra={"schema": event.schema, "rule": event.rule.id, "device": event.device_id})
            finally:
                jobs.task_done()


def _active_tenants() -> list[str]:
    try:
        from tenants.models import Tenant

        with schema_context(get_public_schema_name()):
            return list(Tenant.objects.customers().active().values_list("schema_name", flat=True))
    except Exception as exc:
        logger.warning("tenants not listed for the rules preload", extra={"error": str(exc)[:300]})
        return []


def build_hook() -> StreamingEvaluator | None:
    """settings.INGEST_STREAMING_HOOKS factory: one evaluator per ingest process."""
    if not settings.RULES_STREAMING_ENABLED:
        return None
    interval = settings.RULES_SWITCH_INTERVAL_MS
    if interval > 0:  # see settings: alert latency under load (measured 500 -> 75 ms p50 in bench/rules_bench.py)
        sys.setswitchinterval(interval / 1000)
    return StreamingEvaluator().start()
