"""A lean MQTT 3.1.1 load generator for `make bench`: many device connections, packets encoded
by hand (no client library in the hot loop), QoS 0 or 1 with PUBACK accounting.

A paho publisher tops out near 27k msg/s here and would eat the CPU the ingest needs; this one
formats each payload with one bytes-% and writes bursts per connection.

Each message is `{"ts": <ms>, "values": {...4 metrics...}}`; timestamps are strictly increasing
per device so every point is unique (the store dedupes on device, metric, ts).
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass, field


def _varint(length: int) -> bytes:
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            byte |= 0x80
        out.append(byte)
        if not length:
            return bytes(out)


def _utf8(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 0, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        flags |= 0x40
        payload += _utf8(password)
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic_bytes: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    if qos:
        body = topic_bytes + struct.pack("!H", packet_id) + payload
        return b"\x32" + _varint(len(body)) + body
    body = topic_bytes + payload
    return b"\x30" + _varint(len(body)) + body


@dataclass
class Device:
    uid: str
    username: str
    password: str
    topic: str


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    connect_failures: int = 0
    started: float = 0.0
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)


PAYLOAD = b'{"ts":%d,"values":{"temperature":%s,"humidity":%s,"pressure":%s,"vibration":%s}}'
_VALUES = [
    (b"%.2f" % (20 + random.random() * 10), b"%.1f" % (40 + random.random() * 20), b"%.3f" % (1 + random.random()), b"%.2f" % (random.random() * 5))
    for _ in range(256)
]
# PAYLOAD split at its timestamp, for the pre-encoded packets of Connection.burst.
_TS_PREFIX = b'{"ts":'
_TAILS = [(PAYLOAD % (0, *values))[len(_TS_PREFIX) + 1 :] for values in _VALUES]
_PACKET_IDS = [struct.pack("!H", packet_id) for packet_id in range(65536)]


# A connection whose unsent bytes exceed this is skipped until the broker has read them.
WRITE_BUFFER_LIMIT = 64 * 1024
# At high rates a device's messages go out in bursts at most this often (one write for several
# messages, as a gateway sends): 60 msg/s per device is 6 per 100 ms, not one write per message.
# A device slower than 1 / BURST_INTERVAL_S sends each message on its own, on time.
BURST_INTERVAL_S = 0.1


class Connection(asyncio.Protocol):
    """One device's connection: an asyncio Protocol (no StreamReader task per connection; PUBACKs
    are counted straight from each received chunk)."""

    def __init__(self, device: Device, host: str, port: int, qos: int, stats: Stats, max_inflight: int) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.qos = qos
        self.stats = stats
        self.max_inflight = max_inflight
        self.topic = _utf8(device.topic)
        self.next_id = 1
        self.inflight = 0
        self.last_ts = 0
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.connack: asyncio.Future | None = None
        # Pre-encoded PUBLISH pieces per _VALUES entry: fixed header (its remaining length is
        # constant while ts has 13 digits) + topic; the payload after its timestamp.
        first = b"\x32" if qos else b"\x30"
        id_size = 2 if qos else 0
        self.heads = []
        for tail in _TAILS:
            remaining = len(self.topic) + id_size + len(_TS_PREFIX) + 13 + len(tail)
            self.heads.append(first + _varint(remaining) + self.topic)

    # --- asyncio.Protocol ---
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if self.connack is not None and not self.connack.done():
            if len(buffer) < 4:
                self.buffer = buffer
                return
            self.connack.set_result(buffer[:4])
            buffer = buffer[4:]
        size = len(buffer)
        offset = 0
        acked = 0
        while size - offset >= 2:
            length = buffer[offset + 1]  # PUBACK / PINGRESP are short: one length byte
            if size - offset < 2 + length:
                break
            if buffer[offset] == 0x40:
                acked += 1
            offset += 2 + length
        self.buffer = buffer[offset:] if offset < size else b""
        if acked:
            self.stats.acked += acked
            self.inflight -= acked

    def connection_lost(self, exc) -> None:
        if self.connack is not None and not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection closed before CONNACK: {exc}"))
        self.transport = None

    @property
    def live(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.connack = loop.create_future()
        await loop.create_connection(lambda: self, self.host, self.port)
        self.transport.write(connect_packet(f"bench-{self.device.uid}", self.device.username, self.device.password))
        connack = await asyncio.wait_for(self.connack, 10)
        if connack[0] != 0x20 or connack[3] != 0:
            self.transport.close()
            raise ConnectionError(f"CONNACK refused for {self.device.username}: code {connack[3]}")

    def burst(self, count: int) -> int:
        """Encode and write up to `count` messages; returns how many were written. Nothing is
        written while the broker has not taken what was written before (TCP backpressure) or,
        at QoS 1, while `max_inflight` messages wait for their PUBACK."""
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return 0
        if self.qos:
            count = min(count, self.max_inflight - self.inflight)
            if count <= 0:
                return 0
        now_ms = int(time.time() * 1000)
        ts = max(now_ms, self.last_ts + 1)
        parts = []
        append = parts.append
        heads = self.heads
        for _ in range(count):
            index = ts & 255
            append(heads[index])
            if self.qos:
                append(_PACKET_IDS[self.next_id])
                self.next_id = self.next_id % 65535 + 1
            append(b'{"ts":%d' % ts)
            append(_TAILS[index])
            ts += 1
        self.last_ts = ts - 1
        transport.write(b"".join(parts))
        if self.qos:
            self.inflight += count
        self.stats.sent += count
        return count

    async def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"\xe0\x00")
            transport.close()


async def run_load(
    devices: list[Device],
    host: str,
    port: int,
    *,
    qos: int,
    duration_s: float,
    rate_msgs_per_s: float | None = None,
    max_inflight: int = 2000,
    wait_acks_s: float = 30.0,
) -> Stats:
    """Publish for `duration_s` at `rate_msgs_per_s` in total (None: as fast as the broker takes).

    Every 5 ms tick the credit earned is written, round robin over the connections, in chunks of
    `rate per device x BURST_INTERVAL_S` messages (at least 1), so each device keeps its share of
    the rate. A message the broker cannot take yet (backpressure, QoS 1 window full) is not
    counted as sent and its credit is dropped: `sent` is what was offered."""
    stats = Stats()
    connections = [Connection(device, host, port, qos, stats, max_inflight) for device in devices]
    for start in range(0, len(connections), 100):  # connect in waves: the broker checks passwords
        results = await asyncio.gather(*(c.open() for c in connections[start : start + 100]), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                stats.connect_failures += 1
                stats.errors.append(str(result))
    live = [c for c in connections if c.live]
    tick = 0.005
    chunk = 64
    if rate_msgs_per_s is not None and live:
        chunk = max(1, int(rate_msgs_per_s / len(live) * BURST_INTERVAL_S))
    stats.started = time.perf_counter()
    deadline = stats.started + duration_s
    credit = 0.0
    index = 0
    last = stats.started
    while (now := time.perf_counter()) < deadline:
        if rate_msgs_per_s is None:
            for conn in live:
                conn.burst(chunk)
        elif live:
            credit += rate_msgs_per_s * (now - last)
            budget = int(credit)
            credit -= budget
            count = len(live)
            while budget > 0:
                take = min(chunk, budget)
                live[index].burst(take)
                budget -= take
                index = (index + 1) % count
        last = now
        sleep_for = tick - (time.perf_counter() - now)
        await asyncio.sleep(max(sleep_for, 0))
    stats.finished = time.perf_counter()
    if qos:
        ack_deadline = time.perf_counter() + wait_acks_s
        while stats.acked < stats.sent and time.perf_counter() < ack_deadline:
            await asyncio.sleep(0.05)
    await asyncio.gather(*(c.close() for c in live), return_exceptions=True)
    await asyncio.sleep(0.05)  # let the DISCONNECTs go out
    return stats
