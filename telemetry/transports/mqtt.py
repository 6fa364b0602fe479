"""MQTT transport: Mosquitto -> `IngestService`, with gmqtt (MQTT 5).

Why gmqtt: on this machine a do-nothing gmqtt subscriber receives 60k msg/s at QoS 1 against 41k
for paho 2.x (DESIGN.md), and with `optimistic_acknowledgement=False` it sends a message's PUBACK
only when the async `on_message` coroutine returns (gmqtt/mqtt/handler.py,
`_handle_qos_1_publish_packet`), which is what acknowledging after commit needs.

- Subscriptions are MQTT 5 shared subscriptions, `$share/ingest/iiot/+/+/telemetry` etc., so N
  ingest processes split the stream (the broker gives each message to one of them).
- Persistent session: a stable client id per process (`ingest-{hostname}-{instance}`), clean
  start off and a session expiry interval, so what arrives while a process restarts is queued
  for it, and what it received but had not acknowledged is delivered again.
- A large receive maximum (settings.INGEST_RECEIVE_MAXIMUM, 65535) lets the broker keep enough
  QoS 1 messages in flight to fill a batch while the previous one commits.
- Reconnection is ours (exponential backoff with full jitter), not gmqtt's fixed delay; each
  connection is a new gmqtt client, and the acknowledgements of messages received on a
  connection that has since dropped are never sent on another one (the broker redelivers them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from datetime import UTC, datetime
from urllib.parse import urlsplit

from django.conf import settings
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50

from telemetry.pipeline import RegistryMiss, RegistryUnavailable
from telemetry.transports.base import IngestService, backoff_delays

logger = logging.getLogger(__name__)

SHARE_GROUP = "ingest"
TOPIC_FILTERS = ("iiot/+/+/telemetry", "iiot/+/+/attributes", "iiot/+/+/status", "iiot/+/+/commands/response")


class StaleAcknowledgement(Exception):
    """Raised instead of acknowledging a message whose connection is gone (see the exception handler)."""


def default_client_id(instance: int = 0, group: str = SHARE_GROUP) -> str:
    prefix = "ingest" if group == SHARE_GROUP else f"ingest-{group}"
    return f"{prefix}-{socket.gethostname()}-{instance}"


def shared_filters(group: str = SHARE_GROUP) -> list[str]:
    return [f"$share/{group}/{topic}" for topic in TOPIC_FILTERS]


class MqttTransport:
    def __init__(
        self,
        service: IngestService,
        *,
        url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        group: str = SHARE_GROUP,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        keepalive: int = 30,
    ) -> None:
        self.service = service
        parts = urlsplit(url or settings.MQTT_URL)
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = settings.MQTT_SERVICE_USERNAME if username is None else username
        self.password = settings.MQTT_SERVICE_PASSWORD if password is None else password
        self.client_id = client_id or default_client_id()
        self.filters = shared_filters(group)
        self.session_expiry_s = session_expiry_s if session_expiry_s is not None else settings.INGEST_SESSION_EXPIRY_S
        self.receive_maximum = receive_maximum or settings.INGEST_RECEIVE_MAXIMUM
        self.keepalive = keepalive
        self.generation = 0
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        service.pause_reading = self._pause_reading
        service.resume_reading = self._resume_reading

    # --- flow control ------------------------------------------------------------------------------
    def _transport(self):
        # gmqtt has no public flow control; its connection keeps the asyncio transport.
        connection = getattr(self.client, "_connection", None)
        return getattr(connection, "_transport", None)

    def _pause_reading(self) -> None:
        transport = self._transport()
        if transport is not None:
            logger.info("ingest: too many unwritten points, pausing the socket")
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self._transport()
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # --- client ------------------------------------------------------------------------------------
    def _make_client(self) -> Client:
        self.generation += 1
        generation = self.generation
        client = Client(
            self.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=self.session_expiry_s,
            receive_maximum=self.receive_maximum,
        )
        if self.username:
            client.set_auth_credentials(self.username, self.password or None)
        service = self.service

        async def on_message(_client, topic: str, payload: bytes, qos: int, properties) -> int:
            received_at = datetime.now(UTC)
            delays = None
            while True:
                try:
                    waiter = service.submit(topic, payload, received_at)
                    break
                except RegistryMiss as miss:
                    try:
                        await service.resolve(miss)  # in a thread; then submit again
                    except RegistryUnavailable as exc:
                        delays = delays or backoff_delays(first=0.5)
                        delay = next(delays)
                        logger.warning("registry unavailable; message held", extra={"topic": topic, "error": str(exc)[:200]})
                        await asyncio.sleep(delay)
                    if generation != self.generation:
                        raise StaleAcknowledgement() from None
            if waiter is not None and qos:
                await waiter
                if generation != self.generation:
                    raise StaleAcknowledgement()
            return 0

        def on_connect(_client, flags, rc, properties) -> None:
            logger.info("ingest connected to MQTT", extra={"client_id": self.client_id, "session_present": bool(flags)})
            _client.subscribe([Subscription(topic, qos=1) for topic in self.filters])
            self.connected.set()

        def on_subscribe(_client, mid, qos, properties) -> None:
            granted = list(qos) if isinstance(qos, list | tuple) else [qos]
            refused = [topic for topic, code in zip(self.filters, granted, strict=False) if code >= 0x80]
            if refused:
                # The broker's ACL for the service account does not allow these filters.
                logger.error("ingest subscription refused by the broker", extra={"client_id": self.client_id, "refused": refused, "codes": granted})
                return
            logger.info("ingest subscribed", extra={"client_id": self.client_id, "filters": self.filters})
            self.subscribed.set()

        def on_disconnect(_client, packet, exc=None) -> None:
            # Our loop reconnects with backoff; stop gmqtt's own fixed-delay reconnect.
            _client._is_active = False
            if generation == self.generation:
                self.connected.clear()
                self.subscribed.clear()
                self._lost.set()

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        return client

    async def run(self) -> None:
        """Connect, receive, reconnect until `stop()`; then flush, acknowledge and disconnect."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(_quiet_stale_acknowledgements(previous_handler))
        await self.service.start()
        delays = backoff_delays(first=0.5, cap=30.0)
        try:
            while not self._stop.is_set():
                self._lost.clear()
                self.client = self._make_client()
                try:
                    await self.client.connect(
                        self.host, self.port, ssl=ssl.create_default_context() if self.tls else False, keepalive=self.keepalive, version=MQTTv50
                    )
                except Exception as exc:
                    self.generation += 1  # whatever this client received is not ours to acknowledge
                    delay = next(delays)
                    logger.warning("MQTT connection failed; retrying", extra={"error": str(exc)[:200], "retry_in_s": round(delay, 2)})
                    await self._sleep(delay)
                    continue
                delays = backoff_delays(first=0.5, cap=30.0)
                stop_task = asyncio.ensure_future(self._stop.wait())
                lost_task = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait({stop_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                lost_task.cancel()
                if self._lost.is_set() and not self._stop.is_set():
                    self.generation += 1
                    delay = next(delays)
                    logger.warning("MQTT connection lost; reconnecting", extra={"retry_in_s": round(delay, 2)})
                    await self._sleep(delay)
        finally:
            # Write what is pending; the waiters resolve and the PUBACKs go out on this connection.
            await self.service.stop()
            await asyncio.sleep(0.05)
            if self.client is not None and self.connected.is_set():
                try:
                    await asyncio.wait_for(self.client.disconnect(session_expiry_interval=self.session_expiry_s), 5)
                except Exception as exc:
                    logger.warning("MQTT disconnect failed", extra={"error": str(exc)[:200]})
            self.generation += 1

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            pass

    def stop(self) -> None:
        self._stop.set()


def _quiet_stale_acknowledgements(previous):
    """gmqtt calls `future.result()` in the callback that sends the PUBACK: a StaleAcknowledgement
    (or a cancellation at exit) surfaces there. That is the intended outcome, not an error."""

    def handler(loop, context):
        exc = context.get("exception")
        if isinstance(exc, StaleAcknowledgement | asyncio.CancelledError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handler
