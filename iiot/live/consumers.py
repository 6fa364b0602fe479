"""LiveConsumer: `/ws/v1/live` (protocol: docs/websocket.md).

Per connection the server keeps at most one pending update per subscribed device (a dict of its
latest values per metric), a dict of the latest status per device and a bounded queue of alert
events. A sender task writes at most `rate` telemetry frames a second (each frame carries every
device that changed since the previous one), so a burst of points costs the client one frame per
interval; the first change after a quiet period goes out at once (FramePacer). Memory is bounded
by what is subscribed, never by how much arrives:
- a client that reads slowly makes `send` wait (the server's write buffer is full); meanwhile new
  values replace pending ones (coalescing);
- a client whose single send has waited more than settings.LIVE_SEND_TIMEOUT_S, or whose alert
  queue overflows (alerts are never coalesced away), is closed with 4008 and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from iiot.live import protocol
from iiot.live.events import alerts_group, devices_group
from iiot.live.hub import TelemetryHub, get_hub
from iiot.live.middleware import BEARER_SUBPROTOCOL
from iiot.live.protocol import ClientMessage, ProtocolError

logger = logging.getLogger(__name__)

MAX_ERRORS = 50  # error frames answered on one connection before it is closed


class FramePacer:
    """Telemetry frames at `rate` a second on average (a GCRA, "virtual scheduling", with a tolerance
    of half an interval):

    - after a quiet period the next frame may go at once;
    - under a steady stream, one frame per interval;
    - a frame may go up to half an interval early when the previous one went late, so values that
      arrive about as often as the rate (with jitter: the ingest's publish ticks, the event loop)
      are not held back by up to a whole interval each; two frames are never closer than half an
      interval and over any span T at most `1 + (T + interval / 2) * rate` frames are sent.
    """

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = 0.0  # the theoretical time of the next frame (time.monotonic())

    def delay(self, rate: float, now: float) -> float:
        """Seconds to wait before the next frame may be sent."""
        return max(0.0, self.due - 0.5 / rate - now)

    def sent(self, rate: float, now: float) -> None:
        self.due = max(self.due, now) + 1.0 / rate


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def resolve_devices(schema: str, refs: tuple[int | str, ...]) -> tuple[dict[int, str], list]:
    """({device id: uid} of the refs known in this tenant, [refs unknown here])."""
    from django.db.models import Q
    from django_tenants.utils import schema_context

    from devices.models import Device

    ids = [ref for ref in refs if isinstance(ref, int)]
    uids = [ref for ref in refs if isinstance(ref, str)]
    with schema_context(schema):
        rows = list(Device.objects.filter(Q(pk__in=ids) | Q(uid__in=uids)).values_list("id", "uid"))
    found = dict(rows)
    known_ids, known_uids = set(found), set(found.values())
    unknown = [ref for ref in refs if (ref not in known_ids if isinstance(ref, int) else ref not in known_uids)]
    return found, unknown


class LiveConsumer(AsyncWebsocketConsumer):
    # Channels assigns `channel_receive` (the channel layer's receive for this connection) before
    # dispatching; the property wraps it so that a Redis error ends one receive, not the connection.
    @property
    def channel_receive(self):  # noqa: ANN201
        return self._receive_from_layer

    @channel_receive.setter
    def channel_receive(self, receive) -> None:  # noqa: ANN001
        self._layer_receive = receive

    async def _receive_from_layer(self) -> dict:
        """The channel layer's receive, retried on Redis errors. channels_redis blocks in BZPOPMIN
        for 5 s while redis-py's default socket timeout is also 5 s (redis-py >= 6): the reply to an
        empty BZPOPMIN regularly loses that race, and an exception here used to close one
        WebSocket connection (no close frame) every few seconds. Nothing is lost by retrying:
        channels_redis keeps the message in its backup queue until it is processed."""
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.1
        task = asyncio.current_task()
        while True:
            try:
                return await self._layer_receive()
            except (RedisError, OSError) as exc:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # being cancelled (disconnect): never retry then
                if isinstance(exc, RedisTimeoutError):
                    continue  # the empty BZPOPMIN's reply raced the socket timeout: ask again
                logger.warning("live channel layer receive failed; retrying", extra={"error": str(exc)[:300], "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        self.hub: TelemetryHub | None = None
        self.sender: asyncio.Task | None = None
        self.heartbeat: asyncio.Task | None = None
        self.closing = False
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept(BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None)
        refusal = self.scope.get("live_refusal")
        if refusal is not None:
            self.closing = True
            await self.close(code=refusal.code, reason=refusal.reason)
            return
        self.schema: str = self.scope["schema_name"]
        self.user = self.scope["user"]
        self.permissions: frozenset[str] = self.scope["permissions"]
        self.max_rate = float(_setting("LIVE_MAX_RATE", 10.0))
        self.rate = float(_setting("LIVE_DEFAULT_RATE", 5.0))
        self.send_timeout = float(_setting("LIVE_SEND_TIMEOUT_S", 10.0))
        self.max_events = int(_setting("LIVE_MAX_QUEUED_EVENTS", 500))
        self.heartbeat_s = float(_setting("LIVE_HEARTBEAT_S", 20.0))
        # device id (str) -> None (every metric) or the metric names wanted
        self.telemetry: dict[str, frozenset[str] | None] = {}
        self.status_devices: set[int] | None = None  # None: every device
        self.status_on = False
        self.alert_devices: set[int] | None = None
        self.alerts_on = False
        self.pending: dict[str, dict[str, list]] = {}
        self.pending_status: dict[int, dict] = {}
        self.events: deque[dict] = deque()
        self.wake = asyncio.Event()
        self.last_receive = time.monotonic()
        self.errors = 0
        self.frames_sent = 0
        self.hub = get_hub()
        self.sender = asyncio.get_running_loop().create_task(self._send_loop(), name="live-sender")
        self.heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop(), name="live-heartbeat")
        await self.send_frame(
            {
                "type": "welcome",
                "tenant": self.schema,
                "user": self.user.email,
                "auth": self.scope.get("auth_method"),
                "permissions": sorted(p for p in self.permissions if p in protocol.STREAM_PERMISSIONS.values()),
                "max_rate": self.max_rate,
                "heartbeat_s": self.heartbeat_s,
            }
        )

    async def disconnect(self, code: int) -> None:
        self.closing = True
        for task in (getattr(self, "sender", None), getattr(self, "heartbeat", None)):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if getattr(self, "hub", None) is not None:
            self.hub.discard(self.schema, list(self.telemetry), self)
            self.telemetry.clear()
        if getattr(self, "status_on", False):
            await self.channel_layer.group_discard(devices_group(self.schema), self.channel_name)
        if getattr(self, "alerts_on", False):
            await self.channel_layer.group_discard(alerts_group(self.schema), self.channel_name)

    async def close_with(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        logger.info("live connection closed by the server", extra={"code": code, "reason": reason, "tenant": self.schema})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.close(code=code, reason=reason), 2.0)

    # --- client messages -------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        self.last_receive = time.monotonic()
        try:
            message = protocol.parse_client_message(text_data if text_data is not None else bytes_data)
            await self.handle(message)
        except ProtocolError as error:
            self.errors += 1
            if self.errors > MAX_ERRORS:
                await self.close_with(protocol.CLOSE_TOO_MANY_ERRORS, f"More than {MAX_ERRORS} invalid messages.")
                return
            await self.send_frame(error.frame())

    async def handle(self, message: ClientMessage) -> None:
        if message.type == "ping":
            await self.send_frame({"type": "pong", "ts": int(time.time() * 1000)})
            return
        if message.type == "pong":
            return
        permission = protocol.STREAM_PERMISSIONS[message.stream]
        if permission not in self.permissions:
            raise ProtocolError("forbidden", f'The {message.stream} stream needs the "{permission}" permission.', message.request_id)
        if message.type == "subscribe":
            await getattr(self, f"subscribe_{message.stream}")(message)
        else:
            await getattr(self, f"unsubscribe_{message.stream}")(message)

    async def _resolve(self, message: ClientMessage) -> dict[int, str]:
        found, unknown = await database_sync_to_async(resolve_devices)(self.schema, message.devices or ())
        if unknown:
            raise ProtocolError(
                "unknown_devices", "No such device in this tenant; nothing was subscribed.", message.request_id, devices=unknown[:100]
            )
        return found

    async def subscribe_telemetry(self, message: ClientMessage) -> None:
        found = await self._resolve(message)
        limit = int(_setting("LIVE_MAX_DEVICES_PER_CONNECTION", 5000))
        new_keys = [str(pk) for pk in found if str(pk) not in self.telemetry]
        if len(self.telemetry) + len(new_keys) > limit:
            raise ProtocolError("too_many_devices", f"At most {limit} devices per connection.", message.request_id)
        await self.hub.ensure_catalogue(self.schema)
        metrics = frozenset(message.metrics) if message.metrics else None
        for pk in found:
            self.telemetry[str(pk)] = metrics
        self.hub.add(self.schema, new_keys, self)
        await self.hub.watch(self.schema, new_keys)
        if message.rate is not None:
            self.rate = min(message.rate, self.max_rate)
        await self.send_frame(
            {
                "type": "subscribed",
                "stream": "telemetry",
                "id": message.request_id,
                "devices": [{"id": pk, "uid": uid} for pk, uid in sorted(found.items())],
                "metrics": sorted(metrics) if metrics else None,
                "rate": self.rate,
            }
        )

    async def unsubscribe_telemetry(self, message: ClientMessage) -> None:
        if message.devices is None:
            keys = list(self.telemetry)
        else:
            found = await self._resolve(message)
            keys = [str(pk) for pk in found if str(pk) in self.telemetry]
        self.hub.discard(self.schema, keys, self)
        for key in keys:
            self.telemetry.pop(key, None)
            self.pending.pop(key, None)
        await self.send_frame({"type": "unsubscribed", "stream": "telemetry", "id": message.request_id, "devices": [int(k) for k in keys]})

    async def subscribe_status(self, message: ClientMessage) -> None:
        devices = None if message.devices is None else set(await self._resolve(message))
        if devices is None or self.status_devices is None and self.status_on:
            self.status_devices = None
        else:
            self.status_devices = (self.status_devices or set()) | devices
        if not self.status_on:
            await self.channel_layer.group_add(devices_group(self.schema), self.channel_name)
            self.status_on = True
        await self.send_frame(
            {"type": "subscribed", "stream": "status", "id": message.request_id,
             "devices": None if self.status_devices is None else sorted(self.status_devices)}  # fmt: skip
        )

    async def unsubscribe_status(self, message: ClientMessage) -> None:
        if message.devices is not None and self.status_devices is not None:
            self.status_devices -= set(await self._resolve(message))
        if message.devices is None or not self.status_devices:
            if self.status_on:
                await self.channel_layer.group_discard(devices_group(self.schema), self.channel_name)
            self.status_on, self.status_devices = False, None
        await self.send_frame({"type": "unsubscribed", "stream": "status", "id": message.request_id})

    async def subscribe_alerts(self, message: ClientMessage) -> None:
        devices = None if message.devices is None else set(await self._resolve(message))
        if devices is None or self.alert_devices is None and self.alerts_on:
            self.alert_devices = None
        else:
            self.alert_devices = (self.alert_devices or set()) | devices
        if not self.alerts_on:
            await self.channel_layer.group_add(alerts_group(self.schema), self.channel_name)
            self.alerts_on = True
        await self.send_frame(
            {"type": "subscribed", "stream": "alerts", "id": message.request_id,
             "devices": None if self.alert_devices is None else sorted(self.alert_devices)}  # fmt: skip
        )

    async def unsubscribe_alerts(self, message: ClientMessage) -> None:
        if self.alerts_on:
            await self.channel_layer.group_discard(alerts_group(self.schema), self.channel_name)
        self.alerts_on, self.alert_devices = False, None
        await self.send_frame({"type": "unsubscribed", "stream": "alerts", "id": message.request_id})

    # --- server pushes ---------------------------------------------------------------------------
    def offer_telemetry(self, device_key: str, values: dict[str, list]) -> None:
        """From the hub (same event loop): newer values replace pending ones."""
        pending = self.pending.get(device_key)
        if pending is None:
            self.pending[device_key] = dict(values)
        else:
            pending.update(values)
        self.wake.set()

    async def device_status(self, event: dict) -> None:
        if self.status_devices is not None and event.get("device") not in self.status_devices:
            return
        self.pending_status[event["device"]] = {key: event.get(key) for key in ("device", "uid", "status", "at")}
        self.wake.set()

    async def alert_event(self, event: dict) -> None:
        payload = event.get("event") or {}  # alerting.services: {"id", "kind", "at", ..., "alert": {... "device_id"}}
        device_id = (payload.get("alert") or {}).get("device_id", payload.get("device_id"))
        if self.alert_devices is not None and device_id not in self.alert_devices:
            return
        if len(self.events) >= self.max_events:
            self.events.clear()
            await self.close_with(protocol.CLOSE_SLOW_CLIENT, f"Slow client: more than {self.max_events} alert events queued.")
            return
        self.events.append({"type": "alert", "event": payload})
        self.wake.set()

    def _telemetry_frame(self) -> dict | None:
        pending, self.pending = self.pending, {}
        updates = []
        for key, values in pending.items():
            wanted = self.telemetry.get(key, frozenset())
            if wanted is not None and not wanted:
                continue
            named = {}
            for metric_key, value in values.items():
                name = self.hub.metric_name(self.schema, metric_key)
                if name is not None and (wanted is None or name in wanted):
                    named[name] = value
            if named:
                updates.append({"device": int(key), "values": named})
        return {"type": "telemetry", "updates": updates} if updates else None

    async def _send_loop(self) -> None:
        pacer = FramePacer()
        try:
            while not self.closing:
                await self.wake.wait()
                self.wake.clear()
                while self.events and not self.closing:
                    await self.transmit(self.events.popleft())
                if self.pending_status:
                    statuses, self.pending_status = self.pending_status, {}
                    await self.transmit({"type": "status", "devices": list(statuses.values())})
                if self.pending:
                    wait = pacer.delay(self.rate, time.monotonic())
                    if wait > 0:
                        await asyncio.sleep(wait)  # values keep coalescing meanwhile
                    frame = self._telemetry_frame()
                    pacer.sent(self.rate, time.monotonic())
                    if frame is not None:
                        await self.transmit(frame)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("live sender failed", extra={"tenant": self.schema})
            await self.close_with(1011, "Server error.")

    async def transmit(self, frame: dict) -> None:
        """Send one frame; a client that cannot take it within the timeout is disconnected."""
        try:
            async with asyncio.timeout(self.send_timeout):  # no extra task per frame (unlike wait_for)
                await self.send_frame(frame)
        except TimeoutError:
            self.pending.clear()
            self.events.clear()
            await self.close_with(protocol.CLOSE_SLOW_CLIENT, f"Slow client: a frame waited more than {self.send_timeout:g} s to be sent.")
            raise asyncio.CancelledError from None

    async def send_frame(self, frame: dict) -> None:
        await self.send(text_data=protocol.dumps(frame))
        self.frames_sent += 1

    async def _heartbeat_loop(self) -> None:
        try:
            while not self.closing:
                await asyncio.sleep(self.heartbeat_s)
                if time.monotonic() - self.last_receive > 3 * self.heartbeat_s:
                    await self.close_with(protocol.CLOSE_HEARTBEAT_TIMEOUT, "No message from the client for three heartbeats.")
                    return
                self.events.append({"type": "ping", "ts": int(time.time() * 1000)})
                self.wake.set()
        except asyncio.CancelledError:
            pass
