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


class Connection:
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
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.window_open = asyncio.Event()
        self.window_open.set()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(connect_packet(f"bench-{self.device.uid}", self.device.username, self.device.password))
        await self.writer.drain()
        connack = await asyncio.wait_for(self.reader.readexactly(4), 10)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused for {self.device.username}: code {connack[3]}")

    async def read_acks(self) -> None:
        assert self.reader is not None
        buffer = b""
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            offset = 0
            acked = 0
            while len(buffer) - offset >= 2:
                kind = buffer[offset]
                length = buffer[offset + 1]  # PUBACK / PINGRESP are short: one length byte
                if len(buffer) - offset < 2 + length:
                    break
                if kind == 0x40:
                    acked += 1
                offset += 2 + length
            buffer = buffer[offset:]
            if acked:
                self.stats.acked += acked
                self.inflight -= acked
                if self.inflight < self.max_inflight:
                    self.window_open.set()

    def burst(self, count: int) -> int:
        """Encode and write up to `count` messages; returns how many were written."""
        assert self.writer is not None
        if self.qos and self.inflight >= self.max_inflight:
            self.window_open.clear()
            return 0
        if self.qos:
            count = min(count, self.max_inflight - self.inflight)
        now_ms = int(time.time() * 1000)
        ts = max(now_ms, self.last_ts + 1)
        parts = []
        for _ in range(count):
            values = _VALUES[ts & 255]
            payload = PAYLOAD % (ts, *values)
            parts.append(publish_packet(self.topic, payload, self.qos, self.next_id))
            self.next_id = self.next_id % 65535 + 1
            ts += 1
        self.last_ts = ts - 1
        self.writer.write(b"".join(parts))
        if self.qos:
            self.inflight += count
        self.stats.sent += count
        return count

    async def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.write(b"\xe0\x00")
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass
            self.writer.close()


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
    """Publish for `duration_s` at `rate_msgs_per_s` in total (None: as fast as the broker takes)."""
    stats = Stats()
    connections = [Connection(device, host, port, qos, stats, max_inflight) for device in devices]
    for start in range(0, len(connections), 100):  # connect in waves: the broker checks passwords
        results = await asyncio.gather(*(c.open() for c in connections[start : start + 100]), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                stats.connect_failures += 1
                stats.errors.append(str(result))
    live = [c for c in connections if c.writer is not None and not c.writer.is_closing()]
    readers = [asyncio.create_task(c.read_acks()) for c in live] if qos else []
    tick = 0.005
    stats.started = time.perf_counter()
    deadline = stats.started + duration_s
    credit = 0.0
    index = 0
    last = stats.started
    while (now := time.perf_counter()) < deadline:
        if rate_msgs_per_s is None:
            for conn in live:
                conn.burst(64)
        elif live:
            credit += rate_msgs_per_s * (now - last)
            budget = int(credit)
            credit -= budget
            base, extra = divmod(budget, len(live))
            for offset in range(len(live)):
                count = base + (1 if offset < extra else 0)
                if count:
                    live[(index + offset) % len(live)].burst(count)
            index += extra
        last = now
        await asyncio.gather(*(c.writer.drain() for c in live), return_exceptions=True)
        sleep_for = tick - (time.perf_counter() - now)
        if sleep_for > 0:
            await asyncio.sleep(sleep_for)
    stats.finished = time.perf_counter()
    if qos:
        ack_deadline = time.perf_counter() + wait_acks_s
        while stats.acked < stats.sent and time.perf_counter() < ack_deadline:
            await asyncio.sleep(0.05)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(c.close() for c in live), return_exceptions=True)
    return stats
