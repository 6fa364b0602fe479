"""Fan-out inside one web process: ONE Redis pub/sub subscription (pattern over every tenant's
telemetry channel) whatever the number of WebSocket connections; each message is decoded once and
handed to the local consumers subscribed to its devices, in memory.

The hub belongs to the event loop it runs on (one per uvicorn process; one per test). It also keeps
each tenant's metric catalogue (id -> name), loaded when a consumer subscribes and reloaded, at
most every few seconds, when an unknown metric id shows up.

Garbage collector: the fan-out allocates tens of thousands of small dicts and lists a second that
live for up to one frame interval. With CPython's default thresholds (700, 10, 10) many of them
survive two young collections, are promoted, and trigger a full collection every few seconds that
walks every object of the process (Django's included) for ~200 ms with 1,000 connections: the
event loop stops and every connection's frames wait. When the first hub of a process starts,
tune_gc() freezes what exists then (modules, settings, URL conf: never garbage) and raises the
young-generation threshold so that short-lived values die before they are ever examined.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Protocol

import orjson
from channels.db import database_sync_to_async

from iiot.live.streaming import (
    live_channel_pattern,
    live_redis_url,
    pattern_messages,
    schema_of_channel,
    watch_commands,
    watch_ttl_s,
)

logger = logging.getLogger(__name__)

CATALOGUE_RELOAD_S = 5.0
GC_THRESHOLD0 = 20_000  # young-generation threshold once the hub runs (CPython's default: 700)

_gc_tuned = False


def tune_gc() -> None:
    """Once per process (see the module docstring): collect, freeze what survives, raise the
    young-generation threshold (never lowers one already set higher)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    import gc

    gc.collect()
    gc.freeze()
    threshold0, threshold1, threshold2 = gc.get_threshold()
    if threshold0 and threshold0 < GC_THRESHOLD0:
        gc.set_threshold(GC_THRESHOLD0, threshold1, threshold2)


class TelemetrySink(Protocol):
    def offer_telemetry(self, device_key: str, values: dict[str, list]) -> None: ...


def load_catalogue(schema: str) -> dict[str, str]:
    from django_tenants.utils import schema_context

    from telemetry.models import Metric

    with schema_context(schema):
        return {str(pk): name for pk, name in Metric.objects.values_list("id", "name")}


class TelemetryHub:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or live_redis_url()
        # schema -> device id (str, as in the messages) -> consumers
        self.subscribers: dict[str, dict[str, set[TelemetrySink]]] = {}
        self.catalogues: dict[str, dict[str, str]] = {}
        self._catalogue_loaded: dict[str, float] = {}
        self._reloading: set[str] = set()
        self.task: asyncio.Task | None = None
        self.watch_task: asyncio.Task | None = None
        self._commands = None  # redis.asyncio client for watch commands (the listener has its own)
        self.ready = asyncio.Event()
        self.messages = 0
        self.last_sent_ms = 0

    # --- subscriptions ---------------------------------------------------------------------------
    def add(self, schema: str, device_keys: Iterable[str], sink: TelemetrySink) -> None:
        tenant = self.subscribers.setdefault(schema, {})
        for key in device_keys:
            tenant.setdefault(key, set()).add(sink)
        self.ensure_started()

    def discard(self, schema: str, device_keys: Iterable[str], sink: TelemetrySink) -> None:
        tenant = self.subscribers.get(schema)
        if not tenant:
            return
        for key in device_keys:
            sinks = tenant.get(key)
            if sinks is not None:
                sinks.discard(sink)
                if not sinks:
                    del tenant[key]
        if not tenant:
            del self.subscribers[schema]

    async def watch(self, schema: str, device_keys: Iterable[str]) -> None:
        """Tell the ingest processes that these devices are watched (streaming.py: only watched
        devices are published). Awaited before the client hears `subscribed`."""
        keys = list(device_keys)
        if not keys:
            return
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                watch_commands(pipe, schema, keys, announce=True)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: the refresher retries, live is best-effort
            logger.warning("live hub: watch not announced", extra={"schema": schema, "error": str(exc)[:300]})

    def _client(self):  # noqa: ANN202
        if self._commands is None:
            import redis.asyncio as aioredis

            self._commands = aioredis.Redis.from_url(self.url)
        return self._commands

    async def _keep_watching(self) -> None:
        """Renew the watches of every subscribed device before they expire (a web process that
        dies stops renewing, and its devices stop being published a TTL later)."""
        while True:
            await asyncio.sleep(watch_ttl_s() / 3)
            try:
                async with self._client().pipeline(transaction=False) as pipe:
                    for schema, devices in self.subscribers.items():
                        watch_commands(pipe, schema, list(devices), announce=False)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("live hub: watches not renewed", extra={"error": str(exc)[:300]})

    # --- metric names ----------------------------------------------------------------------------
    async def ensure_catalogue(self, schema: str, force: bool = False) -> dict[str, str]:
        if force or schema not in self.catalogues:
            self.catalogues[schema] = await database_sync_to_async(load_catalogue)(schema)
            self._catalogue_loaded[schema] = time.monotonic()
        return self.catalogues[schema]

    def metric_name(self, schema: str, metric_key: str) -> str | None:
        name = self.catalogues.get(schema, {}).get(metric_key)
        if name is None and schema not in self._reloading:
            if time.monotonic() - self._catalogue_loaded.get(schema, 0.0) > CATALOGUE_RELOAD_S:
                self._reloading.add(schema)
                task = asyncio.get_running_loop().create_task(self.ensure_catalogue(schema, force=True))
                task.add_done_callback(lambda _t: self._reloading.discard(schema))
        return name

    # --- the subscription ------------------------------------------------------------------------
    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            tune_gc()
            self.task = asyncio.get_running_loop().create_task(self._listen(), name="live-hub")
        if self.watch_task is None or self.watch_task.done():
            self.watch_task = asyncio.get_running_loop().create_task(self._keep_watching(), name="live-hub-watch")

    async def _listen(self) -> None:
        def connected(up: bool) -> None:
            (self.ready.set if up else self.ready.clear)()

        async for message in pattern_messages(self.url, live_channel_pattern(), timeout=lambda: 30.0, connected=connected, name="iiot-live-hub"):
            if message is not None:
                self.dispatch(message["channel"].decode(), message["data"])

    def dispatch(self, channel: str, data: bytes) -> None:
        self.messages += 1
        tenant = self.subscribers.get(schema_of_channel(channel))
        if not tenant:
            return
        message = orjson.loads(data)
        self.last_sent_ms = message.get("sent", 0)
        devices: dict[str, dict[str, list]] = message["devices"]
        if len(tenant) < len(devices):
            for key, sinks in tenant.items():
                values = devices.get(key)
                if values is not None:
                    for sink in sinks:
                        sink.offer_telemetry(key, values)
        else:
            for key, values in devices.items():
                sinks = tenant.get(key)
                if sinks:
                    for sink in sinks:
                        sink.offer_telemetry(key, values)

    async def stop(self) -> None:
        for task in (self.task, self.watch_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110
                    pass
        self.task = self.watch_task = None
        if self._commands is not None:
            try:
                await self._commands.aclose()
            except Exception:  # noqa: BLE001, S110
                pass
            self._commands = None


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TelemetryHub] = weakref.WeakKeyDictionary()


def get_hub() -> TelemetryHub:
    """The hub of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = TelemetryHub()
    return hub
