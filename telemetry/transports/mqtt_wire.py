"""The MQTT 5 wire format, as much of it as the ingest service speaks (a subscriber with QoS 0/1).

Encoding: CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBACK, PINGREQ, DISCONNECT. Decoding: the fixed header
of every packet, CONNACK, SUBACK, UNSUBACK, PUBLISH and a server DISCONNECT. Written for the ingest hot path: a
PUBLISH is decoded with a handful of index operations on the receive buffer, and PUBACKs are
pre-encoded so a flush acknowledges thousands of messages with one `transport.write`.
Reference: OASIS MQTT Version 5.0, section 3 (packet formats) and 1.5 (data representation).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14
)

# Property identifiers used here.
PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAXIMUM_PACKET_SIZE = 0x27
PROP_REASON_STRING = 0x1F

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection; the session expiry of CONNECT stays
# Normal disconnection with Session Expiry Interval 0: the broker deletes the session (and what it
# queued for it) now. Allowed after a CONNECT with a non-zero expiry (MQTT 5, 3.14.2.2.2).
DISCONNECT_ENDING_SESSION_PACKET = b"\xe0\x07\x00\x05" + bytes((PROP_SESSION_EXPIRY,)) + b"\x00\x00\x00\x00"

CONNACK_REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x97: "quota exceeded",
}


class ProtocolError(Exception):
    """The peer sent something this client cannot parse: the connection is dropped."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _binary(raw: bytes) -> bytes:
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    username: str | None,
    password: str | None,
    keepalive: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
    maximum_packet_size: int | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if username:
        flags |= 0x80
    if password:
        flags |= 0x40
    properties = bytes((PROP_SESSION_EXPIRY,)) + struct.pack("!I", session_expiry_s)
    properties += bytes((PROP_RECEIVE_MAXIMUM,)) + struct.pack("!H", max(1, min(receive_maximum, 65535)))
    if maximum_packet_size:
        properties += bytes((PROP_MAXIMUM_PACKET_SIZE,)) + struct.pack("!I", maximum_packet_size)
    body = _utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive) + encode_varint(len(properties)) + properties
    body += _utf8(client_id)
    if username:
        body += _utf8(username)
    if password:
        body += _binary(password.encode())
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00"  # no properties
    for topic_filter in filters:
        body += _utf8(topic_filter) + bytes((qos,))  # No Local off (required for shared subscriptions)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def unsubscribe_packet(packet_id: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00"  # no properties
    for topic_filter in filters:
        body += _utf8(topic_filter)
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


# PUBACK with reason "success" and no properties: 4 bytes; precomputed for every packet id.
PUBACKS: tuple[bytes, ...] = tuple(bytes((PUBACK << 4, 2, pid >> 8, pid & 0xFF)) for pid in range(65536))


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason_code: int

    @property
    def reason(self) -> str:
        return CONNACK_REASONS.get(self.reason_code, f"reason code 0x{self.reason_code:02x}")


def decode_connack(body: bytes | bytearray) -> Connack:
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    return Connack(session_present=bool(body[0] & 1), reason_code=body[1])


def decode_varint(buffer: bytes | bytearray, index: int) -> tuple[int, int]:
    """(value, index after it); raises IndexError when the buffer ends inside it."""
    value = 0
    shift = 0
    while True:
        byte = buffer[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer longer than 4 bytes")


def decode_suback(body: bytes | bytearray) -> tuple[int, list[int]]:
    """(packet id, reason code per filter) of a SUBACK or an UNSUBACK (same layout)."""
    if len(body) < 3:
        raise ProtocolError("SUBACK/UNSUBACK too short")
    packet_id = (body[0] << 8) | body[1]
    properties_length, index = decode_varint(body, 2)
    return packet_id, list(body[index + properties_length :])


def decode_disconnect_reason(body: bytes | bytearray) -> int:
    return body[0] if body else 0
