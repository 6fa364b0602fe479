"""MQTT transport: Mosquitto -> `IngestService`, over a lean MQTT 5 client of our own (asyncio Protocol).

Why not a client library: at tens of thousands of QoS 1 messages a second the per-message work a
general client does (gmqtt: a task, a future and a PUBACK write per message; paho: a thread hop and
a callback) costs more CPU than validating and storing the message. This client decodes PUBLISH
packets straight from the receive buffer, hands `(topic, payload)` to the service, and sends the
PUBACKs of a whole batch in one write once the batch has committed (mqtt_wire.PUBACKS are
pre-encoded). The wire format lives in mqtt_wire.py.

- Subscriptions are MQTT 5 shared subscriptions, `$share/ingest/iiot/+/+/telemetry` etc., so N
  ingest processes split the stream (the broker gives each message to one of them).
- Persistent session: a stable client id per process (`ingest-{hostname}-{instance}`), clean
  start off and a session expiry interval, so what arrives while a process restarts is queued
  for it, and what it received but had not acknowledged is delivered again.
- A large receive maximum (settings.INGEST_RECEIVE_MAXIMUM, 65535) lets the broker keep enough
  QoS 1 messages in flight to fill a batch while the previous one commits.
- Acknowledgement after commit: a QoS 1 message is acknowledged when the future `submit()`
  returned resolves (its batch committed, or its status/attributes were applied); a rejected
  message is acknowledged at once (redelivering it would not make it valid). Acknowledgements of a
  connection that has dropped are never sent on another one: the broker redelivers those messages
  and the store's unique key makes the second copy harmless.
- Reconnection with exponential backoff and full jitter; a keepalive PINGREQ every keepalive/2 s,
  and a connection silent for 1.5 keepalive periods is dropped and reopened.
- Flow control: when too many points wait to be written, the service pauses reading the socket
  (TCP backpressure reaches the broker, which queues for the persistent session).
- Retiring an instance (`retire=True`, `manage.py ingest --retire N`): Mosquitto keeps handing an
  offline persistent session its share of a shared subscription, so an instance that is stopped
  for good would strand that share until its session expires. Retiring connects with the
  instance's client id, unsubscribes (no new share), stores and acknowledges what the session
  held, and once nothing has arrived for `retire_quiet_s` with nothing left to write, disconnects
  with Session Expiry Interval 0: the broker deletes the session. A lost connection is reopened
  as usual; stopped before the end (SIGTERM), the session stays with what is left, unsubscribed:
  retiring again resumes. Never retire a running instance: the two would take the client id from
  each other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from django.conf import settings

from telemetry.pipeline import RegistryMiss, RegistryUnavailable
from telemetry.transports import mqtt_wire as wire
from telemetry.transports.base import IngestService, backoff_delays

logger = logging.getLogger(__name__)

SHARE_GROUP = "ingest"
TOPIC_FILTERS = ("iiot/+/+/telemetry", "iiot/+/+/attributes", "iiot/+/+/status", "iiot/+/+/commands/response")
CONNECT_TIMEOUT_S = 10.0
# Retire mode: the session counts as emptied after this long without a message.
RETIRE_QUIET_S = 2.0

_now = datetime.now
_PUBACKS = wire.PUBACKS
_PUBLISH = wire.PUBLISH


def default_client_id(instance: int = 0, group: str = SHARE_GROUP) -> str:
    prefix = "ingest" if group == SHARE_GROUP else f"ingest-{group}"
    return f"{prefix}-{socket.gethostname()}-{instance}"


def shared_filters(group: str = SHARE_GROUP) -> list[str]:
    return [f"$share/{group}/{topic}" for topic in TOPIC_FILTERS]


class Connection(asyncio.Protocol):
    """One connection to the broker: decodes packets, submits messages, acknowledges after commit."""

    def __init__(self, service: IngestService) -> None:
        loop = asyncio.get_running_loop()
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.connack: asyncio.Future = loop.create_future()
        self.suback: asyncio.Future = loop.create_future()
        self.unsuback: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.open = False
        self.last_received = time.monotonic()
        # waiter -> packet ids to acknowledge when it resolves
        self.pending_acks: dict[asyncio.Future, list[int]] = {}
        self.held: set[asyncio.Task] = set()  # messages waiting for a registry lookup
        self.received = 0

    # --- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pending_acks.clear()
        for task in list(self.held):
            task.cancel()
        for future in (self.connack, self.suback, self.unsuback):
            if not future.done():
                future.set_exception(ConnectionError("connection closed by the broker"))
        if not self.lost.done():
            self.lost.set_result(exc)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        self.last_received = time.monotonic()
        size = len(buffer)
        position = 0
        received_at = None
        immediate: list[int] = []
        submit = self.service.submit
        pending = self.pending_acks
        decode_varint = wire.decode_varint
        try:
            while size - position >= 2:
                first = buffer[position]
                try:
                    length, start = decode_varint(buffer, position + 1)
                except IndexError:
                    break  # the length itself is incomplete
                end = start + length
                if end > size:
                    break
                if first >> 4 == _PUBLISH:
                    qos = (first >> 1) & 3
                    topic_end = start + 2 + ((buffer[start] << 8) | buffer[start + 1])
                    topic = buffer[start + 2 : topic_end].decode()
                    packet_id = 0
                    if qos:
                        if qos > 1:
                            raise wire.ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
                        packet_id = (buffer[topic_end] << 8) | buffer[topic_end + 1]
                        topic_end += 2
                    properties_length, payload_start = decode_varint(buffer, topic_end)
                    payload = bytes(buffer[payload_start + properties_length : end])
                    position = end
                    self.received += 1
                    if received_at is None:  # one receive time per chunk read from the socket
                        received_at = _now(UTC)
                    try:
                        waiter = submit(topic, payload, received_at)
                    except RegistryMiss as miss:
                        self._hold(miss, topic, payload, packet_id, received_at)
                        continue
                    if packet_id:
                        if waiter is None:
                            immediate.append(packet_id)
                        else:
                            ids = pending.get(waiter)
                            if ids is None:
                                ids = pending[waiter] = []
                                waiter.add_done_callback(self._acknowledge)
                            ids.append(packet_id)
                    continue
                self._control(first, bytes(buffer[start:end]))
                position = end
        except (wire.ProtocolError, IndexError, UnicodeDecodeError) as exc:
            logger.error("MQTT protocol error; dropping the connection", extra={"error": str(exc)[:200]})
            self.transport.abort()
            return
        finally:
            if position:
                del buffer[:position]
        if immediate and self.open:
            self.transport.write(b"".join([_PUBACKS[packet_id] for packet_id in immediate]))

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.CONNACK:
            if not self.connack.done():
                self.connack.set_result(wire.decode_connack(body))
        elif kind == wire.SUBACK:
            if not self.suback.done():
                self.suback.set_result(wire.decode_suback(body))
        elif kind == wire.UNSUBACK:
            if not self.unsuback.done():
                self.unsuback.set_result(wire.decode_suback(body))
        elif kind == wire.PINGRESP:
            pass
        elif kind == wire.DISCONNECT:
            reason = wire.decode_disconnect_reason(body)
            logger.warning("broker sent DISCONNECT", extra={"reason_code": f"0x{reason:02x}"})
            self.transport.close()
        else:
            raise wire.ProtocolError(f"unexpected packet type {kind}")

    # --- acknowledgements ----------------------------------------------------------------------------
    def _acknowledge(self, waiter: asyncio.Future) -> None:
        ids = self.pending_acks.pop(waiter, None)
        if not ids or not self.open or waiter.cancelled() or waiter.exception() is not None:
            return  # not stored (or connection gone): the broker redelivers
        self.transport.write(b"".join([_PUBACKS[packet_id] for packet_id in ids]))

    def _hold(self, miss: RegistryMiss, topic: str, payload: bytes, packet_id: int, received_at: datetime) -> None:
        task = asyncio.ensure_future(self._resolve_then_submit(miss, topic, payload, packet_id, received_at))
        self.held.add(task)
        task.add_done_callback(self.held.discard)

    async def _resolve_then_submit(self, miss: RegistryMiss, topic: str, payload: bytes, packet_id: int, received_at: datetime) -> None:
        """A message the registry index could not judge yet: look up in a thread, then submit again."""
        delays = None
        while self.open:
            try:
                await self.service.resolve(miss)
            except RegistryUnavailable as exc:
                delays = delays or backoff_delays(first=0.5)
                delay = next(delays)
                logger.warning("registry unavailable; message held", extra={"topic": topic, "error": str(exc)[:200], "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            try:
                waiter = self.service.submit(topic, payload, received_at)
            except RegistryMiss as again:
                miss = again
                continue
            if waiter is not None:
                await asyncio.shield(waiter)
            if packet_id and self.open:
                self.transport.write(_PUBACKS[packet_id])
            return

    # --- sending -------------------------------------------------------------------------------------
    def send(self, packet: bytes) -> None:
        if self.open:
            self.transport.write(packet)

    def pause_reading(self) -> None:
        if self.open:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.open and not self.transport.is_closing():
            self.transport.resume_reading()


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
        retire: bool = False,
        retire_quiet_s: float = RETIRE_QUIET_S,
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
        self.retire = retire
        self.retire_quiet_s = retire_quiet_s
        self.session_present: bool | None = None  # of the first CONNACK
        self.retired = False  # retire mode: the session was emptied and deleted
        self.connection: Connection | None = None
        # The connection being read, from its first byte: a broker hands a session's backlog over
        # right after CONNACK, in the same reads, before `connection` is set.
        self._reading: Connection | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._stop = asyncio.Event()
        service.pause_reading = self._pause_reading
        service.resume_reading = self._resume_reading

    def _pause_reading(self) -> None:
        if self._reading is not None:
            logger.info("ingest: too many unwritten points, pausing the socket")
            self._reading.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading is not None and not self._stop.is_set():
            self._reading.resume_reading()

    async def _open(self) -> Connection:
        """Connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK. Raises on any failure (the caller backs off)."""
        loop = asyncio.get_running_loop()
        _transport, connection = await asyncio.wait_for(
            loop.create_connection(
                lambda: Connection(self.service),
                self.host,
                self.port,
                ssl=ssl.create_default_context() if self.tls else None,
            ),
            CONNECT_TIMEOUT_S,
        )
        self._reading = connection
        if self.service.paused:  # still writing what an earlier connection delivered
            connection.pause_reading()
        try:
            connection.send(
                wire.connect_packet(
                    self.client_id,
                    username=self.username or None,
                    password=self.password or None,
                    keepalive=self.keepalive,
                    clean_start=False,
                    session_expiry_s=self.session_expiry_s,
                    receive_maximum=self.receive_maximum,
                )
            )
            connack: wire.Connack = await asyncio.wait_for(asyncio.shield(connection.connack), CONNECT_TIMEOUT_S)
            if connack.reason_code:
                raise ConnectionRefusedError(f"CONNACK refused: {connack.reason}")
            logger.info("ingest connected to MQTT", extra={"client_id": self.client_id, "session_present": connack.session_present})
            if self.session_present is None:
                self.session_present = connack.session_present
            self.connection = connection
            self.connected.set()
            if self.retire:
                # No new share of the stream for this session; what it queued still comes.
                connection.send(wire.unsubscribe_packet(1, self.filters))
                _packet_id, codes = await asyncio.wait_for(asyncio.shield(connection.unsuback), CONNECT_TIMEOUT_S)
                refused = [code for code in codes if code >= 0x80]
                if refused:  # the broker would keep queueing for the session: do not delete it
                    logger.error("ingest retiring: unsubscribe refused by the broker", extra={"client_id": self.client_id, "codes": codes})
                    self._stop.set()
                else:
                    logger.info("ingest retiring: unsubscribed, storing what the session held", extra={"client_id": self.client_id})
                return connection
            connection.send(wire.subscribe_packet(1, self.filters, qos=1))
            _packet_id, codes = await asyncio.wait_for(asyncio.shield(connection.suback), CONNECT_TIMEOUT_S)
        except BaseException:
            if connection.transport is not None:
                connection.transport.abort()
            raise
        refused = [topic for topic, code in zip(self.filters, codes, strict=False) if code >= 0x80]
        if refused:
            # The broker's ACL for the service account does not allow these filters.
            logger.error("ingest subscription refused by the broker", extra={"client_id": self.client_id, "refused": refused, "codes": codes})
        else:
            logger.info("ingest subscribed", extra={"client_id": self.client_id, "filters": self.filters})
            self.subscribed.set()
        return connection

    async def _keepalive(self, connection: Connection) -> None:
        interval = max(1.0, self.keepalive / 2)
        while connection.open:
            await asyncio.sleep(interval)
            if time.monotonic() - connection.last_received > 1.5 * self.keepalive:
                logger.warning("MQTT broker silent beyond the keepalive; dropping the connection")
                connection.transport.abort()
                return
            connection.send(wire.PINGREQ_PACKET)

    async def run(self) -> None:
        """Connect, receive, reconnect until `stop()`; then flush, acknowledge and disconnect."""
        await self.service.start()
        delays = backoff_delays(first=0.5, cap=30.0)
        try:
            while not self._stop.is_set():
                try:
                    connection = await self._open()
                except Exception as exc:
                    self.connected.clear()
                    delay = next(delays)
                    logger.warning("MQTT connection failed; retrying", extra={"error": str(exc)[:200], "retry_in_s": round(delay, 2)})
                    await self._sleep(delay)
                    continue
                delays = backoff_delays(first=0.5, cap=30.0)
                pinger = asyncio.ensure_future(self._keepalive(connection))
                stop_task = asyncio.ensure_future(self._stop.wait())
                waits = {stop_task, connection.lost}
                drained = asyncio.ensure_future(self._until_drained(connection)) if self.retire else None
                if drained is not None:
                    waits.add(drained)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                pinger.cancel()
                if drained is not None:
                    if drained.done() and not drained.cancelled() and connection.open and not self._stop.is_set():
                        self.retired = True
                        self._stop.set()
                    drained.cancel()
                if connection.lost.done() and not self._stop.is_set():
                    self.connected.clear()
                    self.subscribed.clear()
                    delay = next(delays)
                    logger.warning("MQTT connection lost; reconnecting", extra={"retry_in_s": round(delay, 2), "error": str(connection.lost.result())[:200]})
                    await self._sleep(delay)
        finally:
            # Take no new message (the broker keeps what is unacknowledged for the next session;
            # a busy stream would otherwise keep the last batch from ever being the last), write
            # what is pending; the waiters resolve and the PUBACKs go out on this connection.
            if self._reading is not None and self._reading.open:
                self._reading.pause_reading()
            await self.service.stop()
            await asyncio.sleep(0.05)
            connection = self.connection
            if connection is not None and connection.open:
                connection.send(wire.DISCONNECT_ENDING_SESSION_PACKET if self.retired else wire.DISCONNECT_PACKET)
                connection.transport.close()
            elif self.retired:  # the connection dropped at the last moment: the session stays
                self.retired = False
            self.connected.clear()
            self.subscribed.clear()

    async def _until_drained(self, connection: Connection) -> None:
        """Retire mode: return once nothing has arrived for retire_quiet_s and everything received
        is written and acknowledged (the broker then has nothing in flight to hold back)."""
        if not self.session_present:
            return  # no session was there: nothing to store
        seen, quiet_since = -1, time.monotonic()
        while connection.open:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if connection.received != seen:
                seen, quiet_since = connection.received, now
            elif now - quiet_since >= self.retire_quiet_s and not (connection.pending_acks or connection.held or self.service.pending_points):
                return
        await asyncio.Future()  # lost: the run loop reconnects (or stops)

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            pass

    def stop(self) -> None:
        self._stop.set()
